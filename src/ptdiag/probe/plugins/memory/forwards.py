"""Forward passes of the model: which recorded a graph no backward ever used, and how
many bytes of activations a forward saves for backward.

Each grad-recording forward registers a hook on its output; backward through that
output fires the hook. A forward whose hook had not fired by the time a later backward
returned (or the program ended) built a graph for nothing: evaluation without
`torch.no_grad()`. The bytes a forward saves for backward are measured with torch's
saved-tensor hooks (pushed by the probe's instruments) on a few sampled forwards per mode; that is
the memory `no_grad` would not have kept (parameters saved by reference excluded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ptdiag.location import user_location
from ptdiag.probe.model_context import autocast_state
from ptdiag.probe.plugins.memory.holders import tag_forward
from ptdiag.probe.plugins.memory.tensor_bytes import unique_bytes

SAVED_BYTES = "memory saved-activation sampling"
FORWARD_WATCH = "memory forward watch"  # the model's hooks: forwards no backward used, activations saved
SAVED_SAMPLES_PER_MODE = 2  # sampled forwards per train/eval mode; the hooks cost per saved tensor

@dataclass
class ForwardRecord:
    step: int
    training: bool
    location: str | None
    reached: bool = False

@dataclass
class SavedMeasure:
    """Activations one forward saved for backward (bytes of distinct storages)."""

    training: bool
    location: str | None
    autocast: str | None = None  # the autocast dtype the forward ran under
    tensors: list = field(default_factory=list)
    param_ptrs: frozenset = frozenset()

    def pack(self, t) -> None:
        try:
            if t.untyped_storage().data_ptr() not in self.param_ptrs:
                self.tensors.append(t)
        except (RuntimeError, NotImplementedError):  # no storage (a subclass): not counted
            pass

    def result(self) -> dict:
        nbytes, count = unique_bytes(self.tensors), len(self.tensors)
        self.tensors = []  # drop the references at once: they are the activations themselves
        return {"training": self.training, "location": self.location, "autocast": self.autocast, "bytes": nbytes,
                "tensors": count}

def first_graph_tensor(output, torch):
    """The first tensor of a forward's output that carries an autograd graph."""
    if isinstance(output, torch.Tensor):
        return output if output.grad_fn is not None else None
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else ()
    for value in values:
        found = first_graph_tensor(value, torch)
        if found is not None:
            return found
    return None

class ForwardWatch:
    """Attached to the model with forward pre/post hooks; fed backward ends by the plugin."""

    def __init__(self, torch, instruments, emit, current_step) -> None:
        self.torch = torch
        self.instruments = instruments
        self._emit = emit
        self._step = current_step
        self._pending: list[ForwardRecord] = []
        self._unused: dict[tuple, dict] = {}
        self._samples = {True: 0, False: 0}
        self._measuring: tuple | None = None  # (SavedMeasure, the probe's saved-tensor hooks window)
        self._param_ptrs: frozenset = frozenset()
        self.saved_bytes = {True: None, False: None}  # largest sampled per mode
        self.grads_held_in_forward: bool | None = None
        self.last_input = None  # args of the last training forward, for the fit estimate
        self.last_autocast = None  # and the autocast it ran under (model_context.autocast_state)
        self.paused = False

    def attach(self, model, hooks) -> None:
        """`hooks`: the probe's model hooks; the post-hook runs also after a forward raised
        (an OOM), to close a saved-tensor measurement the pre-hook opened."""
        self._param_ptrs = frozenset(p.untyped_storage().data_ptr() for p in model.parameters())
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._hooks = hooks
        hooks.before_forward(model, self.pre, FORWARD_WATCH)
        hooks.after_forward(model, self.post, FORWARD_WATCH, always=True)

    def pre(self, module, args) -> None:
        if self.paused or not self.torch.is_grad_enabled():
            return
        training = module.training
        if training:
            if self.grads_held_in_forward is None and self._params and self._step() >= 2:
                # after the first backward: are last step's gradients still allocated now?
                self.grads_held_in_forward = self._params[0].grad is not None
                self._emit("mem_grads_in_forward", step=self._step(), held=self.grads_held_in_forward)
        if self._samples[training] < SAVED_SAMPLES_PER_MODE and self._measuring is None:
            autocast = self._autocast()
            measure = SavedMeasure(training, user_location(), autocast and autocast["dtype"], param_ptrs=self._param_ptrs)
            window = self.instruments.saved_tensors(SAVED_BYTES, measure.pack)
            if window is not None:
                self._samples[training] += 1
                self._measuring = (measure, window)

    def post(self, module, args, kwargs, output) -> None:
        if self._measuring is not None:
            measure, window = self._measuring
            self._measuring = None
            window.close()
            result = measure.result()
            self.saved_bytes[measure.training] = max(self.saved_bytes[measure.training] or 0, result["bytes"])
            self._emit("mem_saved", step=self._step(), **result)
        if self.paused or not self.torch.is_grad_enabled():
            return
        if module.training:  # kept here, not in pre: the first forward's pre-hook ran before attach
            self.last_input = args
            self.last_autocast = self._autocast()
        tensor = first_graph_tensor(output, self.torch)
        if tensor is None:
            return
        record = ForwardRecord(self._step(), module.training, user_location())

        def reached(grad, record=record):
            record.reached = True

        self._hooks.on_gradient(tensor, reached, FORWARD_WATCH)
        tag_forward(tensor, record.step)
        self._pending.append(record)

    def _autocast(self) -> dict | None:
        """The autocast around the forward, on the device of the model's parameters."""
        return autocast_state(self.torch, self._params[0].device.type) if self._params else None

    def backward_done(self) -> None:
        """Forwards before this backward that it did not reach will never be backward'd."""
        pending, self._pending = self._pending, []
        self._count_unused(r for r in pending if not r.reached)

    def finish(self) -> None:
        self.backward_done()

    def _count_unused(self, records) -> None:
        touched = set()
        for r in records:
            key = (r.location, r.training)
            entry = self._unused.setdefault(key, {"location": r.location, "training": r.training,
                                                  "count": 0, "first_step": r.step})
            entry["count"] += 1
            touched.add(key)
        for key in touched:
            self._emit("mem_unused_forward", saved_bytes=self.saved_bytes[key[1]], **self._unused[key])
