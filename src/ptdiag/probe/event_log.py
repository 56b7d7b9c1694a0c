"""Crash-safe event log of one process: one JSON object per line.

Until the first optimizer step every line goes to the OS as it is written (a run that
hangs or dies at start-up keeps what it did); from then on the probe flushes once per
step, so a SIGKILL or segfault loses at most the current step's events, and a step
costs one write(2) instead of one per event. A forked child (a DataLoader worker)
inherits the open file; only the process that opened it writes.

Kinds and fields are not checked here, on the hot path: tests/test_events.py checks every
write site in the probe against the declarations in ptdiag.events.EVENTS.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ptdiag.events import jsonable


class EventWriter:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._pid = os.getpid()
        self._fh = open(path, "a", encoding="utf-8")
        self.flush_each = True
        self.unflushed = False  # lines written since the last flush (a step the recorder skips has none)

    def write(self, event: str, /, **fields: Any) -> None:
        if os.getpid() != self._pid or self._fh.closed:
            return
        record = {"ev": event, "t": time.time(), **fields}
        try:  # the common case (plain, finite values) at the speed of json.dumps alone
            line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            line = json.dumps(jsonable(record), separators=(",", ":"))
        self._fh.write(line + "\n")
        if self.flush_each:
            self._fh.flush()
        else:
            self.unflushed = True

    def flush(self) -> None:
        if os.getpid() == self._pid and not self._fh.closed:
            self._fh.flush()
            self.unflushed = False

    def close(self) -> None:
        if os.getpid() == self._pid:
            self._fh.close()
