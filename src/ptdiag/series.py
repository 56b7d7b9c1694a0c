"""The plain series a Report carries for its plots, drawn from the recorded run once, when
the Report is built (diagnose.analyse_run). Renderers read only the Report, so a page
drawn later by `ptdiag runs show` shows the same numbers as the first one.

Which events feed which series is data below (the event shapes of ptdiag.events), so a
new source of a plot is a table entry:

    "loss"            tracking     "loss"       {step, value} (rank 0), and the first non-finite loss
    "grad_norm"       numerics     "numerics"   {step, norm, norms: [per parameter group]}
    "step_time"       performance  "perf_steps" {rows: [{step, dt, data, forward, ...}]} (host rows;
                                   rows with "gpu": true are device times, not plotted), else the
                                   recorder's "step" events: the data wait and the rest of the step
    "memory"          memory       "mem_step"   {step, rss, cuda_allocated, cuda_reserved}
    "rank_step_time"  tracking     "step"       {step, dt} of every rank, when there are several
    "lr"              tracking     "step"       {step, lr: [per parameter group]}: the schedule (rank 0)

Shapes (JSON; points are [x, y], a non-finite y is the string "nan"/"inf" in report.json):
    {"loss": {"points": [...], "first_nonfinite": {step, value, rank, epoch} | null},
     "grad_norm": {"total": [...], "groups": [[...], ...]},
     "step_time": {"steps": [...], "parts": {phase: [seconds per step]}, "phases_measured": bool},
     "memory": {field: [...]}, "rank_step_time": {rank: [...]}, "lr": {"points": [...]}}
A series that was not recorded is absent. Each is bounded as the plots draw it (min and max
of each bucket of a long line, averages of a long run of bars), so report.json stays small.
"""

from __future__ import annotations

from typing import Any

from ptdiag.events import as_number
from ptdiag.recorded import RecordedRun
from ptdiag.report.svg import average_buckets, thin

GRAD_NORM_EVENT = "numerics"
GRAD_NORM_TOTAL, GRAD_NORM_GROUPS = "norm", "norms"
PHASE_EVENT = "perf_steps"
PHASES = ("data", "forward", "backward", "optimizer", "other")  # fields of a perf_steps row, a step's order
RECORDER_STEP_EVENT = "step"
RECORDER_DATA_FIELD = "data_s"
MEMORY_EVENT = "mem_step"
MEMORY_FIELDS = ("cuda_allocated", "cuda_reserved", "rss")


def _line(points: list[tuple[float, float]]) -> list[list[float]]:
    return [list(p) for p in thin(sorted(points))]


def plot_series(run: RecordedRun) -> dict[str, Any]:
    found = {"loss": _loss(run), "grad_norm": _grad_norms(run), "step_time": _step_time(run),
             "memory": _memory(run), "rank_step_time": _rank_step_times(run), "lr": _lr(run)}
    return {key: value for key, value in found.items() if value}


def _loss(run: RecordedRun) -> dict | None:
    points = run.losses()
    return {"points": _line(points), "first_nonfinite": run.first_nonfinite_loss()} if points else None


def _lr(run: RecordedRun) -> dict | None:
    """The first parameter group's learning rate per step: the schedule (warm-up, decay)
    that the configured LR in the run's params does not show."""
    events = run.main.of(RECORDER_STEP_EVENT) if run.main else []
    points = [(e["step"], v) for e in events if e.get("lr") and (v := as_number(e["lr"][0])) is not None]
    return {"points": _line(points)} if points else None


def _grad_norms(run: RecordedRun) -> dict | None:
    """Total gradient norm per step, and each parameter group's where there are several."""
    events = run.main.of(GRAD_NORM_EVENT) if run.main else []
    total = [(e["step"], v) for e in events if (v := as_number(e.get(GRAD_NORM_TOTAL))) is not None]
    groups: dict[int, list] = {}
    for e in events:
        for i, value in enumerate(e.get(GRAD_NORM_GROUPS) or []):
            if (v := as_number(value)) is not None:
                groups.setdefault(i, []).append((e["step"], v))
    if not total and not groups:
        return None
    several = [_line(points) for _, points in sorted(groups.items())] if len(groups) > 1 else []
    return {"total": _line(total), "groups": several}


def _step_time(run: RecordedRun) -> dict | None:
    """Each timed step split into its measured phases (performance), else into the data
    wait and the rest (the recorder)."""
    main = run.main
    if main is None:
        return None
    rows = [r for e in main.of(PHASE_EVENT) for r in e.get("rows", []) if not r.get("gpu")]
    phases_measured = bool(rows)
    if not rows:
        rows = [{"step": e["step"], "data": e.get(RECORDER_DATA_FIELD) or 0.0,
                 "other": max(0.0, e["dt"] - (e.get(RECORDER_DATA_FIELD) or 0.0))}
                for e in main.of(RECORDER_STEP_EVENT) if as_number(e.get("dt")) is not None]
    if not rows:
        return None
    rows.sort(key=lambda r: r["step"])
    parts = {key: [max(0.0, as_number(r.get(key)) or 0.0) for r in rows] for key in PHASES}
    steps, parts = average_buckets([r["step"] for r in rows], {k: v for k, v in parts.items() if any(v)})
    return {"steps": steps, "parts": parts, "phases_measured": phases_measured}


def _memory(run: RecordedRun) -> dict | None:
    events = run.main.of(MEMORY_EVENT) if run.main else []
    found = {}
    for key in MEMORY_FIELDS:
        points = [(e["step"], v) for e in events if "step" in e and (v := as_number(e.get(key))) is not None]
        if points:
            found[key] = _line(points)
    return found or None


def _rank_step_times(run: RecordedRun) -> dict | None:
    """Step time per rank, where there are several ranks to compare."""
    if len(run.ranks) < 2:
        return None
    return {str(rank): _line([(e["step"], e["dt"]) for e in proc.of(RECORDER_STEP_EVENT) if e.get("dt") is not None])
            for rank, proc in run.ranks.items()}
