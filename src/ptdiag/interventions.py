"""The fixes ptdiag can try without touching the user's code, declared once, as data.

A verification run (ptdiag.verification) is the command run again with one intervention
applied from inside the process (ptdiag.probe.interventions); its measured effect goes
next to the finding it verifies. Each intervention says what it changes, which finding
codes it can verify, its settings (taken from the finding's evidence where the finding
measured them, else the declared default) and the metric that tells whether it helped.

Neutral: imported by the probe (no torch, no store, no analysis) and by the parent side.
The intervention a companion process applies reaches it through INTERVENTION_ENV
(ptdiag.events), as JSON: {"name": ..., "settings": {...}}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

# metric -> what it measures (ptdiag.verification.measure reads a companion run for it)
METRICS = {
    "first_nonfinite_step": "the first step whose loss was not finite (none: finite to the end)",
    "data_wait_share": "the share of the step the loop waited on the DataLoader, and the step time p50",
    "repeat_identical": "the first step where two runs differ (none: bit-identical), in two runs with the change",
    "step_time": "the step time p50 and its phases (data wait, forward, backward, optimizer)",
    "shards_disjoint": "the share of a rank's sample indices another rank also drew in the same pass of the training loader",
    "epoch_order": "whether a rank's training loader drew its indices in the same order at two epochs",
    "unused_forwards": "the forwards that recorded an autograd graph no backward used, at the finding's line, "
                       "and the peak memory",
    "step_peak": "a training step's peak memory, measured by MemTracker on real tensors, against --target-memory",
    "loss_growth": "the loss's last value against its first, over the same steps (diverged: 10x above or more)",
    "scaler_skips": "the backward passes whose update a GradScaler skipped (inf/NaN gradients), over the same steps",
    "oom_step": "whether the run got past the step where it ran out of memory (a margin of steps more, or the "
                "program's own end) without an out-of-memory error",
}


@dataclass(frozen=True)
class Intervention:
    name: str
    area: str  # the specialist whose findings it verifies
    changes: str  # what it changes in the program, in a sentence
    # what a verification run changed, for "with <phrase> the loss stayed finite": settings fill
    # it (str.format), or a function of the settings where their shape varies
    phrase: str | Callable[[dict], str]
    verifies: tuple[str, ...]  # finding codes
    defaults: dict[str, Any]  # its settings, when the finding's evidence does not give them
    metric: str  # a key of METRICS
    # evidence of the finding -> settings measured there (the rest keep their defaults)
    from_evidence: Callable[[dict], dict] = lambda evidence: {}
    # "optimizer": applied at a torch.optim optimizer's step, so nothing in a program that
    # updates its weights by hand (verification does not run it there, and says why)
    acts_on: str | None = None
    # the settings of one stronger try where the first did not help (a ladder of at most two
    # rungs, within the verification budget); None: one try
    retry: Callable[[dict], dict] | None = None
    # finding code -> the metric for it, where not `metric` (the LR fix: a NaN for an
    # explosion, the loss's growth for a loss that diverged without one)
    metric_for: dict[str, str] = field(default_factory=dict)
    # finding code -> its settings from its evidence, where not `from_evidence` (a smaller
    # batch: the fit estimate's largest batch for memory.fit, half the program's for an OOM)
    evidence_for: dict[str, Callable[[dict], dict]] = field(default_factory=dict)

    def metric_of(self, code: str) -> str:
        return self.metric_for.get(code, self.metric)

    def settings_for(self, evidence: dict, code: str | None = None) -> dict[str, Any] | None:
        """Its settings for a finding of this code with this evidence; None where a setting
        without a default was not measured (the intervention does not apply to that finding)."""
        read = self.evidence_for.get(code, self.from_evidence)
        found = {k: v for k, v in read(evidence or {}).items() if v is not None}
        settings = {**self.defaults, **found}
        return settings if all(v is not None for v in settings.values()) else None

    def describe(self, settings: dict[str, Any]) -> str:
        """'gradients clipped at 146': what the run changed, for sentences."""
        return self.phrase(settings) if callable(self.phrase) else self.phrase.format(**settings)


def _loader_workers(evidence: dict) -> dict:
    """As many workers as the usable cores allow, at least 2 (one worker only alternates
    with the training process) and at most 4 (a verification, not a tuning sweep)."""
    cores = evidence.get("cores") or 2
    return {"num_workers": max(2, min(4, cores - 1))}


def _threads_advised(evidence: dict) -> dict:
    """The threads compute_bound found this process may use (its share of the cores), where
    torch ran on fewer; nothing where that was not the finding's advice."""
    gain = next((g for g in evidence.get("expected_gains") or [] if g.get("change") == "threads"), None)
    return {"num_threads": gain.get("cores_per_process")} if gain else {}


