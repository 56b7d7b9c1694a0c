"""Diagnosis by intervention: the fix a finding proposes, tried in a companion run.

After the command ran (and the specialists' own companion runs), the planned
specialists' findings are read from the run dir; for each of the top findings that an
intervention of ptdiag.interventions can verify, the command runs again with that
intervention applied from inside the process (ptdiag.probe.interventions), bounded by the
metric (the NaN run to its failing step plus a margin, a performance run to the same
profiled steps), into <run_dir>/companions/verify-<intervention>/ with its own
stdout.log and stderr.log. Findings that share an intervention and settings share its run.
A finding's interventions run in their declared order until one helps; one that did not
help and has a stronger retry (the LR scaled 10x further) gets that one more run. Every
candidate cause of one NaN (the findings the numerics evidence allows: an explosion and the
op it surfaced in, under autocast) gets its own runs, and the analysis ranks the causes by
which removed the symptom (verification.attach).

What ran, what it measured before and after and whether it helped, or why nothing ran,
goes to <run_dir>/verification.json; the analysis (verification.attach) puts it on the
findings as `verified`, so a stored run re-analysed shows the same.

When: `--verify` always, `--no-verify` never; by default for the DEFAULT_AREAS'
findings, when the bare run took under AUTO_MAX_BARE_S and ran on one node. Within `--verify-budget` seconds in all (default:
BUDGET_FACTOR times the bare run, at least BUDGET_MIN_S): a run that would start with the
budget spent is skipped and said so, a running one is ended at the budget (not verified).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ptdiag import interventions
from ptdiag.events import INTERVENTION_ENV, REPRO_ROLE_ENV
from ptdiag.findings import Finding
from ptdiag.recorded import RecordedRun
from ptdiag.specialists import analyse as specialist_analysis
from ptdiag.verification.attach import STATE_FILE
from ptdiag.verification.measure import Metric
from ptdiag.verification.metrics import METRICS

COMPANIONS = "companions"  # the folder of the run dir that holds every companion run
AUTO_MAX_BARE_S = 180.0
# the specialists whose findings are verified by default; the others' (reproducibility:
# two more runs on top of its repeat) with --verify. Distributed: one run of the main
# run's steps, on one node (why_not), judged from indices, not times; memory: one run of
# the main run's steps, judged from the graphs recorded
DEFAULT_AREAS = ("numerics", "performance", "distributed", "memory")
BUDGET_FACTOR = 3.0
BUDGET_MIN_S = 60.0
MAX_FINDINGS = 3  # the top findings that get verification runs
# a metric the main run did not measure -> the one that judges the same fix instead: an
# explosion whose loss stayed finite but grew (lstm_lm_manual_sgd.py at --lr 3000: 228 ->
# 20233 in 12 steps, never NaN) is judged by the loss's growth over the same steps (the two
# exclude each other: a run went non-finite or it did not)
FALLBACK_METRICS = {"first_nonfinite_step": "loss_growth"}
# the reproducibility plugin's role in a verification run: neither the main run (whose
# checkpoints it keeps a copy of) nor the audit (deterministic kernels)
VERIFY_ROLE = "verify"


@dataclass
class Planned:
    finding: Finding
    intervention: interventions.Intervention
    settings: dict
    before: dict
    max_steps: int
    metric: str  # the intervention's metric for this finding (Intervention.metric_of)
    rung: int = 1  # 2: the intervention's stronger retry (Intervention.retry), the first did not help

    @property
    def key(self) -> str:
        return interventions.encode(self.intervention.name, self.settings)

    @property
    def folder(self) -> str:
        return f"verify-{self.intervention.name}" + ("" if self.rung == 1 else f"-rung{self.rung}")

    def retried(self) -> "Planned | None":
        """The ladder's second rung, where the intervention has one."""
        retry = self.intervention.retry
        if retry is None or self.rung > 1:
            return None
        return Planned(self.finding, self.intervention, retry(self.settings), self.before, self.max_steps, self.metric,
                       rung=2)


def finding_key(finding: Finding) -> dict:
    """How verification.json names a finding: its code and step (one analysis of one run
    dir gives the same findings every time)."""
    return {"code": finding.code, "step": finding.evidence.get("step"), **_op(finding.evidence)}


