"""Where the GPU time goes: GPU work grouped into categories, and matmul time by precision.

Each kernel, copy and memset is categorised through the CPU op that launched it
(trace_launchers, trace_categories). Times here are sums of durations, the "how much
work" view; the overlap-aware "how long was the GPU busy" view is in trace_timeline.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ptdiag.specialists.performance.trace_categories import (MATMUL_CATEGORIES, MEMCPY, MEMSET,
                                                             is_layout_transform, kernel_category,
                                                             matmul_precision, op_category)
from ptdiag.specialists.performance.trace_events import GpuSpans, Span

TOP_KERNELS = 10
NAME_CHARS = 200


def kernel_breakdown(gpu: GpuSpans, launched_by: dict[Any, Span]) -> dict[str, object]:
    """GPU time by category, the top kernels, matmul time by precision (ms), and how much
    of the time was categorised through its launching op (the rest by kernel name)."""
    by_category: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_kernel: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    by_precision: dict[str, float] = defaultdict(float)
    linked_us = layout_us = 0.0
    for span, category in _categorised(gpu, launched_by):
        _add(by_category[category], span)
        _add(by_kernel[(span.name, category)], span)
        op = launched_by.get(span.correlation)
        if op is not None:
            linked_us += span.dur
        if category in MATMUL_CATEGORIES:
            by_precision[matmul_precision(span.name, op.input_types if op else ())] += span.dur
        if is_layout_transform(span.name):
            layout_us += span.dur
    total_us = sum(us for us, _ in by_category.values())
    return {
        "total_gpu_time_ms": _ms(total_us),
        "categories": [
            {"category": cat, "ms": _ms(us), "share": _share(us, total_us), "count": count}
            for cat, (us, count) in sorted(by_category.items(), key=lambda kv: -kv[1][0])
        ],
        "top_kernels": [
            {"name": _short(name), "category": cat, "ms": _ms(us), "count": count,
             "share": _share(us, total_us)}
            for (name, cat), (us, count) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
        ],
        "matmul_ms_by_precision": {p: _ms(us) for p, us in sorted(by_precision.items())},
        "layout_transform_ms": _ms(layout_us),
        "launching_op_share": _share(linked_us, total_us),
    }


def _categorised(gpu: GpuSpans, launched_by: dict[Any, Span]):
    """(span, category) for every GPU span: kernels and memsets by their launching op,
    copies as memcpy."""
    for span in gpu.kernels:
        op = launched_by.get(span.correlation)
        yield span, kernel_category(span.name, op.name if op else None)
    for span in gpu.memsets:
        op = launched_by.get(span.correlation)
        yield span, (op_category(op.name) if op else None) or MEMSET
    for span in gpu.memcpys:
        yield span, MEMCPY


def _add(accumulator: list, span: Span) -> None:
    accumulator[0] += span.dur
    accumulator[1] += 1


def _ms(us: float) -> float:
    return round(us / 1000.0, 4)


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole > 0 else 0.0


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"
