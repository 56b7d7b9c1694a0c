"""torch's CUDA sync debug mode over a window: every host synchronisation torch makes is
handed to an observer, with the Python frame that made it.

`torch.cuda.set_sync_debug_mode("warn")` makes torch warn at each synchronising CUDA call
(c10's `warn_or_error_on_sync`: `.item()`, `.cpu()`, `.to("cpu")`, boolean-mask indexing,
`torch.where(cond)`, `torch.equal`, `nonzero`, `torch.cuda.synchronize`, ...), which a
table of Python call names can only approximate. The warnings are ptdiag's, not the
program's: an "always" filter entry (inserted in place: no registry is cleared, see
quiet_warnings) makes each one reach `warnings.showwarning`, whose probe wrapper
(patches.py) hands it here instead of showing it. A program that set a sync debug mode of
its own keeps it, and its warnings: the window is not opened.

The mode is process-wide (every thread): the window is short, and the observer decides
whose sync each one is by its frames.
"""

from __future__ import annotations

import os
from typing import Callable

from ptdiag.probe import quiet_warnings

SYNC_WARNING = "called a synchronizing CUDA operation"  # c10/cuda/CUDAFunctions.cpp, TORCH_WARN
_WARNINGS_FILES = (os.sep + "warnings.py",)


class SyncDebugWindow:
    hooks_torch = False
    kind = "CUDA sync debug mode"

    def __init__(self, instruments, what: str, torch, on_sync: Callable) -> None:
        self.instruments, self.what, self.torch, self._on_sync = instruments, what, torch, on_sync
        self._filter = None
        self.closed = False

    def open(self) -> "SyncDebugWindow | None":
        torch = self.torch
        if torch.cuda.get_sync_debug_mode() != 0:  # the program's own: left as it is
            return None
        self._filter = quiet_warnings.always(SYNC_WARNING, UserWarning)
        self.instruments.warning_takers.append(self)
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def take(self, message, frame) -> bool:
        """Whether a warning being shown is this window's (then it is not shown); `frame`
        is the caller of `showwarning`: the warnings module's frames are skipped."""
        if self.closed or not str(message).startswith(SYNC_WARNING):
            return False
        while frame is not None and frame.f_code.co_filename.endswith(_WARNINGS_FILES):
            frame = frame.f_back
        try:
            self._on_sync(frame)
        except Exception as exc:
            self.close()
            self.instruments.fault(self.what, exc)
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.torch.cuda.set_sync_debug_mode("default")
        finally:
            quiet_warnings.unignore(self._filter)
            if self in self.instruments.warning_takers:
                self.instruments.warning_takers.remove(self)
