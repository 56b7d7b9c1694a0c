"""A verification run's intervention, applied from inside the program (no code change).

The parent (ptdiag.verification) asks for one intervention of ptdiag.interventions
through INTERVENTION_ENV; this module turns it into a plugin on the probe's hooks, loaded
after the specialists' plugins so that they record what the program did with it (the
recorder's `lr` is the scaled one). Only verification runs ever load it: a diagnosed run
is never changed.

Each intervention says it was applied (the `intervention` event: at its first
application, and at exit how often), so a run in which it never took effect (no
DataLoader was built) is reported as not verified rather than as not helping.
"""

from __future__ import annotations

import os
import weakref

from ptdiag import interventions
from ptdiag.events import INTERVENTION_ENV, jsonable
from ptdiag.location import user_location
from ptdiag.probe.imports import when_imported
from ptdiag.probe.plugin import Plugin


class Applied(Plugin):
    """What every intervention shares: its settings, and the `intervention` events."""

    name = "intervention"

    def __init__(self, probe, intervention: interventions.Intervention, settings: dict) -> None:
        super().__init__(probe)
        self.intervention, self.settings = intervention, settings
        self.applied = 0

    def _applied(self) -> None:
        self.applied += 1
        if self.applied == 1:
            self._record()

    def _record(self) -> None:
        self.probe.emit("intervention", name=self.intervention.name, settings=jsonable(self.settings),
                        applied=self.applied, step=self.probe.step)

    def on_exit(self) -> None:
        self._record()


class StepLR(Applied):
    """Every parameter group's LR changed (`lr_for`) for the optimizer step only: put back
    right after it, so a program that sets the LR from its own schedule each step, or a
    scheduler that multiplies the current LR, keeps seeing its own value."""

    def __init__(self, probe, intervention, settings) -> None:
        super().__init__(probe, intervention, settings)
        self._own: list | None = None

    def lr_for(self, lr):
        raise NotImplementedError

    def on_step_begin(self, step, optimizer) -> None:
        self._own = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = self.lr_for(group["lr"])
        self._applied()

    def on_step(self, step, optimizer) -> None:
        if self._own is not None and len(self._own) == len(optimizer.param_groups):
            for group, lr in zip(optimizer.param_groups, self._own):
                group["lr"] = lr
        self._own = None


class ScaleLR(StepLR):
    def lr_for(self, lr):
        return lr * float(self.settings["factor"])


class CapLR(StepLR):
    def lr_for(self, lr):
        cap = float(self.settings["max_lr"])
        return lr if lr <= cap else lr * 0 + cap  # a tensor LR stays a tensor


