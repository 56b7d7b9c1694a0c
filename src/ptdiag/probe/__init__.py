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


def process_role() -> str:
    """'launcher' for torchrun's agent (passive: its workers are probed), 'spawned' for
    multiprocessing children (DataLoader workers under spawn), else 'main'."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if any(m in argv for m in LAUNCHER_MODULES) or os.path.basename(sys.argv[0]) in LAUNCHER_SCRIPTS:
        return "launcher"
    if any("multiprocessing" in a and ("spawn_main" in a or "forkserver" in a) for a in argv) or "--multiprocessing-fork" in argv:
        return "spawned"
    return "main"


_probe = None


def activate() -> None:
    global _probe
    if _probe is not None or process_role() != "main":
        return
    from ptdiag.probe.core import Probe

    plan = json.loads(os.environ.get("PTDIAG_PLAN", "{}"))
    rank = int(os.environ.get("RANK", "0") or 0)
    _probe = Probe(Path(os.environ["PTDIAG_RUN_DIR"]), plan, rank)
    _probe.install()
