"""Bad input: one clear line on stderr, exit 2, never a traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from conftest import PROGRAMS, PYTHON, ptdiag_cmd, run_ptdiag

BAD_INPUTS = [
    (["loss is NaN", "python", "train.py"], "no command after '--'"),
    (["loss is NaN", "--"], "no command after '--'"),
    (["loss is NaN", "--", "no-such-program-xyz"], "command not found: no-such-program-xyz"),
    (["loss is NaN", "--", PYTHON, "missing_script.py"], "script not found: missing_script.py"),
    (["loss is NaN", "--only", "memory,gpu", "--", PYTHON, "x.py"], "unknown specialist in --only: gpu"),
    (["loss is NaN", "--fail-on", "sometimes", "--", PYTHON, "x.py"], "--fail-on must be one of"),
    (["loss is NaN", "--max-steps", "0", "--", PYTHON, "x.py"], "--max-steps"),
    (["runs", "show", "nope"], "no run 'nope'"),
    (["inspect", "does-not-exist.json"], "no such file or directory"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(workdir, args, message):
    (workdir / "x.py").write_text("print('hi')\n")
    proc = run_ptdiag(*args, cwd=workdir, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_directory_as_script(workdir):
    (workdir / "adir").mkdir()
    proc = run_ptdiag("slow", "--", PYTHON, "adir", cwd=workdir)
    assert proc.returncode == 2 and b"directory without __main__.py" in proc.stderr


def test_unwritable_store(workdir):
    (workdir / "afile").write_text("")
    proc = run_ptdiag("slow", "--store", "afile/runs", "--", PYTHON, str(PROGRAMS / "behaviour.py"), cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("ptdiag: error: cannot")
    assert b"Traceback" not in proc.stderr


def test_unknown_artifact_kind(workdir):
    (workdir / "notes.txt").write_text("hello")
    proc = run_ptdiag("inspect", "notes.txt", cwd=workdir)
    assert proc.returncode == 2 and b"not an artifact ptdiag knows" in proc.stderr


def test_help_shows_examples(workdir):
    for args in (["--help"], ["diagnose", "--help"], ["route", "--help"], ["runs", "list", "--help"],
                 ["inspect", "--help"], ["env", "--help"]):
        proc = run_ptdiag(*args, cwd=workdir, timeout=60)
        assert proc.returncode == 0, args
        assert b"ptdiag" in proc.stdout and (b"Example" in proc.stdout or b"example" in proc.stdout.lower()), args


def test_route_is_fast_and_imports_no_torch(workdir):
    code = ("import sys; import ptdiag.cli, ptdiag.entry, ptdiag.router as r; "
            "r.route('CUDA out of memory'); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    best = min(_timed(workdir) for _ in range(3))
    assert best < 1.0  # CPU s, whole process, interpreter start included; the 150 ms goal is benchmarked
    proc = run_ptdiag("route", "CUDA out of memory after a few batches", "--json", cwd=workdir)
    assert b'"memory"' in proc.stdout


def _timed(workdir) -> float:
    """CPU seconds of the whole `ptdiag route` process: a loaded box's waits for a core are not its."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_ptdiag("route", "loss is nan", cwd=workdir)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_env_command(workdir):
    proc = run_ptdiag("env", "--json", cwd=workdir, timeout=60)
    assert proc.returncode == 0
    import json

    data = json.loads(proc.stdout)
    assert data["torch"]["torch"].startswith("2.")
    assert data["host"]


def test_a_reader_that_closed_the_pipe_ends_ptdiag_quietly(workdir):
    """`ptdiag route ... | head -0`: no traceback and no 'Exception ignored' on stderr."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(ptdiag_cmd("route", "loss is NaN", "--json"), stdout=write,
                              stderr=subprocess.PIPE, cwd=workdir, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == b""