class ClipGradNorm(Applied):
    """torch.nn.utils.clip_grad_norm_ over the optimizer's parameters right before its step
    (after a GradScaler unscaled them: GradScaler.step unscales, then calls step)."""

    def __init__(self, probe, intervention, settings) -> None:
        super().__init__(probe, intervention, settings)
        self._torch = None

    def on_torch_import(self, torch) -> None:
        self._torch = torch

    def on_step_begin(self, step, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params:
            self._torch.nn.utils.clip_grad_norm_(params, float(self.settings["max_norm"]))
            self._applied()


class AutocastFloat32(Applied):
    """Each autocast region built disabled: its ops run in the dtype the program's tensors
    have (float32), as if the program had never asked for mixed precision."""

    def on_amp_args(self, kind, arguments) -> None:
        if kind == "autocast" and arguments.get("enabled", True):
            arguments["enabled"] = False
            self._applied()


class ScalerInitScale(Applied):
    """Each GradScaler built with `init_scale` at most the settings' (a lower one the
    program chose is kept): the scale the main run's GradScaler fell to."""

    def on_amp_args(self, kind, arguments) -> None:
        if kind != "grad_scaler":
            return
        lower = float(self.settings["init_scale"])
        if float(arguments.get("init_scale", 2.0 ** 16)) > lower:
            arguments["init_scale"] = lower
        self._applied()


class SkipBatches(Applied):
    """The batches that held the poisoned samples left out of each DataLoader over the
    dataset class named (any, where none is): its sampler is wrapped to hand out whole
    batches' indices minus those batches (SkippingSampler), so the other batches and
    their order stay what the program's sampler drew."""

    def on_dataloader_args(self, arguments) -> None:
        from torch.utils.data import IterableDataset, RandomSampler, SequentialSampler

        dataset, wanted = arguments.get("dataset"), self.settings.get("dataset")
        if isinstance(dataset, IterableDataset) or (wanted and type(dataset).__name__ != wanted):
            return  # an iterable dataset has no indices to leave out
        skip, taken = self.settings["skip"], self._applied
        if arguments.get("batch_sampler") is not None:
            arguments["batch_sampler"] = SkippingSampler(arguments["batch_sampler"], None, skip, taken)
            return
        sampler = arguments.get("sampler")
        if sampler is None:
            sampler = (RandomSampler(dataset, generator=arguments.get("generator")) if arguments.get("shuffle")
                       else SequentialSampler(dataset))  # what the DataLoader would build
        size = arguments.get("batch_size", 1)
        arguments["sampler"], arguments["shuffle"] = SkippingSampler(sampler, size or 1, skip, taken), None


class SkippingSampler:
    """A sampler (`size`: its indices grouped as the DataLoader batches them) or a batch
    sampler (`size` None) without the batches that hold `skip["indices"]`, or without batch
    `skip["batch"]` of epoch `skip["epoch"]` (each iteration is an epoch, as the
    DataLoader starts one per epoch). Anything else is the wrapped sampler's (set_epoch)."""

    def __init__(self, sampler, size, skip: dict, taken) -> None:
        self._sampler, self._size, self._skip, self._taken = sampler, size, skip, taken
        self._epoch = -1

    def __getattr__(self, name):
        if name.startswith("_"):  # not yet set (a copy being built): never the wrapped one's
            raise AttributeError(name)
        return getattr(self._sampler, name)

    def __len__(self) -> int:
        return len(self._sampler)

    def _batches(self):
        if self._size is None:
            yield from self._sampler
            return
        batch = []
        for index in self._sampler:
            batch.append(index)
            if len(batch) == self._size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _poisoned(self, position: int, batch) -> bool:
        if "indices" in self._skip:
            held = batch if isinstance(batch, (list, tuple)) else [batch]
            return any(i in self._skip["indices"] for i in held)
        return (self._epoch, position) == (self._skip["epoch"], self._skip["batch"])

    def __iter__(self):
        self._epoch += 1
        for position, batch in enumerate(self._batches()):
            if self._poisoned(position, batch):
                self._taken()
                continue
            yield from (batch if self._size is not None else [batch])


class LoaderWorkers(Applied):
    """Each DataLoader built with `num_workers` worker processes (and pinned memory where
    asked; "auto": where CUDA is available). A loader already given more workers keeps them."""

    def __init__(self, probe, intervention, settings) -> None:
        super().__init__(probe, intervention, settings)
        self._torch = None

    def on_torch_import(self, torch) -> None:
        self._torch = torch

    def on_dataloader_args(self, arguments) -> None:
        workers = int(self.settings["num_workers"])
        if (arguments.get("num_workers") or 0) < workers:
            arguments["num_workers"] = workers
        pin = self.settings.get("pin_memory")
        if pin == "auto":
            arguments["pin_memory"] = bool(arguments.get("pin_memory")) or self._torch.cuda.is_available()
        else:
            arguments["pin_memory"] = bool(pin)
        if self.settings.get("persistent_workers"):  # workers kept between epochs (they need workers)
            arguments["persistent_workers"] = True
        self._applied()


def deterministic_kernels(torch, cublas_workspace: str) -> None:
    """The kernels that have a deterministic implementation made to use it (warn_only: an
    op without one still runs, as in the program), cuDNN's too, and cuBLAS given the
    workspace its deterministic mode needs (read when cuBLAS starts, later)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", cublas_workspace)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


class Seeded(Applied):
    """What a program that seeds nothing would call first: every generator seeded, and
    the kernels that have a deterministic implementation made to use it (warn_only: an op
    without one still runs, as in the program). The seed calls come from ptdiag's file, so
    the recorder does not take them for the program's own."""

    def on_torch_import(self, torch) -> None:
        import random

        seed = int(self.settings["seed"])
        torch.manual_seed(seed)  # every device's generator too
        random.seed(seed)
        deterministic_kernels(torch, ":4096:8")
        when_imported("numpy", self.probe.guarded(lambda probe, numpy: numpy.random.seed(seed)))
        self._applied()


PLUGINS = {"lr_cap": CapLR, "lr_scale": ScaleLR, "clip_grad_norm": ClipGradNorm, "dataloader_workers": LoaderWorkers,
           "seed_all": Seeded}
PLUGINS.update(autocast_float32=AutocastFloat32, grad_scaler_scale=ScalerInitScale, skip_batches=SkipBatches)


# -- performance and distributed: threads, the loader's sampler -----------------------------------
class Threads(Applied):
    """torch.set_num_threads(n) when torch is imported, and again at the model's first
    forward and each optimizer step where the program set its own count since (the
    finding often comes from a torch.set_num_threads(1) of the program's: a verification
    that let it stand would measure nothing). `applied` counts the times it set it."""

    def __init__(self, probe, intervention, settings) -> None:
        super().__init__(probe, intervention, settings)
        self._torch = None

    def on_torch_import(self, torch) -> None:
        self._torch = torch
        self._set()

    def on_model(self, module) -> None:
        self._set()

    def on_step_begin(self, step, optimizer) -> None:
        self._set()

    def _set(self) -> None:
        threads = int(self.settings["num_threads"])
        if self._torch.get_num_threads() != threads:
            self._torch.set_num_threads(threads)
            self._applied()


def _distributed_sampler_of(loader):
    sampler = getattr(loader, "sampler", None)
    if not hasattr(sampler, "set_epoch"):
        sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    return sampler if hasattr(sampler, "set_epoch") else None


class SetEpoch(Applied):
    """set_epoch(n) on a loader's DistributedSampler before its n-th pass: before the
    iterator exists, since one with workers draws its first indices as it starts."""

    counts_passes = True  # `applied` counts the passes (ShardedSampler's: the samplers it built)

    def on_loader_iter_begin(self, loader, epoch) -> None:
        sampler = self._sampler(loader)
        if sampler is not None:
            sampler.set_epoch(epoch)
            if self.counts_passes:
                self._applied()

    def _sampler(self, loader):
        return _distributed_sampler_of(loader)


class ShardedSampler(SetEpoch):
    """A DistributedSampler over the ranks in place of the sampler of the training loader's
    kind (the finding's `sampler`), shuffling where the loader shuffled; set_epoch called
    on it at each pass, as the fix says. Loaders with a batch_sampler, a sampler of
    another kind or an iterable data set are left as they are."""

    counts_passes = False

    def __init__(self, probe, intervention, settings) -> None:
        super().__init__(probe, intervention, settings)
        self._torch = None
        self._ours: weakref.WeakSet = weakref.WeakSet()  # the samplers it built

    def on_torch_import(self, torch) -> None:
        self._torch = torch

    def on_dataloader_args(self, arguments) -> None:
        from torch.utils.data import DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

        dataset, sampler = arguments.get("dataset"), arguments.get("sampler")
        if arguments.get("batch_sampler") is not None or isinstance(dataset, IterableDataset):
            return
        shuffle = bool(arguments.get("shuffle")) or isinstance(sampler, RandomSampler)
        kind = type(sampler).__name__ if sampler is not None else "RandomSampler" if shuffle else "SequentialSampler"
        if kind != self.settings["sampler"] or not isinstance(sampler, (type(None), RandomSampler, SequentialSampler)):
            return
        replicas, rank = self._ranks()
        if replicas < 2:
            return
        built = DistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle)
        self._ours.add(built)
        arguments["sampler"] = built
        if "shuffle" in arguments:
            arguments["shuffle"] = False  # a sampler excludes shuffle=True
        self._applied()

    def _ranks(self) -> tuple[int, int]:
        """The process group's size and this rank; torchrun's environment before it exists."""
        dist = self._torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))

    def _sampler(self, loader):
        sampler = _distributed_sampler_of(loader)
        return sampler if sampler is not None and sampler in self._ours else None


