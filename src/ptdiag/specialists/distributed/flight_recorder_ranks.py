"""Per-rank facts from one Flight Recorder dump: counts, sequence positions, timing, location.

Timing: a dump holds three clocks per entry. `time_created_ns` is when the rank's Python
issued the op (CPU progress); `time_discovered_completed_ns` is when the watchdog saw it
finish on the GPU (GPU progress; only present for completed entries, and dumps written
with only active entries have none). The oldest unfinished op's creation time bounds
how long the rank has been stuck.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ptdiag.specialists.distributed.flight_recorder_groups import COMPLETED, Position

# Frames whose file lies in one of these is library code, not the user's: the top user
# frame is the innermost frame outside them.
LIBRARY_PATH_MARKERS = ("/torch/", "site-packages/", "dist-packages/", "/lib/python3",
                        "<frozen", "<built-in>")


def top_user_frame(entry: dict[str, Any]) -> str | None:
    """`file:line` of the innermost non-library frame of an entry's stack, if it has one."""
    frames = [f for f in entry.get("frames") or [] if isinstance(f, dict) and f.get("filename")]
    user = [f for f in frames if not any(m in str(f["filename"]) for m in LIBRARY_PATH_MARKERS)]
    frame = (user or frames or [None])[0]
    return None if frame is None else f"{frame['filename']}:{frame.get('line')}"


def last_location(dump: dict[str, Any]) -> str | None:
    """Top user frame of the rank's newest entry: where its Python last issued an op."""
    entry = _last_entry(dump)
    return None if entry is None else top_user_frame(entry)


def _last_entry(dump: dict[str, Any]) -> dict[str, Any] | None:
    return max(dump["entries"], key=lambda e: e.get("record_id", 0), default=None)


def _times(dump: dict[str, Any], field: str, *, pending_only: bool = False) -> list[int]:
    return [int(e[field]) for e in dump["entries"]
            if e.get(field) is not None and not (pending_only and e.get("state") == COMPLETED)]


def progress_times(dump: dict[str, Any]) -> dict[str, int | None]:
    """When this rank last issued an op, last saw one complete, and has been stuck since."""
    issued = _times(dump, "time_created_ns")
    completed = _times(dump, "time_discovered_completed_ns")
    pending = _times(dump, "time_created_ns", pending_only=True)
    return {"last_issued_ns": max(issued, default=None),
            "last_completed_ns": max(completed, default=None),
            "oldest_unfinished_ns": min(pending, default=None)}


def newest_time(dumps: dict[int, dict[str, Any]]) -> int | None:
    """The latest timestamp in any dump: the reference that 'seconds before' counts from."""
    stamps = [t for dump in dumps.values() for name in ("time_created_ns", "time_discovered_started_ns",
                                                         "time_discovered_completed_ns")
              for t in _times(dump, name)]
    return max(stamps, default=None)


def seconds_before(newest: int | None, stamp: int | None) -> float | None:
    return None if newest is None or stamp is None else round((newest - stamp) / 1e9, 6)


def rank_summary(dump: dict[str, Any], positions: dict[str, Position], labels: dict[str, str],
                 newest: int | None) -> dict[str, Any]:
    """The metrics of one rank: entry and state counts, sequence positions per group, timing."""
    times = progress_times(dump)
    entry = _last_entry(dump)
    return {
        "entries": len(dump["entries"]),
        "states": dict(Counter(str(e.get("state")) for e in dump["entries"])),
        "last_completed_seq": {labels[g]: p.last_completed for g, p in sorted(positions.items())},
        "last_enqueued_seq": {labels[g]: p.last_enqueued for g, p in sorted(positions.items())},
        **times,
        **{name.replace("_ns", "_s_before_newest"): seconds_before(newest, stamp)
           for name, stamp in times.items()},
        "last_op": None if entry is None else entry.get("profiling_name"),
        "location": last_location(dump),
    }
