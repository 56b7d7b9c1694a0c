"""The seam between the two sides of the process line: what the probe (inside the user's
processes) writes into the run dir and the analysis reads back. Both sides import this
module; it imports neither, nor torch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# -- run dir layout ------------------------------------------------------------------------
# where a diagnosed run's ranks dump their NCCL Flight Recorder buffers
# (TORCH_FR_DUMP_TEMP_FILE, see specialists.distributed.CHILD_ENV): rank r writes
# <FR_DUMP_STEM>r there; torch makes a named pipe <FR_PIPE_STEM>r.pipe beside it
# (TORCH_NCCL_DEBUG_INFO_PIPE_FILE) and dumps when something is written to it, which the
# launcher does before it ends a run at --timeout (launch/flight_recorder.py)
FLIGHT_RECORDER_DIR = "flight_recorder"
FR_DUMP_STEM, FR_PIPE_STEM = "rank_", "pipe_"
# each rank's live collective state (probe.plugins.distributed.live), read after a hang
LIVE_STATE_DIR = "distributed"

# -- names shared by writer and reader -------------------------------------------------------
# torch.distributed's module-level collectives the probe wraps; a stack frame in one of
# these is a rank waiting in a collective
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
               "broadcast", "broadcast_object_list", "reduce", "gather", "scatter", "barrier",
               "monitored_barrier", "send", "recv")
# the phases of a step the performance breakdown times between the probe's boundaries
STEP_PHASES = ("forward", "backward", "optimizer")
# the reasons of CUDA snapshots the memory probe keeps at OOMs (file rank<R>.<reason>.pickle):
# the OOM that ended the program, and the last one that did not (caught by torch or the program)
OOM_RAISED, OOM_CAUGHT = "oom", "oom_caught"
# which companion run a child process is (reproducibility's repeat/audit/resume runs)
REPRO_ROLE_ENV = "PTDIAG_REPRO_ROLE"
# the intervention a verification run applies (ptdiag.interventions.encode: JSON name and settings)
INTERVENTION_ENV = "PTDIAG_INTERVENTION"


# -- the event vocabulary -------------------------------------------------------------------
@dataclass(frozen=True)
class EventKind:
    """One kind of line in a process's event log: the fields it may carry (besides "ev",
    its kind, and "t", its wall time) and what it records. tests/test_events.py reads the
    source: every kind the probe writes is declared here with the fields it writes, and
    every kind declared is read by the analysis."""

    fields: tuple[str, ...]
    doc: str


def _kind(fields: str, doc: str) -> EventKind:
    return EventKind(tuple(fields.split()), doc)


_MEMORY_SAMPLE = "rss peak_rss cuda_allocated cuda_reserved cuda_peak cuda_total"
_CULPRIT_OP = ("op overload dtype input_abs_max output_abs_max output_nan output_inf module user_line library_line "
               "node forward_user_line forward_library_line fp32_abs_max params rng")
_BAD_BATCH = "rows batch_size shape nan inf indices epoch batch dataset"

EVENTS: dict[str, EventKind] = {
    # the probe itself (probe/core.py)
    "start": _kind("pid ppid rank local_rank world_size node_rank cwd executable", "a probed process began"),
    "exit": _kind("steps", "the process is exiting (normally or through SystemExit)"),
    "stopped": _kind("by reason step keep_running wall", "ptdiag ended the training early (Probe.stop)"),
    "switched_off": _kind("what why step budget", "ptdiag removed one of its instruments (Probe.switch_off); "
                                                  "budget: the per-step budget sampled it down"),
    "probe_cost": _kind("steps share program_step_s by_owner_us shed",
                        "ptdiag's own time per step against the program's, at exit (probe/budget.py)"),
    "window": _kind("what steps seconds grew peak_grew allowance abandoned",
                    "a one-off measurement window closed: what it cost the process (probe/budget.py)"),
    "intervention": _kind("name settings applied step", "a verification run's intervention: its first application "
                                                        "(applied 1) and, at exit, how often it was applied"),
    # tracking: the always-on recorder
    "env": _kind("torch", "torch was imported: its build and settings (no CUDA asked: probe/gpu.py)"),
    "env_cuda": _kind("torch", "the program initialised CUDA: the devices it sees, cuDNN (updates env's torch)"),
    "args": _kind("values", "the command line argparse parsed (or the API session's config)"),
    "seed": _kind("kind value location", "a python/numpy/torch/cuda seed call"),
    "model": _kind("cls module params trainable dtype device", "the first module with parameters ran forward"),
    "data_identity": _kind("inputs batch fingerprint", "the first training batch's shapes and a hash of it"),
    "dataloader": _kind("loader batch_size num_workers pin_memory drop_last persistent_workers dataset dataset_len "
                        "sampler", "a DataLoader was built"),
    "step": _kind("step dt data_s lr loader epoch",
                  "a training step ended: the primary optimizer's, or a hand-written update (probe/steps.py)"),
    "step_skipped": _kind("step reason counted", "a GradScaler skipped the primary optimizer's step (counted: "
                          "a fused optimizer's step the probe counted as `step`, skipped on the device)"),
    "loss": _kind("step value finite skipped", "the loss passed to backward in that step"),
    "other_loss": _kind("step optimizer cls value finite",
                        "the loss of another optimizer's step (a GAN's second), after primary step `step`"),
    "optimizer": _kind("cls groups defaults params",
                       "the primary optimizer and its hyperparameters (groups at its first step; defaults as built)"),
    "config": _kind("source values", "a config the program held at its first step (dataclass, CfgNode, "
                                     "DictConfig, settings dict, globals set by --key=value)"),
    "logged_params": _kind("source params", "the program logged hyperparameters (TensorBoard/MLflow/W&B)"),
    "scalar": _kind("source tag value logged_step step", "the program logged a scalar"),
    "save": _kind("path keys type holds location step", "torch.save"),
    "load": _kind("path weights_only location step", "torch.load"),
    "exception": _kind("type module message location step traceback", "an exception ended the program"),
    "resources": _kind("max_rss_bytes num_threads cuda", "the process's peak memory and threads at exit"),
    # memory
    "mem_start": _kind(_MEMORY_SAMPLE, "memory when torch was imported"),
    "mem_model": _kind("params_bytes buffers_bytes device dtype", "the model's parameter and buffer bytes"),
    "mem_grads": _kind("step bytes", "gradient bytes after the first step"),
    "mem_step": _kind("step holders " + _MEMORY_SAMPLE, "memory at a step's end and what holds old graphs"),
    "mem_optimizer": _kind("cls bytes foreach fused", "optimizer state bytes after the first step"),
    "mem_breakdown": _kind("step peak", "MemTracker's peak of one step, by kind of memory"),
    "mem_fit": _kind("target budget_bytes error batch_size peak_bytes by_kind largest_batch points wall_s autocast",
                     "the fake-execution estimate of a step against --target-memory"),
    "mem_end": _kind(_MEMORY_SAMPLE, "memory at exit"),
    "mem_grads_in_forward": _kind("step held", "gradients still held while the next forward ran"),
    "mem_saved": _kind("step training location autocast bytes tensors", "what a forward saved for backward"),
    "mem_unused_forward": _kind("saved_bytes location training count first_step",
                                "forwards whose graph no backward reached (evaluation without no_grad)"),
    "mem_cuda_oom": _kind("step device requested device_limit device_free count",
                          "the CUDA allocator refused a request (raised to the program or caught, by torch or it)"),
    "mem_snapshot": _kind("reason path oom", "a CUDA memory snapshot was written (oom: the mem_cuda_oom count it shows)"),
    # numerics
    "numerics": _kind("step backward loss out_finite norms norm scale nonfinite_modules",
                      "a backward pass's loss, output finiteness and gradient norms (backward: its count)"),
    "numerics_graph": _kind("step backward loss_ops one_class trainable with_grad weight_rms",
                            "the first backward's loss graph: its nodes, softmaxes over one class, "
                            "parameters trainable and with a gradient; the weight matrices' RMS before any update"),
    "numerics_amp": _kind("step bf16_supported device dtype", "autocast was on in the step"),
    "numerics_culprit": _kind("step backward call_line autocast loss_finite outputs_finite nonfinite_modules grads_finite "
                              f"localise_s phase reason loss_ops {_CULPRIT_OP} {_BAD_BATCH}",
                              "where the first non-finite value came from"),
    # performance
    "perf_model": _kind("cls param_dtypes device location", "the model's parameter dtypes and device"),
    "perf_loader": _kind("batch_size num_workers pin_memory persistent_workers prefetch_factor",
                         "a DataLoader's loading settings"),
    "perf_optimizer": _kind("cls nth optimizer_steps location tensors foreach fused",
                            "a new optimizer object began stepping: its parameter tensors, and its first group's "
                            "foreach/fused flags (None: torch's default for the device)"),
    "perf_optimizers": _kind("objects steps alive", "optimizer objects against optimizer steps, at exit"),
    "perf_env": _kind("cores torch_threads cuda cpu_capability omp_num_threads local_processes", "cores and threads the training had"),
    "perf_steps": _kind("rows", "per-step phase times (data, forward, backward, optimizer, other)"),
    "perf_trace": _kind("path first_step warmup_steps steps export_s cuda", "the profiler window's trace"),
    "perf_trace_cut": _kind("step budget profiled", "the profiler window ended early: the program ended, or the "
                                                    "budget stopped it (`budget`); `profiled`: its recorded steps "
                                                    "that had ended"),
    "perf_python_calls": _kind("step calls capped location in_loader",
                               "the Python calls of the step before the profiler, counted up to what stacks afford"),
    "perf_scan": _kind("first_step steps torch_calls_per_step top_lines syncs float64_calls_per_step "
                       "float64_lines per_call_us float64_slowdown syncs_from", "the call scan: syncs and hot lines"),
    "perf_telemetry": _kind("samples interval_s cores gpu main_cpu_pct gpu_util_pct gpu_mem_used_mb sm_clock_mhz "
                            "power_w workers workers_cpu_pct throttle_reasons", "CPU/GPU utilisation samples"),
    # distributed
    "dist_env": _kind("backend rank world_size location env host pid cuda cuda_available job",
                      "the rank's launch environment"),
    "dist_model": _kind("wrapper cls ddp param_device cuda batchnorm n_batchnorm n_sync_batchnorm reducer_params",
                        "how the model is wrapped for data parallelism"),
    "dist_loader": _kind("loader sampler sharded iterable num_replicas sampler_rank shuffle batch_size location",
                         "a DataLoader's sampler and how it shards"),
    "dist_epoch": _kind("loader epoch sampler_epoch location", "a pass over a DataLoader began"),
    "dist_batch": _kind("n step fp shape", "a fingerprint of an early training batch"),
    "dist_indices": _kind("loader epoch n indices complete truncated",
                          "the sample indices a rank drew in one of a loader's first passes (n: the data set's length)"),
    "dist_checksums": _kind("step sums norms tensors", "this rank's float64 sum and norm of every parameter "
                                                       "and buffer (their kinds and names on its first check)"),
    "dist_no_grad": _kind("step names count", "DDP parameters that got no gradient"),
    "dist_step": _kind("step backward_s outside_s", "a step's time in and outside backward"),
    # reproducibility
    "nondeterministic_op": _kind("op message location step", "an op without a deterministic implementation ran"),
    "nondeterministic_setting": _kind("setting message location step",
                                      "torch alerted that a setting (cuBLAS's workspace) makes an op non-deterministic"),
    "repro_loader": _kind("loader generator worker_init_fn num_workers", "a DataLoader's randomness"),
    "repro_names": _kind("names dtypes", "the names of the tensors whose sums repro_step lists"),
    "repro_begin": _kind("opt_entries opt_sum lr", "the optimizer state before the first step"),
    "repro_step": _kind("step sums input rng", "bitwise sums of parameters, input and RNG after a step"),
    "repro_env": _kind("threads interop_threads deterministic_algorithms cudnn_benchmark cudnn_deterministic cuda "
                       "tf32_matmul tf32_cudnn environ", "settings that change results"),
    "ckpt": _kind("path step location type items bytes state_sums opt_entries opt_sum snapshot lr_scheduler",
                  "what a checkpoint held"),
}


# -- the event log's encoding ------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """Strict JSON of user values (argparse results, config, NaN losses): non-finite
    floats as the strings "nan"/"inf", anything else JSON cannot say as its repr."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan", "inf": valid JSON, still readable
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def as_number(value: Any) -> float | None:
    """A value jsonable() wrote, read back as a float ("nan"/"inf" included); None when it
    is not a number (None, a bool, a repr)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_events(path: Path) -> list[dict]:
    """All complete events of one file; a line cut short by a crash is skipped."""
    events = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events
