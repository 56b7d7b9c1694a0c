"""What bounds the step, decided from what was measured (measured.Measured).

Each detector returns (Finding, impact) or None; impact is the share of step time the
fix is expected to give back, used to put the finding that pays most first. Thresholds
are data, here, named. Precision/compile/layout advice lives only in compute_bound, and
only when nothing else bounds the step.
"""

from __future__ import annotations

import math
from typing import Any

from ptdiag.findings import Finding
from ptdiag.specialists.performance.measured import Measured

SPECIALIST = "performance"
DATA_WAIT_SHARE_MIN = 0.20  # the same bar the trace analysis uses
DATA_WAIT_MIN_STEPS = 2  # steps that must each wait that long for a data-bound claim
SYNC_PER_STEP_QUIET = 1.0  # one loss.item() per step for logging is normal
SYNC_PER_STEP_WARN = 3.0
SYNC_BLOCKED_SHARE_WARN = 0.10  # GPU runs: host blocked in sync calls, share of the step
# CPU runs: no device to wait for, so a sync costs only its own call; a warning there needs
# that measured cost to be a share of the step worth removing (DCGAN's five .item() a step
# on the CPU: 0.11 ms of a 435 ms step, and its warning hid the compute verdict)
SYNC_CPU_COST_SHARE_WARN = 0.05
LOOP_CALLS_PER_STEP = 100  # one user line issuing this many torch calls per step is a loop
OVERHEAD_SHARE_WARN = 0.50  # host time outside ops + in tiny ops, share of the whole step
SMALL_BATCH = 4
FIXED_SHARE_WARN = 0.25  # small batch: batch-independent share of the step worth a warning
TARGET_BATCH = 32  # the batch size the small-batch estimate compares with
LOOP_MIN_IMPACT = 0.3  # a loop's own share is not measured separately: rank it as at least this
LOOP_OVERHEAD_MIN = 0.15  # CPU: a loop is claimed only when the host's time outside/in tiny ops is this share of the step
LOOP_GPU_IDLE_MIN = 0.30  # CUDA: ... only when the GPU idles this share of the profiled steps
FLOAT64_CALL_SHARE = 0.20  # share of the scanned torch calls returning float64 tensors
REBUILT_MIN_OBJECTS = 3
REBUILT_STEPS_PER_OBJECT_MAX = 2.0
COMPUTE_IN_OPS_SHARE = 0.75  # CPU: share of the (non-data) step spent inside ops
FUSION_SAVING = 0.5  # assumed share of elementwise/normalisation time torch.compile removes
ADVICE_MIN_SHARE = 0.05
# the optimizer's per-parameter loop: claimed where its step took this share of the training
# step (median over the steps), looping over at least this many tensors one at a time
OPTIMIZER_SHARE_MIN = 0.25
OPTIMIZER_LOOP_MIN_TENSORS = 16
WORKERS_WORTH_IT = 1.2  # a predicted speed-up below this from workers alone: say the loading must get cheaper


def _finding(code: str, severity: str, title: str, detail: str, evidence: dict, fix: str) -> Finding:
    return Finding(code=f"{SPECIALIST}.{code}", specialist=SPECIALIST, severity=severity, title=title,
                   detail=detail, evidence=evidence, fix=fix)


