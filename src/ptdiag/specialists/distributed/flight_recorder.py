"""Post-mortem of a hung NCCL job from its Flight Recorder dumps: which ranks everyone waits for.

With TORCH_NCCL_TRACE_BUFFER_SIZE set, each rank keeps its last collectives in a ring
buffer and dumps it (one pickle per rank) when a collective times out. Comparing the
ranks' positions in each process group names the ranks the others wait for, the
collective and sequence number they wait in, and where each rank last was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptdiag.findings import Analysis, Finding
from ptdiag.specialists.distributed.flight_recorder_dumps import (
    FlightRecorderError,
    check_dump,
    load_dumps,
    looks_like_dump,
)
from ptdiag.specialists.distributed.flight_recorder_groups import (
    LAG_REASONS,
    Stall,
    positions,
    process_groups,
    root_ranks,
    stalls,
    world_ranks,
)
from ptdiag.specialists.distributed.flight_recorder_ranks import (
    last_location,
    newest_time,
    rank_summary,
    seconds_before,
)

KIND = "flight_recorder"
SPECIALIST = "distributed"
__all__ = ["KIND", "FlightRecorderError", "sniff", "inspect", "analyse_dumps"]


def sniff(path: Path) -> bool:
    """A dump file, or a directory holding at least one (reads only the files' first bytes)."""
    path = Path(path)
    if path.is_dir():
        return any(looks_like_dump(child) for child in path.iterdir())
    return looks_like_dump(path)


def inspect(path: Path) -> Analysis:
    path = Path(path)
    analysis = analyse_dumps(load_dumps(path))
    analysis.artifacts["input"] = str(path)
    return analysis


def _ranks_text(ranks: list[int]) -> str:
    """'rank 3', 'ranks 0-11, 13, 14': runs of three or more consecutive ranks folded into ranges."""
    runs: list[list[int]] = []
    for rank in sorted(ranks):
        if runs and rank == runs[-1][-1] + 1:
            runs[-1].append(rank)
        else:
            runs.append([rank])
    spans = [f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs]
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(spans)


def _stall_line(stall: Stall, newest: int | None) -> str:
    waiting = ", ".join(f"{r} ({state})" for r, state in sorted(stall.waiting.items()))
    verb = "rank {} waits" if len(stall.waiting) == 1 else "ranks {} wait"
    lines = [f"{stall.group.label} (members {list(stall.group.ranks)}): {verb.format(waiting)} in "
             f"{stall.collective} #{stall.seq}"]
    for lag in stall.lagging:
        text = f"  rank {lag.rank} {LAG_REASONS[lag.reason][0]}"
        pos = lag.position
        if pos is not None:
            text += f"; last completed #{pos.last_completed}, last issued #{pos.last_enqueued}"
            if pos.pending is not None:
                text += f", stuck in {pos.pending.get('profiling_name')} #{pos.pending_seq}"
                since = seconds_before(newest, pos.pending.get("time_created_ns"))
                if since is not None:
                    text += f" (issued {since:.3f} s before the newest event in the dumps)"
        lines.append(text)
    if stall.ops_at_seq:
        ops = sorted(stall.ops_at_seq.items())
        lines.append("  ops at this number: " + ", ".join(f"rank {r}: {op}" for r, op in ops))
    return "\n".join(lines)


def _primary(involved: list[Stall], roots: set[int]) -> Stall:
    """The stall that best sums up the hang: most root ranks lagging in it, then the one
    whose root ranks got stuck there first."""
    def key(stall: Stall) -> tuple[int, float]:
        lags = [lag for lag in stall.lagging if lag.rank in roots]
        stuck = [lag.position.pending["time_created_ns"] for lag in lags
                 if lag.position and lag.position.pending and lag.position.pending.get("time_created_ns")]
        return (-len(lags), min(stuck, default=float("inf")))
    return min(involved, key=key)


def _fix(roots: list[int], involved: list[Stall], roots_set: set[int], no_frames: bool) -> str:
    reasons = sorted({lag.reason for s in involved for lag in s.lagging if lag.rank in roots_set})
    advice = " ".join(f"Where a rank {LAG_REASONS[r][0]}, {LAG_REASONS[r][1]}." for r in reasons)
    frames = (" These dumps carry no stack frames; dumps written on timeout"
              " (TORCH_NCCL_DUMP_ON_TIMEOUT=1) normally include them.") if no_frames else ""
    return (f"Start with {_ranks_text(roots)}: the other ranks wait for {'it' if len(roots) == 1 else 'them'}."
            f" {advice} "
            "For the next run: TORCH_FR_BUFFER_SIZE=2000 (TORCH_NCCL_TRACE_BUFFER_SIZE before torch 2.11) and "
            "TORCH_NCCL_DUMP_ON_TIMEOUT=1 so every "
            "rank dumps at the time-out, TORCH_NCCL_ENABLE_TIMING=1 to record when each collective "
            "started on the GPU, and a shorter process-group timeout to fail fast." + frames)


def _mismatch_finding(found: list[Stall], roots: list[int], dumps: dict[int, dict[str, Any]],
                      summaries: dict[int, dict[str, Any]], newest: int | None) -> Finding:
    roots_set = set(roots)
    involved = [s for s in found if any(lag.rank in roots_set for lag in s.lagging)]
    primary = _primary(involved, roots_set)
    waiting = sorted({r for s in involved for r in s.waiting} - roots_set)
    located = {r: last_location(dumps[r]) for r in roots + waiting if r in dumps}
    locations = {r: loc for r, loc in located.items() if loc}
    blocked = [s for s in found if s not in involved]
    indirect = sorted(r for r, summary in summaries.items()
                      if summary["oldest_unfinished_ns"] is not None and r not in roots_set and r not in waiting)
    detail = "\n".join(
        [_stall_line(s, newest) for s in involved]
        + ([f"{len(blocked)} more group(s) wait on ranks that are themselves waiting: "
            + ", ".join(s.group.label for s in blocked)] if blocked else [])
        + ([f"{_ranks_text(indirect).capitalize()} also have unfinished ops, but in each of their groups no"
            " member is behind another: they are held up indirectly (send/recv cannot be matched by"
            " sequence number)."] if indirect else [])
        + [f"Rank {r} last location: {loc}" for r, loc in sorted(locations.items())]
        + ([] if locations else ["No stack frames recorded in these dumps."]))
    return Finding(
        code="distributed.collective_mismatch",
        specialist=SPECIALIST,
        severity="error",
        title=(f"{_ranks_text(roots).capitalize()} never completed the collectives that "
               f"{_ranks_text(waiting)} wait in ({primary.collective} #{primary.seq} in {primary.group.label})"),
        detail=detail,
        evidence={"ranks": roots, "process_group": primary.group.to_evidence(),
                  "collective": primary.collective, "seq": primary.seq,
                  "waiting_ranks": sorted(primary.waiting), "locations": locations,
                  "groups": [s.to_evidence() for s in involved],
                  "blocked_groups": [s.group.label for s in blocked]},
        fix=_fix(roots, involved, roots_set, not locations),
    )


def _consistent_finding(dumps: dict[int, dict[str, Any]], summaries: dict[int, dict[str, Any]],
                        n_groups: int, undumped: list[int]) -> Finding:
    in_flight = sum(n for s in summaries.values() for state, n in s["states"].items() if state != "completed")
    entries = sum(s["entries"] for s in summaries.values())
    if in_flight == 0:
        state = where = "every recorded collective completed"
    else:
        state = f"{in_flight} ops in flight, every group's members at the same collective"
        where = (f"{in_flight} ops in flight, but in every process group all members wait in the same "
                 "collective: no rank is behind or missing, so the dumps name no culprit (a stall inside "
                 "NCCL/the network, or dumps taken mid-step)")
    return Finding(
        code="distributed.fr_consistent",
        specialist=SPECIALIST,
        severity="info",
        title=f"Flight Recorder: {len(dumps)} ranks agree on their collectives ({state})",
        detail=f"{entries} entries from {len(dumps)} ranks in {n_groups} process groups; {where}."
               + (f" Not compared: {_ranks_text(undumped)}, which left no dump here." if undumped else ""),
        evidence={"ranks": sorted(dumps), "entries": entries, "in_flight": in_flight,
                  "process_groups": n_groups, "ranks_without_dump": undumped},
        fix="" if in_flight == 0 else (
            "If the job hung, no rank is behind at the collective level: look below it (NCCL_DEBUG=INFO,"
            " network/NVLink health)" + (", and add the missing ranks' dumps" if undumped else "") + "."),
    )


def analyse_dumps(dumps: dict[int, dict]) -> Analysis:
    """Rank -> loaded Flight Recorder dump, into findings and per-rank metrics."""
    if not dumps:
        raise FlightRecorderError("no Flight Recorder dumps to analyse")
    for rank, dump in dumps.items():
        check_dump(f"rank {rank}", dump)
    groups = process_groups(dumps)
    labels = {name: group.label for name, group in groups.items()}
    by_group = positions(dumps)
    newest = newest_time(dumps)
    summaries = {rank: rank_summary(dump, {g: m[rank] for g, m in by_group.items() if rank in m},
                                    labels, newest)
                 for rank, dump in sorted(dumps.items())}
    found = stalls(groups, by_group, set(dumps))
    roots = root_ranks(found)
    undumped = sorted(world_ranks(set(dumps), groups) - set(dumps))
    finding = (_mismatch_finding(found, roots, dumps, summaries, newest) if roots
               else _consistent_finding(dumps, summaries, len(groups), undumped))
    metrics = {"flight_recorder": {
        "versions": sorted({str(d.get("version")) for d in dumps.values()}),
        "nccl_versions": sorted({str(d.get("nccl_version")) for d in dumps.values()}),
        "ranks_dumped": sorted(dumps), "ranks_without_dump": undumped,
        "process_groups": len(groups), "culprits": roots,
        "stalled_groups": {s.group.label: {"collective": s.collective, "seq": s.seq} for s in found},
        "per_rank": summaries}}
    return Analysis(findings=[finding], metrics=metrics)
