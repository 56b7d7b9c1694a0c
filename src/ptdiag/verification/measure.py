"""How each metric of ptdiag.interventions.METRICS is read from a recorded run, the main
run (before) and a verification run (after) alike, and whether the change helped.

A metric is a `Metric`: `before(run)` gives the main run's numbers (None where it did not
measure the symptom: nothing to verify), `after(run)` the verification run's (None where it
measured nothing to compare), `helped(before, after)` the verdict (None: the
verification run could not tell, e.g. it ended before the step that failed), `sentence`
the one line the report shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ptdiag.events import as_number
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.performance.measured import breakdown
from ptdiag.specialists.reproducibility.compare import compare
from ptdiag.specialists.reproducibility.trace import COMPANIONS, REPEAT, Trace

# the DataLoader wait (its share of the step, or its time per step) that fell to at most
# this fraction of what it was counts as removed; one where neither fell below the second
# fraction as not helped (between: partly, which demotes nothing: workers that share a
# loaded machine's cores with the training halve the wait, not end it). Either measure: a
# fix that makes the step 6x faster can leave the wait's share at 53 % -> 28 % while the
# wait itself fell 28 -> 2 ms (the compute was slower in the main run, on a loaded box)
DATA_WAIT_HELPED_RATIO = 0.5
DATA_WAIT_UNCHANGED_RATIO = 0.8
# the loss must stay finite this many steps past the main run's failure, at least
NONFINITE_MARGIN_MIN_STEPS = 10
# the finite losses kept for the report's two curves (the last ones)
CURVE_POINTS = 500
# a finite loss that ended this many times above where it began still diverges (real nanoGPT
# at --learning_rate=1000 with the LR x0.01 stayed finite but went 4.19 -> 258, 62x: at 100
# that was called helped)
DIVERGED_FACTOR = 10.0
# a GradScaler fix helps when the share of updates it drops falls to at most this share of
# what it was
SKIPS_HELPED_RATIO = 0.5


@dataclass(frozen=True)
class Metric:
    headline: str  # the number `verified.before`/`after` show (contract.md); the rest under `measured`
    before: Callable[[RecordedRun], dict | None]
    after: Callable[[list[RecordedRun]], dict | None]  # the verification runs (`runs` of them)
    helped: Callable[[dict, dict], bool | None]
    sentence: Callable[[str, dict, dict, bool | None], str]
    bound: Callable[[dict, RecordedRun], int]  # the verification run's --max-steps
    runs: int = 1  # verification runs it takes (two to show that runs repeat)
    judged_when_cut: bool = False  # its evidence stands once recorded: a run ended at the budget is judged


# -- first non-finite step ---------------------------------------------------------------------
def _losses(run: RecordedRun) -> list[tuple[int, float]]:
    """The main rank's loss per step, from the recorder and the numerics watch together:
    on sub-millisecond steps ptdiag's budget keeps only 1 step in N of either."""
    proc = run.main
    watched = [(e["step"], as_number(e.get("loss"))) for e in proc.of("numerics")] if proc else []
    return sorted(dict([*((s, v) for s, v in watched if v is not None), *run.losses()]).items())


def _nonfinite(run: RecordedRun) -> dict:
    losses = _losses(run)
    bad = next(((s, v) for s, v in losses if not math.isfinite(v)), None)
    stop = run.stopped_by_ptdiag
    if bad is None and stop and stop.get("by") == "numerics":  # it stops at a localised non-finite value
        bad = (stop["step"], "non-finite")
    finite = [v for s, v in losses if math.isfinite(v)]
    curve = [[s, v] for s, v in losses if math.isfinite(v)][-CURVE_POINTS:]
    culprit = next((e for e in run.all_events("numerics_culprit")), None)
    return {"step": bad[0] if bad else None, "value": str(bad[1]) if bad else None,
            "steps": run.steps_observed, "first_loss": finite[0] if finite else None,
            "last_finite_loss": finite[-1] if finite else None, "losses": curve,
            # the program ended on its own (no ptdiag stop, exit code 0): with batches left
            # out it can end before the step that failed, having trained on all the rest
            "completed": stop is None and run.outcome.get("exit_code") == 0,
            # where the numerics specialist found the value born: another poisoned batch
            # after the skipped one is not the same as a fix that failed
            "born": {k: culprit.get(k) for k in ("phase", "module", "op", "indices")} if culprit else None}


def _diverging(found: dict) -> bool:
    first, last = found.get("first_loss"), found.get("last_finite_loss")
    return first is not None and last is not None and abs(last) > DIVERGED_FACTOR * max(abs(first), 1e-12)


def _nonfinite_before(run: RecordedRun) -> dict | None:
    found = _nonfinite(run)
    return found if found["step"] is not None else None


