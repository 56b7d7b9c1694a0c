"""Verdicts drawn from a trace's measured metrics: data-loading stalls, an idle GPU, or
compute that dominates (the only case where AMP/TF32/channels_last/compile advice pays).

Every finding reads its numbers from the metrics dict the analysis reports, so the
evidence a user sees is exactly what was measured. Matmul precision is that of the
launching op's input dtypes (trace_categories), so the AMP/TF32 advice holds on GPUs whose
GEMM kernel names carry no dtype (cuBLAS' nvjet on Hopper/Blackwell). Thresholds and assumed speed-ups are
module-level data, named, so a reviewer can see and tune them.
"""

from __future__ import annotations

from typing import Any

from ptdiag.findings import Finding
from ptdiag.specialists.performance.trace_categories import FUSIBLE_CATEGORIES, MEMCPY, MEMSET
from ptdiag.specialists.performance.trace_steps import ITERATOR_WORKERS

SPECIALIST = "performance"

# A step is data-loading bound when at least this share of it waits on the DataLoader.
DATA_WAIT_SHARE_MIN = 0.20
# The GPU is reported idle when it does nothing for at least this share of the step.
GPU_IDLE_SHARE_MIN = 0.30
# Compute-bound: the GPU computes (kernels, not copies/communication) this share of the time.
COMPUTE_BOUND_SHARE_MIN = 0.75
# Kernels shorter than this on average mean launch overhead dominates GPU work.
TINY_KERNEL_US = 10.0
# Assumed speed-ups behind the expected-gain estimates (conservative floors: tensor-core
# peaks are 8-16x fp32 SIMT, and TF32 peaks 8x, but real kernels are partly memory-bound).
AMP_MATMUL_SPEEDUP = 2.0
TF32_MATMUL_SPEEDUP = 2.0
# Share of elementwise/normalisation/reduction kernel time that fusion removes (assumed).
FUSION_SAVING = 0.5
TF32_MIN_COMPUTE_CAPABILITY = 8.0
# Advice is given only for kernel groups taking at least this share of GPU time.
ADVICE_MIN_SHARE = 0.05

# Exposed communication: collectives nothing overlaps, at least this share of the GPU timeline.
EXPOSED_COMM_SHARE_MIN = 0.10
COMM_OVERLAP_NONE = 0.05  # below this share of communication hidden, nothing overlaps it
COMM_FIX_NO_OVERLAP = (
    "No collective overlaps computation: they are issued after the work that could hide them. Let DDP "
    "all-reduce gradient buckets during backward (wrap the model in DistributedDataParallel instead of "
    "all-reducing gradients after backward; no blocking .wait()/barrier/.item() between backward and the "
    "optimizer step); with torch.distributed calls of your own, use async_op=True and wait just before the "
    "result is needed. Then shrink what is sent: DDP's bf16 compression hook "
    "(model.register_comm_hook(None, default_hooks.bf16_compress_hook)), and fewer syncs per sample "
    "(a larger per-GPU batch, or gradient accumulation with no_sync() on all but the last micro-batch).")
COMM_FIX_PARTIAL = (
    "Part of the communication is hidden by backward, the rest is not: start buckets earlier and send less. "
    "DDP: a smaller bucket_cap_mb for the first buckets, gradient_as_bucket_view=True, static_graph=True "
    "(and no find_unused_parameters when every parameter gets a gradient); FSDP: backward_prefetch="
    "BACKWARD_PRE and forward_prefetch=True. Send less: the bf16 compression hook, fewer syncs per sample "
    "(larger per-GPU batch, gradient accumulation with no_sync()). Compare ranks (`ptdiag inspect DIR` with "
    "every rank's trace): a late rank makes the others' collectives long.")

# What each DataLoader iterator says about the workers, and what to change.
DATALOADER_FIXES = {
    "_SingleProcessDataLoaderIter": (
        "The DataLoader runs with num_workers=0: every batch is loaded and transformed in "
        "the training process while the GPU waits. Use DataLoader(..., num_workers=N "
        "(start with the CPU cores per GPU, e.g. 4-8), pin_memory=True, "
        "persistent_workers=True) and copy batches with .to(device, non_blocking=True)."
    ),
    "_MultiProcessingDataLoaderIter": (
        "The DataLoader's worker processes cannot keep up. Raise num_workers, keep "
        "persistent_workers=True and pin_memory=True, raise prefetch_factor, and make "
        "per-sample work cheaper (decode/augment on the GPU, cache decoded data)."
    ),
}
GENERIC_DATALOADER_FIX = (
    "Overlap data loading with compute: DataLoader(num_workers=N>0, pin_memory=True, "
    "persistent_workers=True), non_blocking copies, cheaper per-sample transforms."
)


