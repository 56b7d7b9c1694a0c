"""What the per-step numbers say before a failure: explosion, loss spikes, loss-scale collapse.

Pure functions over the recorded series, so they are testable on lists of numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from ptdiag.specialists.numerics import rules


def _finite(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Explosion:
    baseline: float  # median norm of the first steps
    onset_step: int  # first step above ONSET_FACTOR x baseline
    peak_step: int
    peak: float
    growth_per_step: float  # geometric mean factor from the onset to the peak
    clip_at: float  # CLIP_QUANTILE of the norms before the onset
    history: list[tuple[int, float]]


def growth(values: list[tuple[int, float]]) -> float | None:
    """How many times its first finite positive value the largest later one is."""
    finite = [v for v in (_finite(v) for _, v in values) if v is not None]
    if len(finite) < 2 or finite[0] <= 0:
        return None
    return max(finite[1:]) / finite[0]


def explosion(norms: list[tuple[int, float]], before_step: int | None = None,
              losses: list[tuple[int, float]] = (), failed: bool = False) -> Explosion | None:
    """Did the gradient norm grow by orders of magnitude (before `before_step`, the failure)?

    The baseline is the median of the first steps' norms. When the run went non-finite or
    its loss grew LOSS_GROWTH_FACTOR-fold, a few steps are enough and the very first norm
    counts as the baseline too: an LR far too high blows up from the second step, before
    there is a calm stretch to take a median of."""
    series = [(s, n) for s, n in ((s, _finite(n)) for s, n in norms)
              if n is not None and (before_step is None or s < before_step)]
    losses = [(s, v) for s, v in losses if before_step is None or s < before_step]
    diverging = failed or (growth(losses) or 0) >= rules.LOSS_GROWTH_FACTOR
    if len(series) >= rules.BASELINE_STEPS + 1:
        baseline = statistics.median(n for _, n in series[:rules.BASELINE_STEPS])
        if diverging:
            baseline = min(baseline, series[0][1])
    elif diverging and len(series) >= 2:
        baseline = series[0][1]
    else:
        return None
    if baseline <= 0:
        return None
    peak_step, peak = max(series, key=lambda sn: sn[1])
    if peak < rules.EXPLOSION_FACTOR * baseline:
        return None
    onset = next(i for i, (_, n) in enumerate(series) if n > rules.ONSET_FACTOR * baseline)
    calm = [n for _, n in series[:onset]] or [baseline]
    start_step, start = series[max(onset - 1, 0)]
    steps = max(peak_step - start_step, 1)
    return Explosion(baseline=baseline, onset_step=series[onset][0], peak_step=peak_step, peak=peak,
                     growth_per_step=(peak / start) ** (1 / steps) if start > 0 else math.inf,
                     clip_at=quantile(calm, rules.CLIP_QUANTILE), history=series)


def loss_divergence(losses: list[tuple[int, float]]) -> dict | None:
    """A finite loss that left its start for good: the median of its last steps at least
    LOSS_GROWTH_FACTOR x its first value (a spike comes back down; this does not). With an
    adaptive optimizer at a far too high learning rate the gradient norm stays bounded (Adam
    moves each weight by about the LR whatever the gradient), so no explosion is seen."""
    finite = [(s, v) for s, v in ((s, _finite(v)) for s, v in losses) if v is not None]
    if len(finite) < rules.DIVERGED_MIN_STEPS or len(finite) < len(losses) or finite[0][1] <= 0:
        return None
    first_step, first = finite[0]
    last = [v for _, v in finite[-rules.DIVERGED_LAST_STEPS:]]
    level = statistics.median(last)
    if level < rules.LOSS_GROWTH_FACTOR * first:
        return None
    onset = next(s for s, v in finite if v >= rules.LOSS_GROWTH_FACTOR * first)
    return {"first_step": first_step, "first": first, "onset_step": onset, "last_median": level,
            "last_steps": len(last), "growth": level / first, "steps": len(finite)}


def loss_flat(losses: list[tuple[int, float]]) -> dict | None:
    """A loss that does not move: the same value at every step (within float noise), or,
    over a longer run, never once below its first value and within a narrow band of it
    (a GAN's losses may rise and swing while it learns; a stuck model's hover)."""
    finite = [(s, v) for s, v in ((s, _finite(v)) for s, v in losses) if v is not None]
    if len(finite) < rules.FLAT_MIN_STEPS or len(finite) < len(losses):
        return None
    values = [v for _, v in finite]
    low, high = min(values), max(values)
    facts = {"steps": len(values), "first_step": finite[0][0], "last_step": finite[-1][0],
             "first": values[0], "min": low, "max": high}
    if high - low <= rules.FLAT_ATOL + rules.FLAT_RTOL * max(abs(low), abs(high)):
        return dict(facts, kind="constant")
    if (len(values) >= rules.NOT_DECREASING_MIN_STEPS and min(values[1:]) >= values[0]
            and high - low <= rules.NOT_DECREASING_BAND * abs(values[0])):
        return dict(facts, kind="not_decreasing")
    return None


def loss_spikes(losses: list[tuple[int, float]], until_step: int | None = None) -> list[dict]:
    """Finite losses above SPIKE_FACTOR x the running median of the losses before them;
    `recovered`: the losses right after came back near that median (None: too few after)."""
    spikes, window, seen = [], [], []
    for step, value in losses:
        value = _finite(value)
        if value is None or (until_step is not None and step >= until_step):
            break
        if len(window) >= rules.SPIKE_MIN_HISTORY:
            median = statistics.median(window)
            if median > 0 and value > rules.SPIKE_FACTOR * median:
                spikes.append({"step": step, "loss": value, "running_median": median,
                               "factor": value / median, "at": len(seen)})
        window = (window + [value])[-rules.SPIKE_WINDOW:]
        seen.append(value)
    for spike in spikes:
        after = seen[spike.pop("at") + 1:][:rules.SPIKE_RECOVERY_STEPS]
        spike["recovered"] = (statistics.median(after) <= rules.SPIKE_RECOVERED_FACTOR * spike["running_median"]
                              if len(after) == rules.SPIKE_RECOVERY_STEPS else None)
    return spikes


def scale_collapse(scales: list[tuple[int, float, bool]]) -> dict | None:
    """GradScaler history (step, scale, grads finite): collapsed scale or mostly skipped steps."""
    if not scales:
        return None
    first = scales[0][1]
    low_step, low = min(((s, v) for s, v, _ in scales), key=lambda sv: sv[1])
    skipped = [s for s, _, ok in scales if not ok]
    share = len(skipped) / len(scales)
    if first / low < rules.SCALE_COLLAPSE_FACTOR and share <= rules.SKIP_SHARE:
        return None
    return {"first_scale": first, "lowest_scale": low, "lowest_at": low_step, "skipped": len(skipped),
            "backward_passes": len(scales), "skipped_share": share, "first_skipped": skipped[:5]}
