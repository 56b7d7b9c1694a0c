"""Programs in the shape of public training scripts: a broken one's report gives the root
cause first (a trajectory, not the op where a value finally overflowed, nor the symptom
the user typed), a correct one gets no warning or error."""

from __future__ import annotations

import json

import pytest

from conftest import PYTHON, REPO, load_report, run_ptdiag

pytestmark = pytest.mark.slow

CORPUS = REPO / "diagnostics" / "numerics"
CASES = [(script, case) for script, cases in json.loads((CORPUS / "causes.json").read_text()).items()
         if not script.startswith("_") for case in cases]


@pytest.mark.parametrize("script,case", CASES, ids=[f"{s.removesuffix('.py')}-{c['case']}" for s, c in CASES])
def test_the_root_cause_comes_first(workdir, script, case):
    proc = run_ptdiag(case["symptom"], "--json", "r.json", "--", PYTHON, str(CORPUS / script), *case["args"],
                      cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    report = load_report(workdir / "r.json")
    findings = report["findings"]
    if case["first"] is None:
        alarms = {f["code"] for f in findings if f["severity"] != "info"}
        assert alarms <= set(case.get("pending", {})), alarms
        return
    top = findings[0]
    assert top["code"] == case["first"], [f["code"] for f in findings]
    assert f"▸ {top['title']}" in proc.stderr.decode()  # the terminal's headline is the cause
    if top["code"] == "numerics.grad_explosion":
        ev = top["evidence"]
        assert ev["peak_norm"] >= 100 * ev["baseline_norm"]
        assert "learning rate" in top["fix"].lower()
        # whatever op overflowed last is a place, ranked below the cause, never an uninitialised buffer
        assert all(f["evidence"].get("op") not in ("aten::empty_like", "aten::empty") for f in findings)
    if "reason" in case:
        assert case["reason"] in top["title"]