def trace_findings(metrics: dict[str, Any], iterators: list[str],
                   devices: list[dict[str, Any]]) -> list[Finding]:
    """All verdicts the measured metrics support, most important first."""
    found = [
        dataloader_bound(metrics, iterators),
        exposed_communication(metrics),
        gpu_idle(metrics),
        compute_bound(metrics, devices),
    ]
    return [finding for finding in found if finding is not None]


def exposed_communication(metrics: dict[str, Any]) -> Finding | None:
    """Collective kernels (NCCL/RCCL) that no computation overlaps: the step waits for them.
    The overlap is the share of communication time that computation hid; none at all means
    the collectives are issued after the work they could hide behind (a manual all-reduce
    after backward, a blocking collective), partial overlap is DDP/FSDP's bucketing at work."""
    timeline = metrics.get("gpu_timeline")
    if not timeline or not timeline.get("communication_ms") or not timeline.get("total_ms"):
        return None
    exposed, comm, total = timeline["exposed_comm_ms"], timeline["communication_ms"], timeline["total_ms"]
    share = exposed / total
    if share < EXPOSED_COMM_SHARE_MIN:
        return None
    overlap = 1.0 - exposed / comm
    steps = metrics.get("steps") or {}
    per_step = f" ({exposed / steps['count']:.1f} ms per profiled step)" if steps.get("count") else ""
    evidence = {"exposed_comm_ms": exposed, "communication_ms": comm, "timeline_ms": total,
                "exposed_comm_share": round(share, 4), "overlap_share": round(overlap, 4),
                "computation_ms": timeline.get("computation_ms"), "rank": timeline.get("rank")}
    return Finding(
        code="performance.exposed_communication", specialist=SPECIALIST, severity="warning",
        title=f"Communication the GPU waits for: {exposed:.0f} ms of collectives not overlapped "
              f"({share:.0%} of the GPU timeline, {overlap:.0%} of communication hidden)",
        detail=f"On rank {timeline.get('rank')}'s GPU timeline of {total:.0f} ms, collective kernels ran {comm:.0f} ms; "
               f"computation overlapped {comm - exposed:.0f} ms of it, so {exposed:.0f} ms{per_step} is exposed: "
               "nothing else runs on the GPU while it lasts.",
        evidence=evidence,
        fix=COMM_FIX_NO_OVERLAP if overlap < COMM_OVERLAP_NONE else COMM_FIX_PARTIAL)


def dataloader_bound(metrics: dict[str, Any], iterators: list[str]) -> Finding | None:
    steps = metrics.get("steps")
    if not steps or steps["data_wait_share"] < DATA_WAIT_SHARE_MIN:
        return None
    share = steps["data_wait_share"]
    step_ms = steps["step_ms"]["mean"]
    wait_ms = round(sum(s["data_wait_ms"] for s in steps["per_step"]) / steps["count"], 3)
    iterator = iterators[0] if len(iterators) == 1 else None
    workers = ITERATOR_WORKERS.get(iterator) if iterator else None
    return Finding(
        code="performance.dataloader_bound",
        specialist=SPECIALIST,
        severity="warning",
        title=f"Steps wait on data loading for {share:.0%} of their time "
              f"({wait_ms:.1f} of {step_ms:.1f} ms per step)",
        detail=(
            f"Across {steps['count']} profiled steps the training loop spent {share:.1%} of "
            f"the step inside the DataLoader's __next__ ({', '.join(iterators) or 'iterator'}). "
            f"If loading overlapped with compute, steps could shrink to about "
            f"{step_ms - wait_ms:.1f} ms ({share:.0%} shorter)."
        ),
        evidence={
            "data_wait_share": share,
            "data_wait_ms_per_step": wait_ms,
            "step_ms": step_ms,
            "steps": [s["step"] for s in steps["per_step"]],
            "dataloader_iterator": iterator,
            "num_workers": workers,
        },
        fix=DATALOADER_FIXES.get(iterator, GENERIC_DATALOADER_FIX),
    )


