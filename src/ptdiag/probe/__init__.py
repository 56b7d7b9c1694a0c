"""Code that runs inside the user's processes; `activate()` is called by the injected
sitecustomize. Nothing here may print, change the program's argv/cwd/sys.path, or raise
into the program."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch")
LAUNCHER_SCRIPTS = ("torchrun",)
# `python -c "from multiprocessing.resource_tracker import main; ..."`: multiprocessing's own
# helper process, started for spawn contexts; it never trains (not probed)
MULTIPROCESSING_HELPERS = ("from multiprocessing.resource_tracker import",)


def process_role() -> str:
    """'launcher' for torchrun's agent (passive: its workers are probed), 'spawned' for
    multiprocessing children (DataLoader workers under spawn, mp.spawn's training
    workers: probed once they start a process group), 'helper' for multiprocessing's
    resource tracker (not probed), else 'main'."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if any(m in argv for m in LAUNCHER_MODULES) or os.path.basename(sys.argv[0]) in LAUNCHER_SCRIPTS:
        return "launcher"
    if any("multiprocessing" in a and ("spawn_main" in a or "forkserver" in a) for a in argv) or "--multiprocessing-fork" in argv:
        return "spawned"
    if any(a.startswith(MULTIPROCESSING_HELPERS) for a in argv):
        return "helper"
    return "main"


_probe = None


def activate() -> None:
    if _probe is not None:
        return
    role = process_role()
    if role == "main":
        _start(int(os.environ.get("RANK", "0") or 0))
    elif role == "spawned":
        from ptdiag.probe.imports import when_imported
        from ptdiag.probe.patches import probe_ranks_that_start

        when_imported("torch.distributed", probe_ranks_that_start(_start_quietly))


def _start(rank: int, world_size: int | None = None):
    global _probe
    from ptdiag.probe.core import Probe

    plan = json.loads(os.environ.get("PTDIAG_PLAN", "{}"))
    _probe = Probe(Path(os.environ["PTDIAG_RUN_DIR"]), plan, rank, world_size)
    _probe.install()
    return _probe


def _start_quietly(rank: int, world_size: int | None = None):
    """Started from inside the program's init_process_group call: a failure to start is
    ptdiag's, and must not become the program's."""
    if _probe is not None:
        return None
    try:
        return _start(rank, world_size)
    except Exception:
        return None
