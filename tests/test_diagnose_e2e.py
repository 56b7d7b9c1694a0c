"""End to end: the real CLI runs real programs with the probe injected."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from conftest import (FAST_SAMPLE_ARGS, PROGRAMS, PYTHON, SAMPLES, assert_stop_announced, load_report,
                      run_ptdiag, running_ptdiag, split_stderr)

pytestmark = pytest.mark.slow

CONTRACT_KEYS = {"schema", "run_id", "symptom", "command", "route", "status", "exit_code",
                 "steps_observed", "findings", "metrics", "artifacts", "environment"}
FINDING_KEYS = {"code", "specialist", "severity", "title", "detail", "evidence", "fix"}


def codes(report: dict) -> list[str]:
    return [f["code"] for f in report["findings"]]


def test_nan_sample_is_diverged_with_first_nonfinite_step(workdir):
    proc = run_ptdiag("loss is NaN after epoch 3", "--json", "r.json", "--", PYTHON,
                      str(SAMPLES / "resnet_nan.py"), "--bug", "lr", "--epochs", "8", *FAST_SAMPLE_ARGS,
                      cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()
    report = load_report(workdir / "r.json")
    assert CONTRACT_KEYS <= set(report)
    assert report["schema"] == "ptdiag.report/1"
    assert report["route"]["specialists"][0] == "numerics"
    assert report["status"] == "diverged"
    cause, top = report["findings"][:2]
    assert FINDING_KEYS <= set(top)
    # the LR schedule's explosion is the cause, ranked first; the NaN loss is its consequence
    assert (cause["code"], top["code"]) == ("numerics.grad_explosion", "numerics.nonfinite_loss")
    # the sample's schedule multiplies lr by 10 per epoch of 2 steps: the loss is finite
    # for the first epochs and the first NaN step is the one the events recorded
    losses = [json.loads(line) for p in (workdir / "ptdiag-runs").glob("*/events/*.jsonl")
              for line in p.read_text().splitlines() if '"ev":"loss"' in line]
    first_bad = min(e["step"] for e in losses if not e["finite"])
    assert top["evidence"]["step"] == first_bad > 4
    assert top["evidence"]["epoch"] == (first_bad - 1) // 2
    assert report["params"]["lr"] == 0.05 and report["params"]["optimizer.name"] == "SGD"
    assert report["seeds"]["torch"]["value"] == 0
    assert "tracking.run_recorded" in codes(report)
    assert b"diverged" in proc.stderr and b"numerics.nonfinite_loss" in proc.stderr


def test_healthy_sample_completes_without_problem_findings(workdir):
    proc = run_ptdiag("training seems fine, just checking", "--json", "r.json", "--", PYTHON,
                      str(SAMPLES / "resnet_healthy.py"), "--epochs", "2", *FAST_SAMPLE_ARGS, cwd=workdir)
    assert proc.returncode == 0
    report = load_report(workdir / "r.json")
    assert report["status"] == "completed"
    assert report["steps_observed"] == 4
    assert not [f for f in report["findings"] if f["severity"] == "error"]
    # the baseline must never be called data-bound or sync-bound (timing-based warnings
    # such as per-op overhead may appear on a loaded machine)
    assert not {"performance.dataloader_bound", "performance.host_sync"} & {f["code"] for f in report["findings"]}
    assert report["metrics"]["step_time_s"]["p50"] > 0
    assert report["metrics"]["samples_per_s"] > 0
    # stdout is the program's own, untouched: the report went to stderr
    assert proc.stdout.decode().splitlines() == [l for l in proc.stdout.decode().splitlines() if l.startswith("epoch")]


def test_max_steps_stops_cleanly(workdir):
    proc = run_ptdiag("slow", "--max-steps", "3", "--json", "r.json", "--", PYTHON,
                      str(PROGRAMS / "train_forever.py"), cwd=workdir, timeout=60)
    assert proc.returncode == 0
    report = load_report(workdir / "r.json")
    assert report["steps_observed"] == 3 and report["status"] == "completed"
    stop = assert_stop_announced(report, proc.stderr, "max_steps")
    assert stop == {"by": "max_steps", "step": 3, "reason": "--max-steps 3 was reached", "keep_running": None}


def test_crash_mid_training_passes_exit_code_and_keeps_steps(workdir):
    proc = run_ptdiag("it crashes", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "crash_mid_training.py"),
                      cwd=workdir)
    assert proc.returncode == 1
    report = load_report(workdir / "r.json")
    assert report["status"] == "crashed" and report["exit_code"] == 1
    assert report["steps_observed"] == 3
    assert b"mat1 and mat2 shapes" in proc.stderr  # the program's own traceback still shows


def test_command_failing_before_training(workdir):
    proc = run_ptdiag("error in training", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "crash_at_import.py"),
                      cwd=workdir)
    assert proc.returncode == 1
    report = load_report(workdir / "r.json")
    finding = next(f for f in report["findings"] if f["code"] == "ptdiag.command_failed")
    assert finding["evidence"]["exit_code"] == 1
    assert "KeyError" in finding["evidence"]["last_error"]
    assert finding["evidence"]["location"].endswith("crash_at_import.py:3")


def test_no_training_observed(workdir):
    proc = run_ptdiag("slow", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "no_training.py"), cwd=workdir)
    assert proc.returncode == 0
    report = load_report(workdir / "r.json")
    finding = next(f for f in report["findings"] if f["code"] == "ptdiag.no_training_observed")
    assert "a model forward pass" in finding["evidence"]["seen"]


def test_every_update_skipped_by_gradscaler_is_not_called_no_training(workdir):
    proc = run_ptdiag("track", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "amp_skips.py"), "60", cwd=workdir)
    assert proc.returncode == 0
    report = load_report(workdir / "r.json")
    finding = next(f for f in report["findings"] if f["code"] == "ptdiag.no_training_observed")
    assert finding["evidence"]["skipped_steps"] == 12
    assert "GradScaler skipped every update" in finding["title"] and "numerics" in finding["fix"]


def test_program_behaves_as_without_ptdiag(workdir):
    args = [str(PROGRAMS / "behaviour.py"), "7", "--lr", "0.1"]
    bare = subprocess.run([PYTHON, *args], cwd=workdir, capture_output=True)
    wrapped = run_ptdiag("slow", "--quiet", "--", PYTHON, *args, cwd=workdir)
    assert wrapped.returncode == bare.returncode == 7
    assert wrapped.stdout == bare.stdout  # argv, cwd, __name__, sys.path[0], raw bytes
    seen = json.loads(wrapped.stdout.splitlines()[0])
    assert seen["name"] == "__main__" and not seen["ptdiag_on_path"]
    assert split_stderr(wrapped.stderr)[0] == bare.stderr == b"to stderr\n"


def test_a_compiled_model_gets_no_warning_about_ptdiags_hooks(workdir):
    """torch.compile(module) warns while a global module hook exists; the probe's own
    one-shot hook must not put that line into the program's stderr."""
    args = [str(PROGRAMS / "compiled_model.py")]
    bare = subprocess.run([PYTHON, *args], cwd=workdir, capture_output=True)
    wrapped = run_ptdiag("loss is NaN", "--quiet", "--json", "r.json", "--", PYTHON, *args, cwd=workdir)
    assert wrapped.returncode == bare.returncode == 0
    assert wrapped.stdout == bare.stdout
    assert b"global hooks" not in bare.stderr and b"global hooks" not in wrapped.stderr
    assert load_report(workdir / "r.json")["steps_observed"] == 4


