"""The memory specialist inside the user's process.

Always (cheap, the "leak watch"): process memory at every step boundary (host RSS, and
the CUDA allocator's counters when CUDA is in use: no device sync), the variables of the
training loop that keep autograd graphs across steps, forwards whose graph no backward
used, the bytes of parameters, gradients and optimizer state. When that is over the
probe's per-step budget (a very short step), the boundaries are sampled in bursts of
HOLDER_BURST steps and the forward watch goes, in that order (SHEDDING).
Sampled: the activations a forward saves (a few forwards), MemTracker's full breakdown
of one step (`-o memory.breakdown_step=N`, 0 turns it off; it needs a DataLoader, whose
batches mark the step's edges).
On request: the "will it fit" estimate (`-o memory.target_memory=16GiB` or
`-o memory.target=V100-16GB`), by fake execution after the first step.
On CUDA: the allocator history from the program's CUDA initialisation (never before: probe/gpu.py),
snapshots at an OOM and at the end.
"""

from __future__ import annotations

import sys

from ptdiag.probe import gpu
from ptdiag.probe.plugin import Plugin as ProbePlugin
from ptdiag.probe.plugins.memory import holders, tensor_bytes
from ptdiag.probe.plugins.memory.forwards import FORWARD_WATCH
from ptdiag.probe.plugins.memory.process_memory import cuda_sample, host_sample
from ptdiag.probe.plugins.memory.step_tracker import WHAT as BREAKDOWN
from ptdiag.sizes import target_from_options

# Boundaries are looked at in bursts of this many steps: a holder counts once it grew at
# two boundaries in a row (specialists/memory/leak.py)
HOLDER_BURST = 3
# what the leak watch gives up, in order, while ptdiag is over its per-step budget:
# (what, as the report says it; a burst every this many steps, or None: the forward watch)
SHEDDING = ((f"memory leak watch on every step (now {HOLDER_BURST} steps in 16)", 16),
            ("memory watch of forwards (graphs no backward used, activations saved)", None),
            (f"memory leak watch on {HOLDER_BURST} steps in 16 (now {HOLDER_BURST} in 128)", 128))


