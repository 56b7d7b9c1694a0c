"""The one place that patches torch and the standard library.

Each patch feeds one or more hooks of `ptdiag.probe.plugin.HOOKS` and is installed only
when a plugin subscribed to one of them. Every wrapper calls the original exactly as
the program did and returns its result unchanged; ptdiag's own work around it is
guarded so that a failure there is logged, never raised into the training.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import time
import weakref
from typing import TYPE_CHECKING, Callable

from ptdiag.events import COLLECTIVES
from ptdiag.probe.imports import when_imported
from ptdiag.location import caller_file, is_user_file, user_location

if TYPE_CHECKING:
    from ptdiag.probe.core import Probe


def _replace(owner, attr: str, make_wrapper: Callable[[Callable], Callable], *aliases) -> None:
    original = getattr(owner, attr)
    wrapper = functools.wraps(original)(make_wrapper(original))
    for target in (owner, *aliases):
        if getattr(target, attr, None) is original:
            setattr(target, attr, wrapper)


def _optimizer_steps(probe: "Probe", torch) -> None:
    """Global step hooks see every optimizer of an unmodified script (facts.md)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: probe.optimizer_stepped(optimizer))


def _optimizer_step_begin(probe: "Probe", torch) -> None:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: probe.optimizer_stepping(optimizer))


def _backward(probe: "Probe", torch) -> None:
    """Tensor.backward calls torch.autograd.backward, so one wrapper sees both spellings.
    Always installed: a program that updates its parameters by hand takes its steps
    after backward (probe/steps.py)."""

    def make(original):
        def backward(tensors, *args, **kwargs):
            if not probe.hears_backward():
                return original(tensors, *args, **kwargs)
            loss = tensors[0] if isinstance(tensors, (list, tuple)) and len(tensors) == 1 else tensors
            loss = loss if isinstance(loss, torch.Tensor) else None
            if loss is not None:
                probe.backward_called(loss)
            result = original(tensors, *args, **kwargs)
            if loss is not None:
                probe.backward_returned(loss)
            return result

        return backward

    _replace(torch.autograd, "backward", make)


def _autograd_grad(probe: "Probe", torch) -> None:
    """A loop may take its gradients with torch.autograd.grad and update the parameters by
    hand (`p -= lr * g`): such a call is a backward pass of the loss to the probe when its
    output is one scalar, some inputs are parameters, and it builds no graph of its own
    (create_graph: a meta-learning inner step or a gradient penalty, not an update), until an
    optimizer steps: then steps are the optimizer's and such gradients are not its (a
    first-order MAML's inner steps). ptdiag's own calls (the numerics replay) are not the
    program's."""

    def make(original):
        def grad(outputs, inputs, *args, **kwargs):
            if not isinstance(inputs, (torch.Tensor, list, tuple)):
                inputs = tuple(inputs)  # `model.parameters()`: a generator, read once here
            loss = None if probe.hand_written.ended else _training_gradient(torch, outputs, inputs, args, kwargs)
            if loss is None or sys._getframe(1).f_globals.get("__name__", "").startswith("ptdiag."):
                return original(outputs, inputs, *args, **kwargs)
            params = [t for t in ([inputs] if isinstance(inputs, torch.Tensor) else inputs)
                      if isinstance(t, torch.nn.Parameter)]
            probe.backward_called(loss)
            result = original(outputs, inputs, *args, **kwargs)
            probe.backward_returned(loss, params)
            return result

        return grad

    _replace(torch.autograd, "grad", make)


def _training_gradient(torch, outputs, inputs, args, kwargs):
    """The scalar loss of a torch.autograd.grad call that may be an update's gradient, or None."""
    create_graph = kwargs.get("create_graph", args[2] if len(args) > 2 else False)
    loss = outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs
    if create_graph or not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return None
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    return loss if any(isinstance(t, torch.nn.Parameter) for t in inputs) else None


