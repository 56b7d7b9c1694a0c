"""The passive recorder: what every run keeps, with no change to the user's code.

Per training step (probe/steps.py) it writes the step time, the time spent waiting for
data, the epoch, the learning rates and the loss; at the first step, the program's
configuration as it holds it (config.py). The loss is read without a host synchronisation
on CUDA: a non-blocking copy to host plus an event, read once the event has completed.

Which backward passes a step's loss is made of: those since the previous step (gradient
accumulation: their sum, see LossReader); an optimizer that evaluates a closure inside `step()` (LBFGS)
takes the closure's first loss, the one `step()` returns; the backward passes before a
step of another optimizer (a GAN's generator) are that optimizer's, written apart.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from collections import deque

from ptdiag.checkpoint_contents import categories, describe, file_label
from ptdiag.location import user_location_of_traceback
from ptdiag.probe import gpu
from ptdiag.probe.plugin import Plugin as ProbePlugin
from ptdiag.probe.plugins.tracking import config, footprint
from ptdiag.probe.plugins.tracking.fused_skips import FusedSkips
from ptdiag.probe.steps import HandWrittenUpdate

MAX_ARGS_EVENTS = 5  # a program that parses arguments in a loop is not worth more
# what the recorder hears only for the steps it keeps (the budget may keep 1 in N): the
# step's batches, losses and where its update began; parked between those steps
STEP_LINES_HOOKS = ("on_batch", "on_backward", "on_step_begin", "on_any_optimizer_step")


def _scalar(value):
    """Plain numbers as they are; a tensor (a tensor lr, a loss logged to TensorBoard) as a
    float, read detached: float() of a tensor that requires grad warns on the program's
    stderr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        return float(value.detach() if callable(getattr(value, "detach", None)) else value)
    except (TypeError, ValueError, RuntimeError):
        return repr(value)


class LossReader:
    """Turns loss tensors into floats, on CUDA without stalling the stream.

    Each loss comes with the CUDA stream that was current on its device when the program
    called backward on it: the stream it was computed on. The copy to the host and the
    event that says it landed go on that stream, whatever stream or device is current
    when the step ends (an idle side stream's event would complete at once, before the
    copy; cuda:0's, on a rank on cuda:k, too, and create a context on GPU 0)."""

    def __init__(self) -> None:
        self._pending: deque = deque()

    def push(self, step: int, losses: list, skipped: bool = False) -> list[tuple[int, float, bool]]:
        """The sum of a step's losses, `(tensor, its stream or None on CPU)`: the update
        follows the gradient of their sum. Gradient accumulation scales each micro-step's
        loss by 1/N, so the sum is the mean loss, as nanoGPT and the Hugging Face Trainer
        report it; a GAN discriminator's real and fake losses add up to its loss.
        `skipped`: a GradScaler dropped the update these backward passes were for."""
        ready = self.poll()
        if not losses:
            return ready
        if all(t.device.type == "cpu" for t, _ in losses):
            ready.append((step, sum(float(t) for t, _ in losses), skipped))
            return ready
        import torch

        stream = next(s for _, s in reversed(losses) if s is not None)
        with torch.cuda.device(stream.device), torch.cuda.stream(stream):
            for other in {s for _, s in losses if s is not None and s != stream}:
                stream.wait_stream(other)
            total = torch.stack([t.float().to(stream.device) for t, _ in losses]).sum()
            host = total.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        self._pending.append((step, host, event, skipped))
        return ready

    def poll(self, wait: bool = False) -> list[tuple[int, float, bool]]:
        ready = []
        while self._pending and (wait or self._pending[0][2].query()):
            step, host, event, skipped = self._pending.popleft()
            event.synchronize()
            ready.append((step, float(host), skipped))
        return ready


