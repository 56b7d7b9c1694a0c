"""The numerics specialist: where NaN/Inf is born, and why.

Reads what the probe recorded (`probe.py`): the loss, gradient norms and loss scale of
every backward pass (`numerics` events), the replay of the failing step
(`numerics_culprit`), and the recorder's steps (learning rate, epoch) and losses.

Order of the findings: the one that names the cause comes first. When the gradient
norm grew by orders of magnitude before the failure, no single op is the cause (the
op that overflowed is only where it surfaced), so the explosion leads with its numbers
and the learning rate, the non-finite loss follows as its consequence, and the op is
kept as a warning. A loss that never moved (and never failed) is a finding of its own.
Where the program updates its weights by hand (no optimizer step), backward passes are
the steps.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ptdiag.findings import Analysis, Finding
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.numerics import history, rules
from ptdiag.specialists.numerics.culprit import finding_for, location
from ptdiag.specialists.numerics.learning import loss_flat_finding
from ptdiag.specialists.numerics.lr import configured as lr_configured
from ptdiag.specialists.numerics.lr import optimizer as lr_optimizer
from ptdiag.specialists.numerics.lr import per_step as lr_per_step
from ptdiag.specialists.numerics.lr import story as lr_story

HISTORY_STEPS = 5  # loss values shown before the first non-finite one
SPECIALIST = "numerics"


def _clock(run: RecordedRun, rank: int, event: dict) -> dict:
    """The event with its step on the run's clock: optimizer steps, or, where the program
    updates its weights by hand and no optimizer step was counted, backward passes."""
    proc = run.ranks.get(rank)
    if proc is not None and not proc.of("step") and event.get("backward") is not None:
        return dict(event, step=event["backward"])
    return event


def _first_culprit(run: RecordedRun) -> tuple[int, dict] | None:
    found = [(rank, _clock(run, rank, e)) for rank, proc in run.ranks.items() for e in proc.of("numerics_culprit")]
    return min(found, key=lambda re: (re[1]["step"], re[0])) if found else None


def _watch(run: RecordedRun, rank: int) -> list[dict]:
    proc = run.ranks.get(rank)
    return [_clock(run, rank, e) for e in proc.of("numerics")] if proc else []


def _losses(run: RecordedRun, rank: int) -> list[tuple[int, float]]:
    """The recorder's losses per step, else the watch's per backward pass."""
    return run.losses(rank) or [(e["step"], e.get("loss")) for e in _watch(run, rank) if e.get("loss") is not None]


def _first_nonfinite(run: RecordedRun) -> dict | None:
    """The first non-finite loss: the recorder's, else the watch's."""
    first = run.first_nonfinite_loss()
    if first is None:
        for rank in run.ranks:
            bad = next((e for e in _watch(run, rank) if not _is_finite(e.get("loss"))), None)
            if bad and (first is None or bad["step"] < first["step"]):
                first = {"step": bad["step"], "value": bad["loss"], "rank": rank, "epoch": None}
    return first


def _nonfinite_loss(run: RecordedRun, first: dict | None, culprit: tuple[int, dict] | None,
                    caused: bool) -> Finding | None:
    """The first non-finite loss, with where it was born; `caused`: a finding above names why."""
    if first is None:
        return None
    rank = first["rank"]
    before = [(s, v) for s, v in _losses(run, rank) if s < first["step"]][-HISTORY_STEPS:]
    lr = [v for v in lr_per_step(run, rank).get(first["step"]) or [] if isinstance(v, (int, float))] or None
    epoch = f" (epoch {first['epoch']})" if first.get("epoch") is not None else ""
    evidence = {"step": first["step"], "epoch": first.get("epoch"), "rank": rank, "value": first["value"],
                "loss_before": before, "lr": lr}
    born = ""
    if culprit is not None:
        event = culprit[1]
        evidence.update(module=event.get("module"), op=event.get("op"), location=location(event),
                        born_at_step=event["step"])
        if event.get("op"):
            born = f"; the first non-finite value came from {event.get('module') or 'outside the model'} ({event['op']}) at step {event['step']}"
    if caused:
        fix = "Fix the cause above; this is its consequence."
    elif culprit:
        fix = "See the findings below for where the value was born and why."
    else:
        fix = "Localise the first non-finite value: run with the numerics specialist (`--only numerics`)."
    return Finding(
        code="numerics.nonfinite_loss", specialist=SPECIALIST, severity="error",
        title=f"The loss became {first['value']} at step {first['step']}{epoch}",
        detail="Loss before it: " + (", ".join(f"step {s}: {v:.4g}" for s, v in before) or "none recorded")
               + (f"; learning rate at that step: {', '.join(f'{v:.4g}' for v in lr)}" if lr else "") + born + ".",
        evidence=evidence, fix=fix)


def _is_finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return value is None


def _trajectory(values: list[tuple[int, float]], until: int | None) -> str:
    """The first value and the last few up to `until`, for people: 4.13 → 5.1e+05 → 3.8e+07 → nan."""
    upto = [float(v) for s, v in values if until is None or s <= until]
    if len(upto) > rules.TRAJECTORY_SHOWN:
        return f"{upto[0]:.3g} → … → " + " → ".join(f"{v:.3g}" for v in upto[-(rules.TRAJECTORY_SHOWN - 1):])
    return " → ".join(f"{v:.3g}" for v in upto)


def _failure_text(failed_at: int | None, first_bad: dict | None, culprit: dict | None) -> str:
    """Where the explosion ended: the op that overflowed first, else what went non-finite."""
    if culprit is not None and culprit.get("op"):
        where = culprit.get("module") or "the loss computation"
        return f"; overflow first in {where} ({culprit['op']}) at step {culprit['step']}"
    if first_bad is not None and first_bad["step"] == failed_at:
        return f"; the loss became {first_bad['value']} at step {failed_at}"
    return f"; the gradient norm overflowed at step {failed_at}" if failed_at is not None else ""


def _explosion(run: RecordedRun, rank: int, failed_at: int | None, first_bad: dict | None,
               culprit: dict | None) -> Finding | None:
    watched = [e for e in _watch(run, rank) if e.get("scale") is None]
    norms = [(e["step"], e.get("norm")) for e in watched]
    losses = _losses(run, rank)
    found = history.explosion(norms, failed_at, losses, failed=failed_at is not None)
    if found is None:
        return None
    lr = lr_story(run, rank, found.onset_step, found.growth_per_step, found.clip_at)
    shown = [(s, round(n, 4)) for s, n in found.history[-12:]]
    overflow = _failure_text(failed_at, first_bad, culprit)
    loss_path = _trajectory(losses, failed_at if failed_at is not None else found.peak_step)
    return Finding(
        code="numerics.grad_explosion", specialist=SPECIALIST, severity="error",
        title=(f"Gradients exploded from step {found.onset_step}{lr.clause}: norm {found.baseline:.3g} → "
               f"{found.peak:.3g} by step {found.peak_step}{overflow}"),
        detail=(f"The gradient norm passed 10x its first steps' ({found.baseline:.3g}) at step {found.onset_step} and "
                f"grew x{found.growth_per_step:.3g} per step to {found.peak:.3g} at step {found.peak_step}"
                + (f"; the loss went {loss_path}" if loss_path else "") + f". {lr.sentence}"
                + (" Whichever op overflowed at the end is where the growth surfaced, not its cause."
                   if failed_at is not None else "")),
        evidence={"step": found.onset_step, "rank": rank, "module": None, "op": None, "location": None,
                  "baseline_norm": found.baseline, "peak_norm": found.peak, "peak_step": found.peak_step,
                  "growth_per_step": found.growth_per_step, "clip_at": found.clip_at,
                  **lr.evidence, **_update_scale(run, rank), "norm_history": shown,
                  "loss_history": [(s, v) for s, v in losses if failed_at is None or s <= failed_at][-12:],
                  "failed_at": failed_at},
        fix=lr.fix)


def _update_scale(run: RecordedRun, rank: int) -> dict:
    """What the size of one update is measured against (the LR fix's factor,
    ptdiag.interventions): whether the optimizer is adaptive (a step of about the LR per
    weight) and the weight matrices' RMS before the first update."""
    proc = run.ranks.get(rank)
    graph = proc.first("numerics_graph") if proc else None
    return {"adaptive": lr_optimizer(run, rank) in rules.ADAPTIVE_OPTIMIZERS,
            "weight_rms": graph.get("weight_rms") if graph else None}


