"""Hangs and collective mismatches: which rank waits in which collective, and where the
rank it waits for is instead.

Per rank it combines what survives a hang: the live state file (calls per collective
call site, the collective it is inside now), the Python stack (ptdiag's --timeout dumps
them) or the traceback of the error that ended it (a process-group time-out). A call
site whose call count differs between ranks is the collective some rank skipped: the
ranks with fewer calls are named, with where they are instead.
"""

from __future__ import annotations

from ptdiag.findings import Finding
from ptdiag.specialists.distributed.errors import classify, describe
from ptdiag.specialists.distributed.flight_recorder import _ranks_text
from ptdiag.specialists.distributed.job import Job
from ptdiag.specialists.distributed.stacks import where

SPECIALIST = "distributed"
COMMUNICATION_ERRORS = ("timeout", "peer_gone", "mismatch")
MESSAGE_CHARS = 160


def _position(view, status: str) -> dict:
    """Where one rank is: stack dump, else its last error's traceback, else its live state."""
    exc = (view.of("exception") or [None])[-1]
    state = view.state or {}
    in_flight = state.get("in_flight")
    cwd = (view.first("start") or {}).get("cwd")
    found = where(view.stack, cwd) if status in ("hung", "timeout") else None
    found = found or (where(exc.get("traceback"), cwd) if exc else None)
    pos = found.to_dict() if found else {"location": None, "function": None, "collective": None, "phase": None}
    if in_flight and not pos["collective"]:
        pos.update(collective=in_flight["name"], location=in_flight["location"])
    pos["step"] = state.get("step", view.proc.steps)
    pos["waiting_in"] = in_flight
    pos["error"] = classify(exc.get("message", "")) if exc else None
    pos["error_message"] = exc.get("message", "").splitlines()[0][:MESSAGE_CHARS] if exc and exc.get("message") else None
    exited = view.first("exit")
    pos["exited"] = bool(exited) and exc is None
    pos["describe"] = found.describe() if found else (
        f"in {in_flight['name']} at {in_flight['location']}" if in_flight else
        "had left: its program ended normally" if pos["exited"] else "position unknown (no stack recorded)")
    return pos


def _site_counts(job: Job) -> dict[tuple, dict[int, dict]]:
    counts: dict[tuple, dict[int, dict]] = {}
    with_state = [r for r, v in job.ranks.items() if v.state]
    for rank in with_state:
        for site in job.ranks[rank].state.get("sites", []):
            counts.setdefault((site["name"], site["location"]), {})[rank] = site
    return {k: {r: v.get(r, {"calls": 0}) for r in with_state} for k, v in counts.items()}


def _mismatched_site(job: Job):
    """The first call site (by the step it was first called) whose count differs between ranks."""
    differing = [(min(s.get("first_step", 0) for s in per.values() if s["calls"]), key, per)
                 for key, per in _site_counts(job).items() if len({s["calls"] for s in per.values()}) > 1]
    return min(differing, key=lambda d: (d[0], str(d[1])), default=None)


def hang_findings(job: Job, status: str) -> list[Finding]:
    if not job.distributed:
        return []
    positions = {r: _position(v, status) for r, v in job.ranks.items()}
    mismatch = _mismatched_site(job)
    troubled = [r for r, p in positions.items() if p["error"] in COMMUNICATION_ERRORS]
    communicating = [r for r, p in positions.items() if p.get("collective") or p.get("phase")]
    stuck = (status in ("hung", "timeout") and bool(communicating)) or bool(troubled)
    if mismatch is None and not stuck:
        return []
    missing = sorted(set(range(job.world_size)) - set(job.ranks))
    if mismatch is not None:
        return [_skipped_collective(job, mismatch, positions, missing)]
    return [_stuck_elsewhere(positions, troubled, missing, status)]


def _rank_line(rank: int, pos: dict) -> str:
    line = f"rank {rank}: {pos['describe']} (after step {pos['step']})"
    if pos.get("phase") and pos.get("location"):
        line = f"rank {rank}: in {pos['phase']}, at {pos['location']} (after step {pos['step']})"
    if pos["error"]:
        line += f"; it ended with {describe(pos['error'])}: {pos['error_message']}"
    return line


