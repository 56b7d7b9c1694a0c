"""The probe's hook protocol: plugins subscribe, the probe calls.

Each specialist's in-process part is a `Plugin` subclass overriding the hooks it needs.
The probe installs a patch on torch only when some plugin overrides the hook the patch
feeds, so a hook nobody subscribed to costs nothing. A plugin that raises is logged
to the run dir and loses that hook: ptdiag's own bug must never break the training.
"""

from __future__ import annotations

import signal
import traceback
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ptdiag.probe.core import Probe

# hook name -> what it is called with
HOOKS = {
    "on_torch_import": "(torch) once torch is imported",
    "on_args": "(namespace, argv) after argparse parsed the command line",
    "on_seed": "(kind, value, location) python/numpy/torch/cuda seed calls",
    "on_model": "(module) the first module with parameters that runs forward",
    "on_dataloader": "(loader) a DataLoader was built",
    "on_loader_iter": "(loader, epoch) iteration over a DataLoader began (epoch counts from 0)",
    "on_batch": "(loader, wait_s) a batch was handed to the program after wait_s seconds",
    "on_batch_indices": "(loader, indices) the sampler's indices of that batch (None when not knowable)",
    "on_backward": "(tensor) backward was called on this tensor (the loss; probe.loss_scale says if a GradScaler scaled it)",
    "on_backward_end": "(tensor) that backward call returned",
    "on_step_skipped": "(optimizer) a GradScaler skipped the primary optimizer's step (inf/NaN gradients)",
    "on_step_begin": "(step, optimizer) the primary optimizer is about to take step `step` (1-based)",
    "on_step": "(step, optimizer) the primary optimizer finished optimizer step `step` (1-based)",
    "on_collective": "(name, location) a torch.distributed collective or barrier is about to run",
    "on_collective_end": "(name) that collective returned",
    "on_log_scalar": "(source, tag, value, step) the program logged a scalar to TensorBoard/MLflow/W&B",
    "on_log_params": "(source, params) the program logged hyperparameters to TensorBoard/MLflow/W&B",
    "on_save": "(obj, f, location) torch.save",
    "on_load": "(f, location, kwargs) torch.load",
    "on_dist_init": "(info) torch.distributed.init_process_group returned",
    "on_warning": "(message, category, location) a Python warning was shown",
    "on_exception": "(exc_type, exc, tb) an exception ended the program",
    "on_exit": "() the interpreter is exiting normally or through SystemExit",
}


class Plugin:
    """Base class of specialists' in-process parts; override `on_*` hooks."""

    name = "plugin"

    def __init__(self, probe: "Probe") -> None:
        self.probe = probe


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


class Dispatcher:
    def __init__(self, plugins: list[Plugin], error_log: Callable[[str], None]) -> None:
        self._error_log = error_log
        self._subscribers: dict[str, list[Callable]] = {}
        for hook in HOOKS:
            for plugin in plugins:
                if getattr(type(plugin), hook, None) is not getattr(Plugin, hook, None):
                    self._subscribers.setdefault(hook, []).append(getattr(plugin, hook))

    def wants(self, hook: str) -> bool:
        return bool(self._subscribers.get(hook))

    def call(self, hook: str, *args: Any) -> None:
        subscribers = self._subscribers.get(hook)
        if not subscribers:
            return
        for fn in list(subscribers):
            try:
                fn(*args)
            except Exception as exc:
                if raised_by_signal_handler(exc):
                    raise  # the program's own (e.g. torch's "DataLoader worker killed"), not ours
                subscribers.remove(fn)
                self._error_log(
                    f"{fn.__qualname__} raised and was disabled:\n{traceback.format_exc()}"
                )
