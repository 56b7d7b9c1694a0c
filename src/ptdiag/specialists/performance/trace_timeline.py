"""The GPU timeline of one trace: busy, idle, computation, exposed communication and copies.

Definitions follow the field's tools (HolisticTraceAnalysis' temporal breakdown,
TraceLens' GPU timeline), so the numbers can be checked against theirs:

- total: from the start of the first GPU activity to the end of the last;
- busy: union of every kernel, memcpy and memset interval; idle = total - busy;
- computation: union of non-communication kernels and memsets (a memset is device work
  that blocks the stream like a kernel; TraceLens counts it the same way);
- communication: union of collective kernels (NCCL/RCCL); exposed = not overlapped by
  computation;
- memcpy: union of copies; exposed = not overlapped by computation or communication.

Times are unions, not sums, because kernels on different streams overlap.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ptdiag.specialists.performance.trace_events import GpuSpans, Span
from ptdiag.specialists.performance.trace_intervals import Interval, length, subtract, union

COMMUNICATION_KERNEL = re.compile(r"nccl|rccl", re.IGNORECASE)
US_PER_MS = 1000.0


def _intervals(spans: list[Span]) -> list[Interval]:
    return [(span.start, span.end) for span in spans]


def is_communication(kernel: Span) -> bool:
    return _is_collective_name(kernel.name)


@lru_cache(maxsize=8192)
def _is_collective_name(name: str) -> bool:
    return bool(COMMUNICATION_KERNEL.search(name))


def gpu_unions(gpu: GpuSpans) -> dict[str, list[Interval]]:
    """The disjoint GPU intervals of each activity class, keyed by class."""
    collectives = [k for k in gpu.kernels if is_communication(k)]
    compute = [k for k in gpu.kernels if not is_communication(k)]
    return {
        "busy": union(_intervals(gpu.kernels + gpu.memcpys + gpu.memsets)),
        "computation": union(_intervals(compute + gpu.memsets)),
        "communication": union(_intervals(collectives)),
        "memcpy": union(_intervals(gpu.memcpys)),
        "memset": union(_intervals(gpu.memsets)),
    }


def gpu_timeline(unions: dict[str, list[Interval]], rank: int | None) -> dict[str, object] | None:
    """contract.md's `metrics.gpu_timeline` for one rank, in ms; None without GPU activity."""
    busy = unions["busy"]
    if not busy:
        return None
    total = busy[-1][1] - busy[0][0]
    busy_us = length(busy)
    exposed_comm = subtract(unions["communication"], unions["computation"])
    exposed_memcpy = subtract(subtract(unions["memcpy"], unions["computation"]),
                              unions["communication"])
    timeline_us = {
        "total_ms": total,
        "busy_ms": busy_us,
        "idle_ms": total - busy_us,
        "computation_ms": length(unions["computation"]),
        "communication_ms": length(unions["communication"]),
        "exposed_comm_ms": length(exposed_comm),
        "memcpy_ms": length(unions["memcpy"]),
        "exposed_memcpy_ms": length(exposed_memcpy),
        "memset_ms": length(unions["memset"]),
    }
    timeline: dict[str, object] = {"rank": rank}
    timeline.update({key: round(us / US_PER_MS, 6) for key, us in timeline_us.items()})
    timeline["busy_pct"] = round(100.0 * busy_us / total, 2) if total > 0 else 0.0
    return timeline
