"""The numerics specialist inside the training process.

Watch mode runs every step (see `watch`): a hook on the model's outermost module keeps
the step's inputs, where the program called the model, the autocast state and the
gradient reaching the outputs; a hook on every module keeps a device flag for a
non-finite output. After each backward the step's numbers are read once. The first time something is non-finite, and before
the optimizer has touched the parameters, the step is replayed op by op (see
`localise`) or, when the batch itself was bad, its samples are traced back to the
dataset (see `batches`). Then the training is stopped once the step is recorded:
there is nothing to learn from training on NaN (`-o numerics.stop=no` keeps it going).
"""

from __future__ import annotations

import time

from ptdiag.location import user_location
from ptdiag.probe import gpu
from ptdiag.probe.model_context import autocast_state, unwrapped
from ptdiag.probe.plugin import Plugin as ProbePlugin

MODULES_KEPT = 20  # module names recorded per step with a non-finite output
LOCALISATION = "numerics localisation (replay of the failing step)"
# What the watch gives up, in order, while ptdiag is over its per-step budget (a very short
# step): (what, as the report says it; "modules", or read one step in this many)
SHEDDING = (("numerics module watch (which module's output turned non-finite first)", "modules"),
            ("numerics watch of every step (now 1 step in 4: a non-finite value is localised up to 3 steps "
             "after it appeared)", 4),
            ("numerics watch of 1 step in 4 (now 1 in 32)", 32))
STEP_CAPTURE = "numerics step capture"  # the model's hooks: each step's inputs and output gradients, for the replay
WATCHED_STEP_HOOKS = ("on_backward", "on_backward_end", "on_step_begin")  # parked on the steps not watched


def _import_torch_parts() -> None:
    """The watch's parts are torch code (dispatch modes, pytree): they are imported with
    torch, never before it (the probe starts before the program imports anything)."""
    global torch, watch, BatchLedger, poisoned_indices, all_finite, float_tensors, replay, cuda_indices, rng_state
    global LossRegion, between
    import torch

    from ptdiag.probe.plugins.numerics import watch
    from ptdiag.probe.plugins.numerics.batches import BatchLedger, poisoned_indices
    from ptdiag.probe.plugins.numerics.localise import all_finite, cuda_indices, float_tensors, replay, rng_state
    from ptdiag.probe.plugins.numerics.loss_graph import between
    from ptdiag.probe.plugins.numerics.loss_region import LossRegion


def _bf16_supported(device) -> bool:
    """CPU autocast runs bfloat16 everywhere; on CUDA it needs Ampere (sm_80) or newer: the
    model's device is asked, not the current one (`torch.cuda.is_bf16_supported()` asks
    `current_device()`, cuda:0 on a rank on cuda:k that never called set_device)."""
    if device.type != "cuda":
        return device.type == "cpu"
    return torch.cuda.get_device_properties(device).major >= 8


def _weight_rms(params: list) -> float | None:
    """The root mean square of the weight matrices (parameters of 2 or more dimensions; all
    where there are none: norms' scales and biases start at 1 and 0), before the first
    update: the scale an adaptive optimizer's per-weight step of about the LR is measured
    against (ptdiag.interventions._lr_factor). One pass over the parameters, once."""
    chosen = [p for p in params if p.dim() >= 2] or list(params)
    count = sum(p.numel() for p in chosen)
    if not count:
        return None
    by_device: dict = {}
    for p in chosen:
        by_device.setdefault(p.device, []).append(p)
    with torch.no_grad():  # one read per device
        squares = sum(torch.stack([torch.linalg.vector_norm(p.detach(), dtype=torch.float32) for p in on]).double()
                      .pow(2).sum().item() for on in by_device.values())
    return (squares / count) ** 0.5


