"""Kineto (torch.profiler) Chrome-trace events built by hand, for tests of the trace analysis."""

from __future__ import annotations


def kineto_event(cat: str, name: str, ts: float, dur: float, correlation: int | None = None,
                 pid: int = 0, tid: int = 7, **args) -> dict:
    """One complete ("X") event; `args` become the event's args (e.g. an op's input types
    as `**{"Input type": [...]}`)."""
    if correlation is not None:
        args["correlation"] = correlation
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": pid, "tid": tid,
            "args": args}