def dataloader_bound(m: Measured):
    if not m.breakdown:
        return None
    # a loader that holds the loop back does so step after step; one slow step (a new
    # epoch's iterator in a 2-step-per-epoch run) is half the evidence of two steps
    waiting = [s for s in m.breakdown.get("data_step_shares", []) if s >= DATA_WAIT_SHARE_MIN]
    if len(waiting) < DATA_WAIT_MIN_STEPS:
        return None
    data = m.breakdown["phases"].get("data", {})
    share = data.get("share", 0.0)
    if share < DATA_WAIT_SHARE_MIN:
        return None
    loader = m.loader or {}
    workers = loader.get("num_workers")
    cores = (m.telemetry or {}).get("cores") or m.env.get("cores")
    step_ms = 1000 * m.breakdown["step_s"]["p50"]
    wait_ms = 1000 * data["p50"]
    evidence = {"data_wait_share": share, "data_wait_ms_p50": round(wait_ms, 3), "step_ms_p50": round(step_ms, 3),
                "num_workers": workers, "cores": cores, "pin_memory": loader.get("pin_memory"),
                "persistent_workers": loader.get("persistent_workers"),
                "prefetch_factor": loader.get("prefetch_factor"), "batch_size": loader.get("batch_size")}
    telemetry = m.telemetry or {}
    if "workers_cpu_pct" in telemetry:
        evidence["workers_cpu_pct_mean"] = telemetry["workers_cpu_pct"]["mean"]
    if m.trace and m.trace.get("steps"):
        evidence["profiled_data_wait_share"] = m.trace["steps"]["data_wait_share"]
    python = _python_loading(m.python_calls)
    if python:
        evidence.update(python_calls_per_step=m.python_calls["calls"], python_calls_capped=m.python_calls["capped"],
                        python_calls_at=m.python_calls.get("location"))
    plan = worker_plan(wait_ms, step_ms, workers or 0, cores)
    evidence.update(plan)
    return _finding(
        "dataloader_bound", "warning",
        f"Steps wait on the DataLoader for {share:.0%} of their time ({wait_ms:.1f} of {step_ms:.1f} ms per step)",
        f"Measured over {m.breakdown['steps']} steps: the training loop was blocked in the DataLoader's "
        f"__next__ for {share:.1%} of the step time (num_workers={workers}, {cores} usable cores). "
        + _plan_text(plan, workers or 0, cores) + python,
        evidence, _loader_fix(loader, workers, cores, m.env.get("cuda"), bool(python), plan)), share


def worker_plan(wait_ms: float, step_ms: float, workers: int, cores: int | None) -> dict[str, Any]:
    """How many loader workers the measured times call for, and the step they predict.

    The model: a batch takes `load` ms to make in one process; the rest of the step
    (`compute`) does not wait on it. N workers make N batches in parallel, so a step takes
    max(compute, load / N), if each worker has a core (at most the usable cores less the
    training process's). With no workers the wait is the whole load; with N workers that
    wait is what is left after overlapping, so load = N * step."""
    compute = max(step_ms - wait_ms, 1e-6)
    load = wait_ms if workers == 0 else workers * step_ms
    wanted = max(1, math.ceil(load / compute - 1e-9))
    room = max(1, (cores or 2) - 1)
    advised = min(wanted, room)
    predicted = max(compute, load / advised)
    return {"load_ms_per_batch": round(load, 3), "compute_ms_per_step": round(compute, 3),
            "workers_wanted": wanted, "advised_num_workers": advised,
            "predicted_step_ms": round(predicted, 3), "predicted_speedup": round(step_ms / predicted, 2),
            "limited_by_cores": wanted > room}


def _plan_text(plan: dict[str, Any], workers: int, cores) -> str:
    load, compute, advised = plan["load_ms_per_batch"], plan["compute_ms_per_step"], plan["advised_num_workers"]
    basis = (f"A batch takes about {load:.1f} ms to load in one process and the rest of the step {compute:.1f} ms"
             + ("" if workers == 0 else f" (load estimated as {workers} workers x the step)") + ". ")
    if advised <= workers:
        return basis + (f"{workers} workers already use the {cores} usable cores (one is the training process's): "
                        "more workers cannot run in parallel here.")
    need = (f"Keeping up needs about {plan['workers_wanted']} workers"
            + (f"; this box has room for {advised} ({cores} usable cores, one for training)"
               if plan["limited_by_cores"] else "") + ". ")
    return basis + need + (f"With num_workers={advised} a step would take about max({compute:.1f}, {load:.1f}/{advised}) "
                           f"= {plan['predicted_step_ms']:.1f} ms ({plan['predicted_speedup']:.2f}x faster), "
                           "if each worker gets a core.")


