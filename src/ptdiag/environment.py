"""What the run ran on: host, torch, installed packages, git state, redacted env and argv.

A run record is only worth keeping if it says what produced the result, and only safe to
keep (or share) if it holds no secrets. Every value here is read from the machine; a
piece that cannot be read is None, never a guess.

torch is imported only inside `torch_environment`: the CLI imports this module, and
`import torch` alone costs over a second (importlib.metadata, ~40 ms, is deferred too).
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

import ptdiag

# Parts of a variable or option name that mark its value as a secret (case-insensitive).
SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
REDACTED = "<redacted>"

# scheme://userinfo@ : the userinfo of a URL, where credentials hide.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# Schemes whose bare user name is usually a token (https://<token>@github.com/...).
_TOKEN_AS_USER_SCHEMES = ("http://", "https://")

# /proc/cpuinfo fields that name the CPU model, by architecture (x86, ARM, others).
_CPUINFO_MODEL_FIELDS = ("model name", "Hardware", "Processor", "cpu model", "cpu")

GIT_TIMEOUT_S = 5.0
# Read-only git commands must not take the index lock from under the user's own git.
_GIT_ENV = {"GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}


def host_environment() -> dict[str, Any]:
    """The interpreter and machine the command runs on (no torch: cheap)."""
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "os": platform.system(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_logical_cores": psutil.cpu_count(logical=True),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "memory_total_bytes": psutil.virtual_memory().total,
        "ptdiag": ptdiag.__version__,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            fields = dict(
                (name.strip(), value.strip())
                for name, sep, value in (line.partition(":") for line in cpuinfo)
                if sep
            )
    except OSError:
        fields = {}
    for name in _CPUINFO_MODEL_FIELDS:
        if fields.get(name):
            return fields[name]
    return platform.processor() or None


def torch_environment() -> dict[str, Any]:
    """torch's build, devices and the settings that change numerics, for the CLI's own
    process (`ptdiag env`): there, asking CUDA is harmless."""
    import torch

    return {**torch_build(torch), "cuda_available": torch.cuda.is_available(), "gpus": nvml_gpus() or [],
            **(cuda_facts(torch) if torch.cuda.is_available() else {})}


def torch_build(torch: Any) -> dict[str, Any]:
    """What torch says without touching CUDA (thread count included: 1 and 2 threads give
    different results on CPU). Read in the program's process at `import torch`, where
    asking CUDA would initialise it before the program does (probe/gpu.py); cuDNN's
    version is not here: `cudnn.version()` asks `torch.cuda.is_available()`
    (torch/backends/cudnn/__init__.py `_init`)."""
    cudnn = torch.backends.cudnn
    return {
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "num_threads": torch.get_num_threads(),
        "determinism": {
            "cudnn_benchmark": cudnn.benchmark,
            "cudnn_deterministic": cudnn.deterministic,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        },
    }


def cuda_facts(torch: Any) -> dict[str, Any]:
    """The CUDA devices the process sees, once CUDA is initialised (the program's
    CUDA_VISIBLE_DEVICES applied), with cuDNN's version and the driver NVML reports."""
    cudnn = torch.backends.cudnn
    driver = next((gpu["driver"] for gpu in nvml_gpus() or []), None)
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gpus.append({
            "index": index,
            "name": properties.name,
            "total_memory_bytes": int(properties.total_memory),
            "capability": f"{properties.major}.{properties.minor}",
            "uuid": str(getattr(properties, "uuid", "")) or None,
            "driver": driver,  # torch does not expose it; NVML (nvidia-ml-py) does
        })
    return {"cuda_available": True, "cudnn": _call_or_none(cudnn.version) if cudnn.is_available() else None,
            "gpus": gpus}


def _call_or_none(function: Any) -> Any:
    try:
        return function()
    except Exception:  # a broken CUDA install must not stop the run being recorded
        return None


def nvml_gpus() -> list[dict[str, Any]] | None:
    """Every GPU of the machine as NVML sees it (names, memory, driver), whatever
    CUDA_VISIBLE_DEVICES says; None when NVML (nvidia-ml-py) is unusable. NVML creates no
    CUDA context."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append({
                "index": index,
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "total_memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                "capability": f"{major}.{minor}",
                "driver": driver,
            })
        return gpus
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    """Older nvidia-ml-py releases return bytes."""
    return value.decode() if isinstance(value, bytes) else value


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version, as `pip freeze` would list them.

    When a name is installed twice on sys.path, the first one is what imports: keep it.
    """
    import importlib.metadata  # ~40 ms: only runs that record packages pay for it

    packages: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            packages.setdefault(name, distribution.version)
    return dict(sorted(packages.items(), key=lambda item: item[0].lower()))


