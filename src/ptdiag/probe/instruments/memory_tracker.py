"""torch's MemTracker over a stretch of the program's own training, made harmless.

MemTracker runs its code inside the program's calls: a dispatch mode on every op, global
module hooks (through ModTracker) on every forward, gradient hooks on every parameter,
global optimizer hooks, a patched `UntypedStorage.resize_`. Any of these can raise where
the program never would: a model called again inside one tracked iteration (a generate
loop in the training loop) makes its forward pre-hook raise `NotImplementedError`. Each
entry point is guarded here: the first fault makes the tracker inert (hooks return at
once, ops run plainly), the program's call goes on, and the window reports the fault.
The tracker's hooks come off when the window closes, at a point between steps.

Warnings the tracker raises (and ModTracker's replacement of `warnings.formatwarning`)
are kept from the program's stderr.
"""

from __future__ import annotations

import warnings
from typing import Callable

from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed._tools.mod_tracker import ModTracker

from ptdiag.probe import quiet_warnings
from ptdiag.probe.instruments.ops import ModeWindow, PtdiagMode


def peak_by_kind(tracker) -> dict:
    """A MemTracker's peak as plain data: {device: {kind: bytes, ..., "Total": bytes}}."""
    return {str(device): {getattr(k, "value", str(k)): int(v) for k, v in kinds.items()}
            for device, kinds in tracker.get_tracker_snapshot("peak").items()}


def fake_execution_tracker() -> MemTracker:
    """A plain MemTracker for ptdiag's own fake execution (the fit estimate): used in a
    `with` block of ptdiag's code over fake copies of the model, so its errors are the
    caller's to handle, not the program's."""
    return MemTracker()


class _Guard:
    """The first exception of any guarded call turns the tracker inert and is reported;
    the calls that follow return at once."""

    def __init__(self, on_fault: Callable[[BaseException], None]) -> None:
        self.inert = False
        self._on_fault = on_fault

    def fail(self, exc: BaseException) -> None:
        if not self.inert:
            self.inert = True
            self._on_fault(exc)

    def call(self, fn, *args, **kwargs):
        if self.inert:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.fail(exc)
            return None

    def quiet(self, fn):
        """`fn` guarded, its warnings (and any change to how warnings print) kept from the
        program: for the module hooks, which run a few times per module, not per op."""

        def call(*args):
            if self.inert:
                return None
            formatwarning = warnings.formatwarning
            try:
                with quiet_warnings.ignored():  # catch_warnings would clear the program's warning registries
                    return self.call(fn, *args)
            finally:
                warnings.formatwarning = formatwarning

        return call


class _GuardedModTracker(ModTracker):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self._guard = guard

    def _fw_pre_hook(self, mod, input):
        return self._guard.quiet(super()._fw_pre_hook)(mod, input)

    def _fw_post_hook(self, mod, input, output):
        return self._guard.quiet(super()._fw_post_hook)(mod, input, output)

    def _get_append_fn(self, w_mod, name, is_bw):
        return self._guard.quiet(super()._get_append_fn(w_mod, name, is_bw))

    def _get_pop_fn(self, w_mod, name, is_bw):
        return self._guard.quiet(super()._get_pop_fn(w_mod, name, is_bw))


class _OpCall:
    """The program's op, run by MemTracker's dispatch: whether it ran, and what it gave."""

    __slots__ = ("func", "ran", "result", "raised")

    def __init__(self, func) -> None:
        self.func, self.ran, self.result, self.raised = func, False, None, False

    def __call__(self, *args, **kwargs):
        try:
            self.result = self.func(*args, **kwargs)
        except BaseException:
            self.raised = True
            raise
        self.ran = True
        return self.result


class _GuardedMemTracker(MemTracker, PtdiagMode):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self._guard = guard
        self._mod_tracker = _GuardedModTracker(guard)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._guard.inert:
            return func(*args, **(kwargs or {}))
        call = _OpCall(func)
        try:
            return super().__torch_dispatch__(call, types, args, kwargs)
        except Exception as exc:
            if call.raised:
                raise  # the program's op failed: its error, as without ptdiag
            self._guard.fail(exc)
            return call.result if call.ran else func(*args, **(kwargs or {}))

    # tracking entered from gradient hooks, optimizer hooks, resize_ and storage finalizers
    def _update_and_maybe_create_winfos(self, *args, **kwargs):
        return self._guard.call(super()._update_and_maybe_create_winfos, *args, **kwargs)

    def _track_optimizer_states(self, *args, **kwargs) -> None:
        self._guard.call(super()._track_optimizer_states, *args, **kwargs)

    def _update_snap(self, *args, **kwargs) -> None:
        self._guard.call(super()._update_snap, *args, **kwargs)


class MemoryWindow(ModeWindow):
    """MemTracker over the program's model and optimizer, from `open()` to `close()`."""

    hooks_torch = True  # global module and optimizer hooks: it leaves between steps only

    def __init__(self, instruments, what: str, model, optimizer) -> None:
        self._guard = _Guard(self._faulted)
        super().__init__(instruments, what, _GuardedMemTracker(self._guard))
        self.mode.track_external(model, optimizer)

    def open(self) -> "MemoryWindow":
        self.mode.__enter__()
        return self._pushed()

    def _faulted(self, exc: BaseException) -> None:
        self.instruments.fault(self.what, exc)

    def close(self) -> dict | None:
        """The peak by device and kind, or None when the tracker faulted (its numbers then
        cover only part of the stretch). Call it between steps: the tracker goes inert at
        once and leaves torch's stack now, or as soon as it is on top."""
        if self.closed:
            return None
        peak = None if self._guard.inert else peak_by_kind(self.mode)
        self._guard.inert = True
        self.closed = True
        self.instruments.closed(self, between_steps=True)
        return peak

    def release(self) -> None:
        with quiet_warnings.ignored():
            super().release()
