"""Where in the user's code something happened: the first frame that is theirs."""

from __future__ import annotations

import os
import sys
import sysconfig

_NOT_USER = tuple(
    os.path.normcase(os.path.abspath(p)) + os.sep
    for p in {
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # ptdiag itself
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    }
)


PTDIAG_DIR = os.path.normcase(os.path.dirname(os.path.abspath(__file__))) + os.sep
# ptdiag's frames that only pass a call of the program's on (the probe's wrappers of torch
# functions, its op watches' modes running the program's op): below them the work is
# still the program's
PTDIAG_PASS_THROUGH = (os.path.join("probe", "patches.py"), os.path.join("probe", "instruments", "ops.py"))


def is_ptdiag_work(filename: str) -> bool:
    """A frame of ptdiag's own work (its plugins, instruments, hooks), not of a program's
    call that one of its wrappers passes on."""
    path = os.path.normcase(os.path.abspath(filename))
    return path.startswith(PTDIAG_DIR) and path[len(PTDIAG_DIR):] not in PTDIAG_PASS_THROUGH


# Frames of decorators that only pass a call through (torch._dynamo wraps
# torch.manual_seed after the probe patched it): the real caller is beyond them.
PASS_THROUGH = (
    os.path.join("torch", "_compile.py"),
    os.path.join("torch", "_dynamo", ""),
    os.sep + "functools.py",
    os.sep + "contextlib.py",
)


def caller_file(depth: int) -> str:
    """Filename of the frame `depth` levels up, looking through pass-through wrappers."""
    frame = sys._getframe(depth)
    while frame.f_back is not None and any(p in frame.f_code.co_filename for p in PASS_THROUGH):
        frame = frame.f_back
    return frame.f_code.co_filename


def is_user_file(filename: str) -> bool:
    if filename.startswith("<"):
        return False
    path = os.path.normcase(os.path.abspath(filename))
    return not path.startswith(_NOT_USER) and "site-packages" not in path


def format_location(filename: str, line: int) -> str:
    try:
        rel = os.path.relpath(filename)
        if not rel.startswith(".."):
            filename = rel
    except ValueError:
        pass
    return f"{filename}:{line}"


def user_location(depth: int = 1) -> str | None:
    """file:line of the innermost caller frame in user code, or None."""
    frame = sys._getframe(depth)
    while frame is not None:
        if is_user_file(frame.f_code.co_filename):
            return format_location(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


def user_location_of_traceback(tb) -> str | None:
    """file:line of the innermost user frame of a traceback (where the error surfaced)."""
    found = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if is_user_file(code.co_filename):
            found = format_location(code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return found