def git_state(cwd: Path) -> dict[str, Any] | None:
    """Commit, branch, dirtiness and remote of the work tree holding `cwd`.

    None when cwd is not in a git work tree or git cannot be run: git trouble must never
    stop a diagnosis.
    """
    if _git(cwd, "rev-parse", "--is-inside-work-tree") != "true\n":
        return None
    status = _git(cwd, "status", "--porcelain=v1") or ""
    entries = status.splitlines()
    untracked = sum(entry.startswith("??") for entry in entries)
    return {
        "commit": _strip_or_none(_git(cwd, "rev-parse", "--verify", "-q", "HEAD")),
        "branch": _strip_or_none(_git(cwd, "symbolic-ref", "--short", "-q", "HEAD")),
        "dirty": len(entries) > untracked,
        "untracked": untracked,
        "remote": _remote_url(cwd),
    }


def git_diff(cwd: Path) -> str:
    """Staged and unstaged changes against HEAD as a patch ("" if clean or not a repo).

    In a repository without commits yet, the changes are taken against the empty tree.
    """
    base = _strip_or_none(_git(cwd, "rev-parse", "--verify", "-q", "HEAD"))
    if base is None:
        base = _strip_or_none(_git(cwd, "hash-object", "-t", "tree", "--stdin", stdin=""))
        if base is None:
            return ""
    return _git(cwd, "diff", "--no-color", "--no-ext-diff", base) or ""


def _remote_url(cwd: Path) -> str | None:
    remotes = (_git(cwd, "remote") or "").split()
    if not remotes:
        return None
    name = "origin" if "origin" in remotes else remotes[0]
    url = _strip_or_none(_git(cwd, "remote", "get-url", name))
    return None if url is None else _replace_url_credentials(url, "")


def _git(cwd: Path, *args: str, stdin: str | None = None) -> str | None:
    """stdout of a git command, or None when it fails, times out or git is missing."""
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, input=stdin, capture_output=True, timeout=GIT_TIMEOUT_S,
            env={**os.environ, **_GIT_ENV}, stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.decode("utf-8", errors="replace")


def _strip_or_none(text: str | None) -> str | None:
    return (text or "").strip() or None


def is_secret_name(name: str) -> bool:
    """Whether a variable or option name marks its value as a secret."""
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def _replace_url_credentials(text: str, replacement: str) -> str:
    """Replace the credentials of every URL in text: user:password always, and a bare user
    on http(s), where it is usually a token. ssh://git@host keeps its (public) user."""

    def replace(match: re.Match[str]) -> str:
        scheme, userinfo = match["scheme"], match["userinfo"]
        if ":" in userinfo or scheme.lower() in _TOKEN_AS_USER_SCHEMES:
            return scheme + (replacement + "@" if replacement else "")
        return match[0]

    return _URL_USERINFO.sub(replace, text)


def redact_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of environ safe to store: secret-named values and URL credentials redacted."""
    return {
        name: REDACTED if is_secret_name(name) else _replace_url_credentials(value, REDACTED)
        for name, value in environ.items()
    }


def redact_argv(argv: list[str]) -> list[str]:
    """A copy of argv safe to store: the values of secret-named options redacted.

    Handles `--opt=value` and `--opt value`; in the second form the next argument is the
    value unless it is itself an option. URL credentials anywhere are redacted too.
    """
    redacted: list[str] = []
    value_is_secret = False
    for argument in argv:
        is_option = argument.startswith("-") and len(argument) > 1
        if value_is_secret and not is_option:
            redacted.append(REDACTED)
            value_is_secret = False
            continue
        value_is_secret = False
        if is_option:
            name, equals, _ = argument.partition("=")
            if is_secret_name(name.lstrip("-")):
                if equals:
                    redacted.append(f"{name}={REDACTED}")
                    continue
                value_is_secret = True
        redacted.append(_replace_url_credentials(argument, REDACTED))
    return redacted