def _op(evidence: dict) -> dict:
    """The op, where the finding names one: two findings of one code at one step (float16's
    overflow in an op, and the GradScaler's scale that collapsed) are told apart by it."""
    return {"op": evidence["op"]} if evidence.get("op") else {}


def why_not(verify: bool | None, run: RecordedRun, wall_s: float) -> str | None:
    """Why no verification runs by default (None: they run)."""
    if verify is False:
        return "--no-verify"
    if verify:
        return None
    nodes = {e.get("node_rank") for p in run.processes for e in p.of("start") if e.get("node_rank") is not None}
    if len(nodes) > 1:
        return f"the run spans {len(nodes)} nodes: verification runs are off by default there (--verify runs them)"
    if wall_s > AUTO_MAX_BARE_S:
        return (f"the run took {wall_s:.0f} s, over the {AUTO_MAX_BARE_S:.0f} s under which fixes are tried by "
                "default (--verify tries them anyway)")
    return None


def plan(findings: list[Finding], run: RecordedRun) -> list[Planned]:
    """The top findings with an intervention, each with every intervention that can verify
    it whose metric the main run measured, the preferred first. after_run stops at the
    first that helped: one extra run per finding when its fix works; when it does not,
    the next ones are the evidence that decides between causes."""
    planned = []
    verifiable = [f for f in findings if interventions.for_code(f.code)][:MAX_FINDINGS]
    for finding in verifiable:
        for intervention in interventions.for_code(finding.code):
            name = intervention.metric_of(finding.code)
            before = METRICS[name].before(run)
            if before is None and name in FALLBACK_METRICS:
                name = FALLBACK_METRICS[name]
                before = METRICS[name].before(run)
            metric = METRICS[name]
            settings = intervention.settings_for(finding.evidence, finding.code)
            if before is not None and settings is not None:
                planned.append(Planned(finding, intervention, settings, before, metric.bound(before, run), name))
    return planned


def unmeasured(findings: list[Finding], run: RecordedRun, planned: list[Planned]) -> list[dict]:
    """The top findings with a fix whose settings apply but whose metric the main run did not
    measure (a GradScaler's skips where no scaler ran): no run can judge the fix, and the
    report says so rather than nothing."""
    covered = {json.dumps(finding_key(item.finding)) for item in planned}
    results = []
    for finding in [f for f in findings if interventions.for_code(f.code)][:MAX_FINDINGS]:
        if json.dumps(finding_key(finding)) in covered:
            continue
        for intervention in interventions.for_code(finding.code):
            settings = intervention.settings_for(finding.evidence, finding.code)
            if settings is not None:
                metric = interventions.METRICS[intervention.metric_of(finding.code)]
                results.append({"finding": finding_key(finding),
                                "skipped": f"{intervention.describe(settings)} could not be judged: this run did not "
                                           f"measure {metric}"})
                break
    return results


def after_run(ctx, areas: list[str]) -> None:
    """Plan and run the verification runs of this diagnosis; record them for the analysis."""
    if ctx.options.verify is False:
        return
    run = RecordedRun.load(ctx.run_dir)
    areas = areas if ctx.options.verify else [a for a in areas if a in DEFAULT_AREAS]
    findings = [f for name in areas for f in (getattr(specialist_analysis(name, run), "findings", None) or [])]
    planned = plan(findings, run)
    unjudged = unmeasured(findings, run, planned)
    if not planned and not unjudged:
        return
    wall = (run.outcome.get("ended") or 0) - (run.outcome.get("started") or 0)
    skipped = why_not(ctx.options.verify, run, wall)
    if skipped:  # the default decided (--no-verify returned above): the report says why
        _write(ctx.run_dir, {"skipped": skipped})
        return
    budget = ctx.options.verify_budget_s or max(BUDGET_MIN_S, BUDGET_FACTOR * wall)
    started = time.monotonic()
    done: dict[str, dict] = {}
    helped: set[str] = set()  # findings (their key as JSON) a fix already helped
    results = list(unjudged)
    with ctx.keeping_saved_files(run):
        for first in planned:
            item = first
            while item is not None:
                finding = json.dumps(finding_key(item.finding))
                if finding in helped:
                    break  # one extra run per finding when its first fix works
                reason = inapplicable(item.intervention, item.settings, run)
                if reason:
                    results.append({"finding": finding_key(item.finding), "skipped": reason})
                    break
                if item.key not in done:
                    left = budget - (time.monotonic() - started)
                    done[item.key] = (_verify(ctx, item, left) if left > 0 else
                                      {"skipped": f"the verification budget ({budget:.0f} s, --verify-budget) was spent"})
                results.append({"finding": finding_key(item.finding), **done[item.key]})
                outcome = done[item.key].get("verified", {}).get("helped")
                if outcome:
                    helped.add(finding)
                item = item.retried() if outcome is False else None  # the ladder: not helped, one stronger try
    _write(ctx.run_dir, {"budget_s": round(budget, 1), "wall_s": round(time.monotonic() - started, 3),
                         "bare_wall_s": round(wall, 3), "results": results})


