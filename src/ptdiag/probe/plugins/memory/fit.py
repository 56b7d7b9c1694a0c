"""Will one training step fit in a memory budget, and what batch size would?

The user's model and optimizer are copied into torch's FakeTensorMode (tensors with
shapes and devices but no storage) and one training step runs there twice (the first
creates the optimizer state) under `MemTracker`, which sums the bytes the real run would
hold at its peak, by kind. Nothing is allocated, so a 16 GiB question is answered on
any machine in seconds. The peak is the larger of a floor that does not depend on the
batch (parameters, gradients, optimizer state and the step's temporaries) and a part
affine in the batch (activations): two batch sizes give a line, and each batch size it
predicts for the budget is checked by another fake step before it is reported.

Gradients are freed between the fake steps (`zero_grad(set_to_none=True)` before the
forward); a program that keeps them through its forward needs their bytes on top
(the breakdown finding says so when it measured that). The loss of the fake step is the
sum of the first floating output: the user's loss function is not known here, and a
loss's own memory is negligible next to activations.

The step runs on the user's module inside DDP/DataParallel/torch.compile (a DDP
wrapper's reducer would run collectives from one rank's fake step; a compiled module's
own savings are not estimated: the eager module's peak is), under the autocast the
program's last training forward ran in (16-bit activations where the program has them).
FSDP-sharded models are declined: their forward gathers parameters by collectives.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

from ptdiag.probe import model_context, quiet_warnings
from ptdiag.probe.instruments.memory_tracker import fake_execution_tracker, peak_by_kind

MAX_BATCH_MULTIPLE = 1024  # never search beyond 1024x the user's batch
SECANT_CHECKS = 3  # fake steps spent checking and correcting the predicted batch size


@dataclass
class FitEstimate:
    batch_size: int
    peak_bytes: int
    by_kind: dict
    budget_bytes: int
    largest_batch: int | None
    points: list = field(default_factory=list)  # (batch, peak bytes) estimated
    wall_s: float = 0.0
    autocast: dict | None = None  # the program's autocast the fake steps ran under


    def to_dict(self) -> dict:
        return asdict(self)


def _with_batch(value, old: int, new: int, fake_mode, torch):
    """The forward's inputs at another batch size: dim 0 of tensors whose dim 0 is the batch."""
    if isinstance(value, torch.Tensor):
        shape = list(value.shape)
        if shape and shape[0] == old:
            shape[0] = new
        with fake_mode:
            if value.is_floating_point():
                return torch.empty(shape, dtype=value.dtype, device=value.device)
            return torch.zeros(shape, dtype=value.dtype, device=value.device)
    if isinstance(value, (list, tuple)):
        return type(value)(_with_batch(v, old, new, fake_mode, torch) for v in value)
    if isinstance(value, dict):
        return {k: _with_batch(v, old, new, fake_mode, torch) for k, v in value.items()}
    return value


def _first_float(output, torch):
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else ()
    return next((f for f in (_first_float(v, torch) for v in values) if f is not None), None)


def batch_of(args, torch) -> int | None:
    first = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)
    return int(first.shape[0]) if first is not None else None


class NotSupported(Exception):
    """A model the fake step declines to run (the reason is the message)."""


class FakeStep:
    """One training step of a fake copy of the user's model and optimizer."""

    def __init__(self, torch, model, optimizer, args, autocast: dict | None = None) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        sharding = model_context.sharded(model)
        if sharding is not None:
            raise NotSupported(f"the model is sharded by {sharding}: a fake step would run its parameter "
                               "all-gathers; the estimate covers models each rank holds whole")
        self.torch = torch
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.model = model_context.unwrapped(model)
        self.autocast = autocast
        self.optimizer_cls = type(optimizer)
        self.groups = optimizer.param_groups
        self.args = args
        self.batch = batch_of(args, torch)
        # the probe wraps torch.autograd.backward; a fake loss must not reach the recorder
        self.backward = getattr(torch.autograd.backward, "__wrapped__", torch.autograd.backward)

    def peak(self, batch: int) -> tuple[int, dict]:
        from torch._subclasses.fake_tensor import FakeCopyMode

        torch = self.torch
        args = _with_batch(self.args, self.batch, batch, self.mode, torch)
        # a fresh fake copy: no grads or state carried between estimates; none of the probe's
        # hooks either (they are not on the model), so its fake steps reach no plugin
        with FakeCopyMode(self.mode):
            model = copy.deepcopy(self.model)
        params = dict(zip(map(id, self.model.parameters()), model.parameters()))
        with self.mode:
            groups = [{**{k: v for k, v in g.items() if k != "params"},
                       "params": [params[id(p)] for p in g["params"] if id(p) in params]} for g in self.groups]
            optimizer = self.optimizer_cls(groups)
            tracker = fake_execution_tracker()
            tracker.track_external(model, optimizer)
            with tracker:
                for i in range(2):
                    with model_context.autocast(torch, self.autocast):
                        out = _first_float(model(*args), torch)
                    self.backward(out.float().sum())
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if i == 0:
                        tracker.reset_mod_stats()
        totals = peak_by_kind(tracker)
        return max(t.get("Total", 0) for t in totals.values()), totals


def estimate(step: FakeStep, budget: int) -> FitEstimate:
    """Peak at the user's batch, the line through a second batch size, the largest batch that fits.

    Warnings torch raises about fake tensors are silenced: they would reach the user's stderr."""
    with quiet_warnings.ignored():
        return _estimate(step, budget)


def _estimate(step: FakeStep, budget: int) -> FitEstimate:
    start = time.perf_counter()
    b0 = step.batch
    p0, by_kind = step.peak(b0)
    points = [(b0, p0)]
    b1 = b0 * 2 if p0 < budget else max(1, b0 // 2)
    if b1 != b0:
        points.append((b1, step.peak(b1)[0]))
    largest = _largest(points, budget, b0, step)
    return FitEstimate(b0, p0, by_kind, budget, largest, sorted(points), time.perf_counter() - start, step.autocast)


def _line(points, budget: int):
    """Slope and intercept through the two estimates that bracket the budget (the largest
    batch within it, the smallest over it), else the two whose peaks lie closest to it.
    Bracketing keeps the search converging when the peak is not affine (it moves from one
    phase of the step to another as the batch grows: 16-bit activations under autocast)."""
    within = [p for p in points if p[1] <= budget]
    over = [p for p in points if p[1] > budget]
    nearest = ([max(within), min(over)] if within and over and max(within)[0] < min(over)[0]
               else sorted(points, key=lambda p: abs(p[1] - budget))[:2])
    (xa, ya), (xb, yb) = nearest if len(nearest) == 2 else (nearest[0], nearest[0])
    slope = (yb - ya) / (xb - xa) if xb != xa else 0.0
    return slope, ya - slope * xa


def _largest(points: list, budget: int, b0: int, step: FakeStep) -> int | None:
    """Largest batch whose estimated peak is within budget: secant guesses, each checked by a fake step."""
    for _ in range(SECANT_CHECKS):
        slope, intercept = _line(points, budget)
        if slope <= 0:
            return None
        guess = int((budget - intercept) // slope)
        guess = min(max(guess, 0), MAX_BATCH_MULTIPLE * b0)
        if guess < 1:
            return 0
        if any(b == guess for b, _ in points):
            break
        points.append((guess, step.peak(guess)[0]))
    fitting = [b for b, p in points if p <= budget]
    return max(fitting, default=0)
