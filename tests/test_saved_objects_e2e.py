"""Nothing ptdiag does inside the program shows in the program's own objects (issue 19):
whole-model torch.save, pickle, deepcopy (an EMA copy), jit.script, torch.export, the
optimizer, sampler and GradScaler pickled, under `track` and under each specialist's plan.

One seeded program (tests/programs/save_whole_model.py) prints digests of its pickles
(storages by value) and of its exported graph: its streams and exit code under ptdiag
equal the bare run's, so the object graphs are the same. The model and optimizer it saved
load in a clean interpreter where ptdiag cannot be imported, and their pickles name no
ptdiag."""

from __future__ import annotations

import os
import subprocess
import zipfile

import pytest

from conftest import PERF_WINDOWS, PROGRAMS, PYTHON, run_ptdiag, split_stderr
from ptdiag.router.table import default_table

PROGRAM = PROGRAMS / "save_whole_model.py"
PLANS = {
    "track": ["track"],
    "memory": ["memory keeps growing", "--only", "memory"],
    "numerics": ["loss is nan", "--only", "numerics"],
    # short windows: the 6-step program reaches the call scan (whose float64 timing drew from
    # torch's generator and so changed every random draw after it)
    "performance": ["training is slow", "--only", "performance", *PERF_WINDOWS],
    "distributed": ["DDP hangs", "--only", "distributed"],
    "reproducibility": ["two runs differ", "--only", "reproducibility"],
    "triage": ["something is wrong with my training", "--only", ",".join(default_table().triage_plan),
               "--max-steps", str(default_table().triage_steps), *PERF_WINDOWS],
}
SAVED = ("model.pt", "optimizer.pt")
# loads the saved files where ptdiag is absent: any reference to it in a pickle fails the load
# (one interpreter for all of them: each start imports torch, most of what this check costs)
LOAD_WITHOUT_PTDIAG = """
import sys
sys.modules["ptdiag"] = None
import torch
for path in sys.argv[1:]:
    obj = torch.load(path, weights_only=False)
    modules = list(obj.modules()) if isinstance(obj, torch.nn.Module) else []
    print(type(obj).__name__, [k for k, v in obj.state_dict().items()] if modules else len(obj.state),
          all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in modules))
"""


def _run_bare(workdir) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(PROGRAM), "."], cwd=workdir, capture_output=True, timeout=240)


def _load_cleanly(workdir) -> list[str]:
    """What a clean interpreter loads from each of the files the program saved, one line each."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")}
    proc = subprocess.run([PYTHON, "-I", "-c", LOAD_WITHOUT_PTDIAG, *(str(workdir / name) for name in SAVED)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = proc.stdout.splitlines()
    assert len(loaded) == len(SAVED), proc.stdout
    return loaded


def _pickles(path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return b"".join(archive.read(name) for name in archive.namelist() if name.endswith(".pkl"))


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bare")
    proc = _run_bare(workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc, _load_cleanly(workdir)  # loaded once for every plan's comparison


@pytest.mark.slow
@pytest.mark.parametrize("plan", PLANS)
def test_the_programs_objects_pickle_copy_script_and_export_as_bare(plan, bare, tmp_path):
    bare_proc, bare_loaded = bare
    proc = run_ptdiag(*PLANS[plan], "--quiet", "--", PYTHON, str(PROGRAM), ".", cwd=tmp_path, timeout=400)
    program_stderr, _ = split_stderr(proc.stderr)
    assert proc.returncode == bare_proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout == bare_proc.stdout  # losses, EMA losses, pickle and export digests
    assert program_stderr == bare_proc.stderr
    for name in SAVED:
        assert b"ptdiag" not in _pickles(tmp_path / name)
    assert _load_cleanly(tmp_path) == bare_loaded
