"""Pinpoint the first non-finite value by replaying the failing step, op by op.

Watch mode only knows *that* a step went non-finite. The parameters have not been
updated yet at that point, so the step's forward (and backward from the gradient that
reached the model's output) can run again under a TorchDispatchMode that checks every
op: the first op whose output is non-finite while its inputs were finite is where the
value was born. Costly per op, but it runs once, on one step.

During the replay:
- module hooks keep a stack of qualified names (the module an op ran in), and label the
  autograd nodes each module created, so a backward op maps back to its module;
- anomaly mode (without its NaN check) keeps each node's forward traceback, so a backward
  op maps back to the user's forward line;
- the RNG is forked, and set to its state when the step's forward began where that was
  captured (numerics' pre-hook on the model, held from the previous step's backward to the
  next forward with gradients): dropout then draws the step's own numbers. Where it was not
  captured (the run's first forward, a step after an unwatched one) and the replay drew
  random numbers, the result says so: its values are not exactly the step's.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from ptdiag.probe import model_context
from ptdiag.probe.instruments import OpObserver, ops_in_block
from ptdiag.probe.plugins.numerics.locations import frames_until, traceback_frames, user_and_library

FP16_MAX = 65504.0


def float_tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def all_finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def abs_max(tensors: list[torch.Tensor]) -> float | None:
    finite = [t.detach()[torch.isfinite(t)] for t in tensors if t.numel()]  # float() of a grad tensor warns
    values = [float(t.abs().max()) for t in finite if t.numel()]
    return max(values) if values else None


def op_name(func) -> str:
    return func._overloadpacket._qualified_op_name if hasattr(func, "_overloadpacket") else str(func)


class ModuleTracker:
    """The qualified name of the module running now, and which module made each autograd node."""

    WHAT = "numerics replay module names"

    def __init__(self, model: torch.nn.Module, hooks) -> None:
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: list[str] = []
        self.node_module: dict = {}
        self._hooks = hooks
        self._subscriptions: list = []

    def current(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def _label(self, value, name: str | None) -> None:
        todo = [t.grad_fn for t in float_tensors(value) if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or node in self.node_module:
                continue
            self.node_module[node] = name
            todo.extend(n for n, _ in node.next_functions)

    def _pre(self, module, args):
        self._label(args, self.current())  # made by the caller, not by this module
        self.stack.append(self.names[module])

    def _post(self, module, args, kwargs, output):
        if self.stack:
            name = self.stack.pop()
            self._label(kwargs, self.current())  # the caller's too (a pre-hook is not handed them)
            self._label(output, name)

    def __enter__(self):
        for module in self.names:
            self._subscriptions.append(self._hooks.before_forward(module, self._pre, self.WHAT))
            self._subscriptions.append(self._hooks.after_forward(module, self._post, self.WHAT))
        return self

    def __exit__(self, *exc):
        for subscription in self._subscriptions:
            if subscription is not None:
                subscription.remove()


# ops that write Inf on purpose (attention masks): their Inf is a value, not a failure
INTENTIONAL_INF = frozenset({"aten::masked_fill", "aten::fill", "aten::full", "aten::full_like",
                             "aten::scalar_tensor", "aten::where", "aten::lift_fresh", "aten::copy"})


def _has_nan(tensors: list[torch.Tensor]) -> bool:
    return any(bool(t.isnan().any()) for t in tensors)


# ops whose output is uninitialised memory (dropout's mask starts as empty_like): whatever
# bits it holds are not a value the program computed, so nothing is ever born there
UNINITIALISED = frozenset({"aten::empty", "aten::empty_like", "aten::new_empty", "aten::empty_strided",
                           "aten::new_empty_strided", "aten::empty_permuted", "aten::resize_"})


def born_here(func, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> bool:
    """A computing op made it: NaN from inputs without NaN (an Inf mask going in is
    allowed), or Inf from finite inputs by an op that does not write Inf on purpose. An op
    whose output is uninitialised memory computes nothing."""
    if op_name(func) in UNINITIALISED:
        return False
    if _has_nan(outputs):
        return not _has_nan(inputs)
    return op_name(func) not in INTENTIONAL_INF and all_finite(inputs)


class FirstNonFinite(OpObserver):
    """Records the first op where a non-finite value was born (see `born_here`)."""

    def __init__(self, tracker: ModuleTracker, stop_code, phase: str) -> None:
        self.tracker, self.stop_code, self.phase = tracker, stop_code, phase
        self.found: dict | None = None

    def after(self, func, args, kwargs, out, before) -> None:
        if self.found is None:
            outputs = float_tensors(out)
            if outputs and not all_finite(outputs):
                inputs = float_tensors((args, kwargs))
                if born_here(func, inputs, outputs):
                    self.found = self._describe(func, args, kwargs, inputs, outputs)

    def _describe(self, func, args, kwargs, inputs, outputs) -> dict:
        frames = frames_until(self.stop_code)
        user, library = user_and_library(frames)
        found = {"phase": self.phase, "op": op_name(func), "overload": str(func),
                 "dtype": str(outputs[0].dtype).replace("torch.", ""),
                 "input_abs_max": abs_max(inputs), "output_abs_max": abs_max(outputs),
                 "output_nan": any(bool(t.isnan().any()) for t in outputs),
                 "output_inf": any(bool(t.isinf().any()) for t in outputs),
                 "module": self.tracker.current(), "user_line": user, "library_line": library}
        if self.phase == "backward":
            node = torch._C._current_autograd_node()
            if node is not None:
                found["node"] = node.name()
                found["module"] = self.tracker.node_module.get(node, found["module"])
                forward = traceback_frames(node.metadata.get("traceback_", []))
                found["forward_user_line"], found["forward_library_line"] = user_and_library(forward)
        if found["dtype"] in ("float16", "bfloat16"):
            found["fp32_abs_max"] = _fp32_abs_max(func, args, kwargs)
        return found


def _fp32_abs_max(func, args, kwargs) -> float | None:
    """The same op in float32: how large the values really were, beyond the half range."""
    up = lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    try:
        out = func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
    except Exception:
        return None
    return abs_max(float_tensors(out))


@contextlib.contextmanager
def _buffers_kept(model):
    """The replay's forward updates BatchNorm's running statistics; put them back."""
    saved = [(b, b.clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def cuda_indices(params) -> list[int]:
    """The CUDA devices the parameters are on: the generators a forward of theirs draws from."""
    return sorted({p.device.index for p in params if p.device.type == "cuda"})


def rng_state(torch_module, devices: list[int]) -> dict | None:
    """The CPU generator's state and each CUDA device's, to replay a forward's random draws;
    None while a CUDA graph is being captured (its generator is the graph's then)."""
    if devices and torch_module.cuda.is_current_stream_capturing():
        return None
    return {"cpu": torch_module.get_rng_state(), "cuda": [torch_module.cuda.get_rng_state(d) for d in devices]}


def _set_rng_state(state: dict, devices: list[int]) -> None:
    torch.set_rng_state(state["cpu"])
    for device, cuda in zip(devices, state["cuda"]):
        torch.cuda.set_rng_state(cuda, device)


def _same_rng(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and torch.equal(a["cpu"], b["cpu"]) and \
        all(torch.equal(x, y) for x, y in zip(a["cuda"], b["cuda"]))


def replay(model, args, kwargs, autocast: dict | None, grad_outputs: list | None, params: list, hooks,
           rng: dict | None = None) -> dict:
    """Run the captured step again op by op; what was first non-finite, where.

    Returns {"phase": "forward" | "backward", ...} for an op found, {"phase": "gradient_in"}
    when the gradient reaching the model's output was already non-finite, or
    {"phase": None} when the replay stayed finite (the loss computation outside the model).
    Each carries "rng": "the step's" (its forward's random draws replayed), "other" (the
    replay drew random numbers from a state other than the step's) or None (it drew none).
    """
    stop_code = replay.__code__
    tracker = ModuleTracker(model, hooks)
    devices = cuda_indices(params)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_buffers_kept(model))
        stack.enter_context(torch.random.fork_rng(devices=devices))
        if rng is not None:
            _set_rng_state(rng, devices)
        stack.enter_context(torch.autograd.set_detect_anomaly(True, check_nan=False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(tracker)
        stack.enter_context(model_context.autocast(torch, autocast))
        forward = FirstNonFinite(tracker, stop_code, "forward")
        before = rng_state(torch, devices)
        with ops_in_block(forward):
            output = model(*args, **kwargs)
        drew = not _same_rng(before, rng_state(torch, devices))
        said = {"rng": ("the step's" if rng is not None else "other") if drew else None}
        if forward.found:
            return {**forward.found, **said}
        outputs = [t for t in float_tensors(output) if t.requires_grad]
        if not grad_outputs or len(grad_outputs) != len(outputs):
            return {"phase": None, "reason": "no gradient of the model's output was captured", **said}
        # outputs the loss did not use (an RNN's returned hidden state) got no gradient
        outputs, grad_outputs = ([t for t, g in zip(outputs, grad_outputs) if g is not None],
                                 [g for g in grad_outputs if g is not None])
        if not outputs:
            return {"phase": None, "reason": "no gradient of the model's output was captured", **said}
        outputs, grad_outputs = _downstream_only(outputs, grad_outputs)
        if not all_finite(grad_outputs):
            return {"phase": "gradient_in", **said}
        wanted = [p for p in params if p.requires_grad]
        backward = FirstNonFinite(tracker, stop_code, "backward")
        with ops_in_block(backward):
            grads = torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True)
        if backward.found:
            return {**backward.found, "params": nonfinite_grads(tracker, model, wanted, grads), **said}
        return {"phase": None, "reason": "the replayed forward and backward stayed finite", **said}


def _downstream_only(outputs: list, grad_outputs: list) -> tuple[list, list]:
    """Drop an output another output was computed from (a model returning its logits and
    the loss made of them): the gradient caught on it already holds what flowed in from
    the other, so running backward from both would count that path twice."""
    upstream: set = set()
    for t in outputs:
        todo, seen = [n for n, _ in t.grad_fn.next_functions] if t.grad_fn is not None else [], set()
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            todo.extend(n for n, _ in node.next_functions)
        upstream |= seen
    kept = [(t, g) for t, g in zip(outputs, grad_outputs) if t.grad_fn not in upstream]
    return [t for t, _ in kept], [g for _, g in kept]


def nonfinite_grads(tracker: ModuleTracker, model, params, grads) -> list[str]:
    """Names of the parameters whose replayed gradient is non-finite, in backward order."""
    names = {p: n for n, p in model.named_parameters()}
    bad = [names.get(p, "?") for p, g in zip(params, grads) if g is not None and not bool(torch.isfinite(g).all())]
    return bad[::-1]  # parameters run forward in definition order; gradients arrive in reverse
