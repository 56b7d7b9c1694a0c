"""Which frame of an allocation's stack is the user's line, and which training phase it ran in.

A snapshot's stacks run from the allocator up through torch, the Python standard library
and the user's script. The useful answer to "who allocated this" is the innermost frame
in the user's own code: that is the line they can change. A phase (forward, backward,
optimizer step) shows in the torch frames the call passed through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from ptdiag.specialists.memory.snapshot_format import Frame

# A frame in one of these places is library code, never the user's line. Paths use "/"
# after normalisation; "<...>" names are generated code (<frozen runpy>, FX's
# <eval_with_key>, <string>).
LIBRARY_PATH_PATTERNS = (
    re.compile(r"/(site|dist)-packages/"),
    re.compile(r"/torch/"),
    re.compile(r"/lib/python\d+(\.\d+)?t?/"),  # the standard library
    re.compile(r"^<"),
)
PYTHON_SOURCE_SUFFIX = ".py"  # C++ frames (stacks="all") name .cpp/.h/.so files or "??"

NO_USER_FRAME = "<no user frame>"


@dataclass(frozen=True)
class PhaseMarker:
    """A frame whose filename contains `path_part` and whose function contains `name_part`."""

    phase: str
    path_part: str
    name_part: str = ""


# Earlier markers win: activation checkpointing re-runs module forwards inside backward,
# and optimizers can call modules, so backward outranks optimizer outranks forward.
PHASE_MARKERS = (
    PhaseMarker("backward", "torch/autograd/"),
    PhaseMarker("backward", "", "torch::autograd::Engine"),
    PhaseMarker("optimizer", "torch/optim/"),
    PhaseMarker("forward", "torch/nn/modules/module.py", "_call_impl"),
)


@dataclass(frozen=True)
class Site:
    """An allocation site: a user source line, or NO_USER_FRAME when the stack has none."""

    file: str | None
    line: int | None
    location: str


def normalised(path: str) -> str:
    return path.replace("\\", "/")


def is_library_file(filename: str) -> bool:
    path = normalised(filename)
    return not path.endswith(PYTHON_SOURCE_SUFFIX) or any(p.search(path) for p in LIBRARY_PATH_PATTERNS)


def user_site(frames: tuple[Frame, ...], user_roots: list[str] | None = None) -> Site:
    """The innermost frame in user code; with `user_roots`, only files under those count."""
    roots = [normalised(r).rstrip("/") + "/" for r in user_roots or []]
    for frame in frames:
        if is_library_file(frame.filename):
            continue
        path = normalised(frame.filename)
        root = next((r for r in roots if path.startswith(r)), None)
        if roots and root is None:
            continue
        shown = path[len(root):] if root else PurePath(path).name
        return Site(frame.filename, frame.line, f"{shown}:{frame.line}")
    return Site(None, None, NO_USER_FRAME)


def infer_phase(frames: tuple[Frame, ...]) -> str | None:
    """forward / backward / optimizer from the torch frames passed through; None if none show."""
    for marker in PHASE_MARKERS:
        for frame in frames:
            if marker.path_part in normalised(frame.filename) and marker.name_part in frame.name:
                return marker.phase
    return None