def _nonfinite_helped(before: dict, after: dict) -> bool | None:
    if after["step"] is not None or _diverging(after):
        return False
    if after["steps"] > before["step"] or (after.get("completed") and after["steps"]):
        return True
    return None  # ended (cut by the budget, crashed) before the failing step: can't tell


def _nonfinite_sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    was = f"it was {before['value']} at step {before['step']}"
    if helped:
        final = f"; last loss {after['last_finite_loss']:.4g}" if after["last_finite_loss"] is not None else ""
        end = ", the program's end" if after.get("completed") and after["steps"] <= before["step"] else ""
        return f"with {change} the loss stayed finite through step {after['steps']}{end} ({was}){final}"
    if helped is False and after["step"] is None:
        return (f"with {change} the loss stayed finite through step {after['steps']} ({was}) but grew from "
                f"{after['first_loss']:.4g} to {after['last_finite_loss']:.4g}: the run still diverges")
    if helped is False and (after.get("born") or {}).get("phase") == "input":
        held = after["born"].get("indices")
        return (f"with {change} the loss still became {after['value']} at step {after['step']} ({was}): another "
                f"batch held NaN/Inf too" + (f" (dataset indices {held})" if held else ""))
    if helped is False:
        return (f"with {change} the loss still became {after['value']} at step {after['step']} ({was}): "
                f"this change does not remove the symptom")
    return (f"with {change} the run ended after {after['steps']} steps, before step {before['step']} where the "
            f"loss failed: not verified")


def _nonfinite_bound(before: dict, run: RecordedRun) -> int:
    return before["step"] + max(before["step"], NONFINITE_MARGIN_MIN_STEPS)


# -- loss growth (a finite loss that diverged) -------------------------------------------------------
def _growth_before(run: RecordedRun) -> dict | None:
    """The main run's loss where it stayed finite and diverged (numerics.loss_diverged)."""
    found = _nonfinite(run)
    return found if found["step"] is None and _diverging(found) else None


def _growth_helped(before: dict, after: dict) -> bool | None:
    if after["step"] is not None or _diverging(after):
        return False
    return True if after["steps"] >= before["steps"] or after.get("completed") else None


def _growth_sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    was = f"it went {before['first_loss']:.4g} -> {before['last_finite_loss']:.4g} over {before['steps']} steps"
    if after["step"] is not None:
        return f"with {change} the loss became {after['value']} at step {after['step']} ({was})"
    went = f"the loss went {after['first_loss']:.4g} -> {after['last_finite_loss']:.4g} over {after['steps']} steps"
    verdict = {True: "", False: ": it still diverges", None: ", fewer steps: not verified"}[helped]
    return f"with {change} {went} ({was}){verdict}"


# -- GradScaler skips ---------------------------------------------------------------------------
def _skips(run: RecordedRun) -> dict | None:
    """Backward passes under a GradScaler (the watch saw a loss scale) and those whose
    gradients held inf/NaN, so that the scaler dropped the update; None without a scaler."""
    proc = run.main
    scaled = [e for e in proc.of("numerics") if e.get("scale")] if proc else []
    if not scaled:
        return None
    skipped = [e["step"] for e in scaled if not math.isfinite(as_number(e.get("norm")) or 0.0)]
    return {"skipped": len(skipped), "backward_passes": len(scaled), "first_skipped": skipped[:5],
            "first_scale": scaled[0]["scale"], "steps": run.steps_observed}


def _skips_before(run: RecordedRun) -> dict | None:
    found = _skips(run)
    return found if found and found["skipped"] else None


def _share(found: dict) -> float:
    return found["skipped"] / found["backward_passes"]


def _skips_helped(before: dict, after: dict) -> bool | None:
    """By the share of backward passes dropped, over as many optimizer steps: a scaler
    that drops nothing reaches them in fewer backward passes."""
    if after["steps"] < before["steps"]:
        return None  # ended early: fewer chances to skip, not a verdict
    return _share(after) <= SKIPS_HELPED_RATIO * _share(before)


def _skips_sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    measured = (f"the GradScaler dropped {after['skipped']} of {after['backward_passes']} updates (it dropped "
                f"{before['skipped']} of {before['backward_passes']})")
    verdict = {True: "", False: ": the gradients still overflow", None: ": the run ended early, not verified"}
    return f"with {change} {measured}{verdict[helped]}"


# -- data wait share ---------------------------------------------------------------------------
def step_breakdown(run: RecordedRun) -> dict | None:
    """The performance specialist's step breakdown of the main rank's steps (host clocks)."""
    proc = run.main
    rows = [r for e in proc.of("perf_steps") for r in e.get("rows", [])] if proc else []
    return breakdown([r for r in rows if not r.get("gpu")], None)


