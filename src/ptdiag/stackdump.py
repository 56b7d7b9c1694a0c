"""Python stacks read back: faulthandler dumps (ptdiag's --timeout, a segfault) and
tracebacks, as frames per thread, the training thread first."""

from __future__ import annotations

import os
import re

from ptdiag.location import is_user_file

FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+),? in (?P<func>\S+)')
THREAD = re.compile(r"^(Current thread|Thread) 0x[0-9a-f]+")


def threads(text: str) -> list[list[tuple[str, int, str]]]:
    """Frames (file, line, function) per thread, innermost first."""
    found: list[list[tuple[str, int, str]]] = [[]]
    innermost_first = "most recent call first" in text
    for line in text.splitlines():
        if THREAD.match(line) and found[-1]:
            found.append([])
        m = FRAME.match(line)
        if m:
            found[-1].append((m["file"], int(m["line"]), m["func"]))
    return [t if innermost_first else t[::-1] for t in found if t]


def threads_training_first(text: str) -> list[list[tuple[str, int, str]]]:
    """The training thread is the one the user's script started (its outermost frame is
    theirs), not a helper thread started through threading's bootstrap."""
    return sorted(threads(text), key=lambda frames: not is_user_file(frames[-1][0]))


def location(filename: str, line: int, cwd: str | None) -> str:
    """file:line as the probe writes it: relative to the program's working directory."""
    if cwd and os.path.isabs(filename) and filename.startswith(cwd.rstrip(os.sep) + os.sep):
        filename = os.path.relpath(filename, cwd)
    return f"{filename}:{line}"


def user_frame(text: str, cwd: str | None = None) -> tuple[str, str] | None:
    """(file:line, function) of the innermost user frame of the training thread."""
    for frames in threads_training_first(text):
        for filename, line, func in frames:
            if is_user_file(filename):
                return location(filename, line, cwd), func
    return None
