"""Watch mode: a handful of numbers per backward pass, read with one host sync.

Per backward: the loss, whether the model's outputs were all finite, the gradient norm
of each optimizer parameter group, and the loss scale when a GradScaler scaled the loss.
All of it is computed on the device and stacked into one small tensor, so reading it
back is the step's single synchronisation. A non-finite value anywhere in the model
reaches its output (NaN and Inf propagate), so the output flag stands for all modules
without a check in each of them; the replay then finds the module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def output_flag(output_tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """One device boolean: were all of the model's float outputs finite."""
    flags = [torch.isfinite(t.detach()).all() for t in output_tensors]
    if not flags:
        return None
    return flags[0] if len(flags) == 1 else torch.stack(flags).all()


def loss_scale(loss: torch.Tensor) -> torch.Tensor | None:
    """The GradScaler scale a loss was multiplied by (`scaler.scale(loss)` is loss * scale)."""
    node = loss.grad_fn
    if node is None or node.name() != "MulBackward0":
        return None
    other = getattr(node, "_saved_other", None)
    if isinstance(other, torch.Tensor) and other.numel() == 1 and other.dtype == torch.float32:
        return other.detach().reshape(())
    return None


def is_power_of_two(value: float) -> bool:
    return value > 0 and math.isfinite(value) and math.frexp(value)[0] == 0.5


@dataclass
class Reading:
    loss: float | None
    outputs_finite: bool | None
    group_norms: list[float]
    scale: float | None

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


def read(loss: torch.Tensor | None, out_flag: torch.Tensor | None, groups: list[list[torch.Tensor]],
         scale: torch.Tensor | None) -> Reading:
    """Stack everything on the loss's device and read it back once."""
    device = loss.device if loss is not None else None
    parts, layout = [], []
    if loss is not None:
        parts.append(loss.detach().float().reshape(()))
        layout.append("loss")
    if out_flag is not None:
        parts.append(out_flag.float())
        layout.append("out")
    for params in groups:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            parts.append(torch.nn.utils.get_total_norm(grads, foreach=True).float())
            layout.append("norm")
    if scale is not None:
        parts.append(scale.float())
        layout.append("scale")
    if not parts:
        return Reading(None, None, [], None)
    device = device or parts[0].device
    values = torch.stack([p.to(device, non_blocking=True) for p in parts]).tolist()
    got = {"norm": []}
    for name, value in zip(layout, values):
        if name == "norm":
            got["norm"].append(value)
        else:
            got[name] = value
    return Reading(got.get("loss"), None if "out" not in got else got["out"] > 0.5, got["norm"],
                   got["scale"] if "scale" in got and is_power_of_two(got["scale"]) else None)
