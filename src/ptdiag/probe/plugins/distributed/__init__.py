"""The distributed specialist inside each rank: facts about the set-up, the data, the
replicas, the collectives and the step's phases, written to the rank's event log.

Events (all `dist_*`): `dist_env` (launch environment, backend, device, job identity),
`dist_model` (DDP arguments, BatchNorm layers, parameter names in DDP's index order),
`dist_loader` / `dist_epoch` (sampler and its epoch at each pass), `dist_indices` (the
sample indices of the first passes, drawn.py), `dist_batch` (a fingerprint of the first
training batches), `dist_no_grad` (parameters without a
gradient at the first optimizer steps), `dist_checksums` (this rank's parameter and buffer
checksums at a few steps, compared across ranks by the analysis),
`dist_step` (time in backward vs outside it). Collectives go to the live state file
(`live.py`), written by a watchdog thread, so a hung rank's position survives.
Per step the cost is a few clock reads and one event line.

Run for its cheap checks only (a triage, or a job with several ranks whose words named
another specialist): the launch, device, sampler and set_epoch facts, the first batches'
fingerprints (then the model's hooks come off), no replica checksums.
"""

from __future__ import annotations

import os
import socket
import time

from ptdiag.location import user_location
from ptdiag.events import FLIGHT_RECORDER_DIR
from ptdiag.probe import gpu
from ptdiag.probe.plugin import Plugin as ProbePlugin
from ptdiag.probe.plugins.distributed.consistency import Checksums, is_check_step
from ptdiag.probe.plugins.distributed.drawn import DrawnIndices
from ptdiag.probe.plugins.distributed.fingerprint import fingerprint
from ptdiag.probe.plugins.distributed.live import LiveState

ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
            "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
            "CUDA_VISIBLE_DEVICES", "TORCH_DISTRIBUTED_DEBUG", "NCCL_DEBUG",
            "TORCH_NCCL_TRACE_BUFFER_SIZE", "OMP_NUM_THREADS")
FINGERPRINT_FORWARDS = 3  # training forwards whose input is fingerprinted
NO_GRAD_CHECK_STEPS = 3  # optimizer steps at which parameters without a gradient are listed
# every rank's checksums are read back by the analysis: beyond this many ranks that is
# opt-in (-o distributed.consistency=on); -o distributed.consistency=off disables it
CONSISTENCY_MAX_WORLD = 64
WRAPPERS = ("DistributedDataParallel", "FullyShardedDataParallel", "FSDPModule")
FORWARD_CHECKS = "distributed forward checks"  # the model's hooks: batch fingerprints, replica checksums


def _cuda_device(torch, device) -> dict | None:
    """Index, name and UUID of a CUDA device: the UUID tells whether two ranks share a GPU
    whatever CUDA_VISIBLE_DEVICES renumbered."""
    if device is None or device.type != "cuda" or not torch.cuda.is_initialized():
        return None  # a CUDA tensor exists only once CUDA is initialised: asking first would initialise it
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"index": index, "name": props.name, "uuid": str(getattr(props, "uuid", ""))}


