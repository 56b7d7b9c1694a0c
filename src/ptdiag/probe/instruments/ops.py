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


def kind(functions: bool) -> str:
    return "function" if functions else "dispatch"


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
    if observer is None:
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


class OpWindow:
    """One observer's mode on torch's stack, from `open()` to `close()`."""

    hooks_torch = False  # leaving it is a pure stack operation, safe anywhere

    def __init__(self, instruments, what: str, observer, functions: bool) -> None:
        self.instruments, self.what, self.observer, self.functions = instruments, what, observer, functions
        self.mode = (_FunctionWatch if functions else _DispatchWatch)(self)
        self.closed = False

    def open(self) -> "OpWindow":
        self.mode.__enter__()
        self.instruments.pushed.append(self)
        return self

    def faulted(self, exc: BaseException) -> None:
        self.observer = None
        self.instruments.fault(self.what, exc)

    def close(self) -> None:
        """Stop watching now; the mode leaves torch's stack as soon as it is on top."""
        self.observer = None
        self.closed = True
        self.instruments.closed(self)

    def release(self) -> None:
        release(self.mode, self.functions)


def above(mode, functions: bool) -> list:
    """The modes above `mode` on its stack (empty when it is on top, or gone)."""
    modes = stack(functions)
    return modes[modes.index(mode) + 1:] if mode in modes else []


def release(mode, functions: bool) -> None:
    """Leave a mode of ptdiag's that is on top of its stack. One that something took off
    the stack is put back first, so that leaving pops only it."""
    if mode not in stack(functions):
        (_push_function_mode if functions else _push_dispatch_mode)(mode)
    mode.__exit__(None, None, None)


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