def _python_loading(calls: dict | None) -> str:
    """The sentence saying the loading is Python work, when the counted step's Python calls
    came from the DataLoader: empty otherwise."""
    if not calls or not calls.get("in_loader") or not calls.get("capped"):
        return ""
    where = f" at {calls['location']}" if calls.get("location") else ""
    return (f" The loading is Python work: step {calls['step']} made over {calls['calls']:,} Python calls "
            f"(where counting stopped), the last inside the DataLoader{where}.")


def _loader_fix(loader: dict, workers, cores, cuda, python_loading: bool, plan: dict[str, Any]) -> str:
    fixes = []
    if python_loading:
        fixes.append("Do the per-sample work with tensor operations instead of Python loops over elements "
                     "(or precompute it once)")
    advised = plan["advised_num_workers"]
    cheaper = ("make per-sample work cheaper (cache decoded/resized data, lighter transforms, augment on the GPU)")
    if advised <= (workers or 0):
        fixes.append(f"The {workers} workers already have the {cores} usable cores: {cheaper}")
    else:
        fixes.append(f"DataLoader(..., num_workers={advised}) (predicted step {plan['predicted_step_ms']:.1f} ms)"
                     if not workers else
                     f"Raise num_workers from {workers} to {advised} (predicted step {plan['predicted_step_ms']:.1f} ms)")
        if plan["predicted_speedup"] < WORKERS_WORTH_IT:
            fixes.append(f"that alone gains little on {cores} cores: {cheaper}")
    if not loader.get("persistent_workers"):
        fixes.append("persistent_workers=True so workers survive between epochs")
    if cuda and not loader.get("pin_memory"):
        fixes.append("pin_memory=True with .to(device, non_blocking=True)")
    return "; ".join(fixes) + "."


def host_sync(m: Measured):
    scan = m.scan or {}
    syncs = scan.get("syncs", [])
    per_step = round(sum(s["per_step"] for s in syncs), 2)
    device = (m.host or {}).get("syncs", {})
    step_ms = 1000 * (m.step_s or 0.0)
    blocked = device.get("blocked_ms_per_step", 0.0)
    blocked_share = blocked / step_ms if step_ms else 0.0
    if per_step <= SYNC_PER_STEP_QUIET and blocked_share < SYNC_BLOCKED_SHARE_WARN:
        return None
    cost_ms = sum(s["ms_per_step"] for s in syncs)
    cost_share = cost_ms / step_ms if step_ms else 0.0
    cuda = bool(m.env.get("cuda"))
    if cuda:
        severity = "warning" if per_step >= SYNC_PER_STEP_WARN or blocked_share >= SYNC_BLOCKED_SHARE_WARN else "info"
    else:
        severity = "warning" if cost_share >= SYNC_CPU_COST_SHARE_WARN else "info"
    top = syncs[0] if syncs else {}
    measured = (f"On this GPU run the host was blocked {blocked:.2f} ms per step in CUDA synchronising calls "
                f"({blocked_share:.0%} of the step)." if cuda and device else
                "This run is on the CPU, where no device is waited for: these are the calls that block the host "
                "on a GPU (each waits until all queued GPU work is done, so the GPU then idles while Python "
                f"prepares the next work); their own cost here was {cost_ms:.2f} ms per step "
                f"({cost_share:.1%} of the step)" + (", so they do not slow this run." if severity == "info" else "."))
    return _finding(
        "host_sync", severity,
        f"{per_step:g} host synchronisation(s) per step"
        + (f", most at {top['location']} ({top['call']})" if top else ""),
        f"Counted call by call over {scan.get('steps', 0)} steps (from step {scan.get('first_step')}): "
        + "; ".join(f"{s['location']}: {s['call']} {s['per_step']:g}/step ({s['what']})" for s in syncs[:5])
        + ". " + measured,
        {"per_step": per_step, "calls": syncs[:10], "location": top.get("location"),
         "cost_ms_per_step": round(cost_ms, 4), "device_blocked_ms_per_step": blocked,
         "device_sync_locations": device.get("locations", [])[:5], "step_ms_p50": round(step_ms, 3)},
        "Keep metrics on the device and read them rarely: accumulate `running += loss.detach()` and call "
        ".item() every N steps or at epoch end; never print tensors in the step (format them every N steps); "
        "gather predictions on the device and move them with one .cpu() at the end; use "
        "`torch.cuda.set_sync_debug_mode('warn')` to find the rest."), max(blocked_share, cost_share)