def _per_rank_evidence(positions: dict[int, dict], extra: dict[int, dict] | None = None) -> dict:
    keep = ("location", "collective", "phase", "step", "error", "error_message", "exited")
    return {str(r): {**{k: p.get(k) for k in keep}, **(extra or {}).get(r, {})} for r, p in positions.items()}


def _skipped_collective(job: Job, mismatch, positions: dict[int, dict], missing: list[int]) -> Finding:
    first_step, (name, location), per = mismatch
    most = max(s["calls"] for s in per.values())
    behind = sorted(r for r, s in per.items() if s["calls"] < most)
    ahead = sorted(r for r, s in per.items() if s["calls"] == most)
    waiting = [r for r in ahead if (positions[r].get("waiting_in") or {}).get("location") == location]
    verb = "waits" if len(waiting or ahead) == 1 else "wait"
    title = (f"{_ranks_text(behind).capitalize()} never reached {name} at {location}, where "
             f"{_ranks_text(waiting or ahead)} {verb} (call #{most} there)")
    lines = [_rank_line(r, positions[r]) + f"; {per[r]['calls']} of {most} calls to {name} at {location}"
             for r in sorted(positions)]
    if missing:
        lines.append(f"{_ranks_text(missing)} recorded nothing in this store")
    return Finding(
        code="distributed.collective_mismatch", specialist=SPECIALIST, severity="error", title=title,
        detail="Collectives must be called by every rank of the group, in the same order. " + "; ".join(lines) + ".",
        evidence={"collective": name, "location": location, "rank": behind[0], "ranks": behind,
                  "waiting_ranks": waiting or ahead, "calls": {str(r): s["calls"] for r, s in per.items()},
                  "first_step": first_step, "per_rank": _per_rank_evidence(positions),
                  "missing_ranks": missing},
        fix=f"Call {name} at {location} on every rank (a rank-dependent branch such as `if rank == 0:` "
            "must not contain collectives: compute on all ranks, use the result on one). "
            "To catch such mismatches at once while debugging: TORCH_DISTRIBUTED_DEBUG=DETAIL "
            "(without DDP on gloo, where it crashes in torch 2.14) and a short process-group "
            "`timeout=` in init_process_group.")


def _stuck_elsewhere(positions: dict[int, dict], troubled: list[int], missing: list[int], status: str) -> Finding:
    in_collective = sorted(r for r, p in positions.items() if p.get("collective") or p.get("phase"))
    places = {p.get("location") for p in positions.values()}
    elsewhere = sorted(set(positions) - set(in_collective)) or (missing if missing else [])
    if elsewhere:
        title = f"{_ranks_text(elsewhere).capitalize()} did not join the collective {_ranks_text(in_collective)} wait in"
    elif len(places) > 1:
        title = f"Ranks wait in different collectives: {_ranks_text(sorted(positions))} disagree on what comes next"
    else:
        title = f"Every rank waits in the same place ({next(iter(places))}): a rank outside this job, or the network"
    lines = [_rank_line(r, p) for r, p in sorted(positions.items())]
    if missing:
        lines.append(f"{_ranks_text(missing)} recorded nothing here (another node, or died before the probe)")
    return Finding(
        code="distributed.collective_mismatch", specialist=SPECIALIST, severity="error", title=title,
        detail=("The run " + ("stopped making progress" if status in ("hung", "timeout") else "ended with communication errors")
                + ". " + "; ".join(lines) + "."),
        evidence={"rank": (elsewhere or troubled or sorted(positions))[0], "ranks": elsewhere,
                  "waiting_ranks": in_collective, "per_rank": _per_rank_evidence(positions),
                  "missing_ranks": missing},
        fix="Make every rank run the same sequence of collectives (DDP's own forward broadcast and backward "
            "all-reduce count: a rank that skips a step, breaks out of the loop early or has fewer batches "
            "leaves the others waiting). Uneven data: DistributedSampler(drop_last=True) or DDP's join().")
