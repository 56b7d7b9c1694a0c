"""The per-step view: ProfilerStep#N spans, time spent waiting for data, GPU use per step.

`prof.step()` marks each training iteration with a ProfilerStep#N span on the CPU. Within
it, the DataLoader's `__next__` is recorded as `enumerate(DataLoader)#<Iterator>.__next__`:
the time the training loop waited for the next batch. GPU activity is measured against
the same wall-clock windows, so "the GPU was idle 40% of the step" and "the loop waited
for data 39% of the step" are directly comparable. Collectives are measured the same way:
the time a collective was in flight, i.e. its CPU-side spans (trace_events.COLLECTIVE_SPAN,
any thread of the step's process: gloo's range lasts until every rank has contributed)
joined with the GPU's exposed communication (NCCL kernels no computation overlaps); on a
rank that waits for a slower one this is mostly waiting.

GPU work launched before the profiler started still occupies the GPU inside the first
step's window, so the per-step GPU view counts it (unlike the whole-trace timeline).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass

from ptdiag.specialists.performance.trace_events import Span, TraceEvents
from ptdiag.specialists.performance.trace_intervals import CoverageIndex, Interval, subtract, union

STEP_NUMBER = re.compile(r"ProfilerStep#(\d+)")
DATALOADER_ITERATOR = re.compile(r"#(\w+)\.__next__")
# DataLoader iterator class -> num_workers it implies (None: one or more, count not recorded).
ITERATOR_WORKERS = {"_SingleProcessDataLoaderIter": 0, "_MultiProcessingDataLoaderIter": None}


@dataclass(frozen=True)
class StepMeasure:
    step: int | None
    step_us: float
    data_wait_us: float
    gpu_busy_us: float
    computation_us: float
    kernels: int
    collective_us: float


def measure_steps(events: TraceEvents, gpu_all: dict[str, list[Interval]]) -> list[StepMeasure]:
    """One measurement per ProfilerStep span, in trace order."""
    busy = CoverageIndex(gpu_all["busy"])
    computation = CoverageIndex(gpu_all["computation"])
    kernel_starts = sorted(k.start for k in events.gpu.kernels + events.gpu_unlinked.kernels)
    pids = {step.pid for step in events.steps}
    waits_by_pid = _coverage_by_pid(events.data_waits, pids, [])
    gpu_comm = subtract(gpu_all["communication"], gpu_all["computation"])
    collectives_by_pid = _coverage_by_pid(events.collectives, pids, gpu_comm)
    measures = []
    for step in events.steps:
        measures.append(StepMeasure(
            step=_step_number(step),
            step_us=step.dur,
            data_wait_us=waits_by_pid[step.pid].covered(step.start, step.end),
            gpu_busy_us=busy.covered(step.start, step.end),
            computation_us=computation.covered(step.start, step.end),
            kernels=_count_between(kernel_starts, step.start, step.end),
            collective_us=collectives_by_pid[step.pid].covered(step.start, step.end),
        ))
    return measures


def _coverage_by_pid(spans: list[Span], pids: set, shared: list[Interval]) -> dict[object, CoverageIndex]:
    """Per process, the union of these spans over all its threads plus `shared` intervals
    (GPU activity, which belongs to no host process)."""
    return {pid: CoverageIndex(union([*shared, *((s.start, s.end) for s in spans if s.pid == pid)])) for pid in pids}


def steps_metrics(measures: list[StepMeasure], with_gpu: bool, with_collectives: bool) -> dict[str, object]:
    """metrics["steps"]: per-step times (ms) and shares over all steps; GPU shares only
    when the trace has GPU activity and collective shares only when it has collectives (a
    CPU-only, single-process run gets no made-up zeros)."""
    total = sum(m.step_us for m in measures)
    durations = sorted(m.step_us for m in measures)
    metrics: dict[str, object] = {
        "count": len(measures),
        "step_ms": {
            "mean": _ms(total / len(measures)),
            "p50": _ms(durations[len(durations) // 2]),
            "max": _ms(durations[-1]),
        },
        "data_wait_share": _share(sum(m.data_wait_us for m in measures), total),
    }
    per_step = [{"step": m.step, "ms": _ms(m.step_us), "data_wait_ms": _ms(m.data_wait_us)}
                for m in measures]
    if with_gpu:
        metrics["gpu_busy_share"] = _share(sum(m.gpu_busy_us for m in measures), total)
        metrics["gpu_computation_share"] = _share(sum(m.computation_us for m in measures), total)
        for row, m in zip(per_step, measures):
            row.update(gpu_busy_ms=_ms(m.gpu_busy_us), kernels=m.kernels)
    if with_collectives:
        metrics["collective_share"] = _share(sum(m.collective_us for m in measures), total)
        for row, m in zip(per_step, measures):
            row["collective_ms"] = _ms(m.collective_us)
    metrics["per_step"] = per_step
    return metrics


def dataloader_iterators(events: TraceEvents) -> list[str]:
    """The DataLoader iterator classes seen (they tell single-process from worker loading)."""
    found = (DATALOADER_ITERATOR.search(w.name) for w in events.data_waits)
    return sorted({match.group(1) for match in found if match})


def _step_number(step: Span) -> int | None:
    match = STEP_NUMBER.match(step.name)
    return int(match.group(1)) if match else None


def _count_between(sorted_starts: list[float], lo: float, hi: float) -> int:
    return bisect_left(sorted_starts, hi) - bisect_left(sorted_starts, lo)


def _ms(us: float) -> float:
    return round(us / 1000.0, 3)


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole > 0 else 0.0
