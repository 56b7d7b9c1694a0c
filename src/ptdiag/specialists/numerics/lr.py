"""What the learning rate did before an explosion, in words: the clause of the title, the
sentence of the detail, the fix, and the numbers for the evidence.

Three sources, best first: the optimizer's param groups at each step (what was really
used, warm-up included), then the learning rate the program was configured with (its
command line or config: a hand-written update reports none, and a warm-up's value is not
what the person set).
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdiag.recorded import RecordedRun
from ptdiag.specialists.numerics import rules
from ptdiag.specialists.tracking import record


def per_step(run: RecordedRun, rank: int) -> dict[int, list]:
    proc = run.ranks.get(rank)
    return {e["step"]: e.get("lr") for e in proc.of("step")} if proc else {}


def _numbers(values) -> list[float]:
    return [v for v in (values or []) if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _first(lrs: dict[int, list]) -> float | None:
    return next((max(_numbers(lrs[s])) for s in sorted(lrs) if _numbers(lrs[s])), None)


def _at(lrs: dict[int, list], step: int) -> float | None:
    earlier = [s for s in lrs if s <= step]
    values = _numbers(lrs[max(earlier)]) if earlier else []
    return max(values) if values else None


def configured(run: RecordedRun) -> tuple[str, float] | None:
    """The learning rate as the program was configured (rules.LR_KEYS of its parameters)."""
    params = record.params(run)
    for key in rules.LR_KEYS:
        value = params.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return key, float(value)
    return None


def optimizer(run: RecordedRun, rank: int) -> str | None:
    proc = run.ranks.get(rank)
    found = proc.first("optimizer") if proc else None
    return found.get("cls") if found else None


@dataclass
class LrStory:
    clause: str  # for the title: " as the learning rate rose x1000 to 1"
    sentence: str  # for the detail
    fix: str
    evidence: dict


def story(run: RecordedRun, rank: int, onset_step: int, growth_per_step: float, clip_at: float) -> LrStory:
    lrs = per_step(run, rank)
    # the norm at the onset step was measured after the update of the step before it
    start, cause, safe = _first(lrs), _at(lrs, onset_step - 1), _at(lrs, onset_step - 2)
    setting = configured(run)
    adaptive = optimizer(run, rank) in rules.ADAPTIVE_OPTIMIZERS
    named = f" (configured {setting[0]}={setting[1]:.4g})" if setting and cause and setting[1] != cause else ""
    rose = bool(start and cause and cause >= rules.LR_RISE_FACTOR * start)
    if rose:
        clause = f" as the learning rate rose x{cause / start:.3g} to {cause:.3g}"
        sentence = (f"The learning rate was {start:.3g} at the start and {cause:.3g} (x{cause / start:.3g}) in the "
                    f"update just before the explosion began{named}.")
    elif cause:
        clause = f" at learning rate {cause:.3g}{named}"
        sentence = f"The learning rate was {cause:.3g} in the update before it began{named}."
    elif setting:
        clause = f" with {setting[0]}={setting[1]:.4g}"
        sentence = (f"No learning rate was reported (the weights are updated by hand); the program was configured "
                    f"with {setting[0]}={setting[1]:.4g}.")
    else:
        clause, sentence = "", "No learning rate was reported (the weights are updated by hand) nor configured."
    was = (f"it was {cause:.3g}" + (f", configured {setting[0]}={setting[1]:.4g}" if named else "")) if cause else ""
    if rose and safe:
        # not `safe`, the last value before the onset: capped there, the ResNet lr sample still
        # diverged (2.5 -> 2907 in 3 steps); capped where it started, it trained (verification)
        fix = (f"The learning rate schedule raised it x{cause / start:.3g}: keep it near {start:.3g}, where the run "
               f"started (even {safe:.3g}, the last value before the explosion, may be too high): lower the "
               f"peak the schedule reaches.")
    elif cause and adaptive:
        fix = (f"Lower the learning rate ({was}): {optimizer(run, rank)} moves each weight by "
               f"about the learning rate per step whatever the gradient's size, so clipping cannot hold this back.")
    elif cause:
        fix = f"Lower the learning rate ({was}) by at least x{max(min(growth_per_step, 10), 2):.2g}."
    else:
        fix = "Lower the learning rate of the hand-written update" + (
            f" ({setting[0]}={setting[1]:.4g})." if setting else ".")
    if not adaptive:
        fix += (f" Clip gradients at the pre-explosion p99 norm: torch.nn.utils.clip_grad_norm_(model.parameters(), "
                f"max_norm={clip_at:.3g}) before the update.")
    return LrStory(clause, sentence, fix, {"lr_start": start, "lr_before_onset": cause, "lr_safe": safe,
                                            "lr_configured": setting[1] if setting else None})
