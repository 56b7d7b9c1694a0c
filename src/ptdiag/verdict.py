"""Run-level facts every report has: how the run ended, what it did, the summary numbers.

The status is decided from evidence in a fixed order (the first rule that holds wins),
kept as data so the order is visible and testable.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable

from ptdiag.findings import Finding
from ptdiag.recorded import RecordedRun

OOM_EXCEPTION_TYPES = ("OutOfMemoryError",)
OOM_MESSAGE_MARKERS = ("out of memory", "CUDA error: out of memory", "DefaultCPUAllocator: can't allocate memory")
HUNG_MIN_SILENCE_S = 5.0  # no event for this long (and 10 median steps) before a time-out = hung
HUNG_STEP_MULTIPLE = 10


def oom_exception(run: RecordedRun) -> dict | None:
    for exc in run.exceptions:
        if exc.get("type") in OOM_EXCEPTION_TYPES or any(m in exc.get("message", "") for m in OOM_MESSAGE_MARKERS):
            return exc
    return None


def _timed_out_silently(run: RecordedRun) -> bool:
    """Hung rather than merely slow: the run had stopped moving well before the time-out."""
    timed_out_at = run.outcome.get("timed_out_at")
    last = run.last_progress(before=timed_out_at)
    if last is None:
        return True
    times = run.step_times()
    typical = statistics.median(times) if times else 0.0
    return timed_out_at - last > max(HUNG_MIN_SILENCE_S, HUNG_STEP_MULTIPLE * typical)


def _stopped_by(run: RecordedRun, specialist: str) -> bool:
    """A specialist stopped the training on purpose: numerics stops once it has localised
    a non-finite value (which may be in the gradients only, with a finite loss)."""
    return any(e.get("by") == specialist for e in run.all_events("stopped"))


# (status, rule) in order of precedence
STATUS_RULES: tuple[tuple[str, Callable[[RecordedRun], bool]], ...] = (
    ("interrupted", lambda r: bool(r.outcome.get("interrupted_by"))),
    ("hung", lambda r: r.outcome.get("timed_out_at") is not None and _timed_out_silently(r)),
    ("timeout", lambda r: r.outcome.get("timed_out_at") is not None),
    ("oom", lambda r: oom_exception(r) is not None),
    ("diverged", lambda r: r.first_nonfinite_loss() is not None or _stopped_by(r, "numerics")),
    ("killed", lambda r: r.outcome.get("returncode", 0) < 0),
    ("crashed", lambda r: r.outcome.get("returncode", 0) != 0),
    ("completed", lambda r: True),
)


def run_status(run: RecordedRun) -> str:
    return next(status for status, rule in STATUS_RULES if rule(run))


def _quantiles(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": statistics.median(ordered), "p90": pick(0.9), "mean": statistics.fmean(ordered),
            "min": ordered[0], "max": ordered[-1], "n": len(ordered)}


def run_metrics(run: RecordedRun) -> dict:
    metrics: dict = {"steps_observed": run.steps_observed}
    step_times = run.step_times()
    if step_times:
        metrics["step_time_s"] = _quantiles(step_times)
        metrics["steps_per_s"] = 1.0 / statistics.median(step_times)
        batch = _train_batch_size(run)
        if batch:
            metrics["samples_per_s"] = batch / statistics.median(step_times)
        main = run.main
        waits = [e["data_s"] for e in main.of("step")[1:] if e.get("data_s") is not None]
        if waits and sum(step_times):
            metrics["data_wait_share"] = sum(waits) / sum(step_times)
    losses = [v for _, v in run.losses()]
    if losses:
        finite = [v for v in losses if math.isfinite(v)]
        metrics["loss"] = {"first": losses[0], "last": losses[-1],
                           "min": min(finite) if finite else None,
                           "nonfinite_steps": len(losses) - len(finite)}
    if len(run.ranks) > 1:
        metrics["steps_per_rank"] = run.per_rank_counts()
    cost = ptdiag_cost(run)
    if cost:
        metrics["ptdiag_cost"] = cost
    return metrics


def ptdiag_cost(run: RecordedRun) -> dict | None:
    """What ptdiag itself cost the main process (probe/budget.py): its time per step against
    the program's, what it shed to stay within budget, and each one-off window's time and
    memory."""
    main = run.main
    if main is None:
        return None
    per_step = main.first("probe_cost")
    windows = [{k: w.get(k) for k in ("what", "steps", "seconds", "grew", "peak_grew", "abandoned")}
               for w in main.of("window")]
    if per_step is None and not windows:
        return None
    cost: dict = {"windows": windows}
    if per_step is not None:
        cost.update(step_share=per_step.get("share"), steps=per_step.get("steps"),
                    by_owner_us=per_step.get("by_owner_us"), shed=per_step.get("shed", []))
    return cost


def _train_batch_size(run: RecordedRun) -> int | None:
    loader = run.main.training_loader() if run.main else None
    return (loader or {}).get("batch_size") or None


def stopped_by(run: RecordedRun) -> dict | None:
    """contract.md's `stopped_by`: who ended the training early, at which step, why, and the
    option that keeps it running; `max_steps` when the stop came before the --max-steps
    the run was given (the user must not think the limit was reached)."""
    stop = run.stopped_by_ptdiag
    if stop is None:
        return None
    found = {"by": stop["by"], "step": stop["step"], "reason": stop["reason"], "keep_running": stop.get("keep_running")}
    max_steps = run.meta.get("plan", {}).get("max_steps")
    if max_steps and stop["step"] < max_steps:
        found["max_steps"] = max_steps
    return found


def switched_off(run: RecordedRun) -> list[dict]:
    """contract.md's `switched_off`: each instrument ptdiag removed, why, from which step."""
    return [{"what": e["what"], "why": e["why"], "step": e["step"], **({"budget": True} if e.get("budget") else {})}
            for e in run.switched_off]


