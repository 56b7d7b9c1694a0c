"""The numerics corpus: broken scripts not written for ptdiag get the expected top finding."""

from __future__ import annotations

import json

import pytest

from conftest import PYTHON, REPO, load_report, run_ptdiag

pytestmark = pytest.mark.slow

CORPUS = REPO / "diagnostics" / "numerics"
EXPECTED = {k: v for k, v in json.loads((CORPUS / "expected.json").read_text()).items() if not k.startswith("_")}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_corpus_script_is_localised(workdir, script):
    want = EXPECTED[script]
    proc = run_ptdiag("loss is NaN", "--json", "r.json", "--", PYTHON, str(CORPUS / script), *want["args"],
                      cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    top = load_report(workdir / "r.json")["findings"][0]
    ev = top["evidence"]
    assert (top["code"], ev["step"], ev["module"], ev["op"]) == (want["code"], want["step"], want["module"], want["op"])
    if "node" in want:
        assert ev["node"] == want["node"]
    if "replay_random_draws" in want:  # a dropout step fails by its own masks only: replayed with them
        assert ev["replay_random_draws"] == want["replay_random_draws"]
    (line,) = [i for i, text in enumerate((CORPUS / script).read_text().splitlines(), 1) if want["line"] in text]
    assert ev["location"].endswith(f"{script}:{line}")
