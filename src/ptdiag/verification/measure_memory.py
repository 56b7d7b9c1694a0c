"""The memory fixes' metric (`unused_forwards`): the forwards that recorded an autograd
graph no backward used (the memory plugin's `mem_unused_forward`, per line and mode), the
bytes a sampled forward there saved for backward (`mem_saved`: what no_grad does not
keep) and the peak memory at step boundaries (`mem_step`: host RSS, CUDA allocated where
there is one). The verdict is the count at the finding's line: a forward under no_grad
records no graph, so the count is 0 when the fix took; the bytes are reported, the peaks
only shown (an evaluation after the last step is past every step boundary, and on a CPU
the RSS holds freed memory the allocator keeps).

A smaller batch has two: `step_peak` (memory.fit: a real step's measured peak against
the target) and `oom_step` (memory.oom: whether the run got past the step that ran out of
memory, OOM_MARGIN_STEPS more, without running out again).
"""

from __future__ import annotations

from ptdiag.options import settings
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.memory.snapshot_findings import format_bytes
from ptdiag.verdict import oom_exception
from ptdiag.verification.measure import Metric


def _unused(run: RecordedRun) -> dict | None:
    proc = run.main
    if proc is None:
        return None
    last = {(e["location"], e["training"]): e for e in proc.of("mem_unused_forward")}
    top = max(last.values(), key=lambda e: e["count"], default=None)
    steps = proc.of("mem_step")
    saved: dict[str, int] = {}  # line (mode) -> the most a sampled forward there saved for backward
    for e in proc.of("mem_saved"):
        line = _line(e["location"], e["training"])
        saved[line] = max(saved.get(line, 0), e.get("bytes") or 0)
    found = {"forwards": top["count"] if top else 0, "location": top["location"] if top else None,
             "training": top["training"] if top else None,
             "forwards_by_line": {_line(loc, training): e["count"] for (loc, training), e in last.items()},
             "saved_bytes_by_line": saved,
             "peak_rss_bytes": max((e.get("rss") or 0 for e in steps), default=None),
             "steps": run.steps_observed}
    cuda = [e["cuda_allocated"] for e in steps if e.get("cuda_allocated") is not None]
    if cuda:
        found["peak_cuda_allocated_bytes"] = max(cuda)
    return found


def _line(location: str | None, training: bool | None) -> str:
    return f"{location} ({'training' if training else 'eval'})"


def _site(found: dict) -> str:
    return _line(found["location"], found["training"])


def _before(run: RecordedRun) -> dict | None:
    found = _unused(run)
    return found if found and found["forwards"] else None


def _helped(before: dict, after: dict) -> bool:
    return not after["forwards_by_line"].get(_site(before))


def _sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    left = after["forwards_by_line"].get(_site(before), 0)
    kept, was_kept = after["saved_bytes_by_line"].get(_site(before)), before["saved_bytes_by_line"].get(_site(before))
    saved = (f"; a forward there kept {format_bytes(kept)} for backward instead of {format_bytes(was_kept)}"
             if kept is not None and was_kept else "")
    if helped:
        return f"with {change} none of the forwards there recorded a graph (it was {before['forwards']}){saved}"
    return f"with {change} {left} forwards there still recorded a graph no backward used (it was {before['forwards']})"


def _past_the_last_step(before: dict, run: RecordedRun) -> int:
    """One step past the main run's: a program's evaluation after its last step runs
    before the step bound would stop it (the bound is never reached when the program ends)."""
    return run.steps_observed + 1


# -- a step's peak against the target ------------------------------------------------------------
def _step_peak(run: RecordedRun) -> dict | None:
    """The fit estimate (mem_fit) and, where MemTracker broke a real step down
    (mem_breakdown, at -o memory.breakdown_step), that step's measured peak."""
    proc = run.main
    fit = proc.first("mem_fit") if proc else None
    if not fit or fit.get("error"):
        return None
    breakdowns = proc.of("mem_breakdown")
    measured = max((kinds.get("Total", 0) for kinds in breakdowns[-1]["peak"].values()), default=None) \
        if breakdowns else None
    return {"peak_bytes": measured if measured is not None else fit["peak_bytes"],
            "peak_from": "measured" if measured is not None else "estimated",
            "measured_peak_bytes": measured, "estimated_peak_bytes": fit["peak_bytes"],
            "budget_bytes": fit["budget_bytes"], "target": fit.get("target"), "batch_size": fit.get("batch_size"),
            "steps": run.steps_observed}