def _last_error(exc: dict | None) -> str | None:
    if not exc:
        return None
    lines = exc["message"].strip().splitlines()
    return f"{exc['type']}: {lines[-1] if lines else ''}"


# a failed run's status -> the specialist finding that says that failure with its error, step
# and place: where one was made, "the command failed before training" only repeats it, above it
# (an OOM at the first step: the headline said the command failed, the OOM came second)
FAILURE_EXPLAINED_BY = {"oom": "memory.oom"}


def without_repeated_failure(findings: list[Finding], status: str) -> list[Finding]:
    explained_by = FAILURE_EXPLAINED_BY.get(status)
    if explained_by and any(f.code == explained_by for f in findings):
        return [f for f in findings if f.code != "ptdiag.command_failed"]
    return findings


def run_findings(run: RecordedRun, status: str) -> list[Finding]:
    """ptdiag.command_failed / ptdiag.no_training_observed when the run never trained;
    ptdiag.crashed when it failed part-way (where, with which error)."""
    if run.steps_observed:
        return _crash_finding(run) if status == "crashed" else []
    if status in ("interrupted", "timeout", "hung", "diverged"):  # ended by ptdiag or the user, not failed
        return []
    exit_code = run.outcome.get("exit_code", 0)
    if status in ("crashed", "killed", "oom") or exit_code != 0:
        exc = run.exceptions[-1] if run.exceptions else None
        last_error = _last_error(exc)
        return [Finding(
            code="ptdiag.command_failed", specialist="ptdiag", severity="error",
            title=f"The command failed before training (exit code {exit_code})",
            detail=(f"Last error: {last_error}" if last_error else
                    "No Python exception was recorded: the failure happened outside a probed Python process, "
                    "or the process was killed."),
            evidence={"exit_code": exit_code, "last_error": last_error,
                      "location": exc.get("location") if exc else None},
            fix="Run the command without ptdiag to see its own error output above, and fix that first.")]
    seen = _what_was_seen(run)
    skipped = len(run.all_events("step_skipped"))
    if skipped:  # training ran, but a GradScaler dropped every update
        title = f"The GradScaler skipped every update: {skipped} backward passes, no optimizer step"
        fix = ("Find the op that overflows: ptdiag \"gradients overflow in fp16\" --only numerics -- <command>; "
               "bfloat16 autocast (no GradScaler needed) avoids float16's 65504 limit.")
    else:
        title = "The command ran but no training step was seen (no optimizer step, no parameter update after backward)"
        fix = ("Point ptdiag at the command that trains (optimizer.step() is called, or parameters are updated "
               "after backward()), "
               "e.g. ptdiag \"...\" -- python train.py; for frameworks, run their training entry point.")
    return [Finding(
        code="ptdiag.no_training_observed", specialist="ptdiag", severity="warning", title=title,
        detail="Seen instead: " + (", ".join(seen) if seen else "nothing: no probed Python process recorded any event")
               + ". Diagnosis needs training steps.",
        evidence={"seen": seen, "skipped_steps": skipped, "probed_processes": len(run.processes)}, fix=fix)]


def _crash_finding(run: RecordedRun) -> list[Finding]:
    exc = run.exceptions[-1] if run.exceptions else None
    exit_code = run.outcome.get("exit_code")
    step = exc.get("step", run.steps_observed) if exc else run.steps_observed
    where = f" at {exc['location']}" if exc and exc.get("location") else ""
    return [Finding(
        code="ptdiag.crashed", specialist="ptdiag", severity="error",
        title=f"The run crashed after step {step}" + (f": {_last_error(exc)}" if exc else f" (exit code {exit_code})"),
        detail=(f"{exc['type']} raised{where} on rank {exc['rank']} after {step} optimizer steps."
                if exc else "No Python exception was recorded: the process ended itself (os._exit) or was killed."),
        evidence={"step": step, "exit_code": exit_code, "rank": exc["rank"] if exc else None,
                  "location": exc.get("location") if exc else None, "error": _last_error(exc)},
        fix="Fix the error at that line (the full traceback is in the program's stderr above); "
            "steps up to the crash were recorded and analysed.")]


SEEN_EVENTS = (("step_skipped", "backward passes whose update a GradScaler skipped (inf/NaN gradients)"),
              ("model", "a model forward pass"), ("dataloader", "a DataLoader"),
              ("optimizer", "an optimizer"), ("args", "command-line arguments parsed"),
              ("env", "torch imported"))


def _what_was_seen(run: RecordedRun) -> list[str]:
    return [label for kind, label in SEEN_EVENTS if run.all_events(kind)]