# -- memory: evaluation forwards without a graph ----------------------------------------------------
class EvalNoGrad(Applied):
    """The model's forwards called from the finding's line in the finding's mode run with
    gradient recording off: switched off in the model's pre-hook, back on in its
    post-hook (an always-call one: a forward that raised does not leave it off). Only
    where recording was on: a forward the program already wrapped is left alone."""

    WHAT = "intervention: evaluation forwards under no_grad"

    def __init__(self, probe, intervention, settings) -> None:
        super().__init__(probe, intervention, settings)
        self._torch = None
        self._switched: list[bool] = []  # per forward in flight: whether this one turned recording off

    def on_torch_import(self, torch) -> None:
        self._torch = torch

    def on_model(self, module) -> None:
        self.probe.model_hooks.before_forward(module, self._before, self.WHAT)
        self.probe.model_hooks.after_forward(module, self._after, self.WHAT, always=True)

    def _before(self, module, args) -> None:
        switch = (module.training == bool(self.settings["training"]) and self._torch.is_grad_enabled()
                  and user_location() == self.settings["location"])
        if switch:
            self._torch.set_grad_enabled(False)
            self._applied()
        self._switched.append(switch)

    def _after(self, module, args, kwargs, output) -> None:
        if self._switched and self._switched.pop():
            self._torch.set_grad_enabled(True)


