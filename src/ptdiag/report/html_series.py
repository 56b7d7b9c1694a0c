"""The Report's plot series (`report.series`, built by ptdiag.series) as the plots draw
them: labelled svg Series, in the order of a step and of the legend. Reads only the
Report: values come as built, or read back from report.json (non-finite as "nan"/"inf").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptdiag.events import as_number
from ptdiag.findings import Finding
from ptdiag.report.svg import Series

# (field of a step_time part, label), in the order of a step; "other" is what no phase covers
PHASES = (("data", "data wait"), ("forward", "forward"), ("backward", "backward"),
          ("optimizer", "optimizer"), ("other", "rest of the step"))
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


def _points(points) -> list[tuple[float, float]]:
    return [(float(x), y) for x, value in points or [] if (y := as_number(value)) is not None]


def loss(series: dict) -> Series | None:
    points = _points((series.get("loss") or {}).get("points"))
    return Series("loss", points) if points else None


def first_nonfinite_loss(series: dict) -> dict | None:
    return (series.get("loss") or {}).get("first_nonfinite")


def grad_norms(series: dict) -> list[Series]:
    """Total gradient norm per step, and each parameter group's where there are several."""
    norms = series.get("grad_norm") or {}
    total = _points(norms.get("total"))
    found = [Series("total", total)] if total else []
    found += [Series(f"group {i}", _points(points)) for i, points in enumerate(norms.get("groups") or [])]
    return found


def step_breakdown(series: dict) -> StepBreakdown | None:
    steps = series.get("step_time")
    if not steps or not steps.get("steps"):
        return None
    parts = {label: [as_number(v) or 0.0 for v in steps["parts"][key]] for key, label in PHASES if key in steps["parts"]}
    return StepBreakdown([float(s) for s in steps["steps"]], parts, bool(steps.get("phases_measured")))


def memory(series: dict) -> list[Series]:
    lines = series.get("memory") or {}
    return [Series(label, _points(lines[key])) for key, label in MEMORY_FIELDS if lines.get(key)]


def rank_step_times(series: dict) -> list[Series]:
    """Step time per rank, where there are several ranks to compare."""
    ranks = series.get("rank_step_time") or {}
    return [Series(f"rank {rank}", _points(points)) for rank, points in sorted(ranks.items(), key=lambda kv: int(kv[0]))]


def memory_breakdown(findings: list[Finding]) -> list[tuple[str, float]]:
    finding = next((f for f in findings if f.code == BREAKDOWN_CODE), None)
    if finding is None:
        return []
    items = []
    for key, label in BREAKDOWN_PARTS:
        value = as_number(finding.evidence.get(f"{key}_bytes"))
        if value is not None and math.isfinite(value):
            items.append((label, value))
    return items
