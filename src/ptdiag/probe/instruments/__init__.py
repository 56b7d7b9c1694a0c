"""The probe's instruments inside torch, owned in one place: dispatch and function modes
that watch ops, saved-tensor hooks, MemTracker, the CUDA allocator's history, the profiler.

Plugins never push a mode or start a tracker themselves; they ask `probe.instruments`,
which keeps three promises:
- It never pushes a mode over one of the program's (the program could leave its own
  first and pop ours instead), and never pops a mode the program pushed over ours: then
  ours stops watching, stays inert until it is on top again, and `probe.switch_off`
  says so.
- An exception ptdiag's instrument raises inside a program's call is caught there: the
  instrument is removed (or left inert until it can be removed at a safe point), the
  program's call goes on as it would without ptdiag, and `probe.switch_off(what, why)`
  records it. The program's own errors pass through unchanged.
- An instrument switched off stays off for the run.

Importing this package imports no torch; each kind of instrument imports it when first
used, which is after the program imported torch.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

WHY_CHARS = 300  # the exception's text kept in the switched_off event


class OpObserver:
    """What a plugin watches ops with. `before` runs ahead of each op (its result is handed
    to `after`); `after` runs once the op returned. Either may raise: the observer is then
    detached and the op's result still goes to the program."""

    def before(self, func, args, kwargs) -> Any:
        return None

    def after(self, func, args, kwargs, out, before) -> None:
        pass


def ops_in_block(observer: OpObserver, functions: bool = False):
    """A context manager: `observer` sees the ops of a block of ptdiag's own code (the
    replay of a step, entered and left inside one plugin call). Its faults raise to that
    code, which owns the block and must not claim what it did not see."""
    from ptdiag.probe.instruments import ops

    return ops.block(observer, functions)


