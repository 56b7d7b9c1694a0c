"""Environment capture: redaction, git state, host and torch facts read from this machine."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptdiag.environment import (
    REDACTED,
    git_diff,
    git_state,
    host_environment,
    installed_packages,
    redact_argv,
    redact_environ,
    torch_environment,
)

SRC = Path(__file__).resolve().parents[1] / "src"


# --- redaction ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["HF_TOKEN", "WANDB_API_KEY", "aws_secret_access_key",
                                  "DB_PASSWORD", "GOOGLE_APPLICATION_CREDENTIALS", "MyToken"])
def test_redact_environ_hides_secret_named_variables(name):
    assert redact_environ({name: "s3cr3t"}) == {name: REDACTED}


def test_redact_environ_keeps_ordinary_variables_and_input():
    environ = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "1"}
    original = dict(environ)
    assert redact_environ(environ) == original
    assert environ == original


@pytest.mark.parametrize("value, expected", [
    ("https://alice:pw@example.com/repo.git", f"https://{REDACTED}@example.com/repo.git"),
    ("https://ghp_abc123@github.com/o/r", f"https://{REDACTED}@github.com/o/r"),
    ("postgres://u:p@db:5432/x", f"postgres://{REDACTED}@db:5432/x"),
    ("ssh://git@github.com/o/r.git", "ssh://git@github.com/o/r.git"),
    ("https://example.com/no-user", "https://example.com/no-user"),
])
def test_redact_environ_hides_url_credentials(value, expected):
    assert redact_environ({"MLFLOW_TRACKING_URI": value}) == {"MLFLOW_TRACKING_URI": expected}


@pytest.mark.parametrize("argv, expected", [
    (["--api-key", "X", "--lr", "0.1"], ["--api-key", REDACTED, "--lr", "0.1"]),
    (["--api_key=X", "--lr=0.1"], [f"--api_key={REDACTED}", "--lr=0.1"]),
    (["--token", "X"], ["--token", REDACTED]),
    (["--hf-token", "X", "data/"], ["--hf-token", REDACTED, "data/"]),
    (["--password=p=q"], [f"--password={REDACTED}"]),
    (["-SECRET", "X"], ["-SECRET", REDACTED]),
    (["--aws-credentials", "X"], ["--aws-credentials", REDACTED]),
    # a secret-named flag followed by another option takes no value: nothing to hide
    (["--use-token", "--epochs", "3"], ["--use-token", "--epochs", "3"]),
    # a secret-named option at the very end has no value
    (["train.py", "--token"], ["train.py", "--token"]),
    (["--remote", "https://u:p@host/x"], ["--remote", f"https://{REDACTED}@host/x"]),
])
def test_redact_argv(argv, expected):
    command = ["python", "train.py", *argv]
    assert redact_argv(command) == ["python", "train.py", *expected]


def test_redact_argv_leaves_ordinary_commands_alone():
    command = ["torchrun", "--nproc_per_node", "2", "train.py", "--lr", "-0.5", "--batch-size=8"]
    assert redact_argv(command) == command


# --- git ---------------------------------------------------------------------------------

def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                            cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "-b", "trunk")
    (path / "train.py").write_text("lr = 0.1\n")
    _git(path, "add", "train.py")
    _git(path, "commit", "-q", "-m", "first")
    return path


def test_git_state_of_a_clean_repo(repo):
    _git(repo, "remote", "add", "origin", "https://bob:hunter2@example.com/team/proj.git")
    state = git_state(repo)
    assert state == {
        "commit": _git(repo, "rev-parse", "HEAD").strip(),
        "branch": "trunk",
        "dirty": False,
        "untracked": 0,
        "remote": "https://example.com/team/proj.git",
    }
    assert git_diff(repo) == ""


def test_git_state_of_a_dirty_repo_with_its_diff(repo):
    (repo / "train.py").write_text("lr = 0.5\n")  # unstaged
    (repo / "model.py").write_text("depth = 18\n")
    _git(repo, "add", "model.py")  # staged
    (repo / "notes.txt").write_text("scratch\n")  # untracked
    (repo / "sub").mkdir()
    state = git_state(repo / "sub")
    assert state["dirty"] is True
    assert state["untracked"] == 1
    assert state["remote"] is None
    diff = git_diff(repo)
    assert "-lr = 0.1" in diff and "+lr = 0.5" in diff
    assert "+depth = 18" in diff
    assert "scratch" not in diff  # untracked files are not changes against HEAD


def test_git_state_with_only_untracked_files_is_not_dirty(repo):
    (repo / "out.log").write_text("x\n")
    state = git_state(repo)
    assert (state["dirty"], state["untracked"]) == (False, 1)


def test_git_state_of_a_repo_without_commits(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    state = git_state(tmp_path)
    assert (state["commit"], state["branch"], state["dirty"]) == (None, "main", True)
    assert "+x = 1" in git_diff(tmp_path)


def test_git_state_outside_a_repo_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state(tmp_path) is None
    assert git_diff(tmp_path) == ""


def test_git_state_without_git_is_none(repo, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin-here"))
    assert git_state(repo) is None
    assert git_diff(repo) == ""


def test_git_state_of_a_missing_directory_is_none(tmp_path):
    assert git_state(tmp_path / "gone") is None


# --- host, torch, packages ---------------------------------------------------------------

def test_host_environment_reads_this_machine():
    import psutil

    import ptdiag

    host = host_environment()
    assert host["python"] == ".".join(map(str, sys.version_info[:3]))
    assert host["python_executable"] == sys.executable
    assert host["cpu_logical_cores"] == os.cpu_count()
    assert host["memory_total_bytes"] == psutil.virtual_memory().total
    assert host["ptdiag"] == ptdiag.__version__
    assert {"python_implementation", "platform", "os", "machine", "hostname", "cpu_model",
            "cpu_physical_cores"} <= host.keys()


def test_torch_environment_on_cpu_reports_no_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this test describes a machine without a GPU")
    env = torch_environment()
    assert env["gpus"] == []
    assert env["cuda_available"] is False
    assert env["torch"] == torch.__version__
    assert env["cuda"] == torch.version.cuda  # the build's CUDA, None for a CPU-only build
    assert env["num_threads"] == torch.get_num_threads()


def test_torch_environment_reads_determinism_flags():
    torch = pytest.importorskip("torch")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch_environment()["determinism"]["deterministic_algorithms"] is True
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch_environment()["determinism"]["deterministic_algorithms"] is before


def test_importing_environment_does_not_import_torch():
    code = "import sys, ptdiag.environment; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)}, check=True)
    assert result.stdout.strip() == "False"


def test_installed_packages_lists_torch_with_its_version():
    packages = installed_packages()
    assert packages["torch"] == importlib.metadata.version("torch")
    assert packages["pytest"] == importlib.metadata.version("pytest")
