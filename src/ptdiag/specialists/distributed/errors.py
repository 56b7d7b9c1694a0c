"""What torch.distributed's error messages mean: a table of message patterns.

Each entry: (kind, regular expression, what it says). The kinds are what the checks
ask for: a collective that timed out, a peer that went away, collectives that differ
between ranks (TORCH_DISTRIBUTED_DEBUG=DETAIL), parameters DDP got no gradient for.
"""

from __future__ import annotations

import re

ERROR_PATTERNS = (
    ("timeout", r"Timed out waiting \d+ms|Application timeout caused pair closure|"
                r"Watchdog caught collective operation timeout|ProcessGroupNCCL.*timed? ?out|"
                r"DistStoreError: Timed out", "a collective timed out"),
    ("peer_gone", r"Connection closed by peer|Connection reset by peer|NCCL communicator was aborted|"
                  r"remote process exited or there was a network error", "another rank went away"),
    ("mismatch", r"Detected mismatch between collectives|failed to pass monitoredBarrier",
     "ranks called different collectives"),
    ("unused_parameters", r"Expected to have finished reduction in the prior iteration|"
                          r"did not receive grad|find_unused_parameters",
     "DDP got no gradient for some parameters"),
)
_COMPILED = tuple((kind, re.compile(rx), text) for kind, rx, text in ERROR_PATTERNS)

UNUSED_INDICES = re.compile(r"Parameter indices which did not receive grad for rank (\d+): ([\d ]+)")
UNUSED_NAMES = re.compile(r"Parameters which did not receive grad for rank (\d+): ([^\n]+)")


def classify(message: str) -> str | None:
    return next((kind for kind, rx, _ in _COMPILED if rx.search(message or "")), None)


def describe(kind: str) -> str:
    return next(text for k, _, text in ERROR_PATTERNS if k == kind)


def unused_from_message(message: str, reducer_params: list[str]) -> list[str]:
    """Parameter names a DDP error names (INFO/DETAIL debug) or numbers (default)."""
    names = UNUSED_NAMES.search(message or "")
    if names:
        return [n.strip() for n in names.group(2).split(",") if n.strip()]
    indices = UNUSED_INDICES.search(message or "")
    if not indices:
        return []
    return [reducer_params[int(i)] if int(i) < len(reducer_params) else f"parameter #{i}"
            for i in indices.group(2).split()]
