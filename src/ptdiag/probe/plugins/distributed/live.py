"""What a rank is doing right now, kept where a hang or a kill cannot erase it.

A rank stuck in a collective writes nothing: the evidence of where it waits must already
be on disk. The hot path only stores a few attributes per collective (no I/O); a daemon
watchdog thread writes the state file `<run_dir>/distributed/rank{R}.p{pid}.json` once
a second when it changed, and once more at an exception or exit. The file holds, per
call site (collective, file:line), how often this rank called it, and the collective it
is inside now and since when: comparing ranks' files names the rank that never reached
a collective the others wait in.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ptdiag.events import LIVE_STATE_DIR

WATCH_INTERVAL_S = 1.0


class LiveState:
    def __init__(self, run_dir: Path, rank: int) -> None:
        self.path = run_dir / LIVE_STATE_DIR / f"rank{rank}.p{os.getpid()}.json"
        self.rank = rank
        self._pid = os.getpid()
        self.step = 0
        self.sites: dict[tuple[str, str | None], list] = {}  # (name, location) -> [calls, first step, last step]
        self.calls = 0
        self.in_flight: tuple | None = None  # (name, location, call number, since, step)
        self.last: tuple | None = None  # the last collective that returned: (name, location, call number)
        self._written_version = None
        self._thread: threading.Thread | None = None

    # -- hot path: attribute stores only -------------------------------------------------------
    def enter(self, name: str, location: str | None) -> None:
        self.calls += 1
        site = self.sites.get((name, location))
        if site is None:
            self.sites[(name, location)] = [1, self.step, self.step]
        else:
            site[0] += 1
            site[2] = self.step
        self.in_flight = (name, location, self.calls, time.time(), self.step)

    def leave(self) -> None:
        if self.in_flight is not None:
            self.last = self.in_flight[:3]
        self.in_flight = None

    # -- writing -------------------------------------------------------------------------------
    def start_watchdog(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="ptdiag-distributed-watchdog", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            try:
                self.flush()
            except Exception:
                pass  # a full disk must not end the training; the next tick tries again

    def flush(self, final: bool = False) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker
            return
        in_flight = self.in_flight
        version = (self.calls, self.step, in_flight, final)
        if version == self._written_version:
            return
        sites = list(self.sites.items())  # one C-level copy: safe against the main thread
        state = {
            "rank": self.rank, "pid": self._pid, "t": time.time(), "step": self.step, "final": final,
            "calls": self.calls,
            "sites": [{"name": name, "location": loc, "calls": c, "first_step": first, "last_step": last}
                      for (name, loc), (c, first, last) in sites],
            "in_flight": None if in_flight is None else dict(zip(("name", "location", "call", "since", "step"), in_flight)),
            "last": None if self.last is None else dict(zip(("name", "location", "call"), self.last)),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)
        self._written_version = version
