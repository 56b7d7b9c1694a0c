"""The host side of a profiled step: how much of it runs inside ops, how small the ops
are, which dtypes they compute in, what kind of work they do, and (on CUDA) where the
host waited for the device.

`trace.analyse_trace` gives the GPU timeline and the per-step data wait; this adds what
the launch-bound, float64, host-sync and CPU compute-bound verdicts need. A step's time
outside any top-level op is Python and framework overhead (module calls, hooks, loops);
time inside ops shorter than TINY_OP_US is mostly dispatch cost rather than arithmetic.
Time waiting (for data, or for other ranks in a collective) is neither: it is left out.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import defaultdict
from typing import Any

from ptdiag.specialists.performance.trace_cpu_ops import self_times
from ptdiag.specialists.performance.trace_events import (CATEGORY_KINDS, COLLECTIVE_SPAN, DATA_WAIT_PREFIX,
                                                        STEP_PREFIX, Span)
from ptdiag.specialists.performance.trace_intervals import length, subtract, union

TINY_OP_US = 25.0
# (category, pattern) over CPU op names, first match wins
CPU_OP_CATEGORIES = [
    ("matmul_conv", r"conv|mm\b|addmm|bmm|matmul|linear|mkldnn"),
    ("normalization", r"batch_norm|layer_norm|group_norm|native_norm"),
    ("optimizer", r"_foreach|sgd|adam"),
    ("reduction", r"sum|mean|max|min|softmax|nll_loss|cross_entropy|norm"),
    ("elementwise", r"add|mul|div|sub|relu|threshold|sigmoid|tanh|gelu|clamp|copy_|fill_|zero_|where|exp|log|pow|sqrt"),
]
# CUDA runtime calls that block the host until the device is done (cudaMemcpy is the
# synchronous copy; cudaMemcpyAsync and cudaStreamWaitEvent do not block the host).
SYNC_RUNTIME_CALLS = frozenset({"cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize",
                                "cudaMemcpy"})
LOCATED_SYNCS_MAX = 64  # sync calls whose Python line is looked up (the rest are counted only)
PYTHON_FRAME = re.compile(r"^(?P<file>.+?)\((?P<line>\d+)\): (?P<func>.*)$")
NOT_USER_PREFIXES = ("torch/", "<", "threading.py", "multiprocessing/")
# ptdiag's frames, as the trace names them: relative when torch trimmed a sys.path prefix
# ("ptdiag/probe/..."), absolute when ptdiag's directory was not on sys.path then
PTDIAG_FRAME = re.compile(r"(^|/)ptdiag/")
# ptdiag's frames that pass the program's own calls on (its wrappers of backward and the
# optimizer step, its op watches' modes): not ptdiag's work (location.PTDIAG_PASS_THROUGH)
PTDIAG_PASS_THROUGH = re.compile(r"(^|/)ptdiag/probe/(patches|instruments/ops)\.py$")
PTDIAG_SYNC = "ptdiag"  # a sync whose innermost non-torch frame is ptdiag's work: not the program's
_CATEGORY_RES = [(name, re.compile(p)) for name, p in CPU_OP_CATEGORIES]


def host_metrics(trace: dict[str, Any]) -> dict[str, Any] | None:
    """metrics of the profiled steps' host side; None when the trace has no steps."""
    spans = _spans(trace)
    steps = sorted(spans["step"], key=lambda s: s.start)
    if not steps:
        return None
    main_tid, main_pid = steps[0].tid, steps[0].pid
    ops = [s for s in spans["cpu_op"] if s.tid == main_tid]
    top = _top_level(ops)
    # waiting is not overhead: for data, and for other ranks in a collective (gloo keeps its
    # range open on its worker thread while the training thread sits in backward)
    waits = union([(w.start, w.end) for w in spans["data_wait"] if w.tid == main_tid]
                  + [(c.start, c.end) for c in spans["collective"] if c.pid == main_pid])
    step_us = work_us = in_ops_us = tiny_us = 0.0
    top_in_steps = 0
    for step in steps:
        window = subtract([(step.start, step.end)], waits)
        inside = [op for op in top if step.start <= op.start < step.end]
        top_in_steps += len(inside)
        covered = union((op.start, op.end) for op in inside)
        step_us += step.dur
        work_us += length(window)
        in_ops_us += length(_intersect(covered, window))
        tiny_us += sum(op.dur for op in inside if op.dur < TINY_OP_US)
    in_steps = [op for op in top if _in_steps(op, steps)]
    double_us = sum(op.dur for op in in_steps if "double" in spans["types"].get(id(op), ()))
    return {
        "steps": len(steps),
        "top_level_ops_per_step": round(top_in_steps / len(steps), 1),
        "outside_ops_share": _share(work_us - in_ops_us, work_us),
        "tiny_ops_share": _share(tiny_us, work_us),
        "float64_ops_share": _share(double_us, in_ops_us),
        "op_time_shares": _categories(ops),
        "syncs": _runtime_syncs(spans["runtime"], spans["python"], steps),
    }


