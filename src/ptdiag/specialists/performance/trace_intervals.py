"""Interval arithmetic on timelines: union, difference, length, overlap with a window.

GPU timeline metrics are set operations on time intervals: "busy" is the union of every
GPU activity, "exposed communication" is communication minus computation. Intervals are
`(start, end)` pairs in the trace's own unit (microseconds); a *union* is a sorted list
of disjoint intervals, which is what every function here takes and returns.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

Interval = tuple[float, float]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Merge possibly overlapping intervals into a sorted list of disjoint ones."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def subtract(base: list[Interval], removed: list[Interval]) -> list[Interval]:
    """The parts of union `base` not covered by union `removed` (both sorted, disjoint)."""
    result: list[Interval] = []
    j = 0
    for start, end in base:
        while j < len(removed) and removed[j][1] <= start:
            j += 1
        cursor = start
        k = j
        while k < len(removed) and removed[k][0] < end:
            cut_start, cut_end = removed[k]
            if cut_start > cursor:
                result.append((cursor, cut_start))
            cursor = max(cursor, cut_end)
            if cursor >= end:
                break
            k += 1
        if cursor < end:
            result.append((cursor, end))
    return result


def length(disjoint: Iterable[Interval]) -> float:
    """Total time covered by disjoint intervals."""
    return sum(end - start for start, end in disjoint)


class CoverageIndex:
    """Answers "how much of [lo, hi) does this union cover?" in O(log n) per query.

    Per-step metrics ask this once per ProfilerStep; a prefix sum over the union keeps
    that cheap on traces with tens of thousands of kernels.
    """

    def __init__(self, disjoint: list[Interval]) -> None:
        self._starts = [start for start, _ in disjoint]
        self._intervals = disjoint
        self._prefix = [0.0]
        for start, end in disjoint:
            self._prefix.append(self._prefix[-1] + (end - start))

    def covered(self, lo: float, hi: float) -> float:
        return self._covered_before(hi) - self._covered_before(lo)

    def _covered_before(self, t: float) -> float:
        """Length of the union that lies before time t."""
        i = bisect_right(self._starts, t)
        if i == 0:
            return 0.0
        start, end = self._intervals[i - 1]
        return self._prefix[i - 1] + (min(end, t) - start)