def _update_too_large(run: RecordedRun, rank: int, failed_at: int | None) -> Finding | None:
    """A NaN born after updates of an adaptive optimizer each larger than the weights
    themselves: such an optimizer moves every weight by about the LR per step, so at an LR
    of rules.UPDATE_RATIO_TOO_LARGE times the weights' RMS or more, the first steps replace
    the weights with values of the LR's size, and the op that went non-finite next is only
    where that surfaced (real nanoGPT at --learning_rate=1000: NaN in the attention's
    backward at step 2, too soon for a gradient trajectory). None without a failure after
    an update, or without the measurements."""
    scale = _update_scale(run, rank)
    if failed_at is None or failed_at < 2 or not scale["adaptive"] or not scale["weight_rms"]:
        return None
    used = [v for s, values in lr_per_step(run, rank).items() if s < failed_at
            for v in (values or []) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not used or max(used) < rules.UPDATE_RATIO_TOO_LARGE * scale["weight_rms"]:
        return None
    lr, rms, setting = max(used), scale["weight_rms"], lr_configured(run)
    ratio, target = lr / rms, rules.STABLE_UPDATE_SHARE * rms
    named = f" (configured {setting[0]}={setting[1]:.4g})" if setting and setting[1] != lr else ""
    losses = [(s, v) for s, v in _losses(run, rank) if s <= failed_at]
    return Finding(
        code="numerics.lr_too_high", specialist=SPECIALIST, severity="error",
        title=(f"Each {lr_optimizer(run, rank)} update moved every weight by about the learning rate, {lr:.3g}"
               f"{named}: {ratio:.3g}x the weights' RMS ({rms:.3g}), before the first non-finite value at step "
               f"{failed_at}"),
        detail=(f"{lr_optimizer(run, rank)} steps each weight by about the learning rate whatever the gradient's "
                f"size; the weight matrices' RMS before the first update was {rms:.3g}, so the updates before step "
                f"{failed_at} replaced the weights with values of the learning rate's size"
                + (f"; the loss went {_trajectory(losses, failed_at)}" if losses else "")
                + ". Whichever op went non-finite next is where this surfaced, not its cause."),
        evidence={"step": failed_at, "rank": rank, "module": None, "op": None, "location": None,
                  "lr_before_onset": lr, "lr_configured": setting[1] if setting else None, "adaptive": True,
                  "weight_rms": rms, "update_ratio": ratio, "loss_history": losses[-12:], "failed_at": failed_at},
        fix=(f"Lower the learning rate (it was {lr:.3g}" + (f", configured {setting[0]}={setting[1]:.4g}" if named else "")
             + f") to about {target:.2g}, "
             f"{rules.STABLE_UPDATE_SHARE:.0%} of the weights' RMS per step (common settings are 1-3 %)."))


# the cause found above an op where its values overflowed: (its name, what fixes it)
SURFACED_FROM = {"numerics.grad_explosion": ("gradient explosion", "Fix the explosion above (learning rate, clipping)"),
                 "numerics.lr_too_high": ("learning rate", "Lower the learning rate above")}


def _surfaced(finding: Finding, cause: Finding) -> Finding:
    """The op where the values of a cause found above (an explosion, updates larger than
    the weights) overflowed: a place, not a cause."""
    name, remedy = SURFACED_FROM[cause.code]
    return replace(finding, severity="warning",
                   detail=finding.detail + f" The {name} above made these values; this op is only "
                                           "where they overflowed first.",
                   fix=f"{remedy}; guarding this op would only move the overflow elsewhere.")


def _diverged(run: RecordedRun, rank: int) -> Finding | None:
    """The loss grew tenfold and stayed there, with no NaN and no gradient explosion."""
    losses = _losses(run, rank)
    found = history.loss_divergence(losses)
    if found is None:
        return None
    norms = [(s, n) for s, n in ((e["step"], e.get("norm")) for e in _watch(run, rank)) if _is_finite(n)]
    calm = [n for s, n in norms if s < found["onset_step"]] or [n for _, n in norms[:1]]
    norm_growth = history.growth(norms)
    lr = lr_story(run, rank, found["onset_step"], found["growth"], history.quantile(calm, rules.CLIP_QUANTILE)
                  if calm else 0.0)
    path = _trajectory(losses, None)
    return Finding(
        code="numerics.loss_diverged", specialist=SPECIALIST, severity="error",
        title=(f"The loss diverged{lr.clause}: {found['first']:.3g} at step {found['first_step']} → "
               f"{found['last_median']:.3g} (median of the last {found['last_steps']} steps), x{found['growth']:.3g}"),
        detail=(f"The loss passed {rules.LOSS_GROWTH_FACTOR:g}x its first value at step {found['onset_step']} and "
                f"stayed there: {path}. It never went non-finite"
                + (f", and the gradient norm grew only x{norm_growth:.3g}, not an explosion" if norm_growth else "")
                + f". {lr.sentence}"),
        evidence={"step": found["onset_step"], "rank": rank, "module": None, "op": None, "location": None,
                  **found, "norm_growth": norm_growth, **lr.evidence, **_update_scale(run, rank),
                  "loss_history": losses[-12:]},
        fix=lr.fix)


def _loss_flat(run: RecordedRun, rank: int) -> Finding | None:
    flat = history.loss_flat(_losses(run, rank))
    if flat is None:
        return None
    proc = run.ranks.get(rank)
    graph = proc.first("numerics_graph") if proc else None
    norms = [e.get("norm") for e in _watch(run, rank)]
    lrs = [v for values in lr_per_step(run, rank).values() for v in (values or []) if isinstance(v, (int, float))]
    return loss_flat_finding(flat, rank, graph, norms, lrs)


def _spikes(run: RecordedRun, rank: int, until: int | None) -> Finding | None:
    losses = _losses(run, rank)
    spikes = history.loss_spikes(losses, until)
    if not spikes:
        return None
    first = spikes[0]
    lasting = [s for s in spikes if s["recovered"] is False]
    warn = len(spikes) >= rules.SPIKES_WARN or lasting or until is not None
    return Finding(
        code="numerics.loss_spike", specialist=SPECIALIST, severity="warning" if warn else "info",
        title=f"{len(spikes)} loss spike(s) above {rules.SPIKE_FACTOR:g}x the running median, first at step {first['step']}",
        detail="Spikes (step: loss vs running median): " + ", ".join(
            f"{s['step']}: {s['loss']:.4g} vs {s['running_median']:.4g}" for s in spikes[:rules.SPIKES_SHOWN]) + ". "
        + (f"The loss did not come back after the spike at step {lasting[0]['step']}." if lasting else
           "The loss went non-finite after them." if until is not None else
           f"Each time the loss was back near its median within {rules.SPIKE_RECOVERY_STEPS} steps: a batch "
           "unlike the others (an outlier), which training absorbed." if not warn else ""),
        evidence={"step": first["step"], "rank": rank, "module": None, "op": None, "location": None,
                  "spikes": spikes[:rules.SPIKES_SHOWN], "count": len(spikes)},
        fix="Look at the batches of those steps (outliers, bad labels); lower the learning rate or clip gradients "
            "if the spikes come with large gradient norms.")


def _scale_collapse(run: RecordedRun, rank: int, amp: dict | None) -> Finding | None:
    scales = [(e["step"], e["scale"], _is_finite(e.get("norm"))) for e in _watch(run, rank) if e.get("scale")]
    found = history.scale_collapse(scales)
    if found is None:
        return None
    bf16 = (amp or {}).get("bf16_supported")
    return Finding(
        code="numerics.fp16_overflow", specialist=SPECIALIST, severity="warning",
        title=(f"GradScaler skipped {found['skipped']} of {found['backward_passes']} steps; "
               + (f"the loss scale fell from {found['first_scale']:g} to {found['lowest_scale']:g}"
                  if found['lowest_scale'] < found['first_scale'] else f"loss scale {found['first_scale']:g}")),
        detail=(f"Gradients overflowed float16 in {found['skipped_share']:.0%} of the backward passes "
                f"(first at steps {found['first_skipped']}); each skip halves the scale and drops the update."),
        evidence={"step": found["lowest_at"], "rank": rank, "module": None, "op": None, "location": None, **found},
        fix=("Use bfloat16 autocast (float32's range, no GradScaler needed), supported on this device. " if bf16
             else "") + "Find the op that overflows: values beyond 65504 in float16; keep it in float32.")


def analyse(run: RecordedRun) -> Analysis:
    """Cause first: a trajectory (explosion, a loss that does not move) before the op
    where a value overflowed, and that op before the loss it made non-finite."""
    culprit = _first_culprit(run)
    rank = culprit[0] if culprit else (run.main.rank if run.main else 0)
    amp_events = run.ranks[rank].of("numerics_amp") if rank in run.ranks else []
    amp = amp_events[0] if amp_events else None
    first_bad = _first_nonfinite(run)
    bad_grads = next((e["step"] for e in _watch(run, rank) if e.get("scale") is None and not _is_finite(e.get("norm"))),
                     None)
    failures = [s for s in (culprit[1]["step"] if culprit else None, first_bad["step"] if first_bad else None,
                            bad_grads) if s is not None]
    failed_at = min(failures) if failures else None
    bad_batch = bool(culprit and culprit[1].get("phase") == "input")  # the data explains all that followed
    explosion = None if bad_batch else _explosion(run, rank, failed_at, first_bad, culprit[1] if culprit else None)
    if explosion is None and not bad_batch:  # too soon for a trajectory: the size of each update
        explosion = _update_too_large(run, rank, failed_at)
    loss = _nonfinite_loss(run, first_bad, culprit, caused=explosion is not None)
    findings: list[Finding] = []
    if explosion is not None:
        findings += [f for f in (explosion, loss) if f]
        if culprit and culprit[1].get("phase") in ("forward", "backward"):
            findings.append(_surfaced(finding_for(culprit[1], rank, amp), explosion))
    else:
        if culprit:
            findings.append(finding_for(culprit[1], rank, amp))
        if loss:
            findings.append(loss)
    if failed_at is None and explosion is None:
        findings += [f for f in (_diverged(run, rank) or _loss_flat(run, rank),) if f]
    spikes_until = explosion.evidence["step"] if explosion else failed_at
    findings += [f for f in (_spikes(run, rank, spikes_until), _scale_collapse(run, rank, amp)) if f]
    metrics = {}
    if culprit:
        metrics["numerics_localise_s"] = culprit[1].get("localise_s")
    return Analysis(findings=findings, metrics=metrics)