def _peak_before(run: RecordedRun) -> dict | None:
    found = _step_peak(run)
    return found if found and found["peak_bytes"] > found["budget_bytes"] else None


def _peak_after(runs: list[RecordedRun]) -> dict | None:
    found = _step_peak(runs[0])
    return found if found and found["peak_from"] == "measured" else None  # the fix is judged on a real step


def _peak_helped(before: dict, after: dict) -> bool | None:
    """Fits: helped. Over the target yet lower than before: partly (None, nothing demoted:
    the step does not fit at the program's batch either way, the batch must only be
    smaller still). Not lower: not helped."""
    if after["measured_peak_bytes"] <= after["budget_bytes"]:
        return True
    return None if after["measured_peak_bytes"] < before["peak_bytes"] else False


def _peak_sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    was = f"at batch {before['batch_size']} it was {before['peak_from']} at {format_bytes(before['peak_bytes'])}"
    verdict = {True: "fits in", None: "lower, but still does not fit in", False: "still does not fit in"}[helped]
    return (f"with {change} a training step peaked at {format_bytes(after['measured_peak_bytes'])} measured "
            f"(batch {after['batch_size']}): {verdict} {after['target']} ({format_bytes(after['budget_bytes'])}; {was})")


def _to_the_breakdown_step(before: dict, run: RecordedRun) -> int:
    """Far enough for MemTracker's step (-o memory.breakdown_step, 2 by default): the main
    run may have stopped before it (a fit check with --max-steps 1)."""
    step = settings("memory", ((run.meta.get("plan") or {}).get("options") or {}).get("memory") or {})["breakdown_step"]
    return max(run.steps_observed, step, 1)


# -- past the step that ran out of memory ---------------------------------------------------------
# steps the run must get past the one that ran out of memory: the optimizer's state is
# allocated at its first step, so the step after is the first at the steady peak
OOM_MARGIN_STEPS = 2


def _oom(run: RecordedRun) -> dict:
    """The out-of-memory error that ended the run, if any (its step counted from 1, as the
    memory.oom finding says it), the steps taken, and whether the program ended on its own."""
    exc = oom_exception(run)
    loader = run.main.training_loader() if run.main else None
    return {"step": exc.get("step", 0) + 1 if exc else None, "message": exc.get("message") if exc else None,
            "steps": run.steps_observed, "batch_size": (loader or {}).get("batch_size"),
            "completed": run.stopped_by_ptdiag is None and run.outcome.get("exit_code") == 0}


def _oom_before(run: RecordedRun) -> dict | None:
    found = _oom(run)
    return found if found["step"] is not None else None


def _oom_helped(before: dict, after: dict) -> bool | None:
    """Out of memory again: not helped. Past the failing step by the margin, or to the
    program's own end: helped. Ended earlier for another reason (cut, crashed): can't tell."""
    if after["step"] is not None:
        return False
    if after["steps"] >= before["step"] + OOM_MARGIN_STEPS or (after["completed"] and after["steps"]):
        return True
    return None


def _oom_sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    was = f"at batch {before['batch_size']} it ran out of memory at step {before['step']}"
    if helped:
        end = ", the program's end" if after["completed"] else ""
        return f"with {change} the run trained through step {after['steps']}{end} without running out of memory ({was})"
    if helped is False:
        return (f"with {change} the run still ran out of memory at step {after['step']} ({was}): the batch is not "
                "the only thing that does not fit")
    return (f"with {change} the run ended after {after['steps']} steps, before it got past step {before['step']}: "
            "not verified")


def _past_the_oom(before: dict, run: RecordedRun) -> int:
    return before["step"] + OOM_MARGIN_STEPS


METRICS: dict[str, Metric] = {
    "unused_forwards": Metric("forwards", _before, lambda runs: _unused(runs[0]), _helped, _sentence,
                              _past_the_last_step),
    "step_peak": Metric("peak_bytes", _peak_before, _peak_after, _peak_helped, _peak_sentence, _to_the_breakdown_step),
    "oom_step": Metric("step", _oom_before, lambda runs: _oom(runs[0]), _oom_helped, _oom_sentence, _past_the_oom),
}
