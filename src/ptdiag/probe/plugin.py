"""The probe's hook protocol: plugins subscribe, the probe calls.

Each specialist's in-process part is a `Plugin` subclass defining the hooks it needs:
methods named and shaped as declared in HOOKS.
The probe installs a patch on torch only when some plugin overrides the hook the patch
feeds, so a hook nobody subscribed to costs nothing. A plugin that raises is logged
to the run dir and loses that hook: ptdiag's own bug must never break the training.
"""

from __future__ import annotations

import inspect
import signal
import traceback
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable

from ptdiag.probe import gpu

if TYPE_CHECKING:
    from ptdiag.probe.core import Probe


@dataclass(frozen=True)
class Hook:
    """One hook: the parameters the probe passes (positionally, in this order) and when."""

    params: tuple[str, ...]
    doc: str


def _hook(params: str, doc: str) -> Hook:
    return Hook(tuple(params.replace(",", " ").split()), doc)


# hook name -> its parameters and when the probe calls it; a plugin subscribes by defining
# a method of that name with those parameters (checked when the Dispatcher is built)
HOOKS: dict[str, Hook] = {
    "on_torch_import": _hook("torch", "once torch is imported"),
    "on_args": _hook("namespace, argv", "after argparse parsed the command line"),
    "on_seed": _hook("kind, value, location", "python/numpy/torch/cuda seed calls"),
    "on_model": _hook("module", "the first module with parameters that runs forward"),
    "on_dataloader_args": _hook("arguments", "a DataLoader is about to be built with these arguments (name -> value, "
                                             "bound to its signature); only a verification run's intervention changes them"),
    "on_amp_args": _hook("kind, arguments", "an autocast region (kind 'autocast') or a GradScaler ('grad_scaler') "
                                            "is about to be built with these arguments; only a verification run's "
                                            "intervention changes them"),
    "on_dataloader": _hook("loader", "a DataLoader was built"),
    "on_loader_iter_begin": _hook("loader, epoch", "iteration over a DataLoader is about to begin, before its sampler "
                                                   "is read; only a verification run's intervention changes the loader"),
    "on_loader_iter": _hook("loader, epoch", "iteration over a DataLoader began (epoch counts from 0)"),
    "on_batch": _hook("loader, wait_s", "a batch was handed to the program after wait_s seconds"),
    "on_batch_indices": _hook("loader, indices", "the sampler's indices of that batch (None when not knowable)"),
    "on_backward": _hook("tensor",
                         "backward was called on this tensor (the loss; probe.loss_scale says if a GradScaler scaled it)"),
    "on_backward_end": _hook("tensor", "that backward call returned"),
    "on_step_skipped": _hook("optimizer", "a GradScaler skipped the primary optimizer's step (inf/NaN gradients)"),
    "on_step_begin": _hook("step, optimizer", "the primary optimizer is about to take step `step` (1-based)"),
    "on_step": _hook("step, optimizer", "the primary optimizer finished optimizer step `step` (1-based)"),
    "on_any_optimizer_step": _hook("optimizer", "any optimizer finished a step, the primary or another"),
    "on_collective": _hook("name, location", "a torch.distributed collective or barrier is about to run"),
    "on_collective_end": _hook("name", "that collective returned"),
    "on_log_scalar": _hook("source, tag, value, step", "the program logged a scalar to TensorBoard/MLflow/W&B"),
    "on_log_params": _hook("source, params", "the program logged hyperparameters to TensorBoard/MLflow/W&B"),
    "on_save": _hook("obj, f, location", "torch.save"),
    "on_load": _hook("f, location, kwargs", "torch.load"),
    "on_dist_init": _hook("info", "torch.distributed.init_process_group returned"),
    "on_warning": _hook("message, category, location", "a Python warning was shown"),
    "on_exception": _hook("exc_type, exc, tb", "an exception ended the program"),
    "on_program_end": _hook("", "the interpreter is exiting: one-off windows end here, before any plugin's "
                                "exit work (which a profiler still recording would trace: a Ctrl-C inside its "
                                "window took 20 s to exit, tracing the package listing)"),
    "on_exit": _hook("", "the interpreter is exiting normally or through SystemExit"),
}


class Plugin:
    """Base class of specialists' in-process parts; override `on_*` hooks."""

    name = "plugin"

    def __init__(self, probe: "Probe") -> None:
        self.probe = probe

    @property
    def cheap(self) -> bool:
        """Run for the cheap checks only (a triage's audit, distributed in a job with
        several ranks): whatever costs per step or per module call stays off."""
        return self.name in self.probe.cheap


