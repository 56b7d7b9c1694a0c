"""Everything the performance probe recorded in a run dir, read back and summarised.

The analysis reads only the run dir: the per-step breakdown rows, the profiler traces
saved under artifacts/ (every rank's; the main rank's drive the findings, the others are
compared with it in trace_per_rank), the call scan, telemetry and the optimizer watch,
plus the recorder's own events (DataLoader settings).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from ptdiag.recorded import ProcessEvents, RecordedRun
from ptdiag.specialists.performance import trace, trace_cpu, trace_ranks
from ptdiag.events import STEP_PHASES as PHASES
from ptdiag.specialists.performance.trace_events import STEP_PREFIX, TraceError, read_trace

BREAKDOWN_PARTS = ("data", *PHASES, "other")
MIN_STEPS_BEFORE_WINDOWS = 3


@dataclass
class Measured:
    breakdown: dict[str, Any] | None = None
    gpu_breakdown: dict[str, Any] | None = None
    trace_path: str | None = None
    trace: dict[str, Any] | None = None  # trace.analyse_trace metrics
    trace_findings: list = field(default_factory=list)
    host: dict[str, Any] | None = None  # trace_cpu.host_metrics
    per_rank: dict[int, dict[str, Any]] = field(default_factory=dict)  # trace_ranks.rank_row of each rank read
    imbalance: dict[str, Any] | None = None  # trace_ranks.imbalance: the rank the others wait for
    straggler_judged: bool = False  # the distributed specialist's straggler check ran on this run
    scan: dict[str, Any] | None = None
    python_calls: dict[str, Any] | None = None  # one step's Python calls, counted before the profiler
    telemetry: dict[str, Any] | None = None
    optimizers: dict[str, Any] = field(default_factory=dict)
    new_optimizers: list[dict] = field(default_factory=list)
    loader: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    env: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unprofiled: dict[str, Any] | None = None  # the main rank's profiler window, cut by ptdiag's budget before one step

    @property
    def step_s(self) -> float | None:
        return self.breakdown["step_s"]["p50"] if self.breakdown else None


def measure(run: RecordedRun) -> Measured:
    proc = run.main
    found = Measured()
    if proc is None:
        return found
    rows = [r for e in proc.of("perf_steps") for r in e.get("rows", [])]
    batch = _batch_size(proc)
    found.breakdown = breakdown([r for r in rows if not r.get("gpu")], batch)
    found.gpu_breakdown = breakdown([r for r in rows if r.get("gpu")], batch)
    found.scan = _last(proc, "perf_scan")
    found.python_calls = _last(proc, "perf_python_calls")
    found.telemetry = _last(proc, "perf_telemetry")
    found.optimizers = _last(proc, "perf_optimizers") or {}
    found.new_optimizers = proc.of("perf_optimizer")
    found.loader = _train_loader(proc)
    found.model = _last(proc, "perf_model")
    found.env = _last(proc, "perf_env") or {}
    _read_traces(run, found)
    found.imbalance = trace_ranks.imbalance(found.per_rank)
    # the distributed specialist's probe timed every step of every rank: its straggler
    # check owns the claim "one rank holds the others back" then, and a second finding
    # from three profiled steps would only repeat it
    found.straggler_judged = "distributed" in run.meta.get("plan", {}).get("specialists", [])
    if found.imbalance and found.straggler_judged:
        found.notes.append(f"rank {found.imbalance['rank']} did the most work in the profiled steps while the "
                           "others waited in collectives (trace_per_rank); distributed.straggler judges that "
                           "claim over every step")
    return found


def breakdown(rows: list[dict], batch: int | None) -> dict[str, Any] | None:
    """Median/p90 per phase over the steps outside the instrumented windows (all steps
    when there are no others), the share of step time each phase takes, throughput.

    Steps before the windows are preferred when there are enough of them: on this
    machine backward stayed ~1.4x slower for the rest of a run after the profiler window
    (measured by this breakdown; see docs/benchmarks/performance.md)."""
    clean = [r for r in rows if not r.get("instrumented")]
    first_window = min((r["step"] for r in rows if r.get("instrumented")), default=None)
    before = [r for r in clean if first_window is not None and r["step"] < first_window]
    clean = before if len(before) >= MIN_STEPS_BEFORE_WINDOWS else clean
    used = clean or rows
    if not used:
        return None
    times = [r["dt"] for r in used]
    total = sum(times)
    median = statistics.median(times)
    result: dict[str, Any] = {
        "steps": len(used),
        "steps_used": [r["step"] for r in used],
        "step_s": _quantiles(times),
        "steps_per_s": round(1.0 / median, 3) if median > 0 else None,
    }
    if batch and median > 0:  # from the median itself: a rounded steps_per_s times the batch loses digits
        result["samples_per_s"] = round(batch / median, 2)
    parts = [p for p in BREAKDOWN_PARTS if any(p in r for r in used)]
    # a phase's share is the median of its per-step shares: one slow step (a new epoch's
    # iterator starting its workers) must not make a typical step look data-bound
    result["phases"] = {p: {**_quantiles([r.get(p, 0.0) for r in used]),
                            "share": round(statistics.median(r.get(p, 0.0) / r["dt"] for r in used if r["dt"] > 0), 4)
                            if total else 0.0}
                        for p in parts}
    if "data" in parts:  # per step, so a claim can ask that the wait is there step after step
        result["data_step_shares"] = [round(r.get("data", 0.0) / r["dt"], 4) for r in used if r["dt"] > 0]
    return result


def _read_traces(run: RecordedRun, found: Measured) -> None:
    """Every rank's trace through the same analysis; the main rank's fills the fields the
    detectors read, each readable one adds its row to found.per_rank, and a missing or
    unreadable one a note naming the rank."""
    several = run.world_size > 1
    for rank in range(run.world_size) if several else []:
        if rank not in run.ranks:
            found.notes.append(f"rank {rank} recorded no events, so no profiler trace")
    for rank, proc in run.ranks.items():
        whose = f"rank {rank}'s profiler trace" if several else "the profiler trace"
        traces = proc.of("perf_trace")
        event = traces[-1] if traces else None
        if event is None:
            found.notes.append(f"no profiler trace was recorded{f' by rank {rank}' if several else ''} "
                               "(the run ended before the profiler window)")
            continue
        path = run.run_dir / event["path"]
        try:
            loaded = read_trace(path)
            cut = _cut(proc, traces)
            if cut is not None:
                loaded, complete = _complete_steps_only(loaded)
                if not complete and cut.get("budget"):
                    found.notes.append(f"ptdiag's memory budget cut {whose} at step {cut['step'] + 1}, before its "
                                       "first profiled step ended, so there is no profile to analyse")
                    if proc is run.main:
                        found.unprofiled = {"cut_step": cut["step"] + 1, "attempts": len(traces),
                                            "allowance_bytes": _window_allowance(proc)}
                    continue
                if not complete:
                    found.notes.append(f"the program ended inside the profiler window: {whose} holds no complete "
                                       "step (its last step ran on to the program's end), so it is not analysed")
                    continue
            analysis = trace.analyse_trace(loaded)
        except (TraceError, OSError) as exc:
            found.notes.append(f"{whose} could not be read: {exc}")
            continue
        host = trace_cpu.host_metrics(loaded)
        found.per_rank[rank] = {"trace": event["path"], "first_step": event.get("first_step"),
                                **trace_ranks.rank_row(analysis.metrics, host,
                                                       _cpu_waits(proc, event.get("first_step")))}
        if proc is run.main:
            found.trace_path = str(path)
            found.trace = analysis.metrics
            found.trace_findings = analysis.findings
            found.host = host
            found.trace["first_step"] = event.get("first_step")


def _cut(proc: ProcessEvents, traces: list[dict]) -> dict | None:
    """The cut of the last trace's window, if it was cut: a cut written after the trace
    before it (a window cut by the budget is taken again once, in a smaller scope)."""
    since = traces[-2].get("t", 0) if len(traces) > 1 else float("-inf")
    cuts = [c for c in proc.of("perf_trace_cut") if since < c.get("t", 0) <= traces[-1].get("t", 0)]
    return cuts[-1] if cuts else None


def _window_allowance(proc: ProcessEvents) -> int | None:
    window = next((w for w in proc.of("window") if w.get("what") == "performance windows"), None)
    return window.get("allowance") if window else None


def _complete_steps_only(loaded: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The trace without its last ProfilerStep span, which the profiler's stop at the
    program's exit closed: it holds whatever the program did after its last step (evaluation,
    saving, ptdiag's own exit work), not a training step. Also: how many steps remain."""
    events = loaded.get("traceEvents", [])
    steps = [e for e in events if isinstance(e, dict) and str(e.get("name", "")).startswith(STEP_PREFIX)]
    if not steps:
        return loaded, 0
    last = max(steps, key=lambda e: e.get("ts", 0))
    # the events are read from the file again (read_trace streams them): the last step is known by its fields
    return {**loaded, "traceEvents": events.without(lambda e: e == last)}, len(steps) - 1


