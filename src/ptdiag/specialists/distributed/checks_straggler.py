"""Stragglers: DDP makes every rank wait for the slowest in backward's all-reduce, so step
times are equal across ranks and say nothing; the time *outside* backward (data, forward,
loss, optimizer) differs, and the fast ranks' backward grows by what they wait."""

from __future__ import annotations

import statistics

from ptdiag.findings import Finding
from ptdiag.specialists.distributed.job import Job

SPECIALIST = "distributed"
MIN_STEPS = 3
SLOW_RATIO = 1.3  # the slowest rank's work outside backward vs the median of the others
MIN_GAP_S = 0.005  # and at least this much slower per step
WAIT_SHARE = 0.5  # the others' backward must be longer by at least this share of the gap: they wait for it


def straggler_metrics(job: Job) -> dict[int, dict]:
    per_rank = {}
    for rank, events in job.events("dist_step").items():
        events = events[1:]  # the first measured step still warms up
        if len(events) >= MIN_STEPS:
            per_rank[rank] = {"outside_s": statistics.median(e["outside_s"] for e in events),
                              "backward_s": statistics.median(e["backward_s"] for e in events),
                              "steps": len(events)}
    return per_rank


def straggler_findings(job: Job) -> list[Finding]:
    per_rank = straggler_metrics(job)
    if len(per_rank) < 2:
        return []
    slow = max(per_rank, key=lambda r: per_rank[r]["outside_s"])
    others = statistics.median(v["outside_s"] for r, v in per_rank.items() if r != slow)
    gap = per_rank[slow]["outside_s"] - others
    if per_rank[slow]["outside_s"] < SLOW_RATIO * others or gap < MIN_GAP_S:
        return []
    waits = statistics.median(v["backward_s"] for r, v in per_rank.items() if r != slow) - per_rank[slow]["backward_s"]
    if waits < WAIT_SHARE * gap:
        return []  # nobody waited for it (no gradient sync in backward, or noise): not holding the job back
    return [Finding(
        code="distributed.straggler", specialist=SPECIALIST, severity="warning",
        title=f"Rank {slow} is the straggler: {per_rank[slow]['outside_s'] * 1e3:.0f} ms per step outside "
              f"backward vs {others * 1e3:.0f} ms on the others",
        detail=f"Median per step over {per_rank[slow]['steps']} steps. The other ranks' backward is "
               f"{waits * 1e3:.0f} ms longer than rank {slow}'s: they wait for it in DDP's all-reduce, so the "
               f"whole job runs at rank {slow}'s pace. Per rank (outside backward / backward, ms): "
               + ", ".join(f"{r}: {v['outside_s'] * 1e3:.1f} / {v['backward_s'] * 1e3:.1f}"
                           for r, v in sorted(per_rank.items())) + ".",
        evidence={"rank": slow, "ratio": round(per_rank[slow]["outside_s"] / others, 3) if others else None,
                  "per_rank": {str(r): {k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()}
                               for r, m in per_rank.items()}},
        fix=f"Look at what rank {slow} does differently: its data loading (workers, storage), extra work on "
            "that rank (logging, evaluation, checkpointing inside the step), CPU threads or a slower/shared "
            "device. `ptdiag \"slow steps\"` on it profiles the step.")]
