"""The loop corpus (diagnostics/loops): each correct program of a common training shape,
run bare and under `ptdiag track`, keeps its exit code and streams, and gets its steps,
losses, configured LR and config recorded right, with no warning or error."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from conftest import PYTHON, REPO, load_report, recorded_steps, run_ptdiag, split_stderr
from test_streams import bare

pytestmark = pytest.mark.slow

CORPUS = REPO / "diagnostics" / "loops"
CASES = json.loads((CORPUS / "cases.json").read_text())


def _events(report: dict, kind: str) -> list[dict]:
    """Rank 0's events of one kind, in the order the probe wrote them."""
    found = []
    for path in sorted(Path(report["artifacts"]["events"]).glob("rank0.*.jsonl")):
        found += [e for e in map(json.loads, path.read_text().splitlines()) if e["ev"] == kind]
    return found


@pytest.mark.parametrize("case", CASES, ids=[c["script"] for c in CASES])
def test_loop_recorded_right(workdir, case):
    missing = [m for m in case.get("requires", []) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install -e .[test])")
    command = [PYTHON, str(CORPUS / case["script"]), *case["args"]]
    alone = bare(command, workdir, case.get("env"))
    wrapped = run_ptdiag("track", "--json", "r.json", "--", *command, cwd=workdir, env=case.get("env"))
    assert wrapped.returncode == alone.returncode == 0, wrapped.stderr.decode()[-3000:]
    assert wrapped.stdout == alone.stdout
    assert split_stderr(wrapped.stderr)[0] == alone.stderr

    report = load_report(workdir / "r.json")
    assert report["status"] == "completed" and report["steps_observed"] == case["steps"]
    loud = [(f["code"], f["title"]) for f in report["findings"] if f["severity"] in ("warning", "error")]
    assert not loud, loud

    losses = [(e["step"], e["value"]) for e in _events(report, "loss")]
    steps = [step for step, _ in losses]
    # on a loaded box ptdiag's budget may keep 1 step in N of tiny steps' lines (it says so)
    assert steps == recorded_steps(report.get("switched_off", []), case["steps"])
    assert all(math.isfinite(value) for _, value in losses)
    if "first_loss" in case:
        low, high = case["first_loss"]
        assert low <= losses[0][1] <= high, losses[:3]
    if "losses_printed" in case:  # the program's own numbers, step for step
        printed = [float(v) for found in re.findall(case["losses_printed"], alone.stdout.decode())
                   for v in found.split(",")]
        assert len(printed) == case["steps"]
        assert [round(v, 4) for _, v in losses] == pytest.approx([round(printed[s - 1], 4) for s in steps], abs=2e-4)
    if "other_losses" in case:  # the second optimizer's, one per step recorded
        assert len(_events(report, "other_loss")) == (case["other_losses"] if len(steps) == case["steps"]
                                                       else len(steps))

    params = report["params"]
    for key, want in case["params"].items():
        assert params.get(key) == pytest.approx(want), (key, params.get(key))
    assert params.get("optimizer.lr") == (pytest.approx(case["optimizer_lr"]) if case["optimizer_lr"] else None)
    if "first_lr" in case:  # the schedule is a series of its own, step 1 its first value
        steps = _events(report, "step")
        assert steps[0]["lr"][0] == pytest.approx(case["first_lr"], abs=1e-9)
        assert report["series"]["lr"]["points"][0] == [1, pytest.approx(case["first_lr"], abs=1e-9)]


def test_configurator_runs_compared_and_found_by_their_config(workdir):
    """nanoGPT-style runs differing only in `--learning_rate=...`: `runs compare` shows the
    command line and the config key that differ, `runs list --where` finds each by it."""
    script = str(CORPUS / "nanogpt" / "train.py")
    ids = []
    for lr in ("0.001", "1000.0"):
        proc = run_ptdiag("track", "--json", f"{lr}.json", "--", PYTHON, script, f"--learning_rate={lr}",
                          "--max_iters=2", "--eval_interval=10", cwd=workdir)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        ids.append(load_report(workdir / f"{lr}.json")["run_id"])
    compared = run_ptdiag("runs", "compare", *ids, "--json", cwd=workdir)
    assert compared.returncode == 0, compared.stderr.decode()
    result = json.loads(compared.stdout)
    assert [argv.split()[-3] for argv in result["command"]["argv"]] == ["--learning_rate=0.001",
                                                                        "--learning_rate=1000.0"]
    assert result["config"]["learning_rate"] == [0.001, 1000.0]
    assert result["config"]["optimizer.lr"] == [0.001, 1000.0]
    listed = run_ptdiag("runs", "list", "--where", "learning_rate=1000.0", "--json", cwd=workdir)
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [ids[1]]
