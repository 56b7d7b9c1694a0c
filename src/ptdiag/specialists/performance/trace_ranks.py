"""Several ranks' profiled windows side by side: which rank works, which ranks wait.

Each rank of a DDP job writes its own trace (the probe's artifacts/trace.rank{N}.json.gz)
and each is analysed alone by trace.analyse_trace and trace_cpu.host_metrics; here one
compact row per rank is drawn from those analyses, and the rows are compared.

DDP makes every rank wait for the slowest in the gradient all-reduce, so the ranks'
profiled step times come out equal and say nothing by themselves. What differs is how
long each rank has a collective in flight (trace_steps: gloo keeps its range open until
every rank has contributed; on GPUs, NCCL kernels no computation overlaps): a rank that
arrives early waits there, the rank the others wait for hardly at all. A rank's own work
is its step minus that time, and minus the time its thread waited for a CPU where the
probe measured it (a rank the machine held off the CPU is not doing more work).
"""

from __future__ import annotations

import statistics
from typing import Any

from ptdiag.specialists.distributed.checks_straggler import MIN_GAP_S, SLOW_RATIO, WAIT_SHARE

# When one rank's profiled window counts as holding the others back. The bars are the
# distributed specialist's straggler bars (checks_straggler), so both specialists call the
# same thing a straggler whichever of them measured it: the slowest rank's own work is
# `work_ratio` times the median of the others' and `min_gap_ms` longer per step (below
# that, a 2-core CI box's timer noise), and the others' collectives last longer than its
# own by at least `wait_share` of that gap (they wait for it; without this a rank doing
# extra work no one waits for, e.g. after the last collective, would be blamed).
IMBALANCE = {"work_ratio": SLOW_RATIO, "min_gap_ms": 1000.0 * MIN_GAP_S, "wait_share": WAIT_SHARE}
# The gap must hold in every profiled step the ranks share, and in at least this many: a
# rank the scheduler preempted in one step of a loaded box works longer there (and the
# others wait for it) exactly as a straggler does; only a straggler does so step after step.
MIN_CONSISTENT_STEPS = 2
# gpu_timeline fields (ms) shown per rank as shares of the GPU timeline's span
GPU_SHARES = ("busy", "idle", "computation", "exposed_comm")


def rank_row(metrics: dict[str, Any], host: dict[str, Any] | None,
             cpu_wait_ms: dict[int, float] | None = None) -> dict[str, Any]:
    """metrics["trace_per_rank"][rank]: one rank's profiled window in a few numbers (ms,
    medians over its profiled steps; shares of the step or of the GPU timeline).

    `cpu_wait_ms`: per profiled step, the time the rank's training thread was ready but
    waited for a CPU (the probe's run delay; absent for a trace alone). It is not the
    rank's work: on a machine with more runnable threads than cores one rank can be held
    off the CPU step after step and would look like a straggler."""
    waits = cpu_wait_ms or {}
    steps = metrics.get("steps") or {}
    per_step = steps.get("per_step", [])
    row: dict[str, Any] = {"steps": len(per_step)}
    if per_step:
        row["step_ms_p50"] = _median(s["ms"] for s in per_step)
        row["data_wait_share"] = steps["data_wait_share"]
    if per_step and "collective_ms" in per_step[0]:
        row["collective_ms_p50"] = _median(s["collective_ms"] for s in per_step)
        row["collective_share"] = steps["collective_share"]
        work = [(s.get("step"), max(0.0, s["ms"] - s["collective_ms"] - waits.get(s.get("step"), 0.0)))
                for s in per_step]
        row["work_ms_p50"] = _median(ms for _, ms in work)
        row["work_ms_per_step"] = {str(step): round(ms, 3) for step, ms in work if step is not None}
        if waits:
            row["cpu_wait_ms_p50"] = _median(waits.get(s.get("step"), 0.0) for s in per_step)
    timeline = metrics.get("gpu_timeline")
    if timeline and timeline["total_ms"] > 0:
        row["gpu_shares"] = {k: round(timeline[f"{k}_ms"] / timeline["total_ms"], 4) for k in GPU_SHARES}
    if host:
        row["outside_ops_share"] = host["outside_ops_share"]
    top = metrics.get("top_cpu_ops")
    if top:
        row["top_op"] = {"name": top[0]["name"], "self_ms": top[0]["self_ms"]}
    return row


def imbalance(per_rank: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The rank the others wait for, with the numbers that show it; None when the ranks
    with collectives in their traces are fewer than two or do not differ by IMBALANCE."""
    rows = {rank: row for rank, row in per_rank.items() if "work_ms_p50" in row}
    if len(rows) < 2:
        return None
    slow = max(rows, key=lambda rank: rows[rank]["work_ms_p50"])
    others = [row for rank, row in rows.items() if rank != slow]
    work, others_work = rows[slow]["work_ms_p50"], _median(row["work_ms_p50"] for row in others)
    gap = work - others_work
    waited = _median(row["collective_ms_p50"] for row in others) - rows[slow]["collective_ms_p50"]
    if not _holds_back(work, others_work) or waited < IMBALANCE["wait_share"] * gap \
            or not _holds_back_every_step(rows[slow], others):
        return None
    others_step = _median(row["step_ms_p50"] for row in others)
    return {"rank": slow, "work_ms": work, "others_work_ms": others_work, "gap_ms": round(gap, 3),
            "others_wait_ms": round(waited, 3), "others_step_ms": others_step,
            "others_wait_share": round(waited / others_step, 4) if others_step > 0 else 0.0,
            "ratio": round(work / others_work, 3) if others_work > 0 else None}


def _holds_back(work: float, others_work: float) -> bool:
    return work >= IMBALANCE["work_ratio"] * others_work and work - others_work >= IMBALANCE["min_gap_ms"]


def _holds_back_every_step(slow: dict[str, Any], others: list[dict[str, Any]]) -> bool:
    """The slow rank's own work exceeds the others' (median) by the bars in each profiled
    step they all recorded, and there are at least MIN_CONSISTENT_STEPS such steps."""
    per_step = [slow.get("work_ms_per_step") or {}] + [row.get("work_ms_per_step") or {} for row in others]
    shared = set(per_step[0]).intersection(*per_step[1:])
    return len(shared) >= MIN_CONSISTENT_STEPS and all(
        _holds_back(per_step[0][step], statistics.median(other[step] for other in per_step[1:])) for step in shared)


def _median(values) -> float:
    return round(statistics.median(values), 3)