def _train_loader(proc: ProcessEvents) -> dict[str, Any] | None:
    """The DataLoader the steps trained on (recorder's index), with the probe's extras."""
    used = {e.get("loader") for e in proc.of("step")}
    loaders = proc.of("dataloader")
    extras = proc.of("perf_loader")
    for index, loader in enumerate(loaders):
        if loader.get("loader") in used:
            extra = extras[index] if index < len(extras) else {}
            return {**loader, "prefetch_factor": extra.get("prefetch_factor")}
    return extras[0] if extras else None


def _batch_size(proc: ProcessEvents) -> int | None:
    loader = _train_loader(proc)
    return loader.get("batch_size") if loader else None


def _last(proc: ProcessEvents, kind: str) -> dict | None:
    events = proc.of(kind)
    return events[-1] if events else None


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 6),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 6)}


def _cpu_waits(proc, first_step: int | None) -> dict[int, float]:
    """Per profiled step (the trace's ProfilerStep number: training step first_step + k),
    the ms the rank's training thread waited for a CPU (the breakdown's `runq`)."""
    if first_step is None:
        return {}
    return {row["step"] - first_step: 1000.0 * row["runq"]
            for event in proc.of("perf_steps") for row in event.get("rows", [])
            if row.get("runq") is not None and not row.get("gpu")}
