"""The numerics specialist: where NaN/Inf is born, and why.

Reads what the probe recorded (`probe.py`): the loss, gradient norms and loss scale of
every backward pass (`numerics` events), the replay of the failing step
(`numerics_culprit`), and the recorder's steps (learning rate, epoch) and losses.

Order of the findings: the one that names the cause comes first. When the gradient
norm grew by orders of magnitude before the failure, no single op is the cause (the
op that overflowed is only where it surfaced), so the loss's history leads, the
explosion follows with its numbers, and the op is kept as a warning.
"""

from __future__ import annotations

import math

from ptdiag.findings import Analysis, Finding
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.numerics import history, rules
from ptdiag.specialists.numerics.culprit import finding_for, forward_finding, location

HISTORY_STEPS = 5  # loss values shown before the first non-finite one
SPECIALIST = "numerics"


def _first_culprit(run: RecordedRun) -> tuple[int, dict] | None:
    found = [(rank, e) for rank, proc in run.ranks.items() for e in proc.of("numerics_culprit")]
    return min(found, key=lambda re: (re[1]["step"], re[0])) if found else None


def _lrs(run: RecordedRun, rank: int) -> dict[int, list]:
    proc = run.ranks.get(rank)
    return {e["step"]: e.get("lr") for e in proc.of("step")} if proc else {}


def _first_lr(lrs: dict[int, list]) -> float | None:
    for step in sorted(lrs):
        values = [v for v in (lrs[step] or []) if isinstance(v, (int, float))]
        if values:
            return max(values)
    return None


def _lr_at(lrs: dict[int, list], step: int) -> float | None:
    earlier = [s for s in lrs if s <= step]
    values = [v for v in (lrs[max(earlier)] or []) if isinstance(v, (int, float))] if earlier else []
    return max(values) if values else None


def _watch(run: RecordedRun, rank: int) -> list[dict]:
    proc = run.ranks.get(rank)
    return proc.of("numerics") if proc else []


def _nonfinite_loss(run: RecordedRun, culprit: tuple[int, dict] | None) -> Finding | None:
    """The first non-finite loss (the recorder's, else the watch's), with where it was born."""
    first = run.first_nonfinite_loss()
    if first is None:
        for rank, proc in run.ranks.items():
            bad = next((e for e in proc.of("numerics") if not _is_finite(e.get("loss"))), None)
            if bad and (first is None or bad["step"] < first["step"]):
                first = {"step": bad["step"], "value": bad["loss"], "rank": rank, "epoch": None}
    if first is None:
        return None
    rank = first["rank"]
    before = [(s, v) for s, v in run.losses(rank) if s < first["step"]][-HISTORY_STEPS:]
    lr = _lrs(run, rank).get(first["step"])
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
    return Finding(
        code="numerics.nonfinite_loss", specialist=SPECIALIST, severity="error",
        title=f"The loss became {first['value']} at step {first['step']}{epoch}",
        detail="Loss before it: " + (", ".join(f"step {s}: {v:.4g}" for s, v in before) or "none recorded")
               + (f"; learning rate at that step: {lr}" if lr else "") + born + ".",
        evidence=evidence,
        fix="See the findings below for where the value was born and why." if culprit else
            "Localise the first non-finite value: run with the numerics specialist (`--only numerics`).")


def _is_finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return value is None