def launch_bound(m: Measured):
    """Per-op and per-step fixed costs dominate: a Python loop of tiny ops, or a batch so
    small that batch-independent work (the optimizer's pass over every parameter, each
    op's dispatch) is paid again for every few samples."""
    scan, host = m.scan or {}, m.host or {}
    phases = (m.breakdown or {}).get("phases", {})
    # the host shares are of the step without its waits (data; other ranks in a collective):
    # scale them to the whole step
    waiting = phases.get("data", {}).get("share", 0.0) + ((m.trace or {}).get("steps") or {}).get("collective_share", 0.0)
    overhead = round((host.get("outside_ops_share", 0.0) + host.get("tiny_ops_share", 0.0))
                     * max(0.0, 1.0 - waiting), 4)
    gpu_idle = _gpu_idle_share(m)
    # many calls from one line are a loop; whether it costs anything is measured: the host's
    # time outside ops on a CPU, the GPU's idle time on CUDA (a compute-bound step is not
    # slowed by the Python that feeds it, nor by per-sample calls in a Dataset)
    matters = (gpu_idle or 0.0) >= LOOP_GPU_IDLE_MIN if m.env.get("cuda") else overhead >= LOOP_OVERHEAD_MIN
    # calls a Dataset makes inside the DataLoader are loading time, dataloader_bound's to judge
    loops = [line for line in scan.get("top_lines", []) if line.get("user") and not line.get("in_loader")
             and line["calls_per_step"] >= LOOP_CALLS_PER_STEP] if matters else []
    batch = (m.loader or {}).get("batch_size")
    fixed = round(min(1.0, overhead + phases.get("optimizer", {}).get("share", 0.0)), 4)
    small_batch = batch is not None and batch <= SMALL_BATCH and fixed >= FIXED_SHARE_WARN
    # on CUDA the host's time outside ops is not overhead (it may just be ahead of the GPU):
    # there trace.py's gpu_idle verdict, from kernel sizes and GPU idle time, speaks instead
    host_bound = overhead >= OVERHEAD_SHARE_WARN and not m.env.get("cuda")
    if not loops and not small_batch and not host_bound:
        return None
    evidence = {"overhead_share": overhead, "outside_ops_share": host.get("outside_ops_share"),
                "tiny_ops_share": host.get("tiny_ops_share"), "ops_per_step": host.get("top_level_ops_per_step"),
                "torch_calls_per_step": scan.get("torch_calls_per_step"), "per_call_us": scan.get("per_call_us"),
                "batch_size": batch, "batch_independent_share": fixed, "loops": loops[:5], "gpu_idle_share": gpu_idle}
    if loops:
        evidence["location"] = loops[0]["location"]
        title = (f"A Python loop issues {loops[0]['calls_per_step']:g} torch calls per step at "
                 f"{loops[0]['location']}")
        fix = (f"Vectorise the loop at {loops[0]['location']}: one batched op over the whole tensor "
               "(matmul, broadcasting, gather/scatter, torch.vmap) instead of one small op per element.")
        impact = max(overhead, LOOP_MIN_IMPACT)
    elif small_batch:
        speedup = _batch_speedup(fixed, batch, TARGET_BATCH)
        evidence.update(target_batch=TARGET_BATCH, expected_samples_per_s_speedup=speedup)
        title = (f"Batch size {batch}: {fixed:.0%} of every step is batch-independent work "
                 f"(optimizer update, per-op overhead)")
        fix = (f"Raise the batch size (it is {batch}): at batch {TARGET_BATCH} that fixed cost is shared by "
               f"{TARGET_BATCH} samples, about {speedup:g}x more samples/s by this measurement; accumulate "
               "gradients over several batches if the optimisation needs small batches.")
        impact = 1 - 1 / speedup
    else:
        title = f"Per-op overhead dominates: {overhead:.0%} of the step is outside ops or in tiny ops"
        fix = ("Fewer, larger ops: raise the batch size, fuse small ops with torch.compile "
               "(mode='reduce-overhead' also removes launch cost on CUDA with CUDA graphs).")
        impact = overhead
    return _finding(
        "launch_bound", "warning", title,
        f"In the profiled steps {host.get('outside_ops_share', 0):.0%} of the host's (non-data) step time "
        f"ran outside any op (Python, module calls) and {host.get('tiny_ops_share', 0):.0%} inside ops shorter "
        f"than 25 µs; the optimizer step took {phases.get('optimizer', {}).get('share', 0):.0%} of the step; "
        f"{host.get('top_level_ops_per_step')} ops per step from Python, {scan.get('torch_calls_per_step')} "
        f"torch calls counted per step, each costing at least {scan.get('per_call_us')} µs here whatever its size.",
        evidence, fix), impact


