"""How many Python calls one training step makes, counted before the profiler records any.

The profiler with Python stacks keeps one event per Python call (functions and builtins
alike) and turns each into about 2 KB when it stops: a DataLoader transform that loops over
pixels in Python makes millions of calls per step, enough for tens of GB. So the step
before the profiler's window is counted with `sys.setprofile` (the training thread only),
and the count stops at `limit`, the calls the window can afford: a step of millions of
calls then costs at most `limit` counting callbacks. Where the program was when the
count reached the limit says where those calls come from (the DataLoader or not).
"""

from __future__ import annotations

import sys

from ptdiag.location import format_location, is_user_file

BYTES_PER_EVENT = 2100  # a Python call recorded with stacks, once the profiler stopped (measured: torch 2.14, CPU)
LOADER_FILE = "torch/utils/data/dataloader.py"


class PythonCalls:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.calls = 0
        self.where: str | None = None  # the program's line at the limit
        self.in_loader = False  # whether that moment was inside a DataLoader's __next__
        self.counting = False

    def start(self) -> bool:
        """False when the program profiles itself: its profile function stays, untouched."""
        if sys.getprofile() is not None:
            return False
        sys.setprofile(self._count)
        self.counting = True
        return True

    def stop(self) -> None:
        if self.counting and sys.getprofile() == self._count:
            sys.setprofile(None)
        self.counting = False

    @property
    def capped(self) -> bool:
        return self.calls >= self.limit

    def _count(self, frame, event, arg) -> None:
        if event == "call" or event == "c_call":
            self.calls += 1
            if self.calls >= self.limit:
                sys.setprofile(None)
                self.counting = False
                self.where, self.in_loader = _whereabouts(frame)


def _whereabouts(frame) -> tuple[str | None, bool]:
    """The innermost line of the program's own code on the stack, and whether a
    DataLoader's iteration is on it."""
    where, in_loader = None, False
    while frame is not None:
        filename = frame.f_code.co_filename
        if where is None and is_user_file(filename):
            where = format_location(filename, frame.f_lineno)
        if filename.replace("\\", "/").endswith(LOADER_FILE):
            in_loader = True
        frame = frame.f_back
    return where, in_loader
