"""The memory specialist: what fills memory, what leaks, what will fit."""

from __future__ import annotations

from ptdiag.findings import Analysis, Finding
from ptdiag.recorded import RecordedRun
from ptdiag.verdict import oom_exception


def analyse(run: RecordedRun) -> Analysis:
    exc = oom_exception(run)
    if exc is None:
        return Analysis()
    message = exc.get("message", "").strip().splitlines()
    return Analysis(findings=[Finding(
        code="memory.oom", specialist="memory", severity="error",
        title=f"Out of memory at step {exc.get('step', 0) + 1} on rank {exc['rank']}",
        detail=f"{exc['type']}: {message[0] if message else ''}",
        evidence={"step": exc.get("step", 0) + 1, "rank": exc["rank"], "location": exc.get("location"),
                  "message": exc.get("message")},
        fix="Reduce the batch size (keep the effective batch with gradient accumulation) or use "
            "bf16/fp16 autocast; a memory snapshot at the failure tells which allocations to cut.")])
