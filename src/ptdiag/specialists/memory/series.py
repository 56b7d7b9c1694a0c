"""Memory at step boundaries as a series, and its trend.

The trend is a least-squares slope over the steps after warm-up (the first steps create
optimizer state and fill allocator caches, which is growth that stops). Growth counts
as steady only when the line explains most of the variation: host RSS moves with the
C allocator's caching, so a single jump is not a leak.
"""

from __future__ import annotations

from dataclasses import dataclass

WARMUP_STEPS = 2


@dataclass(frozen=True)
class Trend:
    basis: str  # "cuda_allocated" or "rss"
    steps: int
    first: int
    last: int
    slope: float  # bytes per step
    r2: float
    ptdiag_bytes: int = 0  # host memory ptdiag's own windows kept, taken out of the series


def without_ptdiag(basis: str, points: list[tuple[float, int, int]],
                   windows: list[dict]) -> tuple[list[tuple[int, int]], int]:
    """The program's own series: ptdiag's one-off windows (the profiler, MemTracker's step)
    grow the host process while they run and keep some of it (the budget measures the RSS
    they added at their close, `window.grew`). Boundaries inside a window are left out and
    what each window kept is taken off every later boundary. CUDA counters are the
    program's tensors only: they are kept as they are. points: (time, step, bytes)."""
    if basis != "rss" or not windows:
        return [(step, value) for _, step, value in points], 0
    spans = [(w["t"] - (w.get("seconds") or 0.0), w["t"], max(0, w.get("grew") or 0)) for w in windows]
    kept = []
    for t, step, value in points:
        if any(start <= t < end for start, end, _ in spans):
            continue
        kept.append((step, value - sum(grew for _, end, grew in spans if end <= t)))
    return kept, sum(grew for _, _, grew in spans)


def boundary_series(step_events: list[dict]) -> tuple[str, list[tuple[float, int, int]]]:
    """(basis, [(time, step, bytes)]): the CUDA allocator's count when CUDA was in use, else RSS."""
    basis = "cuda_allocated" if any("cuda_allocated" in e for e in step_events) else "rss"
    return basis, [(e.get("t", 0.0), e["step"], e[basis]) for e in step_events if basis in e]


def trend(step_events: list[dict], windows: list[dict] = ()) -> Trend | None:
    basis, timed = boundary_series(step_events)
    points, ptdiag_bytes = without_ptdiag(basis, timed, list(windows))
    points = [p for p in points if p[0] > WARMUP_STEPS]
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(s for s, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((s - mx) ** 2 for s, _ in points)
    sxy = sum((s - mx) * (v - my) for s, v in points)
    syy = sum((v - my) ** 2 for _, v in points)
    slope = sxy / sxx if sxx else 0.0
    r2 = (sxy * sxy / (sxx * syy)) if sxx and syy else 0.0
    return Trend(basis, n, points[0][1], points[-1][1], slope, r2, ptdiag_bytes)