class Instruments:
    def __init__(self, switch_off: Callable[[str, str], None], log_error: Callable[[str], None]) -> None:
        self._switch_off = switch_off
        self._log_error = log_error
        self.off: set[str] = set()  # instruments switched off for the run
        self.pushed: list = []  # ptdiag's windows on torch's mode stacks, oldest first
        self.warning_takers: list = []  # open windows whose warnings are ptdiag's own (sync_debug.py)

    # -- faults ------------------------------------------------------------------------------
    def fault(self, what: str, exc: BaseException | None, why: str | None = None) -> None:
        """ptdiag's instrument `what` failed (or must stop): off for the run, and said."""
        if exc is not None:
            self._log_error(f"{what} raised:\n{''.join(traceback.format_exception(exc))}")
            why = why or f"{type(exc).__name__}: {exc}"[:WHY_CHARS]
        self.off.add(what)
        self._switch_off(what, why or "faulted")

    def available(self, what: str) -> bool:
        return what not in self.off

    # -- op watches ----------------------------------------------------------------------------
    def watch_ops(self, what: str, observer: OpObserver, functions: bool = False):
        """Push a mode that hands every op (dispatch level) or every torch call from Python
        (`functions=True`) to `observer`, until the returned window's `close()`. None when
        `what` is off, or the program has a mode of its own on that stack (then `what` is
        switched off: the program could leave its mode while ours lies above it, and pop
        ours instead)."""
        from ptdiag.probe.instruments import ops

        self.tidy()
        if not self._may_push(what, functions):
            return None
        return ops.OpWindow(self, what, observer, functions).open()

    def _may_push(self, what: str, functions: bool) -> bool:
        from ptdiag.probe.instruments import ops

        if not self.available(what):
            return False
        if ops.program_modes(functions):
            self.fault(what, None, f"the program has its own {ops.mode_kind(functions)} active; "
                                   "ptdiag does not push one over it")
            return False
        return True

    # -- leaving modes -------------------------------------------------------------------------
    def closed(self, window, between_steps: bool = False) -> None:
        """A plugin is done with `window`: its mode leaves the stack now if on top, else as
        soon as it is. A mode of the program's above it is never popped: said once."""
        if window.under_program():
            self.fault(window.what, None, f"the program pushed its own {window.kind} over ptdiag's, "
                                          "which is left there (inert) until the program's is gone")
        self.tidy(between_steps)

    def tidy(self, between_steps: bool = False) -> None:
        """Leave every closed window that is on top of its stack, topmost first. A window
        that hooks torch (MemTracker: global module and optimizer hooks) leaves only
        `between_steps`, never from inside an optimizer step, whose loop over the global
        optimizer hooks must not see them change."""
        progress = True
        while progress:
            progress = False
            for window in reversed(self.pushed):
                if window.closed and (between_steps or not window.hooks_torch) and window.on_top():
                    window.release()
                    self.pushed.remove(window)
                    progress = True
                    break

    def close_all(self) -> None:
        """At exit: every window still open is closed and left where it can be."""
        for window in list(self.pushed):
            if not window.closed:
                window.close()
        self.tidy(between_steps=True)

    # -- saved-tensor hooks ----------------------------------------------------------------------
    def saved_tensors(self, what: str, pack: Callable):
        """Hand every tensor the program's autograd saves for backward to `pack` from now
        until the window's `close()` (one forward). None when `what` is off, or the program
        disabled saved-tensor hooks."""
        from ptdiag.probe.instruments.saved_tensors import SavedTensorsWindow

        self.tidy()
        if not self.available(what):
            return None
        return SavedTensorsWindow(self, what, pack).open()

    # -- MemTracker ----------------------------------------------------------------------------
    def track_memory(self, what: str, model, optimizer):
        """torch's MemTracker over the program's model and optimizer from now until the
        window's `close()`, which must come between steps (see `tidy`)."""
        from ptdiag.probe.instruments.memory_tracker import MemoryWindow

        self.tidy(between_steps=True)
        if not self._may_push(what, functions=False):
            return None
        try:
            return MemoryWindow(self, what, model, optimizer).open()
        except Exception as exc:
            self.fault(what, exc)
            return None

    # -- CUDA allocator history ----------------------------------------------------------------
    def record_allocator_history(self, what: str, torch, max_entries: int, on_oom: Callable):
        """Record every CUDA alloc/free with its Python stack and call `on_oom` before each
        out-of-memory error; the returned history dumps snapshots. None when not on CUDA
        or it could not start."""
        from ptdiag.probe.instruments.allocator import AllocatorHistory

        if not self.available(what):
            return None
        history = AllocatorHistory(self, what, torch)
        return history if history.start(max_entries, on_oom) else None

    # -- CUDA sync debug mode --------------------------------------------------------------------
    def sync_debug(self, what: str, torch, on_sync: Callable):
        """torch's CUDA sync debug mode, each synchronisation handed to `on_sync(frame)`
        instead of warned about, until the returned window's `close()`. None when `what`
        is off, CUDA is unused, or the program set a sync debug mode of its own."""
        from ptdiag.probe.instruments.sync_debug import SyncDebugWindow

        if not (self.available(what) and torch.cuda.is_initialized()):
            return None
        try:
            return SyncDebugWindow(self, what, torch, on_sync).open()
        except Exception as exc:
            self.fault(what, exc)
            return None

    def take_warning(self, message, frame) -> bool:
        """Whether a warning about to be shown (`frame`: the caller of `showwarning`) is one
        an instrument of ptdiag's asked torch for: then it is the instrument's, not the
        program's, and is not shown."""
        return any(taker.take(message, frame) for taker in list(self.warning_takers))

    # -- the profiler --------------------------------------------------------------------------
    def profile(self, what: str, kineto_log, **options):
        """torch.profiler.profile(**options), started now; the window's `step()` and `close()`
        are guarded, and Kineto's own lines go to `kineto_log`, not the program's stderr."""
        from ptdiag.probe.instruments.profiler import ProfilerWindow

        if not self.available(what):
            return None
        window = ProfilerWindow(self, what, kineto_log)
        return window if window.start(options) else None
