"""The reproducibility specialist inside the user's process.

Per optimizer step it records what two runs must agree on to be the same run: the
state of every random number generator and a checksum of the input batch when the
step's forward pass begins, and a checksum of every parameter and buffer after the step
(`repro_step`; step 0 is the model as the first forward pass found it: initialised or
loaded). Every `torch.save` is described (`ckpt`) with what it holds and the checksums
of the state it was saved from, so a resumed run can be checked against it.

The same plugin runs in every run of one diagnosis; PTDIAG_REPRO_ROLE (set by
`parent.py` for its companion runs) says which: `main` keeps a copy of the checkpoint
the resume check will start from, `audit` turns on
`torch.use_deterministic_algorithms(True, warn_only=True)` and records the
non-deterministic ops it warns about. Only the audit run behaves differently from the
program alone (deterministic kernels, filled uninitialised memory), which is why it is
a separate run and never one of the two that are compared.

Run for its cheap checks only (a triage: the seeding and checkpoint audits), it keeps
no hook on the model and takes no checksum of the weights: only the generators' states,
hashed as a step ends at steps 1-3 and then at powers of two (hashing them costs
~0.1-0.2 ms, too much for every sub-millisecond step; "drawn from during training" needs
only two states that differ), and for each `torch.save` what it holds.
"""

from __future__ import annotations

import os
import shutil
import weakref

from ptdiag.probe.plugin import Plugin as ProbePlugin
from ptdiag import checkpoint_contents
from ptdiag.events import REPRO_ROLE_ENV
from ptdiag.probe.plugins.reproducibility import fingerprint

# torch's alerts under use_deterministic_algorithms(True, warn_only=True): an op, named
# before this mark; and (torch 2.4 to 2.13's Context.cpp) a matmul that cuBLAS runs
# without a deterministic workspace, which is a setting of the environment, not an op
OP_ALERT = " does not have a deterministic implementation"
CUBLAS_ALERT = "CUBLAS_WORKSPACE_CONFIG="
FORWARD_CAPTURE = "reproducibility forward capture"  # the model's hook: RNG states and batch at each step
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED",
            "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING")


def role() -> str:
    return os.environ.get(REPRO_ROLE_ENV, "main")


