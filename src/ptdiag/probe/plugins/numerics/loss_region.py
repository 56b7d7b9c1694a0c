"""The loss computation, watched op by op: from the model's output to `loss.backward()`.

The replay (`localise`) re-runs the model, but a loss written outside the model (a
hand-written log-softmax, a division by a batch statistic) cannot be re-run: its code
is the program's own, between the model call and backward. So while that stretch runs,
a TorchDispatchMode keeps, per op, one float32 sum of its output on the device and the
program's line; the sums join the step's single read. The first op whose sum is NaN
(or Inf, from an op that does not write Inf on purpose) is where the value was born.

It is a few ops per step (bounded by MAX_OPS), entered only while gradients are on.
The probe's instruments push and leave the mode: never over or from under a mode of
the program's (watching the loss then stops for the run, and the report says so).
"""

from __future__ import annotations

import sys
from functools import lru_cache

import torch

from ptdiag.location import format_location, is_user_file
from ptdiag.probe.instruments import OpObserver
from ptdiag.probe.plugins.numerics.localise import INTENTIONAL_INF, float_tensors, op_name

WHAT = "numerics loss watch"
MAX_OPS = 64  # ops kept per step: a loss is a handful; more is other work, not worth the cost
_is_user_file = lru_cache(maxsize=4096)(is_user_file)


def _program_line() -> tuple[str, int] | None:
    frame = sys._getframe(1)  # ptdiag's own frames are not the program's: the walk passes them
    while frame is not None:
        if _is_user_file(frame.f_code.co_filename):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back
    return None


class _LossOps(OpObserver):
    """One float32 sum per op output, and the program's line, up to MAX_OPS per step."""

    def __init__(self, region: "LossRegion") -> None:
        self.region = region

    def after(self, func, args, kwargs, out, before) -> None:
        region = self.region
        if len(region.sums) < MAX_OPS:
            plain = [t for t in float_tensors(out) if type(t) is torch.Tensor]  # no subclass (DTensor) sums
            if plain:
                total = plain[0].detach().sum(dtype=torch.float32)
                for t in plain[1:]:
                    total = total + t.detach().sum(dtype=torch.float32)
                region.sums.append(total)
                region.ops.append((op_name(func), _program_line()))


class LossRegion:
    """Enter after the model's forward, leave at backward (or the next forward)."""

    def __init__(self, instruments) -> None:
        self.instruments = instruments
        self.sums: list[torch.Tensor] = []
        self.ops: list[tuple[str, tuple[str, int] | None]] = []
        self._window = None

    def enter(self) -> None:
        self.leave()
        if not torch.is_grad_enabled():
            return
        self.sums, self.ops = [], []
        self._window = self.instruments.watch_ops(WHAT, _LossOps(self))

    def leave(self) -> None:
        window, self._window = self._window, None
        if window is not None:
            window.close()

    def take(self) -> tuple[list[torch.Tensor], list[tuple[str, tuple[str, int] | None]]]:
        taken = (self.sums, self.ops)
        self.sums, self.ops = [], []
        return taken


def first_born(ops: list[tuple[str, tuple[str, int] | None]], values: list[float]) -> dict | None:
    """The first op whose output sum was NaN, or Inf from an op not writing Inf on purpose."""
    for (op, line), value in zip(ops, values):
        nan = value != value
        if nan or (abs(value) == float("inf") and op not in INTENTIONAL_INF):
            return {"op": op, "user_line": format_location(*line) if line else None,
                    "output_nan": nan, "output_inf": not nan}
    return None
