"""Which CPU op launched each piece of GPU work.

A kernel, copy or memset carries the `correlation` id of the CUDA runtime/driver call that
queued it (cudaLaunchKernel, cuLaunchKernelEx, cudaMemsetAsync), and that call runs inside
the CPU op that issued it (aten::mm around cuBLAS' launch). The launching op is the
innermost CPU op on the call's thread whose span contains the call's start: the tree
TraceLens builds from timestamps, which works for every trace schema.

Kineto also writes the op's `External id` on the call, but that link is not reliable: in
HolisticTraceAnalysis' test traces every runtime call's External id equals its own
correlation id and names no op, or an unrelated one. On the traces where External ids are
right (the TraceLens H100 and kineto V100 fixtures) nesting and External id agree for
every kernel.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ptdiag.specialists.performance.trace_events import Span

# Sort rank at equal start times: an op opening at the instant a call starts contains it.
_OP, _CALL = 0, 1


def launching_ops(calls: list[Span], ops: list[Span]) -> dict[Any, Span]:
    """correlation id -> the innermost CPU op around its runtime call; calls made outside
    any op (a thread the profiler recorded no op on) are left out."""
    threads: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for op in ops:
        threads[(op.pid, op.tid)][0].append(op)
    for call in calls:
        threads[(call.pid, call.tid)][1].append(call)
    launched_by: dict[Any, Span] = {}
    for thread_ops, thread_calls in threads.values():
        if not thread_ops or not thread_calls:
            continue
        timeline = ([(op.start, _OP, -op.end, op) for op in thread_ops]
                    + [(call.start, _CALL, 0.0, call) for call in thread_calls])
        timeline.sort(key=lambda item: item[:3])
        open_ops: list[Span] = []
        for start, kind, _, span in timeline:
            while open_ops and open_ops[-1].end <= start:
                open_ops.pop()
            if kind == _OP:
                open_ops.append(span)
            elif open_ops and span.correlation is not None:
                launched_by[span.correlation] = open_ops[-1]
    return launched_by
