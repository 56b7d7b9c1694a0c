"""`memory.oom` and the CUDA snapshot findings of a recorded run.

With a snapshot the probe dumped at the OOM, the snapshot analysis names the request,
the free memory, the top allocation sites by user line and the phase; the recorded
exception adds the step and rank. Without one (a host OOM, or no CUDA), the exception
and the last measured memory at a step boundary are what is known, and said as such.
"""

from __future__ import annotations

from pathlib import Path

from ptdiag.events import OOM_CAUGHT as CAUGHT, OOM_RAISED as RAISED
from ptdiag.findings import Finding
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.memory.snapshot import analyse_snapshot
from ptdiag.specialists.memory.snapshot_findings import format_bytes
from ptdiag.specialists.memory.snapshot_format import SnapshotError, load_snapshot_file
from ptdiag.verdict import oom_exception


def snapshot_analyses(run: RecordedRun) -> dict[str, object]:
    """{relative path: Analysis} for each snapshot the probe saved (unreadable ones skipped)."""
    roots = [run.meta["cwd"]] if run.meta.get("cwd") else None
    found = {}
    for event in run.all_events("mem_snapshot"):
        path = run.run_dir / event["path"]
        try:
            found[event["path"]] = analyse_snapshot(load_snapshot_file(Path(path)), roots)
        except (SnapshotError, OSError):
            continue
    return found


def _kept(snapshots: dict, reason: str) -> tuple[str, object] | tuple[None, None]:
    return next(((p, a) for p, a in snapshots.items() if p.endswith(f".{reason}.pickle")), (None, None))


def oom_findings(run: RecordedRun, snapshots: dict) -> list[Finding]:
    """The OOM that ended the run (error), or, when none did, the allocator's refusals
    that did not reach the program as an error (info: torch retries some itself, such as
    cuDNN with a smaller workspace; the program may have caught others)."""
    exc = oom_exception(run)
    refused = run.all_events("mem_cuda_oom")
    if exc is None and not refused:
        return []
    where = {"step": (exc.get("step", 0) + 1) if exc else refused[-1].get("step"),
             "rank": exc["rank"] if exc else refused[-1]["rank"],
             "exception_location": exc.get("location") if exc else None}
    where["batch_size"] = _batch_size(run, where["rank"])
    path, analysis = _kept(snapshots, RAISED) if exc else (None, None)
    if analysis is None:
        path, analysis = _kept(snapshots, CAUGHT)
    from_snapshot = [f for f in (analysis.findings if analysis else []) if f.code == "memory.oom"]
    if from_snapshot:
        finding = from_snapshot[0]
        finding.evidence.update(where, snapshot=path, refused_requests=len(refused), reached_program=exc is not None)
        if exc is None:
            finding.severity = "info"
            finding.title = f"{finding.title} ({_not_raised(len(refused))})"
        return [finding]
    return [_exception_finding(run, exc, refused, where)]


def _batch_size(run: RecordedRun, rank: int) -> int | None:
    """The training DataLoader's batch size on the failing rank, as the program built it:
    the setting a smaller batch (the loader_batch_size intervention) starts from."""
    proc = run.ranks.get(rank) or run.main
    loader = proc.training_loader() if proc else None
    return (loader or {}).get("batch_size")


def _not_raised(count: int) -> str:
    return (f"did not end the run: the CUDA allocator refused {count} request(s) that torch retried itself "
            "or the program caught")


def _exception_finding(run: RecordedRun, exc: dict | None, caught: list[dict], where: dict) -> Finding:
    message = (exc.get("message", "") if exc else "").strip().splitlines()
    proc = run.ranks.get(where["rank"]) or run.main
    last = proc.of("mem_step")[-1] if proc and proc.of("mem_step") else None
    measured = (f" At the last step boundary (step {last['step']}) the process held {format_bytes(last.get('rss'))} "
                f"RSS" + (f", CUDA {format_bytes(last['cuda_allocated'])} allocated of "
                          f"{format_bytes(last['cuda_reserved'])} reserved" if "cuda_allocated" in last else "")
                + "." if last else "")
    return Finding(
        code="memory.oom", specialist="memory", severity="error" if exc else "info",
        title=f"Out of memory at step {where['step']} on rank {where['rank']}"
              + ("" if exc else f" ({_not_raised(len(caught))})"),
        detail=(f"{exc['type']}: {message[0] if message else ''}." if exc else "The CUDA allocator reported OOMs.")
               + measured + " No CUDA snapshot was recorded at the failure (CPU run, or CUDA unavailable to the probe).",
        evidence={**where, "location": where["exception_location"], "message": exc.get("message") if exc else None,
                  "caught_ooms": len(caught), "last_boundary": last},
        fix="Reduce the batch size" + (f" (the DataLoader's is {where['batch_size']})" if where["batch_size"] else "")
            + " (keep the effective batch with gradient accumulation) or use bf16 autocast; "
            "see memory.breakdown for what filled memory and the fixes ranked by measured savings.")


def snapshot_extra_findings(snapshots: dict) -> list[Finding]:
    """Fragmentation and allocation sites from the snapshots (the OOM finding is handled above)."""
    chosen = _kept(snapshots, RAISED)[1] or _kept(snapshots, CAUGHT)[1] or next(iter(snapshots.values()), None)
    if chosen is None:
        return []
    return [f for f in chosen.findings if f.code != "memory.oom"]