class Plugin(ProbePlugin):
    name = "memory"

    def __init__(self, probe) -> None:
        super().__init__(probe)
        options = probe.settings("memory")
        self.torch = None
        self.cuda = None
        self.model = None
        self._device = None  # the model's, whose allocator counters are sampled
        self.forwards = None
        self.tracker = None
        self._optimizer = None
        self._breakdown = None  # the probe budget's one-off window around MemTracker's step
        self._burst_every = 1  # steps between the leak watch's bursts of boundaries
        self.breakdown_step = options["breakdown_step"]
        self.target = target_from_options(options)
        probe.budget.sheddable(("memory",), [(what, self._shedding(every)) for what, every in SHEDDING])

    def _shedding(self, every: int | None):
        def shed() -> None:
            if every is not None:
                self._burst_every = every
            elif self.forwards is not None:  # its hooks leave torch's way too: the module calls cost nothing more
                self.forwards.paused = True
                self.probe.model_hooks.set_active(FORWARD_WATCH, False)

        return shed

    def _watched(self, step: int) -> bool:
        return (step - 1) % self._burst_every < HOLDER_BURST

    def on_torch_import(self, torch) -> None:
        from ptdiag.probe.plugins.memory.cuda_history import CudaHistory
        from ptdiag.probe.plugins.memory.step_tracker import StepTracker

        self.torch = torch
        self.tracker = StepTracker(self.probe.instruments)
        self.cuda = CudaHistory(torch, self.probe.instruments, self.probe.run_dir, self.probe.rank, self.probe.emit,
                                lambda: self.probe.step + 1)
        gpu.after_cuda_init(torch, self.cuda.start, self.probe.log_error)
        self.probe.emit("mem_start", **host_sample())

    def on_model(self, module) -> None:
        from ptdiag.probe.plugins.memory.forwards import ForwardWatch

        self.model = module
        first = next(module.parameters())
        self._device = first.device
        self.probe.emit("mem_model", params_bytes=tensor_bytes.parameter_bytes(module),
                        buffers_bytes=tensor_bytes.buffer_bytes(module), device=str(first.device),
                        dtype=str(first.dtype))
        self.forwards = ForwardWatch(self.torch, self.probe.instruments, self.probe.emit, lambda: self.probe.step + 1)
        self.forwards.attach(module, self.probe.model_hooks)

    def on_backward(self, tensor) -> None:
        holders.tag_backward(tensor, self.probe.step + 1)

    def on_backward_end(self, tensor) -> None:
        if self.forwards is not None:
            self.forwards.backward_done()

    def on_step_begin(self, step, optimizer) -> None:
        if step == 1:
            self.probe.emit("mem_grads", step=step,
                            bytes=tensor_bytes.gradient_bytes(tensor_bytes.optimizer_params(optimizer)))

    def on_step(self, step, optimizer) -> None:
        if self._watched(step):
            sample = {**host_sample(), **cuda_sample(self.torch, self._device)}
            held = [h.to_dict() for h in holders.scan(sys._getframe(1), step, self.torch)]
            self.probe.emit("mem_step", step=step, holders=held, **sample)
        if step == 1:
            self.probe.emit("mem_optimizer", cls=type(optimizer).__name__,
                            bytes=tensor_bytes.optimizer_state_bytes(optimizer),
                            foreach=optimizer.defaults.get("foreach"), fused=optimizer.defaults.get("fused"))
            if self.target is not None:
                self._estimate_fit(optimizer)
        self._optimizer = optimizer

    def on_batch(self, loader, wait_s) -> None:
        """The breakdown's window opens and closes between steps, when a batch is handed over:
        MemTracker registers global optimizer and module hooks, which must not change while
        torch iterates over them (inside optimizer.step or a module call)."""
        if self.tracker is None:
            return
        if self.tracker.active:
            self._end_breakdown()
        elif self.model is not None and self._optimizer is not None and self.probe.step == self.breakdown_step - 1:
            self._breakdown = self.probe.budget.window(BREAKDOWN)  # None: it ran (once per run, whatever the loop)
            if self._breakdown is not None:
                self.tracker.start(self.model, self._optimizer)
                if not self.tracker.active:
                    self._breakdown.close()

    def _end_breakdown(self) -> None:
        peak = self.tracker.stop()
        if peak is not None:  # None: the tracker faulted and was switched off (the probe said so)
            self.probe.emit("mem_breakdown", step=self.probe.step, peak=peak)
        if not self.tracker.active:
            self._breakdown.close()

    def _estimate_fit(self, optimizer) -> None:
        from ptdiag.probe.plugins.memory.fit import FakeStep, NotSupported, estimate

        label, budget = self.target
        if self.model is None or self.forwards.last_input is None:
            self.probe.emit("mem_fit", target=label, budget_bytes=budget, error="no training forward of the model was seen")
            return
        self.forwards.paused = True
        try:
            step = FakeStep(self.torch, self.model, optimizer, self.forwards.last_input, self.forwards.last_autocast)
            self.probe.emit("mem_fit", target=label, **estimate(step, budget).to_dict())
        except NotSupported as declined:
            self.probe.emit("mem_fit", target=label, budget_bytes=budget, error=str(declined))
        except Exception as error:  # a model fake execution cannot run (data-dependent shapes, custom ops)
            self.probe.emit("mem_fit", target=label, budget_bytes=budget, error=f"{type(error).__name__}: {error}"[:500])
        finally:
            self.forwards.paused = False

    def on_exit(self) -> None:
        if self.tracker is not None and self.tracker.active:
            self._end_breakdown()
        if self.forwards is not None:
            self.forwards.finish()
        if self.torch is not None:
            self.probe.emit("mem_end", **host_sample(), **cuda_sample(self.torch, self._device))
        if self.cuda is not None:
            self.cuda.finish()

    def on_exception(self, exc_type, exc, tb) -> None:
        """An OutOfMemoryError that ended the program: the OOM snapshot is its own (OOMs that
        torch or the program caught before it are not)."""
        if self.cuda is not None and issubclass(exc_type, self.torch.cuda.OutOfMemoryError):
            self.cuda.oom_raised()
