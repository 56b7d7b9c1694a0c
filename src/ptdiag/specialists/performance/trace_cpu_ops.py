"""CPU ops ranked by self time: where the training process's own time goes.

An op's self time is its duration minus the time of the ops nested inside it on the
same thread (aten::conv2d contains aten::convolution contains aten::cudnn_convolution),
which is what torch.profiler's "Self CPU" column reports. Nesting is rebuilt from the
spans' start/end times per (process, thread), since the trace stores no parent links.
"""

from __future__ import annotations

from collections import defaultdict

from ptdiag.specialists.performance.trace_events import Span

TOP_CPU_OPS = 10


def self_times(ops: list[Span]) -> dict[str, list[float]]:
    """name -> [self µs, total µs, count], nesting rebuilt per (pid, tid)."""
    by_thread: dict[tuple, list[Span]] = defaultdict(list)
    for op in ops:
        by_thread[(op.pid, op.tid)].append(op)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for thread_ops in by_thread.values():
        thread_ops.sort(key=lambda op: (op.start, -op.end))
        self_us = [op.dur for op in thread_ops]
        open_ops: list[int] = []
        for i, op in enumerate(thread_ops):
            while open_ops and thread_ops[open_ops[-1]].end <= op.start:
                open_ops.pop()
            if open_ops:
                parent = open_ops[-1]
                self_us[parent] -= min(op.end, thread_ops[parent].end) - op.start
            open_ops.append(i)
        for op, own in zip(thread_ops, self_us):
            entry = totals[op.name]
            entry[0] += own
            entry[1] += op.dur
            entry[2] += 1
    return totals


def top_cpu_ops(ops: list[Span], limit: int = TOP_CPU_OPS) -> list[dict[str, object]]:
    """The ops with the largest total self time (ms), largest first."""
    ranked = sorted(self_times(ops).items(), key=lambda kv: -kv[1][0])[:limit]
    return [
        {"name": name, "self_ms": round(own / 1000.0, 3), "total_ms": round(total / 1000.0, 3),
         "count": int(count)}
        for name, (own, total, count) in ranked
    ]