def _gpu_idle_share(m: Measured) -> float | None:
    busy = ((m.trace or {}).get("steps") or {}).get("gpu_busy_share")
    return round(1.0 - busy, 4) if busy is not None else None


def _batch_speedup(fixed_share: float, batch: int, target: int) -> float:
    """samples/s at `target` over samples/s now, if the fixed part of the step stays and
    the rest grows with the batch: (step/B) / (fixed/T + variable/B)."""
    variable = 1.0 - fixed_share
    return round((1.0 / batch) / (fixed_share / target + variable / batch), 2)


def rank_imbalance(m: Measured):
    """One rank's profiled steps hold the whole job back (trace_ranks.imbalance): it does
    more work per step, the others wait for it in their collectives. Left to
    distributed.straggler when the distributed specialist ran (measured.straggler_judged).
    Impact: the share of the other ranks' step spent waiting, what evening out gives back."""
    found = m.imbalance
    if found is None or m.straggler_judged:
        return None
    slow = found["rank"]
    rows = {rank: row for rank, row in sorted(m.per_rank.items()) if "work_ms_p50" in row}
    steps = [row["step_ms_p50"] for row in rows.values()]
    return _finding(
        "rank_imbalance", "warning",
        f"Rank {slow} holds the other ranks back: {found['work_ms']:.1f} ms of its own work per profiled step vs "
        f"{found['others_work_ms']:.1f} ms on the others, who wait {found['others_wait_share']:.0%} of their step",
        f"Medians over each rank's profiled steps: the steps take {min(steps):.1f}-{max(steps):.1f} ms on every "
        f"rank (a collective such as DDP's gradient all-reduce ends only when the last rank arrives), but the "
        f"other ranks spend {found['others_wait_ms']:.1f} ms more per step with a collective in flight than "
        f"rank {slow} does: they wait for it. "
        f"Per rank (step / in collectives / own work, ms): "
        + ", ".join(f"{rank}: {row['step_ms_p50']:.1f} / {row['collective_ms_p50']:.1f} / {row['work_ms_p50']:.1f}"
                    for rank, row in rows.items()) + "."
        + (" Own work leaves out the time each rank's thread waited for a CPU."
           if any("cpu_wait_ms_p50" in row for row in rows.values()) else ""),
        {**found, "per_rank": {str(rank): row for rank, row in rows.items()}},
        f"Look at what rank {slow} does that the others do not: its data loading (workers, storage), work on that "
        "rank only inside the step (logging, evaluation, checkpointing), fewer CPU threads or a slower or shared "
        "device. Naming the distributed set-up in the symptom (e.g. \"slow with DDP on 2 ranks\") adds the "
        "distributed specialist, which times every step of every rank."), found["others_wait_share"]


