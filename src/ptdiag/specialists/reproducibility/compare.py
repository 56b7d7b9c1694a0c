"""Step-by-step comparison of two runs: where they first part, and in which stage.

Run B's step j is compared with run A's step `offset + j` (offset 0 for a repeated run,
the checkpoint's step for a resumed one). Within a step the order is causal: generator
states and the batch when the forward pass begins, then the loss, then the learning
rate and the parameters after the update. A generator counts only when the training
drew from it (numpy imported but unused starts in a random state, harmlessly). Step j=0 compares the weights the first
forward pass found (initialised, or loaded from the checkpoint) with A's weights after
step `offset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ptdiag.specialists.reproducibility.trace import StepState, Trace

MAX_NAMED_TENSORS = 5


@dataclass
class Difference:
    step: int  # in A's numbering
    other_step: int  # in B's
    stage: str  # "weights" (before any step), "forward" (batch, RNG or loss) or "update"
    rng: list[str] = field(default_factory=list)
    input: bool = False
    loss: tuple | None = None  # (A's, B's)
    lr: tuple | None = None
    tensors: list[str] = field(default_factory=list)  # parameters/buffers that differ after the step
    tensor_count: int = 0

    def to_dict(self) -> dict:
        return {"step": self.step, "other_step": self.other_step, "stage": self.stage, "rng": self.rng,
                "input_differs": self.input, "loss": list(self.loss) if self.loss else None,
                "lr": list(self.lr) if self.lr else None, "first_tensor": self.tensors[0] if self.tensors else None,
                "tensors": self.tensors, "tensors_differing": self.tensor_count}


@dataclass
class Comparison:
    compared: int  # steps of B compared (step 0 not counted)
    tensors: int  # parameters and buffers checked per step
    difference: Difference | None


def compare(a: Trace, b: Trace, offset: int = 0) -> Comparison:
    compared = 0
    drawn = set(a.consumed()) | set(b.consumed())
    for j in sorted(s for s in b.steps if s >= 0):
        mine = a.steps.get(offset + j)
        if mine is None:
            break
        difference = _differ(mine, b.steps[j], a.names, j, drawn)
        if difference is not None:
            difference.step, difference.other_step = offset + j, j
            return Comparison(compared, len(a.names), difference)
        compared += j > 0
    return Comparison(compared, len(a.names), None)


def _differ(a: StepState, b: StepState, names: list[str], j: int, drawn: set[str]) -> Difference | None:
    tensors = _differing_tensors(a.sums, b.sums, names)
    if j == 0:
        return Difference(0, 0, "weights", tensors=tensors[:MAX_NAMED_TENSORS], tensor_count=len(tensors)) \
            if tensors else None
    rng = sorted(k for k in set(a.rng) & set(b.rng) & drawn if a.rng[k] != b.rng[k])
    differs_input = a.input is not None and b.input is not None and a.input != b.input
    loss = (a.loss, b.loss) if a.loss is not None and b.loss is not None and a.loss != b.loss else None
    lr = (a.lr, b.lr) if a.lr is not None and b.lr is not None and a.lr != b.lr else None
    if not (rng or differs_input or loss or lr or tensors):
        return None
    stage = "forward" if rng or differs_input or loss else "update"
    return Difference(0, 0, stage, rng, differs_input, loss, lr, tensors[:MAX_NAMED_TENSORS], len(tensors))


def _differing_tensors(a: list | None, b: list | None, names: list[str]) -> list[str]:
    if a is None or b is None or len(a) != len(b):
        return []
    return [names[i] if i < len(names) else f"tensor {i}" for i, (x, y) in enumerate(zip(a, b)) if x != y]
