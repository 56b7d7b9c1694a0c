"""Progress while the training runs, read from the event files the probe writes.

The program owns the terminal (its output streams straight through), so progress is a
whole line now and then, never a redrawn status bar that could overwrite its output.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console

TTY_INTERVAL_S = 15.0


class ProgressWatcher:
    def __init__(self, run_dir: Path, console: Console, interval_s: float = TTY_INTERVAL_S) -> None:
        self.events_dir = run_dir / "events"
        self.console = console
        self.interval_s = interval_s
        self._offsets: dict[Path, int] = {}
        self.step = 0
        self.loss: float | None = None
        self._last_print = time.monotonic()

    def poll(self) -> None:
        for path in self.events_dir.glob("*.jsonl") if self.events_dir.is_dir() else []:
            with open(path, "rb") as fh:
                fh.seek(self._offsets.get(path, 0))
                data = fh.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = self._offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                self._take(line)

    def _take(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return
        if event.get("ev") == "step":
            self.step = max(self.step, event["step"])
        elif event.get("ev") == "loss":
            self.loss = float(event["value"])

    def tick(self, elapsed: float) -> None:
        if time.monotonic() - self._last_print < self.interval_s:
            return
        self._last_print = time.monotonic()
        self.poll()
        loss = "" if self.loss is None else f" · loss {self.loss:.4g}" if math.isfinite(self.loss) else f" · loss {self.loss}"
        rate = f" · {self.step / elapsed:.2f} steps/s" if elapsed > 0 and self.step else ""
        self.console.print(f"[dim]ptdiag ▸ {elapsed:.0f} s · step {self.step}{rate}{loss}[/]")