def _reducer_param_names(inner) -> list[str]:
    """Parameter names in the order DDP numbers them in its errors (requires_grad, deduplicated)."""
    seen, names = set(), []
    for module_name, module in inner.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                names.append(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def _is_distributed_sampler(sampler) -> bool:
    """DistributedSampler or anything that shards like it (num_replicas, rank, set_epoch)."""
    return all(hasattr(sampler, a) for a in ("num_replicas", "rank", "set_epoch"))


class Plugin(ProbePlugin):
    name = "distributed"

    def __init__(self, probe) -> None:
        super().__init__(probe)
        self.live = LiveState(probe.run_dir, probe.rank)
        self.world = 1
        self.dist = None
        self.check = False  # whether checksums are taken (decided when the process group starts)
        self.checksums: Checksums | None = None
        self.model = None  # the module whose parameters DDP replicates
        self.loaders: dict[int, int] = {}  # id(loader) -> index, counted as tracking counts
        self.samplers: dict[int, object] = {}  # loader index -> its sharding sampler
        self.fingerprinted = 0
        self.drawn = DrawnIndices(probe.emit)
        self.check_pending: int | None = None
        self.via_ddp = False
        self.t_step = self.t_backward = None
        self.backward_s = 0.0
        self.consistency = probe.settings("distributed")["consistency"]

    # -- launch -----------------------------------------------------------------------------
    def on_dist_init(self, info) -> None:
        import torch
        import torch.distributed as dist

        self.dist, self.world = dist, info.get("world_size") or 1
        (self.probe.run_dir / FLIGHT_RECORDER_DIR).mkdir(exist_ok=True)  # NCCL does not create it
        env = {k: os.environ.get(k) for k in ENV_VARS}
        device = None
        if torch.cuda.is_initialized():  # the device set for this rank so far (set_device); not asked before the program
            device = torch.device("cuda", torch.cuda.current_device())
        visible = gpu.visible_device_count(torch)
        self.probe.emit("dist_env", **info, env=env, host=socket.gethostname(), pid=os.getpid(),
                        cuda=_cuda_device(torch, device), cuda_available=None if visible is None else visible > 0,
                        job=job_identity(env, info.get("world_size")))
        self.live.start_watchdog()
        wanted = self.consistency
        if self.world > 1 and not self.cheap and (wanted == "on" or
                                                  (wanted == "auto" and self.world <= CONSISTENCY_MAX_WORLD)):
            self.check = True

    def on_model(self, module) -> None:
        import torch

        wrapper = next((c.__name__ for c in type(module).__mro__ if c.__name__ in WRAPPERS), None)
        inner = module.module if wrapper == "DistributedDataParallel" else module
        self.model = inner
        param = next(inner.parameters(), None)
        bn = [n for n, m in inner.named_modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm)]
        sync_bn = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in inner.modules())
        ddp = {k: _plain(getattr(module, k, None)) for k in
               ("device_ids", "output_device", "find_unused_parameters", "broadcast_buffers",
                "static_graph", "gradient_as_bucket_view")} if wrapper == "DistributedDataParallel" else {}
        self.probe.emit("dist_model", wrapper=wrapper, cls=type(inner).__name__, ddp=ddp,
                        param_device=str(param.device) if param is not None else None,
                        cuda=_cuda_device(torch, param.device if param is not None else None),
                        batchnorm=bn[:20], n_batchnorm=len(bn), n_sync_batchnorm=sync_bn,
                        reducer_params=_reducer_param_names(inner))
        if wrapper == "DistributedDataParallel" and not self.cheap:
            self.probe.model_hooks.before_forward(module, self._ddp_forward, FORWARD_CHECKS)
        self.probe.model_hooks.before_forward(inner, self._model_forward, FORWARD_CHECKS)

    # -- data -------------------------------------------------------------------------------
    def on_dataloader(self, loader) -> None:
        from torch.utils.data import IterableDataset

        index = self.loaders[id(loader)] = len(self.loaders)
        sampler = loader.sampler
        batch_sampler = getattr(loader, "batch_sampler", None)
        if not _is_distributed_sampler(sampler) and _is_distributed_sampler(getattr(batch_sampler, "sampler", None)):
            sampler = batch_sampler.sampler
        sharded = _is_distributed_sampler(sampler)
        if sharded:
            self.samplers[index] = sampler
        self.probe.emit("dist_loader", loader=index, sampler=type(sampler).__name__ if sampler is not None else None,
                        sharded=sharded, iterable=isinstance(loader.dataset, IterableDataset),
                        num_replicas=_plain(getattr(sampler, "num_replicas", None)),
                        sampler_rank=_plain(getattr(sampler, "rank", None)),
                        shuffle=_plain(getattr(sampler, "shuffle", None)),
                        batch_size=loader.batch_size, location=user_location(1))

    def on_loader_iter(self, loader, epoch) -> None:
        index = self.loaders.get(id(loader))
        sampler = self.samplers.get(index)
        if sampler is not None:
            self.probe.emit("dist_epoch", loader=index, epoch=epoch,
                            sampler_epoch=_plain(getattr(sampler, "epoch", None)), location=user_location(1))
        if self.world > 1 and index is not None:
            self.drawn.pass_began(index, epoch, _length(loader.dataset))

    def on_batch_indices(self, loader, indices) -> None:
        self.drawn.batch(self.loaders.get(id(loader)), indices)

    # -- forward: fingerprints and the consistency check -------------------------------------
    def _ddp_forward(self, module, args) -> None:
        self.via_ddp = True

    def _model_forward(self, module, args) -> None:
        import torch

        via_ddp, self.via_ddp = self.via_ddp, False
        if not (module.training and torch.is_grad_enabled()):
            return
        if self.fingerprinted < FINGERPRINT_FORWARDS:
            self.fingerprinted += 1
            found = fingerprint(args)
            if found:
                self.probe.emit("dist_batch", n=self.fingerprinted, step=self.probe.step + 1, **found)
            if self.cheap and self.fingerprinted == FINGERPRINT_FORWARDS:
                self.probe.model_hooks.unsubscribe(FORWARD_CHECKS)  # nothing more to take from the model
        if self.check_pending is not None and via_ddp:
            step, self.check_pending = self.check_pending, None
            first = self.checksums is None or self.checksums.module is not module
            if first:
                self.checksums = Checksums(module)
            self.probe.emit("dist_checksums", **self.checksums.take(step, first))

    # -- backward and step ------------------------------------------------------------------
    def on_backward(self, tensor) -> None:
        self.t_backward = time.perf_counter()

    def on_backward_end(self, tensor) -> None:
        if self.t_backward is not None:
            self.backward_s += time.perf_counter() - self.t_backward

    def on_step_begin(self, step, optimizer) -> None:
        if step <= NO_GRAD_CHECK_STEPS and self.model is not None:
            missing = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
            self.probe.emit("dist_no_grad", step=step, names=missing[:50], count=len(missing))

    def on_step(self, step, optimizer) -> None:
        now = time.perf_counter()
        if self.t_step is not None:
            self.probe.emit("dist_step", step=step, backward_s=self.backward_s,
                            outside_s=now - self.t_step - self.backward_s)
        self.t_step, self.backward_s = now, 0.0
        self.live.step = step
        if self.check and is_check_step(step):
            self.check_pending = step

    # -- collectives, the end ---------------------------------------------------------------
    def on_collective(self, name, location) -> None:
        self.live.enter(name, location)

    def on_collective_end(self, name) -> None:
        self.live.leave()

    def on_exception(self, exc_type, exc, tb) -> None:
        self.drawn.close_all()
        if self.dist is not None:
            self.live.flush(final=True)

    def on_exit(self) -> None:
        self.drawn.close_all()
        if self.dist is not None:
            self.live.flush(final=True)


def job_identity(env: dict, world_size) -> str | None:
    """What every node of one torchrun job shares: rendezvous run id, store address, size."""
    if not env.get("MASTER_ADDR"):
        return None
    return f"{env.get('TORCHELASTIC_RUN_ID') or 'none'}@{env['MASTER_ADDR']}:{env.get('MASTER_PORT')}/{world_size}"


def _length(dataset) -> int | None:
    try:
        return len(dataset)
    except Exception:  # an iterable or unsized dataset: no length to pad shards to
        return None


def _plain(value):
    """torch.device, tuples and the like as JSON can hold them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)