# -- reproducibility: deterministic kernels ---------------------------------------------------------
class Deterministic(Applied):
    """Deterministic kernels (deterministic_kernels) when torch is imported, and again at
    the model's first forward where the program turned cudnn.benchmark on since."""

    def __init__(self, probe, intervention, settings) -> None:
        super().__init__(probe, intervention, settings)
        self._torch = None

    def on_torch_import(self, torch) -> None:
        self._torch = torch
        deterministic_kernels(torch, self.settings["cublas_workspace"])
        self._applied()

    def on_model(self, module) -> None:
        if self._torch.backends.cudnn.benchmark or not self._torch.are_deterministic_algorithms_enabled():
            deterministic_kernels(self._torch, self.settings["cublas_workspace"])
            self._applied()


def _fused_devices(torch) -> tuple[str, ...]:
    """The device types torch has fused optimizer kernels for (none known: never fused)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return ()
    return tuple(_get_fused_kernels_supported_devices())


class OptimizerFused(Applied):
    """Each parameter group of the optimizer stepped with fused=True where it can be, else
    foreach=True, set right before the step (the step reads both flags from the group).

    Fused only where the constructor took the flag (the group has it: Adam, AdamW, SGD,
    Adagrad), every parameter is a floating-point tensor with a dense gradient on a device
    torch has fused kernels for, and none has optimizer state yet: the state a first step
    creates (Adam's `step` on the parameter's device, in float32) is the fused layout only
    when fused is set before it, so an optimizer that stepped or loaded a state dict gets
    foreach. A GradScaler still unscales the gradients itself (the optimizer was not built
    fused, so it does not take the scaling into its kernel). A group already fused, or a
    differentiable one (neither implementation records a graph), is left as it is."""

    def __init__(self, probe, intervention, settings) -> None:
        super().__init__(probe, intervention, settings)
        self._torch, self._devices = None, ()

    def on_torch_import(self, torch) -> None:
        self._torch = torch
        self._devices = _fused_devices(torch)

    def _fusable(self, optimizer, group) -> bool:
        params = group["params"]
        return ("fused" in group and bool(self.settings.get("fused")) and all(
            p.device.type in self._devices and self._torch.is_floating_point(p)
            and (p.grad is None or not p.grad.is_sparse) and not optimizer.state.get(p) for p in params))

    def on_step_begin(self, step, optimizer) -> None:
        changed = False
        for group in getattr(optimizer, "param_groups", ()):
            if group.get("fused") or group.get("differentiable"):
                continue
            if self._fusable(optimizer, group):
                group["fused"], group["foreach"] = True, False  # torch refuses both at once
                changed = True
            elif "foreach" in group and group["foreach"] is not True:
                group["foreach"] = True
                changed = True
        if changed:
            self._applied()


class LoaderBatchSize(Applied):
    """Each DataLoader built with a batch size of at most `batch_size`; one that batches
    by a batch_sampler, or not at all (batch_size=None), is left as it is."""

    def on_dataloader_args(self, arguments) -> None:
        cap = int(self.settings["batch_size"])
        if arguments.get("batch_sampler") is not None or ("batch_size" in arguments and arguments["batch_size"] is None):
            return
        if arguments.get("batch_size", 1) > cap:
            arguments["batch_size"] = cap
            self._applied()


PLUGINS.update({"deterministic_algorithms": Deterministic, "loader_batch_size": LoaderBatchSize, "optimizer_fused": OptimizerFused, "torch_threads": Threads, "sampler_set_epoch": SetEpoch, "distributed_sampler": ShardedSampler,
                "eval_no_grad": EvalNoGrad})


def plugins(probe) -> list[Plugin]:
    """The intervention this process was asked to apply, as a plugin; none in a diagnosed run."""
    asked = interventions.decode(os.environ.get(INTERVENTION_ENV))
    if asked is None:
        return []
    intervention, settings = asked
    return [PLUGINS[intervention.name](probe, intervention, settings)]
