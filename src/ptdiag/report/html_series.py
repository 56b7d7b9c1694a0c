"""The plain series the HTML report plots, read from a recorded run (and its findings).

Which events feed which plot is data below (the event shapes the specialists write), so
a new source of a plot is a table entry, not plotting code:

    numerics     "numerics"   {step, norm, norms: [per parameter group]}  gradient norms
    performance  "perf_steps" {rows: [{step, dt, data, forward, backward, optimizer, other}]}
                 (host-clock rows; rows with "gpu": true are device times, not plotted here)
    memory       "mem_step"   {step, rss, cuda_allocated, cuda_reserved}   memory at step ends
    memory       finding memory.breakdown, evidence {parameter_bytes, gradient_bytes, ...}

Without the performance rows, the step-time plot falls back to the always-on recorder's
"step" events: the data wait it measures, and the rest of the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptdiag.findings import Finding
from ptdiag.recorded import RecordedRun
from ptdiag.report.svg import Series

GRAD_NORM_EVENT, GRAD_NORM_TOTAL, GRAD_NORM_GROUPS = "numerics", "norm", "norms"
PHASE_EVENT = "perf_steps"
# (field of a perf_steps row, label), in the order of a step; "other" is what no phase covers
PHASES = (("data", "data wait"), ("forward", "forward"), ("backward", "backward"),
          ("optimizer", "optimizer"), ("other", "rest of the step"))
RECORDER_DATA_FIELD = "data_s"  # on the recorder's "step" event
MEMORY_EVENT = "mem_step"
MEMORY_FIELDS = (("cuda_allocated", "allocated (CUDA)"), ("cuda_reserved", "reserved (CUDA)"), ("rss", "host RSS"))
BREAKDOWN_CODE = "memory.breakdown"
# (evidence key, label); the key carries a `_bytes` suffix in the evidence
BREAKDOWN_PARTS = (("parameter", "parameters"), ("buffer", "buffers"), ("gradient", "gradients"),
                   ("optstate", "optimizer state"), ("activation", "activations"), ("temp", "temporaries"),
                   ("other", "other"))


@dataclass
class StepBreakdown:
    steps: list[float]
    parts: dict[str, list[float]]
    phases_measured: bool  # forward/backward/optimizer measured (performance), or data wait only


def _number(value) -> float | None:
    """Event values as floats; the probe writes non-finite floats as "nan"/"inf" strings."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def loss(run: RecordedRun) -> Series | None:
    points = run.losses()
    return Series("loss", points) if points else None


def grad_norms(run: RecordedRun) -> list[Series]:
    """Total gradient norm per step, and each parameter group's where there are several."""
    main = run.main
    events = main.of(GRAD_NORM_EVENT) if main else []
    total = [(e["step"], v) for e in events if (v := _number(e.get(GRAD_NORM_TOTAL))) is not None]
    groups: dict[int, list] = {}
    for e in events:
        for i, value in enumerate(e.get(GRAD_NORM_GROUPS) or []):
            if (v := _number(value)) is not None:
                groups.setdefault(i, []).append((e["step"], v))
    found = [Series("total", total)] if total else []
    if len(groups) > 1:
        found.extend(Series(f"group {i}", pts) for i, pts in sorted(groups.items()))
    return found


def step_breakdown(run: RecordedRun) -> StepBreakdown | None:
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
                for e in main.of("step") if _number(e.get("dt")) is not None]
    if not rows:
        return None
    rows.sort(key=lambda r: r["step"])
    parts = {label: [max(0.0, _number(r.get(key)) or 0.0) for r in rows] for key, label in PHASES}
    return StepBreakdown([r["step"] for r in rows], {k: v for k, v in parts.items() if any(v)}, phases_measured)


def memory(run: RecordedRun) -> list[Series]:
    main = run.main
    events = main.of(MEMORY_EVENT) if main else []
    found = []
    for key, label in MEMORY_FIELDS:
        points = [(e["step"], v) for e in events if "step" in e and (v := _number(e.get(key))) is not None]
        if points:
            found.append(Series(label, points))
    return found


def rank_step_times(run: RecordedRun) -> list[Series]:
    """Step time per rank, where there are several ranks to compare."""
    if len(run.ranks) < 2:
        return []
    return [Series(f"rank {rank}", [(e["step"], e["dt"]) for e in proc.of("step") if e.get("dt") is not None])
            for rank, proc in run.ranks.items()]


def memory_breakdown(findings: list[Finding]) -> list[tuple[str, float]]:
    finding = next((f for f in findings if f.code == BREAKDOWN_CODE), None)
    if finding is None:
        return []
    items = []
    for key, label in BREAKDOWN_PARTS:
        value = _number(finding.evidence.get(f"{key}_bytes"))
        if value is not None and math.isfinite(value):
            items.append((label, value))
    return items