def _dataloader(probe: "Probe", torch) -> None:
    from torch.utils.data import dataloader as dl

    epochs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
    loader_of: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
    # iterator -> sampler indices sent for batches not yet handed out. Worker processes
    # get their indices from the main process ahead of time and, in order (the default),
    # batches come back in the order their indices were drawn: the oldest is the next.
    pending: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
    wants_indices = probe.dispatcher.wants("on_batch_indices")
    wants_iter_begin = probe.dispatcher.wants("on_loader_iter_begin")

    def make_init(original):
        def __init__(self, *args, **kwargs):
            original(self, *args, **kwargs)
            probe.call("on_dataloader", self)

        return __init__

    def make_iter(original):
        def __iter__(self):
            epoch = epochs.get(self, -1) + 1
            if wants_iter_begin:
                probe.call("on_loader_iter_begin", self, epoch)
            iterator = original(self)
            epochs[self] = epoch
            try:
                loader_of[iterator] = self
            except TypeError:
                pass
            probe.call("on_loader_iter", self, epoch)
            return iterator

        return __iter__

    def make_next(original):
        def __next__(self):
            if not wants_indices and "on_batch" not in probe.dispatcher.live:  # nobody times this step's batch
                return original(self)
            start = time.perf_counter()
            batch = original(self)
            loader = loader_of.get(self)
            probe.call("on_batch", loader, time.perf_counter() - start)
            if wants_indices:
                queue = pending.get(self)
                indices = queue.popleft() if queue else None
                probe.call("on_batch_indices", loader, indices if getattr(self, "_in_order", True) else None)
            return batch

        return __next__

    def make_next_index(original):
        def _next_index(self):
            indices = original(self)
            pending.setdefault(self, collections.deque()).append(indices)
            return indices

        return _next_index

    def make_reset(original):
        def _reset(self, *args, **kwargs):
            pending.pop(self, None)  # a persistent-workers iterator starts a new epoch
            return original(self, *args, **kwargs)

        return _reset

    _replace(dl.DataLoader, "__init__", make_init)
    _replace(dl.DataLoader, "__iter__", make_iter)
    _replace(dl._BaseDataLoaderIter, "__next__", make_next)
    if wants_indices:
        _replace(dl._BaseDataLoaderIter, "_next_index", make_next_index)
        _replace(dl._BaseDataLoaderIter, "_reset", make_reset)


