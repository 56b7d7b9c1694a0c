"""The program's streams are the program's: under ptdiag its stdout and stderr are byte for
byte those of the bare run (no warning, log line or companion-run output of ptdiag's), and
ptdiag's own lines come only before the program starts and after it ended.

The programs print no timings and seed themselves, so their streams repeat exactly."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import PROGRAMS, PYTHON, free_port, run_ptdiag, split_stderr

pytestmark = pytest.mark.slow

# torchrun warns, with a time stamp, when it sets OMP_NUM_THREADS itself
QUIET_TORCHRUN = {"OMP_NUM_THREADS": "1"}


def bare(command: list[str], workdir, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=workdir, capture_output=True, timeout=240, env=dict(os.environ, **(env or {})))


def assert_same_streams(wrapped: subprocess.CompletedProcess, alone: subprocess.CompletedProcess) -> list[str]:
    assert wrapped.returncode == alone.returncode == 0, wrapped.stderr.decode()[-3000:]
    program_stderr, ptdiag_lines = split_stderr(wrapped.stderr)
    assert wrapped.stdout == alone.stdout
    assert program_stderr == alone.stderr
    return ptdiag_lines


def test_a_ddp_run_under_torchrun(workdir):
    """Two gloo ranks; rank 0 prints, logs and gets DataLoader's pin_memory warning, which
    ptdiag once made torch print again at every epoch."""
    def command():
        return [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                str(PROGRAMS / "ddp_chatty.py")]

    alone = bare(command(), workdir, QUIET_TORCHRUN)
    assert alone.stderr.count(b"pin_memory") == 1 and alone.stdout.count(b"loss") == 3
    wrapped = run_ptdiag("ranks disagree with DDP", "--", *command(), cwd=workdir, env=QUIET_TORCHRUN)
    assert_same_streams(wrapped, alone)


def test_a_tensorboard_logging_run(workdir):
    """The program logs its loss tensor to TensorBoard (ptdiag reads it: torch warned about
    float() of a tensor that requires grad) and ends inside performance's profiler window,
    with memory's breakdown step behind it."""
    command = [PYTHON, str(PROGRAMS / "tb_logging.py"), "--hparams"]
    alone = bare(command, workdir)
    assert alone.stdout.count(b"loss") == 5 and alone.stderr.count(b"logged") == 5
    wrapped = run_ptdiag("training is slow and memory keeps growing", "--", *command, cwd=workdir)
    assert_same_streams(wrapped, alone)


def test_a_repeat_run_writes_its_output_to_its_own_logs(workdir):
    """--repeat runs the command a second time: its output goes to the companion run's
    stdout.log and stderr.log (it printed into the user's stdout: the log appeared twice),
    and the terminal gets one line saying where. Numerics watches both runs."""
    command = [PYTHON, str(PROGRAMS / "tb_logging.py")]
    alone = bare(command, workdir)
    wrapped = run_ptdiag("loss is NaN", "--repeat", "--", *command, cwd=workdir)
    ptdiag_lines = assert_same_streams(wrapped, alone)
    (run_dir,) = (workdir / "ptdiag-runs").glob("2*")
    logs = [run_dir / "companions" / "repeat" / name for name in ("stdout.log", "stderr.log")]
    announced = [line for line in ptdiag_lines if line.startswith("ptdiag ▸ repeat run")]
    assert len(announced) == 1 and all(str(log) in announced[0] for log in logs)
    # the repeat trains as many steps as the main run took, then ptdiag stops it in its 5th
    # optimizer step, before that step's print: the first four lines of each stream
    repeat_out, repeat_err = (log.read_bytes() for log in logs)
    assert repeat_out.splitlines() == alone.stdout.splitlines()[:4]
    assert repeat_err.splitlines() == alone.stderr.splitlines()[:4]