class Plugin(ProbePlugin):
    name = "tracking"

    def __init__(self, probe) -> None:
        super().__init__(probe)
        self._args_events = 0
        self._losses: list = []
        self._before_step: int | None = None  # how many losses came before the primary's step() began
        self._others: dict[int, tuple] = {}  # id of another optimizer -> (its number: 2, 3, ...; its class; reader)
        self._loss_reader = LossReader()
        self._fused_skips = FusedSkips()
        self._data_wait = 0.0
        self._batch_from: tuple = (None, None)  # (loader index, its epoch)
        self._loader_epochs: dict[int, int] = {}
        self._last_step_time = None
        self._described: tuple = (None, None)  # (weakref to the last optimizer described, its description)
        self._loaders: dict[int, int] = {}

    def on_torch_import(self, torch) -> None:
        """torch's build now; the GPUs once the program has initialised CUDA (asked now,
        CUDA would be initialised by ptdiag, before the program: probe/gpu.py). Until then
        NVML tells what is there."""
        from ptdiag.environment import nvml_gpus, torch_build

        visible = gpu.visible_device_count(torch)
        self.probe.emit("env", torch={**torch_build(torch), "cuda_available": None if visible is None else visible > 0,
                                      "gpus": nvml_gpus() or []})
        gpu.after_cuda_init(torch, self._cuda_environment, self.probe.log_error)

    def _cuda_environment(self) -> None:
        import torch

        from ptdiag.environment import cuda_facts

        self.probe.emit("env_cuda", torch=cuda_facts(torch))

    def on_args(self, namespace, argv) -> None:
        if self._args_events < MAX_ARGS_EVENTS:
            self._args_events += 1
            from ptdiag.environment import REDACTED, is_secret_name

            values = {k: REDACTED if is_secret_name(k) and v else v for k, v in vars(namespace).items()}
            self.probe.emit("args", values=values)

    def on_seed(self, kind, value, location) -> None:
        self.probe.emit("seed", kind=kind, value=value, location=location)

    def on_model(self, module) -> None:
        params = list(module.parameters())
        self.probe.emit("model", cls=type(module).__name__,
                        module=type(module).__module__,
                        params=sum(p.numel() for p in params),
                        trainable=sum(p.numel() for p in params if p.requires_grad),
                        dtype=str(params[0].dtype), device=str(params[0].device))
        self._fingerprint_inputs(module)

    def _fingerprint_inputs(self, module) -> None:
        """on_model runs as the model's first forward begins; its inputs are fingerprinted
        as that forward returns (keyword arguments included), by a one-shot callback."""
        subscription = None

        def after_forward(module, args, kwargs, output):
            subscription.remove()
            self.probe.emit("data_identity", **footprint.input_fingerprint(args, kwargs))

        subscription = self.probe.model_hooks.after_forward(module, after_forward, "tracking input fingerprint")

    def on_dataloader(self, loader) -> None:
        self._loaders[id(loader)] = len(self._loaders)
        dataset = loader.dataset
        try:
            length = len(dataset)
        except TypeError:
            length = None
        self.probe.emit("dataloader", loader=self._loaders[id(loader)],
                        batch_size=loader.batch_size, num_workers=loader.num_workers,
                        pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                        persistent_workers=loader.persistent_workers,
                        dataset=type(dataset).__name__, dataset_len=length,
                        sampler=type(loader.sampler).__name__ if loader.sampler is not None else None)

    def on_loader_iter(self, loader, epoch) -> None:
        self._loader_epochs[id(loader)] = epoch

    def on_batch(self, loader, wait_s) -> None:
        """The epoch of a step is that of the loader whose batch it trained on."""
        self._data_wait += wait_s
        if loader is not None:
            self._batch_from = (self._loaders.get(id(loader)), self._loader_epochs.get(id(loader)))

    def on_backward(self, tensor) -> None:
        """The loss as the program computed it: a GradScaler's scaled loss is divided back
        (on the device, no synchronisation). Kept for the steps the recorder writes."""
        if tensor.numel() != 1 or not self.probe.budget.records(self.probe.step + 1):
            return
        scale = self.probe.loss_scale(tensor)
        loss = tensor.detach()
        stream = None
        if tensor.is_cuda:
            import torch

            stream = torch.cuda.current_stream(tensor.device)
        self._losses.append((loss / scale if scale is not None else loss, stream))

    def on_step_skipped(self, optimizer) -> None:
        """The update of step `step + 1` was dropped: its loss is kept, marked skipped, and
        that step number goes to the next update that happens."""
        losses, self._losses = self._losses, []
        for loss_step, value, skipped in self._loss_reader.push(self.probe.step + 1, losses, skipped=True):
            self._emit_loss(loss_step, value, skipped)
        self.probe.emit("step_skipped", step=self.probe.step + 1, reason="GradScaler: inf/NaN gradients")

    def on_step_begin(self, step, optimizer) -> None:
        self._before_step = len(self._losses)

    def on_any_optimizer_step(self, optimizer) -> None:
        """Another optimizer's step (a GAN's second): the losses since the last step were
        its own, not the primary's."""
        if self.probe.is_primary(optimizer) or not self._losses:
            return
        if id(optimizer) not in self._others:
            self._others[id(optimizer)] = (len(self._others) + 2, type(optimizer).__name__, LossReader())
        number, cls, reader = self._others[id(optimizer)]
        losses, self._losses = self._losses, []
        for step, value, _ in reader.push(self.probe.step, losses):
            self._emit_other_loss(number, cls, step, value)

    def _emit_other_loss(self, number: int, cls: str, step: int, value: float) -> None:
        self.probe.emit("other_loss", step=step, optimizer=number, cls=cls, value=value, finite=math.isfinite(value))

    def on_step(self, step, optimizer) -> None:
        now = time.perf_counter()
        dt = None if self._last_step_time is None else now - self._last_step_time
        self._last_step_time = now
        self._read_fused_skips(step, optimizer)  # every step, shed or not: the count of updates depends on it
        self.probe.dispatcher.set_active(self.name, STEP_LINES_HOOKS, self.probe.budget.records(step + 1))
        if step == 1:
            self._record_config()
        if not self.probe.budget.records(step):  # the budget shed: this step's lines are not kept
            self._data_wait = 0.0
            self._losses = []
            self._before_step = None
            return
        self._describe(optimizer)
        self.probe.emit("step", step=step, dt=dt, data_s=self._data_wait,
                        lr=[_scalar(g.get("lr")) for g in optimizer.param_groups],
                        loader=self._batch_from[0], epoch=self._batch_from[1])
        self._data_wait = 0.0
        losses, self._losses = self._step_losses(), []
        for loss_step, value, skipped in self._loss_reader.push(step, losses):
            self._emit_loss(loss_step, value, skipped)

    def _read_fused_skips(self, step: int, optimizer) -> None:
        found_inf = getattr(optimizer, "found_inf", None)  # GradScaler.step around a fused optimizer's step
        for skipped_step in (self._fused_skips.push(step, found_inf) if found_inf is not None
                             else self._fused_skips.poll()):
            self._emit_fused_skip(skipped_step)

    def _emit_fused_skip(self, step: int) -> None:
        """A fused optimizer's step the probe counted whose update the device skipped (its
        loss event, written already, is for an update that did not happen)."""
        self.probe.emit("step_skipped", step=step, counted=True,
                        reason="GradScaler with a fused optimizer: inf/NaN gradients, the update was skipped on the device")

    def _step_losses(self) -> list:
        """The losses of the step that ended: those before step() began, else (a closure
        evaluated inside it) the closure's first."""
        before, self._before_step = self._before_step, None
        if before is None or before == len(self._losses):
            return self._losses
        return self._losses[:before] or self._losses[before:before + 1]

    def _record_config(self) -> None:
        """The program's config at its first step; a failure costs only the config, never
        the recorder's steps."""
        try:
            self._emit_config()
        except Exception:
            import traceback

            self.probe.log_error(f"the program's config was not read:\n{traceback.format_exc()}")

    def _emit_config(self) -> None:
        from ptdiag.environment import REDACTED, is_secret_name

        # a program that parsed its command line with argparse set no globals from it: a
        # global that shares an option's name (word_language_model's `lr`) is its own
        overrides = sys.argv[1:] if not self._args_events else []
        for source, values in config.program_config(sys._getframe(2), overrides):
            # a secret is a string: a number named like one (bos_token_id) is kept
            values = {k: REDACTED if is_secret_name(k) and isinstance(v, str) and v else v for k, v in values.items()}
            self.probe.emit("config", source=source, values=values)

    def _emit_loss(self, step: int, value: float, skipped: bool) -> None:
        extra = {"skipped": True} if skipped else {}
        self.probe.emit("loss", step=step, value=value, finite=math.isfinite(value), **extra)

    def _describe(self, optimizer) -> None:
        """The optimizer's class and hyperparameters, said when they change: a program that
        builds a new optimizer every step has it said once, not every step."""
        ref, said = self._described
        if isinstance(optimizer, HandWrittenUpdate) or (ref is not None and ref() is optimizer):
            return  # a hand-written update has no hyperparameters of its own to say
        groups = [{k: _scalar(v) for k, v in g.items() if k != "params" and not isinstance(v, (list, dict))}
                  for g in optimizer.param_groups]
        defaults = {k: _scalar(v) for k, v in getattr(optimizer, "defaults", {}).items()
                    if not isinstance(v, (list, dict))}
        description = (type(optimizer).__name__, groups)
        self._described = (weakref.ref(optimizer), description)
        if description != said:
            self.probe.emit("optimizer", cls=description[0], groups=groups, defaults=defaults,
                            params=sum(p.numel() for g in optimizer.param_groups for p in g["params"]))

    def on_log_params(self, source, params) -> None:
        """Hyperparameters as the program logged them: a dict, an argparse Namespace
        (`wandb.init(config=args)`) or a config object, nested ones flattened with dots."""
        from ptdiag.environment import REDACTED, is_secret_name

        if not isinstance(params, dict) and config.settings_of(params) is None:
            params = vars(params) if hasattr(params, "__dict__") else {}
        values = {k: REDACTED if is_secret_name(k) and isinstance(v, str) and v else v
                  for k, v in config.flatten(params).items()}
        self.probe.emit("logged_params", source=source, params=values)

    def on_log_scalar(self, source, tag, value, step) -> None:
        """A metric the script logged to TensorBoard/MLflow/W&B, with the optimizer step
        it was logged at (its own step argument may count epochs or samples)."""
        self.probe.emit("scalar", source=source, tag=str(tag), value=_scalar(value),
                        logged_step=step, step=self.probe.step)

    def on_save(self, obj, f, location) -> None:
        """What the saved object holds, by checkpoint_contents' reading (nested dicts and
        any counter name included), so the analysis can tell whether it says its progress."""
        keys = sorted(str(k) for k in obj) if isinstance(obj, dict) else None
        self.probe.emit("save", path=file_label(f), keys=keys, type=type(obj).__name__,
                        holds=categories(describe(obj)), location=location, step=self.probe.step)

    def on_load(self, f, location, kwargs) -> None:
        self.probe.emit("load", path=file_label(f),
                        weights_only=kwargs.get("weights_only"), location=location, step=self.probe.step)

    def on_exception(self, exc_type, exc, tb) -> None:
        import traceback

        self.probe.emit("exception", type=exc_type.__name__, module=exc_type.__module__,
                        message=str(exc)[:4000], location=user_location_of_traceback(tb),
                        step=self.probe.step,
                        traceback="".join(traceback.format_exception(exc_type, exc, tb))[-8000:])

    def on_exit(self) -> None:
        for step, value, skipped in self._loss_reader.poll(wait=True):
            self._emit_loss(step, value, skipped)
        for step in self._fused_skips.poll(wait=True):
            self._emit_fused_skip(step)
        for number, cls, reader in self._others.values():
            for step, value, _ in reader.poll(wait=True):
                self._emit_other_loss(number, cls, step, value)
        self.probe.emit("resources", **footprint.at_exit())
        if self.probe.rank == 0:
            footprint.write_packages(self.probe.run_dir)
