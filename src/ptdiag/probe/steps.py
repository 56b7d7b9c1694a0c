"""What a training step is, for every shape of loop, in one place.

A step is one update of the model's parameters:

- in a program that steps a `torch.optim` optimizer (plain loops, gradient accumulation,
  closures such as LBFGS, GANs, Lightning, the Hugging Face Trainer, Accelerate), a step
  of the primary optimizer (`Probe.is_primary`): torch's global optimizer hooks see it;
- in a program that never does (hand-written updates after `backward()`, such as
  `p.data.add_(p.grad, alpha=-lr)` in pytorch/examples' word_language_model, or after
  `torch.autograd.grad(loss, params)` with `p -= lr * g`), a `backward()` (or that
  `autograd.grad` call) of the loss after which the parameters that received its gradients have
  changed by the time the model runs forward again, or the next `backward()` begins, or
  the program ends. Several backward passes before one change (gradient accumulation)
  are one step; backward passes that change nothing (saliency maps, evaluation of
  gradients) are none.

`HandWrittenSteps` watches for the second kind. It attaches nothing to the program's
modules or tensors: the parameters come from the loss's autograd graph, and the moment
to look is taken from the probe's global forward pre-hook (`ModelHooks`). A change is
seen without reading values when the program changes a parameter through itself
(`with torch.no_grad(): p -= lr * p.grad` bumps its version) or replaces its data;
`p.data.add_(...)` bumps neither, so the few smallest parameters that got a gradient are
also compared with a copy taken after backward (on CUDA that comparison waits for the
device: a cost only programs without an optimizer pay). Once any optimizer steps, the
watch ends for the run and costs nothing more (from its step's beginning: LBFGS changes
the parameters between the backward passes of the closure it evaluates inside `step()`).
"""

from __future__ import annotations

import weakref
from typing import Callable

WATCHED = 4  # the smallest parameters with a gradient, compared with their copies
WATCH = "hand-written update watch"  # the instrument's name in ModelHooks and switched_off


class HandWrittenUpdate:
    """The update a program made by hand, shaped as the optimizer hooks' argument so that
    every plugin reads a step the same way: the parameters that received gradients, no
    learning rate (it lives in the program's own variables), no state."""

    def __init__(self, params: list) -> None:
        self.param_groups = [{"params": params, "lr": None}]
        self.defaults: dict = {}
        self.state: dict = {}


class HandWrittenSteps:
    def __init__(self, model_hooks, on_step: Callable[[HandWrittenUpdate], None]) -> None:
        self._hooks = model_hooks
        self._on_step = on_step
        self.ended = False  # an optimizer stepped: steps are the optimizer's
        self._params: list[weakref.ref] = []  # every parameter the loss's graph reached
        self._snapshot: list[tuple] | None = None  # (parameter, version, data pointer, copy) after backward
        self._updated: list = []  # the parameters that received the gradients of that backward pass
        self._forward_watch = None

    def optimizer_stepped(self) -> None:
        self.ended = True
        self._snapshot = None
        self._params = []
        self._unwatch_forward()

    def backward_begins(self) -> None:
        if self._snapshot is not None:
            self._resolve()
            self._snapshot = None  # unchanged: that backward pass accumulated (or updated nothing)

    def backward_ended(self, loss, gradients_of: list | None = None) -> None:
        """`gradients_of`: the parameters torch.autograd.grad returned gradients for (they
        land in no `.grad`); None after backward()."""
        if self.ended:
            return
        if gradients_of is not None:
            params = gradients_of
        else:
            if not self._params:
                self._params = [weakref.ref(p) for p in _graph_leaves(loss)]
            params = [p for ref in self._params if (p := ref()) is not None and p.grad is not None]
        if not params:
            return
        watched = sorted(params, key=lambda p: p.numel())[:WATCHED]
        self._snapshot = [(p, p._version, p.data_ptr(), p.detach().clone()) for p in watched]
        self._updated = params
        if self._forward_watch is None:
            self._forward_watch = self._hooks.before_any_forward(self._forward_begins, WATCH)

    def at_exit(self) -> None:
        if self._snapshot is not None and not self.ended:
            self._resolve()
        self._snapshot = None

    def _forward_begins(self, module, args) -> None:
        self._unwatch_forward()
        if self._snapshot is not None:
            self._resolve()

    def _resolve(self) -> None:
        """Count the step when the watched parameters changed since the backward pass."""
        import torch

        snapshot, self._snapshot = self._snapshot, None
        if any(p._version != version or p.data_ptr() != pointer or not torch.equal(p.detach(), copy)
               for p, version, pointer, copy in snapshot):
            self._on_step(HandWrittenUpdate(self._updated))
        else:
            self._snapshot = snapshot  # not yet: the next backward or the exit looks again

    def _unwatch_forward(self) -> None:
        if self._forward_watch is not None:
            self._forward_watch.remove()
            self._forward_watch = None


def _graph_leaves(loss) -> list:
    """The parameters the loss's autograd graph reaches: its `nn.Parameter` leaves, or,
    in a program that has none (a tutorial's `w = torch.randn(..., requires_grad=True)`),
    every leaf that requires grad. An input that requires grad beside a model's
    parameters (an adversarial example updated by its gradient) is not a parameter.
    Read after backward: the graph's nodes and edges outlive its freed buffers."""
    import torch

    found, seen, stack = [], set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            found.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    parameters = [leaf for leaf in found if isinstance(leaf, torch.nn.Parameter)]
    return parameters or found
