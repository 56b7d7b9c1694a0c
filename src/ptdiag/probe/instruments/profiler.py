"""torch.profiler over a window of the program's steps, started, stepped and stopped by
the probe.

The profiler's calls run inside the program's optimizer step (the plugins' step hook),
and its `on_trace_ready` callback (ptdiag's export) runs inside them: any of them that
raises switches the profiler off, after one attempt to stop it, and the step goes on.
Kineto prints start/stop lines (and, without a GPU, an error) on file descriptor 2: the
program's stderr stays its own, so they go to a log in the run dir for the moment of
each profiler call.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


@contextlib.contextmanager
def stderr_to(path: Path):
    """File descriptor 2 points at `path` for the block."""
    try:
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        saved = os.dup(2)
    except OSError:
        yield
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(log, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)


class ProfilerWindow:
    def __init__(self, instruments, what: str, kineto_log: Path) -> None:
        self.instruments, self.what, self.kineto_log = instruments, what, kineto_log
        self.profiler = None

    def _guarded(self, action) -> bool:
        try:
            with stderr_to(self.kineto_log):
                action()
            return True
        except Exception as exc:
            self.instruments.fault(self.what, exc)
            return False

    def start(self, options: dict) -> bool:
        from torch.profiler import profile

        def start() -> None:
            self.profiler = profile(**options)
            self.profiler.start()

        try:
            if self._guarded(start):
                return True
        except BaseException:  # a Ctrl-C in torch's start, which takes 1-2 s (more when loaded)
            self.close()  # it may be recording already: left so, it would trace the program's whole exit
            raise
        self.close()
        return False

    def step(self) -> None:
        if self.profiler is not None and not self._guarded(self.profiler.step):
            self.close()

    def close(self) -> None:
        """Stop it (its `on_trace_ready` runs now if the schedule's window had not ended)."""
        profiler, self.profiler = self.profiler, None
        if profiler is not None:
            self._guarded(profiler.stop)

    @property
    def open(self) -> bool:
        return self.profiler is not None
