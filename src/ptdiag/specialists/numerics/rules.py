"""Thresholds and fix texts of the numerics findings: data, so they can be read and tuned."""

from __future__ import annotations

from ptdiag.interventions import STABLE_UPDATE_SHARE  # noqa: F401  (one number: the fix and its verification)

FP16_MAX = 65504.0

# gradient explosion: the norm before the failure vs the median of the first steps
BASELINE_STEPS = 5
EXPLOSION_FACTOR = 100.0  # "orders of magnitude": at least 100x the baseline
ONSET_FACTOR = 10.0  # the explosion starts where the norm first passes 10x the baseline
LR_RISE_FACTOR = 10.0  # a learning rate this many times its first value is called out
CLIP_QUANTILE = 0.99
# a loss this many times its first value (with the norm growing) is an explosion even
# before BASELINE_STEPS calm steps were seen
LOSS_GROWTH_FACTOR = 10.0
# a loss diverged (no NaN, no explosion): the median of its last DIVERGED_LAST_STEPS at
# least LOSS_GROWTH_FACTOR x its first, over at least DIVERGED_MIN_STEPS steps
DIVERGED_MIN_STEPS = 8
DIVERGED_LAST_STEPS = 5
# the run's configuration keys that name the learning rate (first found wins), for a
# hand-written update that no optimizer reports
LR_KEYS = ("lr", "learning_rate", "learning-rate", "base_lr", "optimizer.lr")
TRAJECTORY_SHOWN = 6
# optimizers whose step size is about the learning rate whatever the gradient's scale:
# clipping the gradient does not bound their update
ADAPTIVE_OPTIMIZERS = frozenset({"Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta", "RMSprop",
                                 "SparseAdam", "Adafactor"})  # losses shown up to the failure
# an adaptive optimizer's LR this many times the weight matrices' RMS (each update moves every
# weight by about the LR: by more than the weights' own size) names the cause of a NaN that
# came too soon for a gradient trajectory (numerics.lr_too_high); its fix brings the LR to
# STABLE_UPDATE_SHARE of that RMS, the share the LR fix is verified with
UPDATE_RATIO_TOO_LARGE = 1.0

# a loss that does not move: the same value (within these tolerances) over at least
# FLAT_MIN_STEPS steps, or never below its first value over NOT_DECREASING_MIN_STEPS
FLAT_MIN_STEPS = 5
FLAT_RTOL = 1e-6
FLAT_ATOL = 1e-9
NOT_DECREASING_MIN_STEPS = 20
NOT_DECREASING_BAND = 0.05  # ... and all within this share of the first value

# loss spikes (without NaN): loss above k x the running median of the losses before it
SPIKE_FACTOR = 10.0
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 5
SPIKES_SHOWN = 5
# A lone spike the loss recovers from is noisy data, not a fault (pytorch/examples'
# regression: one batch of x^4 features 13x the median in 784 steps, a correct program):
# a warning takes SPIKES_WARN spikes, one the loss did not recover from (the median of the
# SPIKE_RECOVERY_STEPS losses after it above SPIKE_RECOVERED_FACTOR x the median before), or
# a run that went non-finite after them.
SPIKES_WARN = 3
SPIKE_RECOVERY_STEPS = 5
SPIKE_RECOVERED_FACTOR = 2.0

# GradScaler: a scale that fell this far below its first value has collapsed
SCALE_COLLAPSE_FACTOR = 2.0 ** 12
SKIP_SHARE = 0.5  # or more than half the steps skipped

PARAMS_SHOWN = 8

LOSS_DEFAULT_FIX = "Check the loss function's logs, divisions and square roots (see the nodes above) and its targets."

# forward op (aten name) -> why it makes NaN/Inf from finite inputs, and the fix
FORWARD_FIXES = {
    "aten::log": "log(0) = -inf (and log(x<0) = NaN): a probability that underflowed to 0. Use "
                 "torch.log_softmax / F.cross_entropy on the logits instead of log(softmax(x)), or "
                 "torch.log(x.clamp_min(eps)).",
    "aten::div": "a division by zero (0/0 = NaN, x/0 = Inf), typically a standard deviation or norm that is "
                 "exactly 0. Add eps to the denominator, (x - mean) / (std + eps), or use a library "
                 "normalisation (F.layer_norm, F.normalize, nn.GroupNorm) that does.",
    "aten::sqrt": "sqrt of a negative number is NaN: clamp the argument, torch.sqrt(x.clamp_min(0) + eps).",
    "aten::rsqrt": "rsqrt(0) = Inf: add eps inside, torch.rsqrt(var + eps).",
    "aten::exp": "exp overflows above ~88 in float32 (~11 in float16): subtract the max first "
                 "(torch.logsumexp, torch.softmax) or clamp the argument.",
    "aten::pow": "a power overflowed or a fractional power of a negative number: clamp the base.",
    "aten::_to_copy": "a cast to a narrower dtype overflowed: the values do not fit the target type.",
}
FORWARD_DEFAULT_FIX = ("The op's inputs were finite and its output was not: guard its inputs (clamp, eps) "
                       "or compute it with a numerically stable library function.")

# backward node -> fix
BACKWARD_FIXES = {
    "SqrtBackward0": "d sqrt(u)/du = 1/(2 sqrt(u)) is infinite at u = 0: put eps inside the root, "
                     "torch.sqrt(u + eps), or use torch.linalg.vector_norm / F.normalize / torch.std, whose "
                     "gradients are defined at 0.",
    "PowBackward0": "the derivative of a fractional power is infinite at 0: add eps to the base.",
    "PowBackward1": "the derivative of a fractional power is infinite at 0: add eps to the base.",
    "NormBackward1": "the gradient of a norm is 0/0 at a zero vector: add eps or use F.normalize(eps=...).",
    "AcosBackward0": "acos'(x) is infinite at |x| = 1: clamp to (-1 + eps, 1 - eps).",
    "AsinBackward0": "asin'(x) is infinite at |x| = 1: clamp to (-1 + eps, 1 - eps).",
    "LogBackward0": "log'(x) = 1/x is infinite at 0: clamp the argument, torch.log(x.clamp_min(eps)).",
    "DivBackward0": "the gradient of x / y is -x / y^2: infinite where y = 0; add eps to the denominator.",
}
BACKWARD_CUSTOM_FIX = ("The custom autograd Function's backward produced it: check its formula against "
                       "torch.autograd.gradcheck(fn, inputs) in float64, and guard its denominators.")
BACKWARD_DEFAULT_FIX = ("The forward was finite but this backward formula is not at these values: "
                        "keep the forward's inputs away from the op's singular points (eps, clamp).")