def inapplicable(intervention: interventions.Intervention, settings: dict, run: RecordedRun) -> str | None:
    """Why the intervention cannot act in this program (None: it can): an optimizer-step
    intervention where no torch.optim optimizer stepped (word_language_model's `p.data.add_`:
    two verification runs measured nothing, "never applied")."""
    if intervention.acts_on == "optimizer" and not run.all_events("optimizer"):
        return (f"{intervention.describe(settings)} acts at a torch.optim optimizer's step, and this program "
                "updates its weights by hand (no optimizer stepped): change its own setting to try the fix")
    return None


def _verify(ctx, item: Planned, timeout_s: float) -> dict:
    """The verification run(s) of one intervention (two where the metric compares runs),
    within `timeout_s` in all, and what they measured."""
    intervention, metric = item.intervention, METRICS[item.metric]
    change = intervention.describe(item.settings)
    env = {INTERVENTION_ENV: item.key, REPRO_ROLE_ENV: VERIFY_ROLE}
    started, runs, timed_out, exit_codes = time.monotonic(), [], False, []
    for n in range(1, metric.runs + 1):
        folder = ctx.run_dir / COMPANIONS / f"{item.folder}{'' if n == 1 else f'-{n}'}"
        left = max(timeout_s - (time.monotonic() - started), 1.0)
        outcome = ctx.run_again(ctx.command, folder, max_steps=item.max_steps, env=env, change=change,
                                timeout_s=min(left, ctx.options.timeout_s or left))  # --timeout still holds
        runs.append(RecordedRun.load(folder))
        exit_codes.append(outcome.exit_code)
        timed_out = timed_out or bool(outcome.timed_out_at)
    applied = min(max((e.get("applied") or 0 for e in r.all_events("intervention")), default=0) for r in runs)
    after = metric.after(runs)
    helped, summary = judge(metric, change, item.before, after, applied, timed_out, exit_codes[0])
    verified = {"intervention": intervention.name, "settings": item.settings, "metric": item.metric,
                "before": item.before[metric.headline], "after": (after or {}).get(metric.headline),
                "steps": runs[0].steps_observed, "run_dir": str(runs[0].run_dir), "helped": helped,
                "measured": {"before": item.before, "after": after}, "applied": applied,
                "exit_code": exit_codes[0]}
    if len(runs) > 1:
        verified["run_dirs"] = [str(r.run_dir) for r in runs]
    verified["summary"] = summary
    return {"verified": verified}


def judge(metric: Metric, change: str, before: dict, after: dict | None, applied: int, timed_out: bool,
          exit_code: int | None) -> tuple[bool | None, str]:
    """The verdict (None: cannot tell) and the sentence that says it. A run ended at the
    budget is judged only by a metric whose evidence stands once recorded (`judged_when_cut`:
    the indices each rank drew, whose after() is None unless every rank recorded them);
    on a loaded box the ranks' exit work alone can pass the budget after the last step."""
    if not applied:
        return None, f"{change}: never applied in the verification run (nothing it changes was used)"
    if timed_out and not (metric.judged_when_cut and after is not None):
        return None, f"with {change} the run was ended at the verification budget: not verified"
    if after is None:
        return None, f"with {change} the run measured nothing to compare (exit code {exit_code})"
    helped = metric.helped(before, after)
    cut = " (the run was ended at the verification budget, after every rank recorded it)" if timed_out else ""
    return helped, metric.sentence(change, before, after, helped) + cut


def _write(run_dir: Path, record: dict) -> None:
    (run_dir / STATE_FILE).write_text(json.dumps(record, indent=2, default=str))