def phases_ms(found: dict) -> dict[str, float]:
    """Each phase's p50 in ms, in the order of a step: the HTML draws both runs' side by side."""
    return {phase: round(1000 * times["p50"], 3) for phase, times in found["phases"].items()}


def _data_wait(run: RecordedRun) -> dict | None:
    found = step_breakdown(run)
    if not found or "data" not in found["phases"]:
        return None
    return {"data_wait_share": found["phases"]["data"]["share"], "step_ms_p50": round(1000 * found["step_s"]["p50"], 3),
            "data_wait_ms_p50": round(1000 * found["phases"]["data"]["p50"], 3), "steps": run.steps_observed,
            "phases_ms": phases_ms(found)}


def _data_wait_helped(before: dict, after: dict) -> bool | None:
    ratio = min(after[key] / before[key] if before[key] else 1.0 for key in ("data_wait_share", "data_wait_ms_p50"))
    return True if ratio <= DATA_WAIT_HELPED_RATIO else False if ratio >= DATA_WAIT_UNCHANGED_RATIO else None


def _data_wait_sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    speed = before["step_ms_p50"] / after["step_ms_p50"] if after["step_ms_p50"] else float("inf")
    measured = (f"the step took {after['step_ms_p50']:.1f} ms instead of {before['step_ms_p50']:.1f} ms "
                f"({speed:.2g}x) and waited {after['data_wait_ms_p50']:.1f} ms ({after['data_wait_share']:.0%}) on "
                f"the DataLoader instead of {before['data_wait_ms_p50']:.1f} ms ({before['data_wait_share']:.0%})")
    verdict = {True: "", False: ": the loader still holds the step back", None: ": it helped only partly"}[helped]
    return f"with {change} {measured}{verdict}"


def _same_steps(before: dict, run: RecordedRun) -> int:
    return max(run.steps_observed, 1)


# -- two runs bit-identical ----------------------------------------------------------------------
def _difference(one: RecordedRun, other: RecordedRun) -> dict:
    found = compare(Trace.of(one), Trace.of(other))
    difference = found.difference
    return {"first_difference_step": difference.step if difference else None,
            "stage": difference.stage if difference else None, "steps_compared": found.compared}


def _repeat_before(run: RecordedRun) -> dict | None:
    """The main run against the reproducibility specialist's repeat run, where they differed."""
    repeat = run.run_dir / COMPANIONS / REPEAT
    if not (repeat / "meta.json").exists():
        return None
    found = _difference(run, RecordedRun.load(repeat))
    return found if found["first_difference_step"] is not None else None


def _repeat_after(runs: list[RecordedRun]) -> dict:
    return _difference(runs[0], runs[1])


def _repeat_helped(before: dict, after: dict) -> bool | None:
    """Never False: seeding everything cannot make runs differ, so runs that still differ
    show another cause remains (the program re-seeds from the clock), not that the
    unseeded generators do not matter."""
    return True if after["first_difference_step"] is None and after["steps_compared"] >= 1 else None


def _repeat_sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    was = f"without it two runs differed from step {before['first_difference_step']} ({before['stage']})"
    if helped:
        return f"with {change} two runs were bit-identical through step {after['steps_compared']} ({was})"
    if after["first_difference_step"] is not None:
        return (f"with {change} two runs still differed from step {after['first_difference_step']} "
                f"({after['stage']}; {was}): another cause remains (see the other findings)")
    return f"with {change} the runs took no step to compare: not verified"


def _repeat_steps(before: dict, run: RecordedRun) -> int:
    return max(run.steps_observed, before["first_difference_step"], 1)


METRICS: dict[str, Metric] = {
    # a finite verification run is the answer itself: its `after` always reads
    "first_nonfinite_step": Metric("step", _nonfinite_before, lambda runs: _nonfinite(runs[0]), _nonfinite_helped,
                                   _nonfinite_sentence, _nonfinite_bound),
    "data_wait_share": Metric("data_wait_share", _data_wait, lambda runs: _data_wait(runs[0]), _data_wait_helped,
                              _data_wait_sentence, _same_steps),
    "loss_growth": Metric("last_finite_loss", _growth_before, lambda runs: _nonfinite(runs[0]), _growth_helped,
                          _growth_sentence, _same_steps),
    "scaler_skips": Metric("skipped", _skips_before, lambda runs: _skips(runs[0]), _skips_helped, _skips_sentence,
                           _same_steps),
    "repeat_identical": Metric("first_difference_step", _repeat_before, _repeat_after, _repeat_helped,
                               _repeat_sentence, _repeat_steps, runs=2),
}
