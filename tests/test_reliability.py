"""Whatever the program does, ptdiag keeps working, loses nothing and passes the result on.

Each case is listed in docs/reliability.md."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import PROGRAMS, PYTHON, load_report, ptdiag_cmd, run_ptdiag, running_ptdiag

pytestmark = pytest.mark.slow


def run_program(workdir, name, *args, **kwargs):
    proc = run_ptdiag("it breaks", "--quiet", "--json", "r.json", "--", PYTHON, str(PROGRAMS / name), *args,
                      cwd=workdir, **kwargs)
    return proc, load_report(workdir / "r.json")


@pytest.mark.parametrize("program,status", [
    ("exit_hard.py", "crashed"),
    ("segfault.py", "killed"),
    ("stdout_closed.py", "crashed"),
])
def test_bad_endings_pass_exit_code_and_keep_steps(workdir, program, status):
    bare = subprocess.run([PYTHON, str(PROGRAMS / program)], cwd=workdir, capture_output=True)
    bare_exit = 128 - bare.returncode if bare.returncode < 0 else bare.returncode  # as a shell reports it
    proc, report = run_program(workdir, program)
    assert bare_exit != 0 and proc.returncode == bare_exit
    assert report["exit_code"] == bare_exit and report["status"] == status
    assert report["steps_observed"] == 2


def test_segfault_location_is_kept(workdir):
    run_program(workdir, "segfault.py")
    run_dir = next((workdir / "ptdiag-runs").glob("2*"))
    dump = "".join(p.read_text() for p in (run_dir / "stacks").glob("*.txt"))
    assert "Segmentation fault" in dump and "segfault.py" in dump


def test_sigkill_from_outside(workdir):
    # kept running (performance alone ends it after its windows, which a loaded box can reach first)
    with running_ptdiag("slow", "-o", "performance.stop=no", "--quiet", "--json", "r.json", "--",
                        PYTHON, str(PROGRAMS / "train_forever.py"), cwd=workdir) as proc:
        assert proc.stdout.readline() == b"TRAINING\n"
        child = _probed_pids(workdir)[0]
        os.kill(child, signal.SIGKILL)  # as the host OOM-killer would
        proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL
    report = load_report(workdir / "r.json")
    assert report["status"] == "killed" and report["steps_observed"] >= 3


def test_dataloader_worker_killed(workdir):
    proc, report = run_program(workdir, "dl_worker_killed.py")
    assert proc.returncode == 1
    # epoch 0 (4 steps) completes; the worker dies in epoch 1, the exact step depends on prefetching
    assert report["status"] == "crashed" and 4 < report["steps_observed"] <= 7
    crash = report["findings"][0]
    assert crash["code"] == "ptdiag.crashed"
    # torch reports the dead worker from its SIGCHLD handler or, when the main process reads
    # the worker's queue first, as a broken connection; the handler can also fire while the
    # interpreter is already reporting, leaving no exception to record: all are the
    # program's own ending, passed through unchanged
    error = crash["evidence"]["error"]
    assert error is None or "DataLoader worker" in error or "Connection reset" in error
    if error:
        assert crash["evidence"]["location"].endswith("dl_worker_killed.py:23")


def test_output_flood_streams_through(workdir):
    proc, report = run_program(workdir, "flood.py")
    assert proc.returncode == 0
    assert len(proc.stdout) == 100 * 1024 * 1024
    assert report["steps_observed"] == 2


def test_sigterm_to_ptdiag_is_forwarded(workdir):
    # kept running (performance alone ends it after its windows, which a loaded box can reach first)
    with running_ptdiag("slow", "-o", "performance.stop=no", "--quiet", "--json", "r.json", "--",
                        PYTHON, str(PROGRAMS / "train_forever.py"), cwd=workdir) as proc:
        assert proc.stdout.readline() == b"TRAINING\n"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    report = load_report(workdir / "r.json")
    assert report["status"] == "interrupted" and report["steps_observed"] >= 3


def test_second_interrupt_kills_at_once(workdir):
    stubborn = workdir / "stubborn.py"
    stubborn.write_text("import signal, time\nimport _steps\n_steps.train(2)\n"
                        "signal.signal(signal.SIGINT, lambda *a: print('ignored', flush=True))\n"
                        "print('READY', flush=True)\nwhile True:\n    time.sleep(0.1)\n")
    shutil.copy(PROGRAMS / "_steps.py", workdir / "_steps.py")
    with running_ptdiag("slow", "--quiet", "--json", "r.json", "--", PYTHON, str(stubborn), cwd=workdir) as proc:
        assert proc.stdout.readline() == b"READY\n"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline() == b"ignored\n"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)  # ends within the guard, however loaded the box
    assert proc.returncode == 128 + signal.SIGKILL  # killed at once, not asked again to end
    report = load_report(workdir / "r.json")
    assert report["status"] == "interrupted" and report["steps_observed"] == 2


def test_an_ignored_sigint_stays_ignored(workdir):
    """Started with SIGINT ignored (a script's background job, nohup), the program ignores
    `kill -INT`: under ptdiag too, and two of them are not a second interrupt that kills it."""
    with running_ptdiag("track", "--quiet", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "train_forever.py"),
                        cwd=workdir, sigint=signal.SIG_IGN) as proc:
        assert proc.stdout.readline() == b"TRAINING\n"
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)  # what does end it
        proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM  # not 128 + SIGKILL
    report = load_report(workdir / "r.json")
    assert report["status"] == "interrupted"


@pytest.fixture(scope="module")
def checksum_bare(tmp_path_factory) -> subprocess.CompletedProcess:
    """checksum_train.py's bare run, once for the tests that compare a wrapped run with it."""
    return subprocess.run([PYTHON, str(PROGRAMS / "checksum_train.py")], cwd=tmp_path_factory.mktemp("bare"),
                          capture_output=True, check=True)


def test_training_result_is_bit_exact_with_ptdiag(workdir, checksum_bare):
    bare = checksum_bare
    wrapped = run_ptdiag("track", "--quiet", "--", PYTHON, str(PROGRAMS / "checksum_train.py"), cwd=workdir)
    assert wrapped.returncode == 0
    assert wrapped.stdout == bare.stdout


def test_probe_bug_is_logged_and_training_unharmed(workdir, checksum_bare):
    """A probe hook that raises (a bug injected into the recorder's step hook): logged, the
    hook disabled, the program's output and result unchanged."""
    (workdir / "plugins").mkdir()
    (workdir / "plugins" / "sitecustomize.py").write_text(
        "import ptdiag.probe.plugins.tracking as p\n"
        "def boom(value):\n    raise RuntimeError('injected probe bug')\n"
        "p._scalar = boom\n")
    bare = checksum_bare
    proc = run_ptdiag("track", "--quiet", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "checksum_train.py"),
                      cwd=workdir, env={"PYTHONPATH": str(workdir / "plugins")})
    assert proc.returncode == 0 and proc.stdout == bare.stdout
    report = load_report(workdir / "r.json")
    run_dir = next((workdir / "ptdiag-runs").glob("2*"))
    log = (run_dir / "probe-errors.log").read_text()
    assert "injected probe bug" in log and log.count("raised and was disabled") == 1  # once: then disabled
    assert any("probe logged internal errors" in n for n in report["notes"])


