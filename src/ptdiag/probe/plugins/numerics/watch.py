"""Watch mode: a handful of numbers per backward pass, read with one host sync.

Per backward: the loss, whether each module's output was finite, the outputs of the
loss computation's ops (see `loss_region`), the gradient norm of each optimizer
parameter group, and the loss scale when a GradScaler scaled the loss.
All of it is computed on the device and stacked into one small tensor, so reading it
back is the step's single synchronisation. That one is kept on purpose: the failing step
is replayed before the optimizer touches the parameters, so the reading must be known
before `optimizer.step()` is queued (read a step later, the NaN would already be in the
weights and the replay would find that, not the op that made it). On a GPU the host then
waits for the program's backward to finish; that wait is the program's device time and
is not charged to ptdiag's budget (Budget.waited); what remains, the device idling while
the host queues the optimizer step after the read, is the watch's real cost (the budget
samples the watch when ptdiag's own work is over its share).

A module's output is checked by its sum: one reduction (on a CPU ~40x cheaper than
`isfinite().all()`), non-finite exactly when an element is NaN/Inf, or when finite
values sum beyond float32's range (~3e38), which only values already near overflow do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_leaves

from ptdiag.probe.plugins.numerics.loss_region import LossRegion, first_born


# Each watched module costs a Python hook call and one reduction (a kernel launch on a GPU)
# per forward: a few microseconds. Up to this many modules that is well under 1 % of any
# step that has them; a larger model is watched to the depth that fits (its blocks).
MAX_WATCHED_MODULES = 512
WHAT = "numerics module watch"  # the instrument, as the report names it when it is switched off
FLOAT_DTYPES = frozenset(d for d in vars(torch).values() if isinstance(d, torch.dtype) and d.is_floating_point)


class ModuleOutputs:
    """After-forward callbacks on every module (the probe's `model_hooks`): one float32
    sum per float output, kept on the device.

    They run as modules finish, innermost first, so the first module flagged in a step
    is the innermost one whose output held a non-finite value. Inside torch.compile the
    probe's hooks do nothing: a compiled model's modules are not watched.
    """

    def __init__(self, model: torch.nn.Module, hooks) -> None:
        self._hooks = hooks
        self.names: list[str] = []
        self._sums: list[torch.Tensor] = []
        self._which: list[int] = []
        self.paused = False
        self._last: torch.Tensor | None = None
        self._last_sum: torch.Tensor | None = None
        modules = list(model.named_modules())
        if len(modules) > MAX_WATCHED_MODULES:  # shallowest first: blocks before their sublayers
            modules = sorted(modules, key=lambda nm: nm[0].count(".") + bool(nm[0]))[:MAX_WATCHED_MODULES]
        for name, module in modules:
            hooks.after_forward(module, self._hook(len(self.names)), WHAT)
            self.names.append(name)

    @property
    def watching(self) -> bool:
        return self._hooks.is_on(WHAT)

    def _hook(self, index: int, Tensor=torch.Tensor, grad_enabled=torch.is_grad_enabled, float32=torch.float32):
        # this runs per module per forward: torch's names are bound once, a plain tensor
        # output (most modules) skips the pytree walk, and a dtype look-up is cheaper than
        # `is_floating_point()`
        def after_forward(module, args, kwargs, output):
            if self.paused or not grad_enabled():
                return None
            for t in (output,) if type(output) is Tensor else [t for t in tree_leaves(output) if isinstance(t, Tensor)]:
                if t.dtype in FLOAT_DTYPES:
                    if t is not self._last:  # a container hands on its last child's tensor: summed once
                        self._last, self._last_sum = t, t.detach().sum(dtype=float32)
                    self._sums.append(self._last_sum)
                    self._which.append(index)
            return None

        return after_forward

    def take(self) -> tuple[list[torch.Tensor], list[int]]:
        """The step's sums and which module each belongs to; starts the next step afresh."""
        taken = (self._sums, self._which)
        self._sums, self._which, self._last, self._last_sum = [], [], None, None
        return taken


def is_power_of_two(value: float) -> bool:
    return value > 0 and math.isfinite(value) and math.frexp(value)[0] == 0.5


@dataclass
class Reading:
    loss: float | None
    flagged_modules: list[str] | None  # modules whose output was non-finite, first first; None: not watched
    group_norms: list[float]
    scale: float | None
    loss_op: dict | None = None  # the loss computation's first op with a non-finite output (loss_region)

    @property
    def outputs_finite(self) -> bool | None:
        """Whether the model's own output (its top-level module, named "") was finite: an
        inner module's -inf (an attention mask) is not the model's output."""
        return None if self.flagged_modules is None else "" not in self.flagged_modules

    @property
    def total_norm(self) -> float | None:
        if not self.group_norms:
            return None
        return math.sqrt(sum(n * n for n in self.group_norms))

    @property
    def grads_finite(self) -> bool:
        return all(math.isfinite(n) for n in self.group_norms)

    @property
    def loss_finite(self) -> bool:
        return self.loss is None or math.isfinite(self.loss)


def read(loss: torch.Tensor | None, outputs: ModuleOutputs | None, region: LossRegion | None,
         groups: list[list[torch.Tensor]], scale: torch.Tensor | None) -> Reading:
    """Stack everything on the loss's device and read it back once."""
    sums, which = outputs.take() if outputs is not None else ([], [])
    region_sums, region_ops = region.take() if region is not None else ([], [])
    parts = []
    if loss is not None:
        parts.append(loss.detach().float().reshape(()))
    norms = [torch.nn.utils.get_total_norm(grads, foreach=True).float()
             for grads in ([p.grad for p in params if p.grad is not None] for params in groups) if grads]
    parts += norms
    if scale is not None:
        parts.append(scale.float().reshape(()))
    if not parts and not sums:
        return Reading(None, None, [], None)
    device = loss.device if loss is not None else (parts or sums)[0].device
    stacked = [p.to(device, non_blocking=True) for p in parts + region_sums]
    if sums:  # one flag per module output: 1.0 where the sum was not finite
        stacked.append((~torch.isfinite(torch.stack([s.to(device, non_blocking=True) for s in sums]))).float())
    values = torch.cat([t.reshape(-1) for t in stacked]).tolist()
    at = 0
    got_loss = values[at] if loss is not None else None
    at += loss is not None
    got_norms = values[at:at + len(norms)]
    at += len(norms)
    got_scale = values[at] if scale is not None else None
    at += scale is not None
    loss_op = first_born(region_ops, values[at:at + len(region_sums)])
    at += len(region_sums)
    flagged = None  # not watched: no watch, switched off, or no module reported (a compiled model)
    if outputs is not None and outputs.watching and which:
        flagged = list(dict.fromkeys(outputs.names[i] for i, bad in zip(which, values[at:]) if bad > 0.5))
    return Reading(got_loss, flagged, got_norms,
                   got_scale if got_scale is not None and is_power_of_two(got_scale) else None, loss_op)