def float64(m: Measured):
    dtypes = (m.model or {}).get("param_dtypes", {})
    total = sum(dtypes.values()) or 1
    param_share = dtypes.get("torch.float64", 0) / total
    scan = m.scan or {}
    calls = scan.get("torch_calls_per_step") or 0
    call_share = (scan.get("float64_calls_per_step", 0) / calls) if calls else 0.0
    if param_share == 0 and call_share < FLOAT64_CALL_SHARE:
        return None
    slowdown = scan.get("float64_slowdown")
    op_share = (m.host or {}).get("float64_ops_share")
    saved = (op_share or call_share or param_share) * (1 - 1 / slowdown) if slowdown and slowdown > 1 else None
    return _finding(
        "float64", "warning",
        f"Training runs in float64 ({param_share:.0%} of parameters"
        + (f", {op_share:.0%} of op time" if op_share is not None else "") + ")",
        f"Parameters by dtype: {dtypes}. {scan.get('float64_calls_per_step', 0)} of {calls} torch calls per step "
        f"returned float64 tensors (first at {', '.join(scan.get('float64_lines', [])) or '?'}). "
        + (f"A matmul here runs {slowdown:g}x slower in float64 than in float32 (measured in this process); "
           f"about {saved:.0%} of the step would be saved." if saved is not None else ""),
        {"param_share": round(param_share, 4), "param_dtypes": dtypes, "float64_ops_share": op_share,
         "float64_calls_per_step": scan.get("float64_calls_per_step"), "locations": scan.get("float64_lines", []),
         "location": (scan.get("float64_lines") or [None])[0] or (m.model or {}).get("location"),
         "measured_float64_slowdown": slowdown, "expected_step_saved_share": round(saved, 4) if saved else None},
        "Train in float32 (drop .double() / dtype=torch.float64 on the model and the inputs; "
        "torch.set_default_dtype(torch.float32)); keep float64 only for the few reductions that need it."
    ), saved or param_share


def optimizer_recreated(m: Measured):
    objects, steps = m.optimizers.get("objects", 0), m.optimizers.get("steps", 0)
    if objects < REBUILT_MIN_OBJECTS or steps / objects > REBUILT_STEPS_PER_OBJECT_MAX:
        return None
    first = m.new_optimizers[0] if m.new_optimizers else {}
    return _finding(
        "optimizer_recreated", "warning",
        f"A new {first.get('cls', 'optimizer')} is built every step: {objects} optimizers for {steps} steps",
        f"{objects} distinct optimizer objects took {steps} optimizer steps ({steps / objects:.1f} each); "
        f"{m.optimizers.get('alive', 0)} still existed at the end. Each new optimizer starts with empty state "
        "(momentum buffers, Adam moments, step counts), so the training is not the one intended, and building it "
        "costs a pass over all parameters every step.",
        {"optimizers": objects, "steps": steps, "alive": m.optimizers.get("alive"), "cls": first.get("cls"),
         "location": first.get("location")},
        f"Build the optimizer once, before the training loop (step() is called at {first.get('location')}); "
        "to change the learning rate use a scheduler or param_group['lr']."), 1.0


def compute_bound(m: Measured, others: list[Finding]):
    """CPU: the step is spent inside ops and nothing above bounds it. (GPU: trace.py's.)"""
    host = m.host
    if m.env.get("cuda") or not host or any(f.severity == "warning" for f in others):
        return None
    in_ops = round(1.0 - host["outside_ops_share"] - host["tiny_ops_share"], 4)
    if in_ops < COMPUTE_IN_OPS_SHARE:
        return None
    shares = host["op_time_shares"]
    gains = _cpu_gains(shares, m.env)
    top = [op["name"] for op in (m.trace or {}).get("top_cpu_ops", [])[:3]]
    threads = next((g for g in gains if g["change"] == "threads"), None)
    return _finding(
        "compute_bound", "info",
        f"Compute dominates: {in_ops:.0%} of the step runs inside ops (top: {', '.join(top)})"
        + (f", on {threads['torch_threads']} torch thread(s) of the {threads['cores_per_process']} cores "
           "this process may use" if threads else ""),
        "Op self time by kind: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()) + ". "
        + " ".join(g["advice"] for g in gains),
        {"in_ops_share": in_ops, "op_time_shares": shares, "top_cpu_ops": (m.trace or {}).get("top_cpu_ops", [])[:5],
         "expected_gains": gains, "torch_threads": m.env.get("torch_threads"), "cores": m.env.get("cores")},
        " ".join(g["advice"] for g in gains) or "The work itself bounds the step: a smaller model or input "
        "is the remaining lever."), 0.0