def gpu_idle(metrics: dict[str, Any]) -> Finding | None:
    window = _gpu_window(metrics)
    if window is None or 1.0 - window["busy_share"] < GPU_IDLE_SHARE_MIN:
        return None
    idle_share = round(1.0 - window["busy_share"], 4)
    breakdown = metrics["kernel_breakdown"]
    kernel_rows = [c for c in breakdown["categories"] if c["category"] not in (MEMCPY, MEMSET)]
    kernels = sum(c["count"] for c in kernel_rows)
    mean_kernel_us = round(1000.0 * sum(c["ms"] for c in kernel_rows) / kernels, 2) if kernels else 0.0
    data_share = metrics.get("steps", {}).get("data_wait_share", 0.0)
    evidence = {
        "window": window["name"],
        "busy_share": window["busy_share"],
        "idle_share": idle_share,
        "idle_ms_per_step": window.get("idle_ms_per_step"),
        "data_wait_share": data_share,
        "mean_kernel_us": mean_kernel_us,
        "top_cpu_ops_by_self_time": [op["name"] for op in metrics.get("top_cpu_ops", [])[:3]],
    }
    return Finding(
        code="performance.gpu_idle",
        specialist=SPECIALIST,
        severity="warning",
        title=f"The GPU is idle {idle_share:.0%} of the {window['name']}",
        detail=(
            f"GPU kernels, copies and memsets cover {window['busy_share']:.1%} of the "
            f"{window['name']}; the rest the GPU waits for the CPU. Waiting for data explains "
            f"{data_share:.1%} of the time; kernels last {mean_kernel_us:.1f} µs on average."
        ),
        evidence=evidence,
        fix=_idle_fix(idle_share, data_share, mean_kernel_us, evidence["top_cpu_ops_by_self_time"],
                      distributed=bool(metrics["gpu_timeline"].get("communication_ms"))),
    )


def compute_bound(metrics: dict[str, Any], devices: list[dict[str, Any]]) -> Finding | None:
    window = _gpu_window(metrics)
    if window is None or window["computation_share"] < COMPUTE_BOUND_SHARE_MIN:
        return None
    breakdown = metrics["kernel_breakdown"]
    gains = _compute_gains(breakdown, devices)
    top = breakdown["top_kernels"][:3]
    return Finding(
        code="performance.compute_bound",
        specialist=SPECIALIST,
        severity="info",
        title=f"GPU compute dominates: kernels run {window['computation_share']:.0%} of the "
              f"{window['name']}",
        detail=(
            "Top kernels: " + "; ".join(f"{k['name'][:80]} ({k['share']:.0%}, {k['category']})"
                                        for k in top)
            + ". Kernel time by category: "
            + ", ".join(f"{c['category']} {c['share']:.0%}" for c in breakdown["categories"][:5])
            + "."
        ),
        evidence={
            "window": window["name"],
            "computation_share": window["computation_share"],
            "busy_share": window["busy_share"],
            "top_kernels": top,
            "category_shares": {c["category"]: c["share"] for c in breakdown["categories"]},
            "matmul_ms_by_precision": breakdown["matmul_ms_by_precision"],
            "expected_gains": gains,
        },
        fix=" ".join(gain["advice"] for gain in gains)
        or "Kernels already use reduced precision and little time is fusible: profile the top "
           "kernels (shapes, occupancy) or reduce the work per step.",
    )