def _arguments_given(original, give: Callable[[dict], None]):
    """A wrapper of a constructor that hands its arguments, bound to its signature, to `give`
    (which may change them) before the original runs. Arguments that do not bind are the
    program's own error, raised by the original exactly as without ptdiag."""
    import inspect

    signature = inspect.signature(original)

    def __init__(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return original(self, *args, **kwargs)
        give(bound.arguments)
        return original(*bound.args, **bound.kwargs)

    return __init__


def _dataloader_args(probe: "Probe", torch) -> None:
    """One of the patches that change what the program asked for, installed only in a
    verification run whose intervention subscribes to it (ptdiag.probe.interventions):
    the DataLoader's arguments go to the hook before the original builds the loader."""
    from torch.utils.data import dataloader as dl

    _replace(dl.DataLoader, "__init__",
             lambda original: _arguments_given(original, lambda arguments: probe.call("on_dataloader_args", arguments)))


def _amp_args(probe: "Probe", torch) -> None:
    """Like _dataloader_args, for mixed precision: the arguments of each autocast region
    (torch.autocast and the torch.cuda/cpu.amp spellings, which build it) and of each
    GradScaler (torch.cuda.amp's builds torch.amp's), only in a verification run."""
    from torch.amp import autocast_mode, grad_scaler

    for kind, owner in (("autocast", autocast_mode.autocast), ("grad_scaler", grad_scaler.GradScaler)):
        _replace(owner, "__init__", lambda original, kind=kind: _arguments_given(
            original, lambda arguments: probe.call("on_amp_args", kind, arguments)))


def _grad_scaler(probe: "Probe", torch) -> None:
    """What a GradScaler does to the loss and the step: `scale(loss)` hands back loss * scale
    (the tensor `backward` then sees), and `step(optimizer)` silently drops the update when
    the gradients hold inf/NaN, so no optimizer step happens for that backward pass."""
    from torch.amp.grad_scaler import GradScaler

    def make_scale(original):
        def scale(self, outputs):
            scaled = original(self, outputs)
            if self._enabled and isinstance(scaled, torch.Tensor) and self._scale is not None:
                probe.note_scaled_loss(scaled, self._scale)
            return scaled

        return scale

    def make_step(original):
        def step(self, optimizer, *args, **kwargs):
            before = probe.step
            result = original(self, optimizer, *args, **kwargs)
            if self._enabled and probe.step == before and probe.is_primary(optimizer):
                probe.call("on_step_skipped", optimizer)
            return result

        return step

    _replace(GradScaler, "scale", make_scale)
    _replace(GradScaler, "step", make_step)


def _first_model(probe: "Probe", torch) -> None:
    """The outermost module runs its pre-hook first; one look, then the subscription is gone."""
    subscription = None

    def first_forward(module, args):
        if subscription is not None and next(module.parameters(), None) is not None:
            subscription.remove()
            probe.call("on_model", module)

    subscription = probe.model_hooks.before_any_forward(first_forward, "model discovery")


# where torch keeps its global module hooks (all counted by its `_has_any_global_hook`)
GLOBAL_MODULE_HOOKS = ("_global_backward_pre_hooks", "_global_backward_hooks", "_global_forward_pre_hooks",
                       "_global_forward_hooks", "_global_forward_hooks_always_called",
                       "_global_forward_hooks_with_kwargs")


def _global_hooks_not_counted(probe: "Probe", torch) -> None:
    """torch.compile(module) warns on each call of the compiled module while any global
    module hook exists (they fire an extra time for it). The probe's own global hooks
    call plugins only for the modules they subscribed to, so they are not counted: the
    program sees that warning exactly when its own global hooks would raise it."""
    nn_module = torch.nn.modules.module

    def make(original):
        def _has_any_global_hook():
            if not original():
                return False
            ours = probe.model_hooks.hook_ids()
            return any(hook_id not in ours for name in GLOBAL_MODULE_HOOKS for hook_id in getattr(nn_module, name, ()))

        return _has_any_global_hook

    if hasattr(nn_module, "_has_any_global_hook"):
        _replace(nn_module, "_has_any_global_hook", make)


def _seed_wrapper(probe: "Probe", kind: str):
    """Only the program's own seed calls count: libraries reseed internally (FakeData
    seeds torch for every sample), which says nothing about the run's seeding."""

    def make(original):
        def seed(*args, **kwargs):
            result = original(*args, **kwargs)
            if is_user_file(caller_file(2)):
                value = args[0] if args else kwargs.get("seed", kwargs.get("a"))
                probe.call("on_seed", kind, value, user_location(2))
            return result

        return seed

    return make


def _torch_seeds(probe: "Probe", torch) -> None:
    _replace(torch, "manual_seed", _seed_wrapper(probe, "torch"), torch.random)
    _replace(torch.cuda, "manual_seed", _seed_wrapper(probe, "cuda"))
    _replace(torch.cuda, "manual_seed_all", _seed_wrapper(probe, "cuda"))


def _serialization(probe: "Probe", torch) -> None:
    """Checkpoints saved and loaded. torch's own calls are not: pickling a tensor saves its
    storage with torch.save (a whole-model pickle makes one per parameter), unpickling it
    loads it with torch.load."""
    torch_package = os.path.dirname(torch.__file__) + os.sep

    def make_save(original):
        def save(obj, f, *args, **kwargs):
            result = original(obj, f, *args, **kwargs)
            if not caller_file(2).startswith(torch_package):
                probe.call("on_save", obj, f, user_location(2))
            return result

        return save

    def make_load(original):
        def load(f, *args, **kwargs):
            result = original(f, *args, **kwargs)
            if not caller_file(2).startswith(torch_package):
                probe.call("on_load", f, user_location(2), kwargs)
            return result

        return load

    _replace(torch, "save", make_save, torch.serialization)
    _replace(torch, "load", make_load, torch.serialization)


def _dist_info(dist) -> dict:
    """What on_dist_init reports, read right after init_process_group returned."""
    return {"backend": str(dist.get_backend()), "rank": dist.get_rank(), "world_size": dist.get_world_size(),
            "location": user_location(1)}


def _after_init_process_group(dist, then: Callable[[], None]) -> None:
    """Call `then()` each time init_process_group (either spelling) has returned."""

    def make(original):
        def init_process_group(*args, **kwargs):
            result = original(*args, **kwargs)
            then()
            return result

        return init_process_group

    _replace(dist, "init_process_group", make, dist.distributed_c10d)


def _distributed(probe: "Probe", dist) -> None:
    if dist.is_available():
        _after_init_process_group(dist, lambda: probe.call("on_dist_init", _dist_info(dist)))


def probe_ranks_that_start(start: Callable[[int, int], "Probe | None"]) -> Callable:
    """For a multiprocessing child (a DataLoader worker, or a training worker of
    `mp.spawn`): the one that starts a process group is a rank; `start(rank, world_size)`
    probes it from there on. Workers that never start one stay untouched."""

    def install(dist) -> None:
        def started() -> None:
            probe = start(dist.get_rank(), dist.get_world_size())
            if probe is not None:
                probe.call("on_dist_init", _dist_info(dist))

        if dist.is_available():
            _after_init_process_group(dist, started)

    return install


def _collectives(probe: "Probe", dist) -> None:
    """The module-level collectives the program calls (DDP's own bucketed all-reduces run
    in C++ and are not seen here; the Flight Recorder covers those on NCCL)."""
    if not dist.is_available():
        return

    def make(name):
        def wrap(original):
            def collective(*args, **kwargs):
                probe.call("on_collective", name, user_location(2))
                result = original(*args, **kwargs)
                probe.call("on_collective_end", name)
                return result

            return collective

        return wrap

    for name in COLLECTIVES:
        if hasattr(dist, name):
            _replace(dist, name, make(name), dist.distributed_c10d)


def _scalar_logger(source: str, probe: "Probe"):
    def make(original):
        def add_scalar(self, tag, scalar_value, global_step=None, *args, **kwargs):
            result = original(self, tag, scalar_value, global_step, *args, **kwargs)
            probe.call("on_log_scalar", source, tag, scalar_value, global_step)
            return result

        return add_scalar

    return make


def _params_logger(probe: "Probe", source: str, params_of: Callable):
    """Wrap a call that logs hyperparameters; `params_of(args, kwargs)` says which."""

    def make(original):
        def log_params(*args, **kwargs):
            result = original(*args, **kwargs)
            params = params_of(args, kwargs)
            if params:
                probe.call("on_log_params", source, params)
            return result

        return log_params

    return make


def _tensorboard(probe: "Probe", writer_module) -> None:
    if probe.dispatcher.wants("on_log_scalar"):
        _replace(writer_module.SummaryWriter, "add_scalar", _scalar_logger("tensorboard", probe))
    if probe.dispatcher.wants("on_log_params"):
        _replace(writer_module.SummaryWriter, "add_hparams", _params_logger(
            probe, "tensorboard", lambda a, kw: a[1] if len(a) > 1 else kw.get("hparam_dict")))


def _mlflow(probe: "Probe", mlflow) -> None:
    def make(original):
        def log_metric(key, value, step=None, *args, **kwargs):
            result = original(key, value, step, *args, **kwargs)
            probe.call("on_log_scalar", "mlflow", key, value, step)
            return result

        return log_metric

    if probe.dispatcher.wants("on_log_scalar"):
        _replace(mlflow, "log_metric", make)
    if probe.dispatcher.wants("on_log_params"):
        _replace(mlflow, "log_param", _params_logger(
            probe, "mlflow", lambda a, kw: {a[0]: a[1]} if len(a) > 1 else {kw.get("key"): kw.get("value")}))
        _replace(mlflow, "log_params", _params_logger(
            probe, "mlflow", lambda a, kw: a[0] if a else kw.get("params")))


def _wandb(probe: "Probe", wandb) -> None:
    def make(original):
        def log(data, step=None, *args, **kwargs):
            result = original(data, step, *args, **kwargs)
            for key, value in (data or {}).items():
                if isinstance(value, (int, float)):
                    probe.call("on_log_scalar", "wandb", key, value, step)
            return result

        return log

    if probe.dispatcher.wants("on_log_scalar"):
        _replace(wandb, "log", make)
    if probe.dispatcher.wants("on_log_params"):
        _replace(wandb, "init", _params_logger(probe, "wandb", lambda a, kw: kw.get("config")))


def _argparse(probe: "Probe", argparse) -> None:
    depth = 0  # sub-parsers call parse_known_args inside the outer call

    def make(original):
        def parse_known_args(self, args=None, namespace=None):
            nonlocal depth
            depth += 1
            try:
                result = original(self, args, namespace)
            finally:
                depth -= 1
            if depth == 0:
                probe.call("on_args", result[0], args)
            return result

        return parse_known_args

    _replace(argparse.ArgumentParser, "parse_known_args", make)


def _warnings(probe: "Probe", warnings) -> None:
    """Warnings shown, for the plugins; a warning ptdiag's own instrument asked torch for
    (the CUDA sync debug mode of the performance scan) is that instrument's, never shown."""
    def make(original):
        def showwarning(message, category, filename, lineno, file=None, line=None):
            if probe.instruments.warning_takers and probe.instruments.take_warning(message, sys._getframe(1)):
                return None
            probe.call("on_warning", message, category, user_location(2))
            return original(message, category, filename, lineno, file, line)

        return showwarning

    _replace(warnings, "showwarning", make)


def _python_seed(probe: "Probe", random) -> None:
    _replace(random, "seed", _seed_wrapper(probe, "python"))


def _numpy_seed(probe: "Probe", numpy) -> None:
    _replace(numpy.random, "seed", _seed_wrapper(probe, "numpy"))


# (module to wait for, hooks the patch feeds, installer). An empty hook tuple: always.
PATCHES = (
    ("torch", (), _optimizer_steps),
    ("torch", (), _optimizer_step_begin),  # always: it ends the hand-written update watch (steps.py)
    ("torch", (), _backward),
    ("torch", (), _autograd_grad),  # always, like backward: hand-written updates from autograd.grad's gradients
    ("torch", ("on_dataloader", "on_loader_iter_begin", "on_loader_iter", "on_batch", "on_batch_indices"), _dataloader),
    ("torch", ("on_dataloader_args",), _dataloader_args),
    ("torch", ("on_amp_args",), _amp_args),
    ("torch", ("on_backward", "on_step_skipped"), _grad_scaler),  # on_backward: probe.loss_scale
    ("torch", ("on_model",), _first_model),
    ("torch", (), _global_hooks_not_counted),
    ("torch", ("on_seed",), _torch_seeds),
    ("torch", ("on_save", "on_load"), _serialization),
    ("torch.distributed", ("on_dist_init",), _distributed),
    ("torch.distributed", ("on_collective", "on_collective_end"), _collectives),
    ("torch.utils.tensorboard.writer", ("on_log_scalar", "on_log_params"), _tensorboard),
    ("mlflow", ("on_log_scalar", "on_log_params"), _mlflow),
    ("wandb", ("on_log_scalar", "on_log_params"), _wandb),
    ("argparse", ("on_args",), _argparse),
    ("random", ("on_seed",), _python_seed),
    ("warnings", (), _warnings),  # also where the instruments take their own warnings (sync_debug.py)
    ("numpy", ("on_seed",), _numpy_seed),
)


def install(probe: "Probe") -> None:
    for module_name, hooks, installer in PATCHES:
        if hooks and not any(probe.dispatcher.wants(h) for h in hooks):
            continue
        when_imported(module_name, probe.guarded(installer))
    if probe.dispatcher.wants("on_torch_import"):
        when_imported("torch", probe.guarded(lambda p, torch: p.call("on_torch_import", torch)))
