"""What a run records without any user code: git state and diff, redacted secrets, and
the post-mortem added when the evidence contradicts the words."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import PROGRAMS, PYTHON, load_report, run_ptdiag

pytestmark = pytest.mark.slow


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_dirty_tree_secrets_and_evidence_escalation(workdir):
    shutil.copy(PROGRAMS / "nan_quick.py", workdir / "train.py")
    git(workdir, "init", "-q")
    git(workdir, "add", "train.py")
    git(workdir, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    with open(workdir / "train.py", "a") as fh:
        fh.write("# tuned lr\n")
    proc = run_ptdiag("training is slow", "--json", "r.json", "--", PYTHON, "train.py",
                      "--api-key", "sk-live-123", cwd=workdir,
                      env={"MY_API_TOKEN": "tok-456", "PTDIAG_TEST_PLAIN": "visible"})
    assert proc.returncode == 0, proc.stderr.decode()
    report = load_report(workdir / "r.json")
    # the words said "slow"; the run diverged, so numerics' post-mortem was added
    assert report["route"]["specialists"][0] == "performance"
    assert "numerics" in report["route"]["specialists"]
    assert any("numerics" in note for note in report["route"]["notes"])
    assert report["status"] == "diverged"
    assert "numerics.nonfinite_loss" in [f["code"] for f in report["findings"]]
    # git: dirty, diff saved, finding says so
    dirty = next(f for f in report["findings"] if f["code"] == "tracking.dirty_tree")
    patch = dirty["evidence"]["patch"]
    assert "# tuned lr" in open(patch).read()
    assert report["environment"]["git"]["dirty"] is True
    # secrets never reach the run dir
    run_dir = next((workdir / "ptdiag-runs").glob("2*"))
    stored = "".join(p.read_text() for p in run_dir.rglob("*.json"))
    assert "sk-live-123" not in stored and "tok-456" not in stored
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["environ"]["MY_API_TOKEN"] == "<redacted>"
    assert meta["environ"]["PTDIAG_TEST_PLAIN"] == "visible"
    assert "<redacted>" in meta["command"]
    # the program still got its real argument
    assert report["params"]["lr"] == 100.0


def test_gradscaler_skipped_updates_keep_their_unscaled_loss(workdir):
    """A GradScaler hands backward loss * 2**20 and drops the first updates: the recorder
    keeps each backward's loss as the program printed it, the dropped ones marked skipped."""
    proc = run_ptdiag("track", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "amp_skips.py"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    printed = [line.split() for line in proc.stdout.decode().splitlines() if line.startswith("loss ")]
    events = [json.loads(line) for p in (workdir / "ptdiag-runs").glob("*/events/*.jsonl")
              for line in p.read_text().splitlines()]
    losses = [e for e in events if e["ev"] == "loss"]
    assert [bool(e.get("skipped")) for e in losses] == [status == "skipped" for _, _, status in printed]
    assert [round(e["value"], 6) for e in losses] == [float(value) for _, value, _ in printed]
    skipped = sum(status == "skipped" for _, _, status in printed)
    assert 0 < skipped < len(printed)
    assert [e["step"] for e in events if e["ev"] == "step_skipped"] == [1] * skipped  # the update still to come
    report = load_report(workdir / "r.json")
    assert report["steps_observed"] == len(printed) - skipped
    assert round(report["metrics"]["loss"]["first"], 6) == float(printed[skipped][1])  # the curve: updates made


def test_updates_a_fused_optimizer_skipped_on_the_device_are_not_counted_as_steps(workdir):
    """GradScaler.step always calls a fused Adam's step (CPU: GradScaler("cpu"), fused=True);
    the skip happens inside it, read back from the found_inf it was given, without a sync."""
    proc = run_ptdiag("track", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "amp_fused_skips.py"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    printed = [line.split() for line in proc.stdout.decode().splitlines() if line.startswith("loss ")]
    events = [json.loads(line) for p in (workdir / "ptdiag-runs").glob("*/events/*.jsonl")
              for line in p.read_text().splitlines()]
    skipped = [i for i, (_, _, status) in enumerate(printed, 1) if status == "skipped"]
    assert 0 < len(skipped) < len(printed)
    assert [e["step"] for e in events if e["ev"] == "step_skipped" and e.get("counted")] == skipped
    report = load_report(workdir / "r.json")
    assert report["steps_observed"] == len(printed) - len(skipped)
    assert round(report["metrics"]["loss"]["first"], 6) == float(printed[len(skipped)][1])  # the first update made
    assert not list(workdir.glob("ptdiag-runs/*/probe-errors.log"))


def test_a_fused_optimizer_whose_every_update_was_skipped_is_not_training(workdir):
    proc = run_ptdiag("track", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "amp_fused_skips.py"), "60",
                      cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    report = load_report(workdir / "r.json")
    finding = next(f for f in report["findings"] if f["code"] == "ptdiag.no_training_observed")
    assert finding["evidence"]["skipped_steps"] == 10 and report["steps_observed"] == 0