class Plugin(ProbePlugin):
    name = "reproducibility"

    def __init__(self, probe) -> None:
        super().__init__(probe)
        self.role = role()
        self.options = probe.settings("reproducibility")
        self._torch = None
        self._tensors: list = []
        self._loaders: list = []  # (index, weakref to loader)
        self._pending = fingerprint.PendingSums()
        self._at_forward = None  # (rng fingerprints, input bit sum) of the step being taken
        self._optimizer = None
        self._snapshot_step: int | None = None
        self._saves = 0

    # -- set-up -----------------------------------------------------------------------------
    def on_torch_import(self, torch) -> None:
        self._torch = torch
        self._watch_first_forward()
        if self.role == "audit":
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _watch_first_forward(self) -> None:
        """The first step's forward pass happens before `on_model` could subscribe to the
        model: a callback on every module's forward sees it (and its batch), then ends."""
        subscription = None

        def first_forward(module, args):
            if subscription is not None and next(module.parameters(), None) is not None:
                subscription.remove()
                self._capture_forward(module, args)

        subscription = self.probe.model_hooks.before_any_forward(first_forward, FORWARD_CAPTURE)

    def on_warning(self, message, category, location) -> None:
        """Audit run only: each alert of a non-deterministic op, and of cuBLAS without a
        deterministic workspace, with the user's line."""
        text = str(message)
        if self.role != "audit":
            return
        if OP_ALERT in text:
            self.probe.emit("nondeterministic_op", op=text.split(OP_ALERT)[0].strip()[:200],
                            message=text[:1000], location=location, step=self.probe.step + 1)
        elif CUBLAS_ALERT in text:
            self.probe.emit("nondeterministic_setting", setting="CUBLAS_WORKSPACE_CONFIG", message=text[:1000],
                            location=location, step=self.probe.step + 1)

    def on_dataloader(self, loader) -> None:
        index = len(self._loaders)
        self._loaders.append((index, weakref.ref(loader)))
        self.probe.emit("repro_loader", loader=index, generator=loader.generator is not None,
                        worker_init_fn=loader.worker_init_fn is not None, num_workers=loader.num_workers)

    def on_model(self, module) -> None:
        torch = self._torch_module()
        named = list(module.named_parameters()) + list(module.named_buffers())
        self.probe.emit("repro_names", names=[n for n, _ in named],
                        dtypes=[str(t.dtype).replace("torch.", "") for _, t in named])
        if self.cheap:
            return
        self._tensors = [t for _, t in named]
        self._emit_sums(self._pending.push(torch, (0, None, False), self._bit_sums(torch)))
        self.probe.model_hooks.before_forward(module, self._capture_forward, FORWARD_CAPTURE)

    # -- the step ---------------------------------------------------------------------------
    def _capture_forward(self, module, args) -> None:
        """The first forward pass of a step: the generators' states and the batch it got."""
        if self._at_forward is not None:
            return
        batch = next((a for a in args if isinstance(a, self._torch_module().Tensor)), None)
        self._at_forward = (fingerprint.rng_fingerprints(self._live_loaders()),
                            fingerprint.bit_sum(self._torch, batch) if batch is not None else None)

    def _live_loaders(self) -> list:
        return [(i, ref()) for i, ref in self._loaders if ref() is not None]

    def on_step_begin(self, step, optimizer) -> None:
        if step == 1:
            self._optimizer = optimizer
            if self.cheap:
                return
            entries, opt_sums = self._optimizer_state(optimizer)
            self._emit_sums(self._pending.push(self._torch_module(), ("begin", entries, [_lrs(optimizer)]),
                                               opt_sums))

    def on_step(self, step, optimizer) -> None:
        torch = self._torch_module()
        rng, batch_sum = self._at_forward or ({}, None)
        self._at_forward = None
        if self.cheap:  # the next audited step's forward finds the generators as this step left them
            if rng:
                self.probe.emit("repro_step", step=step, sums=None, input=None, rng=rng)
            if _audited(step + 1):
                self._at_forward = (fingerprint.rng_fingerprints(self._live_loaders()), None)
            if step == 1:
                self._emit_environment(torch)
            return
        sums = self._bit_sums(torch) + ([batch_sum] if batch_sum is not None else [])
        self._emit_sums(self._pending.push(torch, (step, rng, batch_sum is not None), sums))
        if step == 1:
            self._emit_environment(torch)

    def _emit_sums(self, ready: list) -> None:
        for key, values in ready:
            if key[0] == "begin":
                self.probe.emit("repro_begin", opt_entries=key[1], opt_sum=_total(values), lr=key[2][0])
                continue
            step, rng, has_input = key
            self.probe.emit("repro_step", step=step, sums=values[:-1] if has_input else values,
                            input=values[-1] if has_input else None, rng=rng)

    def _bit_sums(self, torch) -> list:
        return [fingerprint.bit_sum(torch, t) for t in self._tensors]

    def _optimizer_state(self, optimizer) -> tuple[int, list]:
        torch = self._torch_module()
        sums = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                for key in sorted(optimizer.state.get(p, {})):
                    value = optimizer.state[p][key]
                    if isinstance(value, torch.Tensor):
                        sums.append(fingerprint.bit_sum(torch, value))
        return len(optimizer.state), sums

    def _emit_environment(self, torch) -> None:
        cudnn = torch.backends.cudnn
        self.probe.emit(
            "repro_env", threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
            deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
            cudnn_benchmark=bool(cudnn.benchmark), cudnn_deterministic=bool(cudnn.deterministic),
            cuda=torch.cuda.is_initialized(),
            tf32_matmul=_tf32(lambda: torch.backends.cuda.matmul.fp32_precision,
                              lambda: torch.backends.cuda.matmul.allow_tf32),
            tf32_cudnn=_tf32(lambda: cudnn.conv.fp32_precision, lambda: cudnn.allow_tf32),
            environ={k: os.environ[k] for k in ENV_VARS if k in os.environ})

    # -- checkpoints ------------------------------------------------------------------------
    def on_save(self, obj, f, location) -> None:
        torch = self._torch_module()
        items = checkpoint_contents.describe(obj)
        named = checkpoint_contents.file_path(f)
        path = os.path.abspath(named) if named else None
        optimizer = self._optimizer
        if self.cheap:  # what the checkpoint holds, not the checksums a resume check compares
            entries, opt_sums = (len(optimizer.state) if optimizer is not None else 0), []
        else:
            entries, opt_sums = self._optimizer_state(optimizer) if optimizer is not None else (0, [])
        self._saves += 1
        self.probe.emit(
            "ckpt", path=path if path else checkpoint_contents.file_label(f), step=self.probe.step,
            location=location, type=type(obj).__name__, items=[i.to_dict() for i in items],
            lr_scheduler=_has_lr_scheduler(self._optimizer) if self._optimizer is not None else None,
            bytes=os.path.getsize(path) if path and os.path.isfile(path) else None,
            state_sums=[int(s) for s in torch.stack(self._bit_sums(torch)).tolist()] if self._tensors else None,
            opt_entries=entries, opt_sum=_total(torch.stack(opt_sums).tolist()) if opt_sums else 0,
            snapshot=self._snapshot(path))

    def _snapshot(self, path: str | None) -> str | None:
        """Main run with a resume check: keep a copy of the checkpoint at the resume step
        (the first save at or after `resume_step`), since later saves overwrite the file."""
        if self.role != "main" or not self.options["resume_cmd"] or not path or not os.path.isfile(path):
            return None
        step = self.probe.step
        if self._snapshot_step is None and step >= (self.options["resume_step"] or 1):
            self._snapshot_step = step
        if step != self._snapshot_step:
            return None
        target = self.probe.run_dir / "checkpoints" / f"step{step}" / f"{self._saves}-{os.path.basename(path)}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return str(target)

    def on_exit(self) -> None:
        self._emit_sums(self._pending.ready(wait=True))

    def _torch_module(self):
        if self._torch is None:
            import sys

            self._torch = sys.modules["torch"]
        return self._torch