def raised_by_signal_handler(exc: BaseException) -> bool:
    """Whether a Python signal handler raised this while a hook happened to run: such an
    exception belongs to the program (torch raises a dead DataLoader worker's error from
    its SIGCHLD handler) and must go on as it would without ptdiag."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    handlers = {getattr(signal.getsignal(s), "__code__", None) for s in signal.valid_signals()}
    return tb.tb_frame.f_code in handlers


def subscription_problems(plugin: Plugin) -> dict[str, str]:
    """method name -> what is wrong, for every `on_*` method of the plugin that is not a
    declared hook (a misspelling such as `on_stpe` would silently never fire) or whose
    parameters differ from the hook's (it would raise at its first call)."""
    problems = {}
    for name, method in inspect.getmembers(type(plugin), inspect.isfunction):
        if not name.startswith("on_"):
            continue
        where = f"{type(plugin).__module__}.{type(plugin).__qualname__}.{name}"
        hook = HOOKS.get(name)
        params = tuple(inspect.signature(method).parameters)[1:]  # after self
        if hook is None:
            problems[name] = f"{where} is not a hook of the probe (ptdiag.probe.plugin.HOOKS): it would never be called"
        elif params != hook.params:
            problems[name] = f"{where}({', '.join(params)}) does not take the hook's parameters ({', '.join(hook.params)})"
    return problems


class Dispatcher:
    """Calls each hook's subscribers, in plugin order. A plugin method that does not match
    its hook is logged (probe-errors.log, which the report points to) and left out, never
    called with arguments it cannot take. A plugin whose per-step work is sampled parks
    its subscriptions for the steps between (`set_active`): those calls cost one look-up.
    The lists of subscribers are replaced, never changed in place: a call under way goes
    on over the list it started with."""

    def __init__(self, plugins: list[Plugin], error_log: Callable[[str], None],
                 charge: Callable[[str, float], None] = lambda owner, seconds: None) -> None:
        self._error_log = error_log
        self._charge = charge  # the probe's budget: each call's time, by plugin
        # hook -> those called now; the patches read it to skip their own work (clock reads,
        # look-ups) for a hook nobody hears on this step
        self.live: dict[str, list[tuple[Callable, str]]] = {}
        self._all: dict[str, list[tuple[Callable, str]]] = {}  # hook -> every subscriber, in plugin order
        self._parked: set[tuple[str, str]] = set()  # (plugin, hook)
        self._failed: set[tuple[Callable, str]] = set()
        for plugin in plugins:
            problems = subscription_problems(plugin)
            for problem in problems.values():
                error_log(f"hook not subscribed: {problem}")
            for hook in HOOKS:
                if hasattr(type(plugin), hook) and hook not in problems:
                    self._all.setdefault(hook, []).append((getattr(plugin, hook), plugin.name))
        for hook in self._all:
            self._refresh(hook)

    def wants(self, hook: str) -> bool:
        return bool(self._all.get(hook))

    def set_active(self, plugin: str, hooks: tuple[str, ...], active: bool) -> None:
        """Park (False) or put back (True) plugin `plugin`'s subscriptions to `hooks`."""
        for hook in hooks:
            if ((plugin, hook) in self._parked) == active:
                (self._parked.discard if active else self._parked.add)((plugin, hook))
                self._refresh(hook)

    def _refresh(self, hook: str) -> None:
        live = [s for s in self._all.get(hook, ()) if s not in self._failed and (s[1], hook) not in self._parked]
        if live:
            self.live[hook] = live
        else:
            self.live.pop(hook, None)

    def call(self, hook: str, *args: Any) -> None:
        subscribers = self.live.get(hook)
        if not subscribers or gpu.capturing():  # inside a CUDA graph capture ptdiag stays inert (probe/gpu.py)
            return
        for subscriber in subscribers:
            fn, owner = subscriber
            start = perf_counter()
            try:
                fn(*args)
            except Exception as exc:
                if raised_by_signal_handler(exc):
                    raise  # the program's own (e.g. torch's "DataLoader worker killed"), not ours
                self._failed.add(subscriber)
                self._refresh(hook)
                self._error_log(
                    f"{fn.__qualname__} raised and was disabled:\n{traceback.format_exc()}"
                )
            finally:
                self._charge(owner, perf_counter() - start)
