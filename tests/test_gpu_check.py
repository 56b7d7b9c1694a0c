"""scripts/gpu_check.py on a machine without a GPU: every check of issue #16's "One offline
GPU check" is listed and SKIPped with the reason, exit 0; and its plumbing (a program run
bare and under ptdiag, the report and run dir read back) works, on the one check mode a
CPU can run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
# issue #16, "One offline GPU check": the checks, as it numbers and names them
ISSUE_CHECKS = [("1", "behaves as without ptdiag"), ("2", "memory"), ("3", "performance"),
                ("4", "numerics/AMP/tracking"), ("5", "distributed")]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["gpu_check"])
    module = sys.modules["gpu_check"]
    return module


def test_the_checks_are_the_issues():
    assert [(c.id, c.title.lower()) for c in _gpu_check().CHECKS] == [(i, t.lower()) for i, t in ISSUE_CHECKS]


def test_without_a_gpu_every_check_says_skip_and_why(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines[:-1]] == [f"SKIP {i} {t}" for i, t in ISSUE_CHECKS]
    assert all("no CUDA device" in line and "torch.cuda.is_available() is False" in line for line in lines[:-1])
    assert lines[-1].startswith("gpu_check: 0 failed of 5")
    assert (tmp_path / "summary.txt").read_text().splitlines() == lines[:-1]


@pytest.mark.slow
def test_a_program_is_run_bare_and_under_ptdiag_and_read_back(tmp_path):
    """Check 1's `visible` mode needs no GPU: CUDA_VISIBLE_DEVICES="" set after import."""
    gpu_check = _gpu_check()
    ctx = gpu_check.Context(tmp_path)
    program = str(gpu_check.PROGRAMS / "behaviour.py")
    bare = ctx.bare(program, "visible")
    probed = ctx.ptdiag("visible", ["track", "--quiet"], [sys.executable, program, "visible"])
    assert bare.returncode == probed.proc.returncode == 0, probed.proc.stderr
    assert bare.stdout == probed.proc.stdout and bare.stdout.startswith("cuda available: False devices: 0\n")
    assert probed.report["steps_observed"] == 3 and len(probed.events("loss")) == 3
    assert probed.run_dir.is_dir() and not (probed.run_dir / "probe-errors.log").exists()