def _gpu_window(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Busy/computation shares over the profiled steps, else over the GPU timeline."""
    steps, timeline = metrics.get("steps"), metrics.get("gpu_timeline")
    if timeline is None:
        return None
    if steps:
        return {
            "name": "profiled steps",
            "busy_share": steps["gpu_busy_share"],
            "computation_share": steps["gpu_computation_share"],
            "idle_ms_per_step": round(steps["step_ms"]["mean"] * (1.0 - steps["gpu_busy_share"]), 3),
        }
    total = timeline["total_ms"]
    return {
        "name": "GPU timeline",
        "busy_share": round(timeline["busy_ms"] / total, 4) if total else 0.0,
        "computation_share": round(timeline["computation_ms"] / total, 4) if total else 0.0,
    }


def _idle_fix(idle_share: float, data_share: float, mean_kernel_us: float,
              top_ops: list[str], distributed: bool = False) -> str:
    if data_share >= idle_share / 2:
        return ("Most of the idle time is the training loop waiting for data: see "
                "performance.dataloader_bound (more DataLoader workers, pinned memory).")
    if mean_kernel_us < TINY_KERNEL_US:
        return (f"Kernels are tiny ({mean_kernel_us:.1f} µs on average), so launch overhead "
                "dominates: use larger batches, torch.compile (mode='reduce-overhead' uses CUDA "
                "graphs) or fuse small ops.")
    return ("The CPU side does not keep the GPU fed. Remove host-device synchronisations in "
            "the step (.item(), .cpu(), printing tensors) and look at the top CPU ops by self "
            f"time: {', '.join(top_ops) or 'none recorded'}."
            + (" In a distributed job the GPU also idles while this rank's host waits for the others "
               "(a slower rank, data loading on one rank): compare every rank's trace (`ptdiag inspect DIR`)."
               if distributed else ""))


def _compute_gains(breakdown: dict[str, Any], devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each applicable speed-up with its expected share of GPU time saved."""
    total = breakdown["total_gpu_time_ms"]
    if total <= 0:
        return []
    precision = breakdown["matmul_ms_by_precision"]
    shares = {c["category"]: c["ms"] / total for c in breakdown["categories"]}
    fp32 = precision.get("fp32", 0.0) / total
    tf32 = precision.get("tf32", 0.0) / total
    fusible = sum(shares.get(cat, 0.0) for cat in FUSIBLE_CATEGORIES)
    ampere = any(_capability(d) >= TF32_MIN_COMPUTE_CAPABILITY for d in devices)
    gains = []
    if fp32 + tf32 >= ADVICE_MIN_SHARE:
        saved = (fp32 + tf32) * (1 - 1 / AMP_MATMUL_SPEEDUP)
        gains.append(_gain("amp", fp32 + tf32, saved,
                           f"GEMM/convolution/attention work launched by ops with float32 inputs "
                           f"takes {fp32 + tf32:.0%} of GPU time: autocast to bf16/fp16 "
                           f"(torch.autocast('cuda', dtype=torch.bfloat16)) should save about "
                           f"{saved:.0%} of it, assuming ≥{AMP_MATMUL_SPEEDUP:g}× faster tensor-core "
                           f"matmuls."))
    if fp32 >= ADVICE_MIN_SHARE and ampere:
        saved = fp32 * (1 - 1 / TF32_MATMUL_SPEEDUP)
        gains.append(_gain("tf32", fp32, saved,
                           f"Of that, {fp32:.0%} of GPU time is float32 work whose kernel names show no "
                           f"TF32 math, on a TF32-capable GPU: torch.set_float32_matmul_precision('high') "
                           f"and torch.backends.cudnn.allow_tf32=True should save about {saved:.0%}."))
    layout = breakdown["layout_transform_ms"] / total
    if layout >= ADVICE_MIN_SHARE:
        gains.append(_gain("channels_last", layout, layout,
                           f"NCHW<->NHWC conversion kernels take {layout:.0%} of GPU time: "
                           "model.to(memory_format=torch.channels_last) and channels_last inputs "
                           "remove them."))
    if fusible >= ADVICE_MIN_SHARE:
        saved = fusible * FUSION_SAVING
        gains.append(_gain("torch.compile", fusible, saved,
                           f"Elementwise/normalisation/reduction kernels take {fusible:.0%} of GPU "
                           f"time: torch.compile fuses them, saving roughly {saved:.0%} (assuming "
                           f"{FUSION_SAVING:.0%} of their memory traffic goes away)."))
    return gains


def _gain(name: str, measured_share: float, saved_share: float, advice: str) -> dict[str, Any]:
    return {"change": name, "gpu_time_share": round(measured_share, 4),
            "expected_gpu_time_saved_share": round(saved_share, 4), "advice": advice}


def _capability(device: dict[str, Any]) -> float:
    try:
        return float(device.get("compute_capability", "0"))
    except ValueError:
        return 0.0