def test_python_dash_m_is_probed(workdir):
    (workdir / "pkg").mkdir()
    (workdir / "pkg" / "__init__.py").write_text("")
    (workdir / "pkg" / "train.py").write_text((PROGRAMS / "crash_mid_training.py").read_text())
    run_ptdiag("crash", "--json", "r.json", "--", PYTHON, "-m", "pkg.train", cwd=workdir)
    assert load_report(workdir / "r.json")["steps_observed"] == 3


def test_torchrun_two_gloo_ranks(workdir):
    torchrun = os.path.join(os.path.dirname(PYTHON), "torchrun")
    proc = run_ptdiag("hangs with 2 GPUs", "--json", "r.json", "--", torchrun, "--nproc_per_node", "2",
                      "--master_port", "29531", str(PROGRAMS / "ddp_tiny.py"), "--steps", "4", cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    report = load_report(workdir / "r.json")
    assert report["route"]["specialists"][0] == "distributed"
    assert report["metrics"]["steps_per_rank"] == {"0": 4, "1": 4}
    run_dir = next((workdir / "ptdiag-runs").glob("2*"))
    names = sorted(p.name.split(".")[0] for p in (run_dir / "events").glob("*.jsonl"))
    assert names == ["rank0", "rank1"]  # the torchrun agent stayed passive


def test_sigint_is_forwarded_and_partial_report_written(workdir):
    # the performance specialist active (its windows open as TRAINING is printed), kept running
    # (-o performance.stop=no): only the Ctrl-C can end this run. The timeout guards a hang only
    with running_ptdiag("slow", "-o", "performance.stop=no", "--json", "r.json", "--", PYTHON,
                        str(PROGRAMS / "train_forever.py"), cwd=workdir) as proc:
        assert proc.stdout.readline() == b"TRAINING\n"
        proc.send_signal(signal.SIGINT)  # to ptdiag alone, as kill -INT would
        _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130  # the child's KeyboardInterrupt exit, passed through
    report = load_report(workdir / "r.json")
    assert report["status"] == "interrupted"
    assert report["steps_observed"] >= 3
    assert b"KeyboardInterrupt" in err


def test_a_ctrl_c_inside_the_profilers_start_stops_the_profiler(workdir):
    # where a Ctrl-C sent as performance's profiler window opens lands on a loaded box (torch's
    # start takes seconds there), made certain: the program's start raises KeyboardInterrupt
    proc = run_ptdiag("slow", "-o", "performance.stop=no", "--json", "r.json", "--", PYTHON,
                      str(PROGRAMS / "ctrl_c_in_profiler_start.py"), cwd=workdir, timeout=240)
    assert proc.returncode == 130
    assert b"PROFILER STOPPED" in proc.stdout  # not left recording the program's exit
    assert b"KeyboardInterrupt" in proc.stderr
    assert load_report(workdir / "r.json")["steps_observed"] == 4  # the profiler's warm-up step (performance.skip)


def test_timeout_dumps_stacks_and_reports_hung(workdir):
    # ptdiag must end the hang itself: the subprocess guard is generous, a loaded CI box is slow
    proc = run_ptdiag("it hangs", "--timeout", "25", "--json", "r.json", "--", PYTHON,
                      str(PROGRAMS / "hang_after_steps.py"), cwd=workdir, timeout=240)
    assert b"WAITING" in proc.stdout  # it reached its hang before the time-out
    report = load_report(workdir / "r.json")
    assert report["status"] == "hung"
    finding = next(f for f in report["findings"] if f["code"] == "ptdiag.hung")
    (where,) = finding["evidence"]["locations"].values()
    assert "hang_after_steps.py:14" in where
    assert proc.returncode == 128 + 15  # ended by SIGTERM after the stacks were dumped


def test_runs_list_and_show(workdir):
    run_ptdiag("crash", "--name", "first", "--tag", "team=vision", "--html", "page.html", "--", PYTHON,
               str(PROGRAMS / "crash_mid_training.py"), cwd=workdir)
    listed = json.loads(run_ptdiag("runs", "list", "--json", cwd=workdir).stdout)
    page = (workdir / "page.html").read_text()
    assert listed[0]["run_id"] in page and "ptdiag.crashed" in page
    assert (workdir / "ptdiag-runs" / listed[0]["run_id"] / "report.html").exists()
    assert len(listed) == 1 and listed[0]["name"] == "first" and listed[0]["status"] == "crashed"
    assert {"run_id", "name", "status", "started", "command", "symptom", "params", "metrics", "tags"} <= set(listed[0])
    shown = run_ptdiag("runs", "show", listed[0]["run_id"][:15], "--json", cwd=workdir)
    record = json.loads(shown.stdout)
    assert record["tags"] == {"team": "vision"} and record["findings"]
    text = run_ptdiag("runs", "show", listed[0]["run_id"], cwd=workdir)
    assert text.returncode == 0 and b"crashed" in text.stdout
    opened = run_ptdiag("runs", "show", listed[0]["run_id"], "--reanalyse", "--open", cwd=workdir,
                        env={"BROWSER": "echo"})  # webbrowser runs $BROWSER with the page's URL
    assert opened.returncode == 0 and b"report.html" in opened.stdout