def _spans(trace: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = defaultdict(list)
    found["types"] = {}
    for event in trace.get("traceEvents", []):
        if not isinstance(event, dict) or event.get("ph") != "X":
            continue
        start, dur = event.get("ts"), event.get("dur")
        if not isinstance(start, (int, float)) or not isinstance(dur, (int, float)):
            continue
        name, cat = str(event.get("name", "")), str(event.get("cat", "")).lower()
        kind = CATEGORY_KINDS.get(cat)
        span = Span(name, float(start), float(start) + float(dur), event.get("pid"), event.get("tid"))
        if cat != "python_function" and COLLECTIVE_SPAN.search(name):  # gloo's range is a user_annotation
            found["collective"].append(span)
        if name.startswith(STEP_PREFIX):
            found["step"].append(span)
        elif name.startswith(DATA_WAIT_PREFIX):
            found["data_wait"].append(span)
        elif kind == "cpu_op":
            found["cpu_op"].append(span)
            args = event.get("args")
            if isinstance(args, dict) and isinstance(args.get("Input type"), list):
                found["types"][id(span)] = args["Input type"]
        elif kind == "launch":
            found["runtime"].append(span)
        elif cat == "python_function":
            found["python"].append(span)
    return found


def _in_steps(span: Span, steps: list[Span]) -> bool:
    """Whether a span starts inside one of the (sorted, disjoint) steps."""
    i = bisect_right([s.start for s in steps], span.start) - 1
    return i >= 0 and span.start < steps[i].end


def _top_level(ops: list[Span]) -> list[Span]:
    """Ops not nested in another op of the same thread (the ones the program called)."""
    top, end = [], float("-inf")
    for op in sorted(ops, key=lambda o: (o.start, -o.end)):
        if op.start >= end:
            top.append(op)
            end = op.end
    return top


def _intersect(a, b):
    return subtract(a, subtract(a, b))


def _categories(ops: list[Span]) -> dict[str, float]:
    own = {name: entry[0] for name, entry in self_times(ops).items()}
    total = sum(own.values())
    shares: dict[str, float] = defaultdict(float)
    for name, us in own.items():
        category = next((c for c, regex in _CATEGORY_RES if regex.search(name)), "other")
        shares[category] += us
    return {c: _share(us, total) for c, us in sorted(shares.items(), key=lambda kv: -kv[1])}


def _runtime_syncs(runtime: list[Span], python: list[Span], steps: list[Span]) -> dict[str, Any]:
    """Blocking CUDA runtime calls per profiled step, with the user line around each. ptdiag's
    own (its readings inside the program's backward, say) are counted apart, never blamed on
    the program's line that encloses them."""
    calls = [r for r in runtime if r.name in SYNC_RUNTIME_CALLS and _in_steps(r, steps)]
    if not calls:
        return {"per_step": 0.0, "blocked_ms_per_step": 0.0, "locations": []}
    frames: dict[object, list[Span]] = defaultdict(list)
    for frame in sorted(python, key=lambda f: f.start):
        frames[frame.tid].append(frame)
    where: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for call in calls[:LOCATED_SYNCS_MAX]:
        location = _user_frame(call, frames.get(call.tid, [])) or "unknown"
        where[location][0] += 1
        where[location][1] += call.dur
    ours_n, ours_us = where.pop(PTDIAG_SYNC, (0, 0.0))
    located = min(len(calls), LOCATED_SYNCS_MAX)
    scale = len(calls) / located  # the calls beyond LOCATED_SYNCS_MAX: ptdiag's in the proportion located
    n = len(steps)
    return {
        "per_step": round((len(calls) - ours_n * scale) / n, 2),
        "blocked_ms_per_step": round((sum(c.dur for c in calls) - ours_us * scale) / n / 1000.0, 3),
        "located_calls": located,
        "ptdiag_per_step": round(ours_n / n, 2),
        "ptdiag_blocked_ms_per_step": round(ours_us / n / 1000.0, 3),
        "locations": [{"location": loc, "per_step": round(count / n, 2),
                       "blocked_ms_per_step": round(us / n / 1000.0, 3)}
                      for loc, (count, us) in sorted(where.items(), key=lambda kv: -kv[1][1])],
    }


def _user_frame(call: Span, frames: list[Span]) -> str | None:
    """`file:line` (the function's first line: the trace names frames by it) of the
    innermost user Python frame enclosing a call; `frames` are one thread's, by start.
    PTDIAG_SYNC when a frame of ptdiag's own work comes first."""
    i = bisect_right([f.start for f in frames], call.start)
    for frame in reversed(frames[:i]):
        if call.end <= frame.end:
            match = PYTHON_FRAME.match(frame.name)
            if not match:
                continue
            file = match["file"]
            if PTDIAG_FRAME.search(file):
                if not PTDIAG_PASS_THROUGH.search(file):
                    return PTDIAG_SYNC
            elif not file.startswith(NOT_USER_PREFIXES) and "site-packages" not in file:
                return f"{file}:{match['line']}"
    return None


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole > 0 else 0.0