def _tf32(precision, legacy_flag) -> bool | None:
    """Whether TF32 math is allowed, from torch's precision API (`fp32_precision`: "tf32",
    "ieee", or "none" for the default, which is not TF32 for matmuls). The legacy flag is
    read only where that API is missing (torch before 2.9): once a program used the new
    API, reading `torch.backends.cuda.matmul.allow_tf32` (or `cudnn.allow_tf32`, or
    `torch.get_float32_matmul_precision()`) raises "you have used mix of the legacy and
    new APIs". None: neither could be read."""
    try:
        return precision() == "tf32"
    except AttributeError:
        pass
    try:
        return bool(legacy_flag())
    except RuntimeError:
        return None


def _has_lr_scheduler(optimizer) -> bool:
    """Whether a torch LR scheduler drives this optimizer: every LRScheduler wraps the
    optimizer's `step` and marks the wrapper. Without one, a changing LR is computed by
    the program itself (nanoGPT's from its iteration count)."""
    return hasattr(getattr(optimizer, "step", None), "_wrapped_by_lr_sched")


def _audited(step: int) -> bool:
    """The steps whose generator states a cheap audit takes: 1-3, then powers of two."""
    return step <= 3 or step & (step - 1) == 0


def _lrs(optimizer) -> list:
    """Each group's learning rate; None where there is none (a hand-written update's)."""
    return [g["lr"] if isinstance(g["lr"], (int, float)) or g["lr"] is None else float(g["lr"])
            for g in optimizer.param_groups]


def _total(values: list) -> int:
    """One number for many checksums (wrapping like the device's int64 sum)."""
    return (sum(int(v) for v in values) + 2**63) % 2**64 - 2**63