def _explosion(run: RecordedRun, rank: int, failed_at: int | None) -> Finding | None:
    norms = [(e["step"], e.get("norm")) for e in _watch(run, rank) if e.get("scale") is None]
    found = history.explosion(norms, failed_at)
    if found is None:
        return None
    lrs = _lrs(run, rank)
    # the norm at the onset step was measured after the update of the step before it
    lr0, lr_cause, lr_safe = _first_lr(lrs), _lr_at(lrs, found.onset_step - 1), _lr_at(lrs, found.onset_step - 2)
    shown = [(s, round(n, 4)) for s, n in found.history[-12:]]
    lr_rose = bool(lr0 and lr_cause and lr_cause >= rules.LR_RISE_FACTOR * lr0)
    lr_text = (f"The learning rate was {lr0:g} at the start and {lr_cause:g} (x{lr_cause / lr0:g}) in the update "
               f"just before the explosion began." if lr_rose else
               f"The learning rate was {lr_cause:g} in the update before it began." if lr_cause else "")
    if lr_rose and lr_safe:
        fix = (f"The learning rate schedule raised it x{lr_cause / lr0:g}: keep it at or below {lr_safe:g}, the last "
               f"value before the explosion (x{lr_cause / lr_safe:g} lower than {lr_cause:g}). ")
    elif lr_cause:
        fix = f"Lower the learning rate (it was {lr_cause:g}) by at least x{min(found.growth_per_step, 10):.2g}. "
    else:
        fix = ""
    fix += (f"Clip gradients at the pre-explosion p99 norm: torch.nn.utils.clip_grad_norm_(model.parameters(), "
            f"max_norm={found.clip_at:.3g}) before optimizer.step().")
    return Finding(
        code="numerics.grad_explosion", specialist=SPECIALIST, severity="error",
        title=(f"Gradient norm grew x{found.peak / found.baseline:.3g} (from {found.baseline:.3g} to "
               f"{found.peak:.3g}) before the failure"),
        detail=(f"The norm passed 10x its first steps' median at step {found.onset_step} and grew x"
                f"{found.growth_per_step:.3g} per step to {found.peak:.3g} at step {found.peak_step}. {lr_text} "
                f"Recent norms (step, norm): {shown}."),
        evidence={"step": found.onset_step, "rank": rank, "module": None, "op": None, "location": None,
                  "baseline_norm": found.baseline, "peak_norm": found.peak, "peak_step": found.peak_step,
                  "growth_per_step": found.growth_per_step, "clip_at": found.clip_at,
                  "lr_start": lr0, "lr_before_onset": lr_cause, "lr_safe": lr_safe, "norm_history": shown},
        fix=fix)


def _spikes(run: RecordedRun, rank: int, until: int | None) -> Finding | None:
    losses = [(e["step"], e.get("loss")) for e in _watch(run, rank)] or run.losses(rank)
    spikes = history.loss_spikes(losses, until)
    if not spikes:
        return None
    first = spikes[0]
    return Finding(
        code="numerics.loss_spike", specialist=SPECIALIST, severity="warning",
        title=f"{len(spikes)} loss spike(s) above {rules.SPIKE_FACTOR:g}x the running median, first at step {first['step']}",
        detail="Spikes (step: loss vs running median): " + ", ".join(
            f"{s['step']}: {s['loss']:.4g} vs {s['running_median']:.4g}" for s in spikes[:rules.SPIKES_SHOWN]) + ".",
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
    culprit = _first_culprit(run)
    rank = culprit[0] if culprit else (run.main.rank if run.main else 0)
    amp_events = run.ranks[rank].of("numerics_amp") if rank in run.ranks else []
    amp = amp_events[0] if amp_events else None
    failed_at = culprit[1]["step"] if culprit else None
    loss = _nonfinite_loss(run, culprit)
    explosion = _explosion(run, rank, failed_at)
    findings: list[Finding] = []
    if explosion is not None:
        findings += [f for f in (loss, explosion) if f]
        if culprit and culprit[1].get("phase") == "forward":
            findings.append(forward_finding(culprit[1], rank, severity="warning"))
    else:
        if culprit:
            findings.append(finding_for(culprit[1], rank, amp))
        if loss:
            findings.append(loss)
    spikes_until = explosion.evidence["step"] if explosion else failed_at
    findings += [f for f in (_spikes(run, rank, spikes_until), _scale_collapse(run, rank, amp)) if f]
    metrics = {}
    if culprit:
        metrics["numerics_localise_s"] = culprit[1].get("localise_s")
    return Analysis(findings=findings, metrics=metrics)
