"""Where an op ran: the user's line, and the library line when the op ran in library code.

Ops inside torchvision's ResNet have no user frame below the model call; then the
user's line is the one that called the model (captured once per step), and the library
line is kept beside it so the report can still say which line of resnet.py it was.
"""

from __future__ import annotations

import os
import re
import sys

from ptdiag.location import format_location, is_user_file

_TORCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__import__("torch").__file__))) + os.sep
_PTDIAG_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep
_FRAME_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


def _is_torch_or_ptdiag(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PTDIAG_DIR) or path.startswith(os.path.join(_TORCH_DIR, "torch") + os.sep)


def frames_until(stop_code) -> list[tuple[str, int]]:
    """(file, line) of the calling frames, innermost first, up to the frame running `stop_code`."""
    found = []
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not stop_code:
        found.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    return found


def user_and_library(frames: list[tuple[str, int]]) -> tuple[str | None, str | None]:
    """The innermost user frame and the innermost frame outside torch and ptdiag."""
    user = next((format_location(f, n) for f, n in frames if is_user_file(f)), None)
    library = next((format_location(f, n) for f, n in frames
                    if not f.startswith("<") and not _is_torch_or_ptdiag(f)), None)
    return user, library


def traceback_frames(lines: list[str]) -> list[tuple[str, int]]:
    """Frames of a formatted stack (anomaly mode's forward traceback), innermost first."""
    found = []
    for text in lines:
        match = _FRAME_LINE.search(text)
        if match:
            found.append((match["file"], int(match["line"])))
    return found[::-1]
