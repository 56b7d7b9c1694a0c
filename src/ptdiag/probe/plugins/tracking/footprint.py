"""Cheap facts the recorder takes once per run, inside the user's process: what the
model was fed (data identity), how much memory the process peaked at, and which packages
it imported from. Each is taken where it costs no training step anything: the data on
one forward pass, the rest at exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

PACKAGES_NAME = "packages.json"
# ru_maxrss is in KiB on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
_MAX_INPUTS = 8  # a model fed more tensors than this is described by its first ones


def input_fingerprint(args, kwargs) -> dict:
    """Per-sample shape and dtype of the tensors a forward pass got (the leading batch
    dimension dropped), and a short hash of them: two runs fed the same kind of data
    share the fingerprint whatever their batch size."""
    tensors = [t for t in _tensors(args) + _tensors(list(kwargs.values())) if t.dim() > 0]
    inputs = [{"shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch.")}
              for t in tensors[:_MAX_INPUTS]]
    digest = hashlib.sha1(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return {"inputs": inputs, "batch": int(tensors[0].shape[0]) if tensors else None,
            "fingerprint": digest}


def _tensors(values) -> list:
    import torch

    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
        elif isinstance(value, dict):
            found.extend(v for v in value.values() if isinstance(v, torch.Tensor))
    return found


def at_exit() -> dict:
    """The process's peak resident memory, on CUDA what torch's allocator peaked at on
    each device it used (no new CUDA context is created to ask), and the torch thread
    count the program ended with (scripts set it after import, when `env` was taken)."""
    found = {"max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT}
    torch = sys.modules.get("torch")
    if torch is not None:
        found["num_threads"] = torch.get_num_threads()
    if torch is not None and torch.cuda.is_initialized():
        found["cuda"] = {
            str(index): {"max_allocated_bytes": torch.cuda.max_memory_allocated(index),
                         "max_reserved_bytes": torch.cuda.max_memory_reserved(index)}
            for index in range(torch.cuda.device_count())
            if torch.cuda.max_memory_reserved(index)}
    return found


def write_packages(run_dir: Path) -> None:
    """packages.json: every installed distribution as the user's interpreter sees it
    (~0.1-0.3 s of importlib.metadata, so at exit, once per run)."""
    from ptdiag.environment import installed_packages

    path = run_dir / PACKAGES_NAME
    if path.exists():
        return
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{PACKAGES_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(installed_packages(), fh, indent=0)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
