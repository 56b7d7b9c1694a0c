"""Tracking through the CLI: what the script logs, groups, and the short triage."""

from __future__ import annotations

import json

import pytest

from conftest import PROGRAMS, PYTHON, load_report, run_ptdiag

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("hparams", [False, True])
def test_config_not_logged_only_when_metrics_come_without_hyperparameters(workdir, hparams):
    args = ["--hparams"] if hparams else []
    proc = run_ptdiag("track", "--quiet", "--json", "r.json", "--group", "sweep-1", "--", PYTHON,
                      str(PROGRAMS / "tb_logging.py"), *args, cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-500:]
    report = load_report(workdir / "r.json")
    codes = [f["code"] for f in report["findings"]]
    assert ("tracking.config_not_logged" in codes) is not hparams
    assert report["metrics"]["logged"]["train/loss"]["n"] == 5  # the SummaryWriter's scalars were captured
    listed = json.loads(run_ptdiag("runs", "list", "--group", "sweep-1", "--json", cwd=workdir).stdout)
    assert [r["run_id"] for r in listed] == [report["run_id"]]
    assert json.loads(run_ptdiag("runs", "list", "--group", "other", "--json", cwd=workdir).stdout) == []


def test_ambiguous_symptom_runs_a_short_triage(workdir):
    proc = run_ptdiag("fix my pytorch training", "--quiet", "--json", "r.json", "--", PYTHON,
                      str(PROGRAMS / "train_forever.py"), cwd=workdir, timeout=120)
    assert proc.returncode == 0
    report = load_report(workdir / "r.json")
    assert report["route"]["ambiguous"] is True
    assert report["steps_observed"] <= 200 and report["status"] == "completed"
    assert any("triage measures the first 200" in n for n in report["route"]["notes"])


def test_track_takes_max_steps_and_a_timeout_reports_no_negative_silence(workdir):
    """`track --timeout` advises --max-steps: track takes it. A run ended by the time-out
    writes its exit events after it; the silence is measured to the last event before."""
    proc = run_ptdiag("track", "--quiet", "--max-steps", "5", "--json", "steps.json", "--", PYTHON,
                      str(PROGRAMS / "train_forever.py"), cwd=workdir, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-800:]
    assert load_report(workdir / "steps.json")["steps_observed"] == 5
    run_ptdiag("track", "--quiet", "--timeout", "4", "--json", "timeout.json", "--", PYTHON,
               str(PROGRAMS / "train_forever.py"), cwd=workdir, timeout=120)
    report = load_report(workdir / "timeout.json")
    ended = next(f for f in report["findings"] if f["code"] in ("ptdiag.timeout", "ptdiag.hung"))
    assert ended["evidence"]["silent_s"] >= 0 and "-" not in ended["detail"].split("Last recorded event")[1][:3]
    assert "--max-steps" in ended["fix"]
