"""The step time metric (`step_time`): the main rank's step time p50 and its phases, from
the performance specialist's step clocks, for a change that makes the work itself
faster (torch's threads) rather than removing a wait.

A time, unlike the other metrics: its verdict has a band where it says nothing (helped
only when the step took at most STEP_FASTER_RATIO of its time, not helped only when it
took at least STEP_UNCHANGED_RATIO), since a loaded machine moves step times by tens of
percent between runs.
"""

from __future__ import annotations

from ptdiag.recorded import RecordedRun
from ptdiag.verification.measure import Metric, phases_ms, step_breakdown

STEP_FASTER_RATIO = 0.8
STEP_UNCHANGED_RATIO = 0.95


def _step_time(run: RecordedRun) -> dict | None:
    found = step_breakdown(run)
    if not found:
        return None
    env = run.main.first("perf_env") if run.main else None
    return {"step_ms_p50": round(1000 * found["step_s"]["p50"], 3), "steps": run.steps_observed,
            "torch_threads": (env or {}).get("torch_threads"), "phases_ms": phases_ms(found)}


def _helped(before: dict, after: dict) -> bool | None:
    ratio = after["step_ms_p50"] / before["step_ms_p50"] if before["step_ms_p50"] else 1.0
    return True if ratio <= STEP_FASTER_RATIO else False if ratio >= STEP_UNCHANGED_RATIO else None


def _sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    speed = before["step_ms_p50"] / after["step_ms_p50"] if after["step_ms_p50"] else float("inf")
    threads = (f" on {after['torch_threads']} torch threads instead of {before['torch_threads']}"
               if after.get("torch_threads") != before.get("torch_threads") else "")
    verdict = {True: "", False: ": no faster here (other processes may hold the cores)",
               None: ": within what a busy machine varies by, not verified"}[helped]
    return (f"with {change} the step took {after['step_ms_p50']:.1f} ms instead of {before['step_ms_p50']:.1f} ms "
            f"({speed:.2g}x){threads}{verdict}")


def _same_steps(before: dict, run: RecordedRun) -> int:
    return max(run.steps_observed, 1)


METRICS: dict[str, Metric] = {
    "step_time": Metric("step_ms_p50", _step_time, lambda runs: _step_time(runs[0]), _helped, _sentence, _same_steps),
}