class Plugin(ProbePlugin):
    name = "numerics"

    def __init__(self, probe) -> None:
        super().__init__(probe)
        self.stop = probe.settings("numerics")["stop"]
        self.ledger = None  # BatchLedger and LossRegion come with torch (on_torch_import)
        self._model = None
        self._outputs = None  # watch.ModuleOutputs of the model
        self._region = None
        self._region_end = None  # the model's pre-hook that ends the loss region at its next forward
        self._groups: list[list] | None = None
        self._replaying = False
        self._localised = False
        self._stop_due = False
        self._clear_step()
        self._inputs = None
        self._rng = None  # the RNG state when the captured forward began (localise.rng_state), if known
        self._rng_at_forward = None  # read when the next forward begins (_await_next_forward)
        self._rng_hook = None
        self._call_line = None
        self._autocast = None
        self._device_type = "cpu"
        self._device = None  # the model's
        self._rng_devices: list[int] = []  # the CUDA devices of its parameters (localise.cuda_indices)
        self._amp_seen = False
        self._read_every = 1  # steps between two watched steps (the budget raises it)
        # backward passes read: the analysis's clock where the program updates its weights
        # by hand (no optimizer step is counted), and the graph's facts are read at the first
        self._backwards = 0
        self._graph: tuple[list[str], list[str]] | None = None  # the first loss's graph (loss_graph.between)
        probe.budget.sheddable(("numerics",), [(what, self._shedding(how)) for what, how in SHEDDING])

    def _shedding(self, how):
        def shed() -> None:
            if how == "modules":
                self.probe.model_hooks.unsubscribe(watch.WHAT)
            else:
                self._read_every = how
                self._outputs_follow_the_sampling()

        return shed

    def _watched(self) -> bool:
        """Whether the step under way (probe.step + 1) is watched."""
        return self.probe.step % self._read_every == 0

    def _outputs_follow_the_sampling(self) -> None:
        """Before the next step: its hooks on the model are live only if it is watched (the
        steps between cost the program's module calls nothing: ModelHooks.set_active)."""
        if self._outputs is not None and not self._replaying:
            watched = self._watched()
            if not watched:
                self._leave_region()  # a forward no backward followed left it open: it ends with the step
            self._outputs.paused = not watched
            for what in (STEP_CAPTURE, watch.WHAT):
                self.probe.model_hooks.set_active(what, watched)
            self.probe.dispatcher.set_active(self.name, WATCHED_STEP_HOOKS, watched)

    def _clear_step(self) -> None:
        self._out_nodes: set = set()
        self._grad_outs: list | None = None
        self._loss = None
        self._scale = None

    def on_torch_import(self, torch) -> None:
        _import_torch_parts()
        self.ledger = BatchLedger()
        self._region = LossRegion(self.probe.instruments)

    # -- data ------------------------------------------------------------------------------
    def on_loader_iter(self, loader, epoch) -> None:
        self.ledger.epoch_started(loader, epoch)

    def on_batch_indices(self, loader, indices) -> None:
        self.ledger.batch_handed(loader, indices)

    # -- the model -------------------------------------------------------------------------
    def on_model(self, module) -> None:
        self._model = module
        self._device = next(module.parameters()).device
        self._device_type = self._device.type
        self._rng_devices = cuda_indices(module.parameters())
        hooks = self.probe.model_hooks
        self._outputs = watch.ModuleOutputs(unwrapped(module), hooks)  # first: its sums are not the loss's ops
        hooks.after_forward(module, self._after_forward, STEP_CAPTURE)

    def _after_forward(self, module, args, kwargs, output):
        """One hook, after the forward: a pre-hook added while the first forward runs
        (on_model fires there) would miss that forward's inputs."""
        if self._replaying or not torch.is_grad_enabled():
            return None
        if self._stop_due:  # the failing step never reached the optimizer (GradScaler skipped it)
            self._halt()
        rng, self._rng_at_forward = self._rng_at_forward, None  # this forward's own, or none
        if not self._watched():
            return None
        self._inputs = (args, kwargs)
        self._rng = rng
        self._call_line = user_location(1)
        self._autocast = autocast_state(torch, self._device_type)
        if self._autocast and not self._amp_seen:
            self._amp_seen = True
            self.probe.emit("numerics_amp", step=self.probe.step + 1, bf16_supported=_bf16_supported(self._device),
                            **self._autocast)
        outputs = float_tensors(output)
        graded = [t for t in outputs if t.requires_grad]
        self._out_nodes = {t.grad_fn for t in graded}
        self._grad_outs = [None] * len(graded)
        for i, t in enumerate(graded):
            self.probe.model_hooks.on_gradient(t, self._grad_catcher(i), STEP_CAPTURE)
        self._enter_region(module)
        return None

    def _enter_region(self, model) -> None:
        """The loss computation is watched from the model's output to backward; the model's
        next forward ends it too, seen by a pre-hook held only meanwhile: a pre-hook held
        for the run would cost every module call of every forward."""
        self._region.enter()
        if self._region_end is None:
            self._region_end = self.probe.model_hooks.before_forward(model, lambda *_: self._leave_region(),
                                                                     STEP_CAPTURE)

    def _await_next_forward(self) -> None:
        """Keep the RNG's state when the model's next forward with gradients begins, for the
        replay (its dropout draws from it), by a pre-hook held only until then: the run's
        first forward has none (on_model fires inside it)."""
        if self._rng_hook is None and self._model is not None:
            self._rng_hook = self.probe.model_hooks.before_forward(self._model, self._forward_begins, STEP_CAPTURE)

    def _forward_begins(self, *_) -> None:
        if self._replaying or not torch.is_grad_enabled():
            return
        self._rng_at_forward = rng_state(torch, self._rng_devices)
        self._rng_hook.remove()
        self._rng_hook = None

    def _leave_region(self) -> None:
        if self._region is None:  # torch never imported: nothing was watched
            return
        self._region.leave()
        if self._region_end is not None:
            self._region_end.remove()
            self._region_end = None

    def _grad_catcher(self, i: int):
        def catch(grad):
            if self._grad_outs is not None and i < len(self._grad_outs):
                self._grad_outs[i] = grad

        return catch

    # -- after each backward: the step's numbers, read once --------------------------------
    def on_backward(self, tensor) -> None:
        self._leave_region()
        if self._replaying or tensor.numel() != 1 or not self._watched():
            return
        self._loss = tensor
        if self._backwards == 0 and self._graph is None and tensor.grad_fn is not None:
            self._graph = between(tensor.grad_fn, self._out_nodes)  # before backward frees what nodes saved
        scale = self.probe.loss_scale(tensor)
        if scale is not None:
            self._scale = scale.detach().reshape(()).clone()  # GradScaler.update changes it in place

    def on_backward_end(self, tensor) -> None:
        if self._replaying or self._localised or tensor is not self._loss:
            return
        groups = self._groups or ([[p for p in self._model.parameters() if p.requires_grad]] if self._model else [])
        if self._loss.is_cuda:  # the read below waits for the program's backward first: that wait is not ptdiag's
            self.probe.budget.waited(self.name, gpu.wait_for_device(torch, self._loss))
        reading = watch.read(self._loss, self._outputs, self._region, groups, self._scale)
        step = self.probe.step + 1
        self._backwards += 1
        if self._backwards == 1:
            self._graph_facts(step, groups)
        loss = reading.loss / reading.scale if reading.loss is not None and reading.scale else reading.loss
        flagged = {"nonfinite_modules": reading.flagged_modules[:MODULES_KEPT]} if reading.flagged_modules else {}
        self.probe.emit("numerics", step=step, backward=self._backwards, loss=loss, out_finite=reading.outputs_finite,
                        norms=reading.group_norms, norm=reading.total_norm, scale=reading.scale, **flagged)
        # a non-finite output alone is not a failure (an attention mask's -inf); the loss or
        # the gradients are (under a GradScaler, overflowing gradients are its normal business)
        failed = not reading.loss_finite or (not reading.grads_finite and reading.scale is None)
        if failed:
            self._localise(step, reading)
        else:
            self._await_next_forward()
        self._clear_step()

    def _graph_facts(self, step: int, groups: list[list]) -> None:
        """Once: the loss computation's nodes, a softmax over one class, and how many
        parameters are trainable and received a gradient (what a loss that never moves needs)."""
        params = [p for group in groups for p in group]
        names, one_class = self._graph or ([], [])
        trainable = sum(1 for p in self._model.parameters() if p.requires_grad) if self._model is not None else None
        self.probe.emit("numerics_graph", step=step, backward=self._backwards, loss_ops=names, one_class=one_class,
                        trainable=trainable, with_grad=sum(1 for p in params if p.grad is not None),
                        weight_rms=_weight_rms(params))

    def on_step_begin(self, step, optimizer) -> None:
        self._leave_region()

    def on_exit(self) -> None:
        self._leave_region()

    def on_step(self, step, optimizer) -> None:
        if self._groups is None or len(self._groups) != len(optimizer.param_groups):
            self._groups = [g["params"] for g in optimizer.param_groups]
        if self._read_every > 1:
            self._outputs_follow_the_sampling()
        if self._stop_due:
            self._halt()

    # -- localisation ------------------------------------------------------------------------
    def _localise(self, step: int, reading: watch.Reading) -> None:
        """Once per run: the probe budget's one-off window (its step is not charged to the
        per-step budget; its time and memory are recorded)."""
        self._localised = True
        window = self.probe.budget.window(LOCALISATION)
        try:
            self._find_culprit(step, reading)
        finally:
            if window is not None:
                window.close()

    def _find_culprit(self, step: int, reading: watch.Reading) -> None:
        started = time.perf_counter()
        args, kwargs = self._inputs or ((), {})
        inputs = float_tensors((args, kwargs))
        if inputs and not all_finite(inputs):
            found = self._bad_batch(inputs)
        elif self._model is not None:
            model = unwrapped(self._model)
            self._replaying = self._outputs.paused = True
            try:
                found = replay(model, args, kwargs, self._autocast, self._grad_outs, list(model.parameters()),
                               self.probe.model_hooks, self._rng)
            finally:
                self._replaying = self._outputs.paused = False
        else:
            found = {"phase": None, "reason": "no model forward was seen"}
        if found.get("phase") in (None, "gradient_in") and self._loss is not None and self._loss.grad_fn is not None:
            found["loss_ops"] = between(self._loss.grad_fn, self._out_nodes)[0]
        if found.get("phase") is None and reading.loss_op and reading.outputs_finite is not False:
            # born in the loss computation (the model's own outputs were finite), watched op by op
            found.update(phase="loss", **reading.loss_op)
        self.probe.emit("numerics_culprit", step=step, backward=self._backwards, call_line=self._call_line, autocast=self._autocast,
                        loss_finite=reading.loss_finite, outputs_finite=reading.outputs_finite,
                        nonfinite_modules=(reading.flagged_modules or [])[:MODULES_KEPT],
                        grads_finite=reading.grads_finite, localise_s=time.perf_counter() - started,
                        **found)
        self._stop_due = self.stop

    def _bad_batch(self, inputs: list) -> dict:
        first = next(t for t in inputs if not bool(torch.isfinite(t).all()))
        rows = (~torch.isfinite(first)).reshape(first.shape[0], -1).any(1).nonzero().flatten().tolist() \
            if first.dim() else []
        found = {"phase": "input", "rows": rows, "batch_size": first.shape[0] if first.dim() else None,
                 "shape": list(first.shape), "nan": bool(first.isnan().any()), "inf": bool(first.isinf().any()),
                 "module": "", "indices": None}
        last = self.ledger.last_batch()
        if last is not None and last["loader"] is not None:
            found.update(epoch=last["epoch"], batch=last["batch"],
                         dataset=type(last["loader"].dataset).__name__)
            found["indices"] = poisoned_indices(last["loader"], last["indices"], rows)
        return found

    def _halt(self) -> None:
        self._stop_due = False
        self.probe.stop("numerics", "the first non-finite value was localised; training on NaN teaches nothing",
                        keep_running="-o numerics.stop=no")