def test_ten_runs_at_once_on_one_store(workdir):
    procs = [subprocess.Popen(ptdiag_cmd("track", "--quiet", "--name", f"r{i}", "--", PYTHON, "-c", "print(1)"),
                              cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(10)]
    listed_during = subprocess.run(ptdiag_cmd("runs", "list", "--json"), cwd=workdir, capture_output=True)
    assert listed_during.returncode == 0
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    runs = json.loads(run_ptdiag("runs", "list", "--json", cwd=workdir).stdout)
    assert sorted(r["name"] for r in runs) == sorted(f"r{i}" for i in range(10))
    assert all(r["status"] == "completed" for r in runs)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare(1) not available")
def test_works_without_network(workdir):
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode().strip()}")
    proc = subprocess.run(["unshare", "-n", *ptdiag_cmd("loss is nan", "--quiet", "--json", "r.json", "--", PYTHON,
                                                      str(PROGRAMS / "nan_quick.py"))],
                          cwd=workdir, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert load_report(workdir / "r.json")["status"] == "diverged"


@pytest.mark.parametrize("symptom", ["", "x" * 100_000, "\x01\xff\x02 binary \ufffd"], ids=["empty", "100kB", "binary"])
def test_odd_symptoms_still_run(workdir, symptom):
    proc = run_ptdiag(symptom, "--quiet", "--json", "r.json", "--", PYTHON, "-c", "print(1)", cwd=workdir, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-300:]
    report = load_report(workdir / "r.json")
    assert report["route"]["ambiguous"] is True


def _probed_pids(workdir) -> list[int]:
    run_dir = next((workdir / "ptdiag-runs").glob("2*"))
    return [int(p.name) for p in (run_dir / "procs").iterdir()]


@pytest.fixture
def full_disk(tmp_path):
    """A 64 kB tmpfs filled to the last byte (needs root to mount; skipped otherwise)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'fill'}", "bs=4k"], capture_output=True)
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_full_store_disk_is_one_line(workdir, full_disk):
    proc = run_ptdiag("slow", "--store", str(full_disk / "runs"), "--", PYTHON, "-c", "print(1)", cwd=workdir)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "No space left on device" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_program_without_torch_leaves_no_probe_error(workdir):
    """Every plugin of the triage and the reproducibility/distributed cheap checks end
    cleanly in a process that never imports torch (numerics' on_exit used to read a
    loss region made only at torch's import)."""
    proc = run_ptdiag("something is wrong with my training", "--no-verify", "--json", "r.json", "--",
                      PYTHON, "-c", "print('no torch here')", cwd=workdir)
    assert proc.returncode == 0 and proc.stdout == b"no torch here\n"
    run_dir = workdir / "ptdiag-runs" / load_report(workdir / "r.json")["run_id"]
    assert not (run_dir / "probe-errors.log").exists(), (run_dir / "probe-errors.log").read_text()
