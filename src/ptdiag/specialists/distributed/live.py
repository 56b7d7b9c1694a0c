"""Each rank's last written live state (see `ptdiag.probe.plugins.distributed.live`):
per call site how often the rank called it, and the collective it was inside when it
stopped; comparing ranks' states names the rank that never reached a collective."""

from __future__ import annotations

import json
from pathlib import Path

from ptdiag.events import LIVE_STATE_DIR


def read_states(run_dir: Path) -> list[dict]:
    """Every probed process's last written state (a process may have several ranks' worth of
    files after a torchrun restart: all are returned, newest last)."""
    folder = run_dir / LIVE_STATE_DIR
    states = []
    for path in sorted(folder.glob("rank*.p*.json")) if folder.is_dir() else []:
        try:
            states.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(states, key=lambda s: s.get("t", 0))