def _cpu_gains(shares: dict[str, float], env: dict[str, Any]) -> list[dict[str, Any]]:
    gains = []
    threads = _threads_gain(env)
    if threads:
        gains.append(threads)
    fusible = shares.get("elementwise", 0.0) + shares.get("normalization", 0.0)
    if fusible >= ADVICE_MIN_SHARE:
        gains.append({"change": "torch.compile", "expected_op_time_saved_share": round(fusible * FUSION_SAVING, 4),
                      "advice": f"Elementwise/normalisation ops take {fusible:.0%} of op time: torch.compile fuses "
                                f"them, saving roughly {fusible * FUSION_SAVING:.0%} (assuming it removes "
                                f"{FUSION_SAVING:.0%} of their memory traffic)."})
    conv = shares.get("matmul_conv", 0.0)
    if conv >= ADVICE_MIN_SHARE and "AMX" in str(env.get("cpu_capability") or ""):
        gains.append({"change": "amp_bf16", "expected_op_time_saved_share": round(conv / 2, 4),
                      "advice": f"Matmul/conv ops take {conv:.0%} of op time on a CPU with AMX: "
                                "torch.autocast('cpu', dtype=torch.bfloat16) should halve them."})
    return gains


def _threads_gain(env: dict[str, Any]) -> dict[str, Any] | None:
    """torch computing on fewer threads than the cores this process may use (its CPU
    affinity, shared with the other processes torchrun started on the node)."""
    threads, cores = env.get("torch_threads"), env.get("cores")
    if not threads or not cores:
        return None
    processes = env.get("local_processes") or 1
    per_process = max(1, cores // processes)
    if threads >= per_process:
        return None
    saved = 1 - threads / per_process
    omp = env.get("omp_num_threads")
    shared = f", shared by {processes} processes on this node" if processes > 1 else ""
    cause = (f"OMP_NUM_THREADS={omp} limits torch to {threads} thread(s)" if omp and str(threads) == str(omp).strip()
             else f"torch.get_num_threads() is {threads}")
    return {"change": "threads", "torch_threads": threads, "cores": cores, "cores_per_process": per_process,
            "omp_num_threads": omp, "expected_op_time_saved_share": round(saved, 4),
            "advice": f"{cause} while this process may use {cores} cores (os.sched_getaffinity{shared}): "
                      f"OMP_NUM_THREADS={per_process} (or torch.set_num_threads({per_process})) could cut op time "
                      f"by up to {saved:.0%} (ideal scaling)."}


def optimizer_loop(m: Measured):
    """The optimizer's step is a large share of the training step and updates its tensors
    one at a time: torch's for-loop implementation, its default on a CPU (on CUDA it
    defaults to foreach), or foreach=False given. The multi-tensor (foreach) or fused
    implementation does the same arithmetic in a few calls over all of them."""
    share = ((m.breakdown or {}).get("phases") or {}).get("optimizer", {}).get("share", 0.0)
    first = m.new_optimizers[0] if m.new_optimizers else {}
    foreach, fused, tensors = first.get("foreach"), first.get("fused"), first.get("tensors") or 0
    looped = foreach is False or (foreach is None and not m.env.get("cuda"))
    if share < OPTIMIZER_SHARE_MIN or tensors < OPTIMIZER_LOOP_MIN_TENSORS or fused or not looped:
        return None
    phase = m.breakdown["phases"]["optimizer"]
    return _finding(
        "optimizer_loop", "info",
        f"The optimizer step takes {share:.0%} of the step, updating {tensors} parameter tensors one at a time "
        f"({first.get('cls')}, foreach {'off' if foreach is False else 'not set'})",
        f"{first.get('cls')}.step() took {share:.0%} of the median step ({1000 * phase.get('p50', 0):.2f} ms of "
        f"{1000 * (m.step_s or 0):.2f} ms) over {tensors} tensors with its per-parameter (for-loop) implementation"
        + ("" if foreach is False else ", torch's default without CUDA") + ".",
        {"optimizer_share": share, "optimizer_ms_p50": round(1000 * phase.get("p50", 0), 3),
         "step_ms_p50": round(1000 * (m.step_s or 0), 3), "cls": first.get("cls"), "tensors": tensors,
         "foreach": foreach, "fused": fused, "location": first.get("location")},
        f"Build the optimizer with foreach=True (its multi-tensor implementation: one call per update rule over "
        f"all {tensors} tensors), or fused=True where torch has a fused kernel for it (Adam, AdamW, SGD, Adagrad; "
        "CUDA, and CPU since torch 2.4)."), share


DETECTORS = (optimizer_recreated, float64, dataloader_bound, launch_bound, host_sync, rank_imbalance,
             optimizer_loop)


def not_profiled(m: Measured, others: list[Finding]):
    """ptdiag's budget cut the profiler window before one profiled step ended (twice: the
    second try records one step without Python stacks or shapes): what bounds the step
    cannot be told from a profile. Said, with what was measured, when nothing else was found."""
    if m.unprofiled is None or any(f.severity == "warning" for f in others):
        return None
    cut, allowance = m.unprofiled, m.unprofiled.get("allowance_bytes")
    size = f"{allowance / 2**20:.0f} MiB" if (allowance or 0) >= 2**20 else f"{allowance} bytes"
    budget = f"ptdiag's memory budget for it ({size})" if allowance is not None else "ptdiag's memory budget"
    measured = []
    if m.breakdown:
        phases = ", ".join(f"{name} {phase['share']:.0%}" for name, phase in m.breakdown["phases"].items())
        measured.append(f"a step takes {1000 * m.breakdown['step_s']['p50']:.2f} ms (median of "
                        f"{m.breakdown['steps']} steps): {phases}")
    if m.python_calls and m.python_calls.get("calls") is not None:
        measured.append(f"step {m.python_calls.get('step')} made {m.python_calls['calls']}"
                        f"{'+' if m.python_calls.get('capped') else ''} Python calls")
    tries = "and again without Python stacks or shapes " if cut["attempts"] > 1 else ""
    return _finding(
        "not_profiled", "info",
        "ptdiag cannot tell what bounds the step: its profiler window was cut before one profiled step ended",
        f"The profiler's events for one step would have grown the process beyond {budget} {tries}(cut at step "
        f"{cut['cut_step']}), so no profile was analysed. What was measured: "
        + ("; ".join(measured) if measured else "no step breakdown") + ".",
        {"cut_step": cut["cut_step"], "attempts": cut["attempts"], "allowance_bytes": allowance,
         "step_s": m.step_s, "phase_shares": {k: v["share"] for k, v in (m.breakdown or {}).get("phases", {}).items()},
         "python_calls": (m.python_calls or {}).get("calls")},
        "Give the window more room: `-o performance.window_memory=4GiB` lets it grow the process by that much "
        "(by default 15% of the process); or run with a smaller batch, which records fewer ops per step."), 0.0


def detect(m: Measured) -> list[Finding]:
    """All findings, warnings by expected gain first; trace verdicts added where ours are silent."""
    scored = [found for found in (d(m) for d in DETECTORS) if found is not None]
    scored.sort(key=lambda fi: -fi[1])
    findings = [f for f, _ in scored]
    ours = {f.code for f in findings}
    findings += [f for f in m.trace_findings if f.code not in ours]
    # only where no warning stands; the compute verdict goes before the notes found above it
    cpu_compute = compute_bound(m, findings)
    if cpu_compute is not None:
        findings.insert(0, cpu_compute[0])
    unprofiled = not_profiled(m, findings)
    if unprofiled is not None:
        findings.append(unprofiled[0])
    return findings