# causes of reproducibility.nondeterministic that deterministic kernels remove (determinism.py)
COMPUTATION_CAUSES = ("ops", "computation", "cublas_workspace")


def _computation_differed(evidence: dict) -> dict:
    """Deterministic kernels are the fix only where the runs differed in the computation
    itself (not in a generator, a seed or the data order)."""
    causes = evidence.get("causes") or []
    computation = any(c.get("kind") in COMPUTATION_CAUSES or c.get("setting") == "cudnn_benchmark" for c in causes)
    return {"cublas_workspace": ":4096:8"} if computation else {}


def _batch_that_fits(evidence: dict) -> dict:
    """The largest batch the fit estimate says fits, where the program's does not (and
    some batch does: at 0 nothing fits, and a smaller batch is not the fix)."""
    peak, budget, largest = (evidence.get(k) for k in ("estimated_peak_bytes", "budget_bytes", "largest_batch"))
    return {"batch_size": largest} if peak and budget and peak > budget and largest else {}


def _half_the_batch(evidence: dict) -> dict:
    """Half the training DataLoader's batch where the run ran out of memory: activations
    scale with it, so a half batch is the smallest change that shows the batch is the cause
    (a batch of 1 has nothing smaller to try)."""
    batch = evidence.get("batch_size")
    return {"batch_size": batch // 2} if isinstance(batch, int) and batch > 1 else {}


def _lr_before_the_rise(evidence: dict) -> dict:
    """The LR the run started at, where the program's schedule raised it before the
    explosion (the explosion's evidence: lr_start below lr_before_onset): capped there,
    the run shows whether the rise is the cause. (Capping at the last value before the
    explosion, lr_safe, left the ResNet lr sample diverging: 2.5 -> 2907 in 3 steps.)"""
    start, cause = evidence.get("lr_start"), evidence.get("lr_before_onset")
    return {"max_lr": start} if start and cause and start < cause else {}


# lr_scale's factor, from the explosion's evidence (_lr_factor). An adaptive optimizer (Adam...)
# moves every weight by about the learning rate each step, whatever the gradient: stable
# where that is a small share of the weights' RMS (nanoGPT's 6e-4 against its 0.02 init is
# 3 %). A plain one (SGD) on a quadratic multiplies the unstable direction by |1 - lr*lambda|
# each step: the measured growth g of the gradient norm gives lr*lambda = 1 + g, and the
# LR x margin/(1+g) lands below 2/lambda, where it converges.
STABLE_UPDATE_SHARE = 0.01
STABILITY_MARGIN = 0.5
LR_FACTOR_MAX = 0.1  # at least 10x lower: less does not test "the LR was too high"
LR_FACTOR_UNMEASURED = 0.01  # neither measured (no weights seen, no growth)
LR_LADDER_STEP = 0.1  # the second rung, where the first still failed: 10x lower again


def _lr_factor(evidence: dict) -> dict:
    """The factor that brings the LR to where the measurements say it is stable (above)."""
    lrs = [v for v in (evidence.get(k) for k in ("lr_configured", "lr_before_onset", "lr_start"))
           if isinstance(v, (int, float)) and v > 0]
    weights, growth = evidence.get("weight_rms"), evidence.get("growth_per_step")
    if evidence.get("adaptive") and weights and lrs:
        factor = STABLE_UPDATE_SHARE * weights / max(lrs)
    elif not evidence.get("adaptive") and growth:
        factor = STABILITY_MARGIN / (1.0 + growth)
    else:
        factor = LR_FACTOR_UNMEASURED
    return {"factor": float(f"{min(factor, LR_FACTOR_MAX):.2g}")}


def _reduced_precision(evidence: dict) -> dict:
    """An op that failed in float16 or bfloat16 (under autocast: the program's float32 model)."""
    dtype = evidence.get("dtype")
    return {"from_dtype": dtype} if dtype in ("float16", "bfloat16") else {}


def _scale_it_fell_to(evidence: dict) -> dict:
    """The scale the GradScaler fell to, where it fell below where the program started it
    (a scaler that skipped at its first scale and never fell has nothing lower to try)."""
    low, first = evidence.get("lowest_scale"), evidence.get("first_scale")
    return {"init_scale": low} if low and first and low < first else {}


def _poisoned_batches(evidence: dict) -> dict:
    """The poisoned dataset indices where the numerics specialist confirmed them, else the
    batch's place (its epoch and position in it, as the loader handed it out); the
    dataset's class, so that another loader (the evaluation's) is left alone."""
    if evidence.get("indices"):
        skip = {"indices": list(evidence["indices"])}
    elif evidence.get("batch") is not None and evidence.get("epoch") is not None:
        skip = {"epoch": evidence["epoch"], "batch": evidence["batch"]}
    else:
        return {}
    return {"skip": skip, "dataset": evidence.get("dataset")}


def _skipped(settings: dict) -> str:
    skip = settings["skip"]
    if "indices" in skip:
        return f"the batches holding dataset indices {skip['indices']} skipped"
    return f"batch {skip['batch']} of epoch {skip['epoch']} skipped"


# in the order they are tried for one finding: the cause the finding names first (a schedule
# that raised the LR, an LR too high), then the remedy for its effect (clipping)
INTERVENTIONS: tuple[Intervention, ...] = (
    Intervention(
        "lr_cap", "numerics", "the learning rate of every parameter group capped right before each optimizer step "
                              "at the value the run started with (the program's schedule raised it)",
        "the learning rate capped at {max_lr:g}",
        verifies=("numerics.grad_explosion",),
        defaults={"max_lr": None}, acts_on="optimizer", metric="first_nonfinite_step",
        from_evidence=_lr_before_the_rise),
    Intervention(
        "lr_scale", "numerics", "the learning rate of every parameter group scaled right before each optimizer "
                                "step (on top of the program's own schedule)",
        "the learning rate x{factor:g}",
        verifies=("numerics.grad_explosion", "numerics.lr_too_high", "numerics.loss_diverged"),
        defaults={"factor": LR_FACTOR_UNMEASURED}, acts_on="optimizer",
        metric="first_nonfinite_step", metric_for={"numerics.loss_diverged": "loss_growth"}, from_evidence=_lr_factor,
        retry=lambda settings: {"factor": float(f"{settings['factor'] * LR_LADDER_STEP:.2g}")}),
    Intervention(
        "clip_grad_norm", "numerics", "gradients clipped to a total norm before each optimizer step",
        "gradients clipped at {max_norm:.3g}",
        verifies=("numerics.grad_explosion",),
        defaults={"max_norm": 1.0}, acts_on="optimizer", metric="first_nonfinite_step",
        from_evidence=lambda e: {"max_norm": e.get("clip_at")}),
    # the cause an op-level finding under autocast names: the reduced precision's range
    Intervention(
        "autocast_float32", "numerics", "every autocast region entered disabled, so its ops run in float32 "
                                        "(the GradScaler, if any, left as it is)",
        "the autocast regions in float32 instead of {from_dtype}",
        verifies=("numerics.fp16_overflow", "numerics.nonfinite_forward"),
        defaults={"from_dtype": None}, metric="first_nonfinite_step", from_evidence=_reduced_precision),
    Intervention(
        "grad_scaler_scale", "numerics", "every GradScaler built with a lower initial scale (a program's lower "
                                         "one is kept)",
        "the GradScaler's initial scale at {init_scale:g}",
        verifies=("numerics.fp16_overflow",),
        defaults={"init_scale": None}, metric="scaler_skips",
        from_evidence=_scale_it_fell_to),
    Intervention(
        "skip_batches", "numerics", "the DataLoader's batches that held the poisoned samples left out (every epoch), "
                                    "or, where the samples were not knowable, the one batch at the failing position",
        _skipped,
        verifies=("numerics.nonfinite_input",),
        defaults={"skip": None}, metric="first_nonfinite_step", from_evidence=_poisoned_batches),
    Intervention(
        "seed_all", "reproducibility", "torch (every device), python and numpy seeded when torch is imported, "
                                       "deterministic algorithms on (warn only), cuDNN deterministic",
        "every RNG seeded with {seed} at the start and deterministic algorithms on",
        verifies=("reproducibility.unseeded",),
        defaults={"seed": 0}, metric="repeat_identical"),
    # pin_memory "auto": on where CUDA is available (pinned host memory only helps copies to a GPU)
    Intervention(
        "dataloader_workers", "performance", "DataLoaders built with worker processes",
        "num_workers={num_workers}",
        verifies=("performance.dataloader_bound",),
        defaults={"num_workers": 2, "pin_memory": "auto", "persistent_workers": True}, metric="data_wait_share",
        from_evidence=_loader_workers),
    # -- performance, distributed: the step's threads, the loader's sampler -----------------------
    Intervention(
        "torch_threads", "performance", "torch.set_num_threads(n) as soon as torch is imported (what "
                                        "OMP_NUM_THREADS=n does)",
        "torch.set_num_threads({num_threads})",
        verifies=("performance.compute_bound",),
        defaults={"num_threads": None}, metric="step_time", from_evidence=_threads_advised),
    # fused first: one kernel per step (tests/programs/optimizer_loop.py's Adam step: 5.6 ms in
    # torch's loop, 1.3 ms with foreach, 0.42 ms fused; docs/verification.md)
    Intervention(
        "optimizer_fused", "performance", "every parameter group of the optimizer stepped with fused=True where "
                                          "torch has a fused kernel for it and its parameters' device (set before "
                                          "its first step), else foreach=True (its multi-tensor implementation); a "
                                          "fused or differentiable group left as it is",
        "the optimizer's fused=True (foreach=True where it has no fused kernel)",
        verifies=("performance.optimizer_loop",),
        defaults={"fused": True}, acts_on="optimizer", metric="step_time"),
    Intervention(
        "distributed_sampler", "distributed", "each DataLoader whose sampler is of the training loader's kind "
                                              "(RandomSampler or SequentialSampler, no batch_sampler) built with a "
                                              "DistributedSampler over the ranks instead, shuffling as the loader "
                                              "did, its set_epoch called before each pass",
        "a DistributedSampler in place of the {sampler}",
        verifies=("distributed.no_distributed_sampler",),
        defaults={"sampler": None}, metric="shards_disjoint", from_evidence=lambda e: {"sampler": e.get("sampler")}),
    Intervention(
        "sampler_set_epoch", "distributed", "DistributedSampler.set_epoch(n) called before the n-th pass over "
                                            "each DataLoader that has one (n counts passes from 0)",
        "set_epoch called before each pass over the loader",
        verifies=("distributed.sampler_epoch_not_set",),
        defaults={}, metric="epoch_order"),
    # -- reproducibility -------------------------------------------------------------------------
    Intervention(
        "deterministic_algorithms", "reproducibility", "torch.use_deterministic_algorithms(True, warn_only=True), "
                                                       "cuDNN deterministic and not benchmarking, "
                                                       "CUBLAS_WORKSPACE_CONFIG set, from when torch is imported",
        "deterministic algorithms on (CUBLAS_WORKSPACE_CONFIG={cublas_workspace})",
        verifies=("reproducibility.nondeterministic",),
        defaults={"cublas_workspace": None}, metric="repeat_identical", from_evidence=_computation_differed),
    # -- memory ------------------------------------------------------------------------------------
    Intervention(
        "eval_no_grad", "memory", "the model's forwards called from the finding's line, in the finding's mode "
                                  "(eval or training), run under torch.no_grad() (recording back on right after, "
                                  "also when the forward raised)",
        "the forwards at {location} under torch.no_grad()",
        verifies=("memory.eval_without_no_grad",),
        defaults={"location": None, "training": None}, metric="unused_forwards",
        from_evidence=lambda e: {"location": e.get("location"), "training": e.get("training_mode")}),
    Intervention(
        "loader_batch_size", "memory", "each DataLoader built with a batch size of at most the one given (the "
                                       "program's other arguments kept)",
        "the DataLoader's batch size at most {batch_size}",
        verifies=("memory.fit", "memory.oom"),
        defaults={"batch_size": None}, metric="step_peak", from_evidence=_batch_that_fits,
        metric_for={"memory.oom": "oom_step"}, evidence_for={"memory.oom": _half_the_batch}),
)
BY_NAME = {i.name: i for i in INTERVENTIONS}
AREAS = tuple(dict.fromkeys(i.area for i in INTERVENTIONS))


def for_code(code: str) -> list[Intervention]:
    """The interventions that can verify a finding of this code, first the preferred."""
    return [i for i in INTERVENTIONS if code in i.verifies]


def encode(name: str, settings: dict[str, Any]) -> str:
    return json.dumps({"name": name, "settings": settings})


def decode(text: str | None) -> tuple[Intervention, dict[str, Any]] | None:
    """The intervention INTERVENTION_ENV asks for, or None (unset, unknown or malformed:
    a companion of another ptdiag version runs plain rather than fail)."""
    if not text:
        return None
    try:
        data = json.loads(text)
        intervention = BY_NAME[data["name"]]
        return intervention, {**intervention.defaults, **dict(data.get("settings") or {})}
    except (ValueError, KeyError, TypeError):
        return None
