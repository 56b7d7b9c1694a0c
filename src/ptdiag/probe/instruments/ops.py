"""Modes that hand the program's ops to a plugin's observer.

A dispatch mode sees every aten op; a function mode sees every torch function and Tensor
method called from Python. Either runs the program's call exactly as it would run
without ptdiag; the observer's work around it is ptdiag's, and a fault there detaches the
observer (the mode stays, inert, until its window closes).
"""

from __future__ import annotations

import contextlib
import sys

from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.overrides import _push_mode as _push_function_mode
from torch.utils._device import DeviceContext
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
from torch.utils._python_dispatch import _push_mode as _push_dispatch_mode

from ptdiag.probe import gpu


def mode_kind(functions: bool) -> str:
    return "function mode" if functions else "dispatch mode"


def stack(functions: bool) -> list:
    return _get_current_function_mode_stack() if functions else _get_current_dispatch_mode_stack()


def is_ptdiag_mode(mode) -> bool:
    return isinstance(mode, PtdiagMode)


def is_programs(mode) -> bool:
    """A mode the program pushed (or a library it uses). torch's default-device mode
    (`torch.device(...)` as a context, `set_default_device`) does not count: it keeps
    itself at the bottom of the stack whatever is above it, so it never pops ours."""
    return not is_ptdiag_mode(mode) and not isinstance(mode, DeviceContext)


def program_modes(functions: bool) -> list:
    return [m for m in stack(functions) if is_programs(m)]


def op_caller():
    """For an observer: the frame that made the call the mode is handling (the first frame
    past the mode's own)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename != __file__:  # the observer, up to the mode
        frame = frame.f_back
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame


class PtdiagMode:
    """Marks ptdiag's own modes on torch's stacks (op watches and the MemTracker)."""


def _call(window, func, args, kwargs):
    observer = window.observer
    if observer is None or gpu.capturing():  # a CUDA graph capture: ptdiag stays out of it (probe/gpu.py)
        return func(*args, **kwargs)
    try:
        before = observer.before(func, args, kwargs)
    except Exception as exc:
        window.faulted(exc)
        return func(*args, **kwargs)
    out = func(*args, **kwargs)  # the program's op: its errors are its own
    try:
        observer.after(func, args, kwargs, out, before)
    except Exception as exc:
        window.faulted(exc)
    return out


class _DispatchWatch(TorchDispatchMode, PtdiagMode):
    def __init__(self, window) -> None:
        super().__init__()
        self.window = window

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _call(self.window, func, args, kwargs or {})


class _FunctionWatch(TorchFunctionMode, PtdiagMode):
    def __init__(self, window) -> None:
        super().__init__()
        self.window = window

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return _call(self.window, func, args, kwargs or {})


class ModeWindow:
    """A mode of ptdiag's on one of torch's stacks, as the probe's instruments track it
    (`Instruments.pushed`) until it has left."""

    functions = False  # which stack: dispatch modes, or function modes
    hooks_torch = False  # True: leaving it removes global hooks (only between steps)

    def __init__(self, instruments, what: str, mode) -> None:
        self.instruments, self.what, self.mode = instruments, what, mode
        self.closed = False

    def _pushed(self):
        self.instruments.pushed.append(self)
        return self

    @property
    def kind(self) -> str:
        return mode_kind(self.functions)

    def on_top(self) -> bool:
        """Nothing above it on its stack (or it is gone from it)."""
        modes = stack(self.functions)
        return self.mode not in modes or modes[-1] is self.mode

    def under_program(self) -> bool:
        """A mode of the program's lies above it."""
        modes = stack(self.functions)
        return self.mode in modes and any(is_programs(m) for m in modes[modes.index(self.mode) + 1:])

    def release(self) -> None:
        """Leave the stack; it is on top. One that something took off the stack is put back
        first, so that leaving pops only it."""
        if self.mode not in stack(self.functions):
            (_push_function_mode if self.functions else _push_dispatch_mode)(self.mode)
        self.mode.__exit__(None, None, None)


class OpWindow(ModeWindow):
    """One observer's mode, from `open()` to `close()`: a pure stack operation to leave."""

    def __init__(self, instruments, what: str, observer, functions: bool) -> None:
        self.observer, self.functions = observer, functions
        super().__init__(instruments, what, (_FunctionWatch if functions else _DispatchWatch)(self))

    def open(self) -> "OpWindow":
        self.mode.__enter__()
        return self._pushed()

    def faulted(self, exc: BaseException) -> None:
        self.observer = None
        self.instruments.fault(self.what, exc)

    def close(self) -> None:
        """Stop watching now; the mode leaves torch's stack as soon as it is on top."""
        self.observer = None
        self.closed = True
        self.instruments.closed(self)


class _BlockWindow:
    """The window of a block of ptdiag's own code: a fault raises to the block's owner."""

    def __init__(self, observer) -> None:
        self.observer = observer

    def faulted(self, exc: BaseException) -> None:
        raise exc


@contextlib.contextmanager
def block(observer, functions: bool):
    with (_FunctionWatch if functions else _DispatchWatch)(_BlockWindow(observer)):
        yield observer

