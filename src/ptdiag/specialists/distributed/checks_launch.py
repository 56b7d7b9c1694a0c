"""Launch and set-up checks: environment, backend vs device, GPU per rank, DDP arguments,
BatchNorm at small per-rank batches. Facts come from `dist_env` and `dist_model`."""

from __future__ import annotations

from collections import defaultdict

from ptdiag.findings import Finding
from ptdiag.specialists.distributed.flight_recorder import _ranks_text
from ptdiag.specialists.distributed.job import Job

SPECIALIST = "distributed"
BN_MIN_PER_RANK_BATCH = 16  # below this BatchNorm's batch statistics get noisy (Wu & He 2018)
SHARED_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")
BACKEND_DEVICE = {  # (backend, device type) -> (severity, problem, fix)
    ("nccl", "cpu"): ("error", "NCCL only moves CUDA tensors, and the model is on the CPU",
                      "Use backend='gloo' on CPU, or move the model to cuda:LOCAL_RANK."),
    ("gloo", "cuda"): ("warning", "gloo copies CUDA tensors through host memory: every all-reduce is slow",
                       "Use backend='nccl' for CUDA models (or 'cpu:gloo,cuda:nccl')."),
}


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def env_findings(job: Job) -> list[Finding]:
    envs = job.first("dist_env")
    problems, bad_ranks = [], set()
    for rank, e in envs.items():
        env = e.get("env") or {}
        if _int(env.get("RANK")) not in (None, rank):
            problems.append(f"rank {rank} has RANK={env.get('RANK')}")
            bad_ranks.add(rank)
        if _int(env.get("WORLD_SIZE")) not in (None, e.get("world_size")):
            problems.append(f"rank {rank} has WORLD_SIZE={env.get('WORLD_SIZE')} but a group of {e.get('world_size')}")
            bad_ranks.add(rank)
        local, local_world = _int(env.get("LOCAL_RANK")), _int(env.get("LOCAL_WORLD_SIZE"))
        if local is not None and local_world is not None and not 0 <= local < local_world:
            problems.append(f"rank {rank} has LOCAL_RANK={local} outside LOCAL_WORLD_SIZE={local_world}")
            bad_ranks.add(rank)
    for name in SHARED_ENV:
        values = defaultdict(list)
        for rank, e in envs.items():
            values[(e.get("env") or {}).get(name)].append(rank)
        if len(values) > 1:
            problems.append(f"{name} differs: " + "; ".join(f"{v!r} on {_ranks_text(r)}" for v, r in values.items()))
            bad_ranks.update(r for rs in list(values.values())[1:] for r in rs)
    sizes = {e.get("world_size") for e in envs.values()}
    findings = []
    if problems:
        findings.append(Finding(
            code="distributed.launch_env", specialist=SPECIALIST, severity="error",
            title="The ranks' launch environment is inconsistent",
            detail="; ".join(problems) + ".",
            evidence={"ranks": sorted(bad_ranks), "problems": problems,
                      "env": {str(r): e.get("env") for r, e in envs.items()}},
            fix="Launch with torchrun (it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT for every worker) "
                "or set them identically per node; do not override them inside the script."))
    missing = sorted(set(range(max(sizes | {0}))) - set(job.ranks)) if envs else []
    if missing:
        findings.append(Finding(
            code="distributed.launch_env", specialist=SPECIALIST, severity="info",
            title=f"{_ranks_text(missing).capitalize()} of {job.world_size} recorded nothing here",
            detail=f"This store holds {_ranks_text(sorted(job.ranks))} of job {job.identity}"
                   f" (runs {', '.join(job.runs)}). The other ranks run on other nodes (or died before the probe "
                   "started), so the cross-rank checks cover only the ranks seen.",
            evidence={"ranks": missing, "seen": sorted(job.ranks), "job": job.identity, "runs": job.runs},
            fix="Run ptdiag on every node with the same --store on a shared file system: the nodes' runs "
                "are then analysed as one job."))
    return findings


def device_findings(job: Job) -> list[Finding]:
    envs, models = job.first("dist_env"), job.first("dist_model")
    findings = []
    for (backend, device), ranks in _by_backend_device(envs, models).items():
        rule = BACKEND_DEVICE.get((backend, device))
        if rule:
            severity, problem, fix = rule
            findings.append(Finding(
                code="distributed.device_mismatch", specialist=SPECIALIST, severity=severity,
                title=f"Backend {backend} with the model on {device}: {problem}",
                detail=f"{_ranks_text(ranks).capitalize()} initialised {backend} and hold parameters on {device}.",
                evidence={"backend": backend, "device": device, "ranks": ranks, "rank": ranks[0],
                          "location": envs[ranks[0]].get("location") if ranks[0] in envs else None},
                fix=fix))
    findings += _shared_gpus(envs, models)
    return findings


def _by_backend_device(envs, models) -> dict[tuple, list[int]]:
    groups = defaultdict(list)
    for rank, model in models.items():
        device = (model.get("param_device") or "").split(":")[0]
        backend = str((envs.get(rank) or {}).get("backend", "")).lower()
        if device and backend:
            groups[(backend, device)].append(rank)
    return groups


def _shared_gpus(envs, models) -> list[Finding]:
    """Ranks on one host holding their model on the same physical GPU (same UUID)."""
    by_gpu = defaultdict(list)
    for rank, model in models.items():
        cuda = model.get("cuda")
        if cuda:
            by_gpu[((envs.get(rank) or {}).get("host"), cuda.get("uuid") or cuda.get("index"))].append(rank)
    findings = []
    for (host, gpu), ranks in by_gpu.items():
        if len(ranks) > 1:
            index = models[ranks[0]]["cuda"].get("index")
            local = {r: (envs.get(r) or {}).get("env", {}).get("LOCAL_RANK") for r in ranks}
            findings.append(Finding(
                code="distributed.device_mismatch", specialist=SPECIALIST, severity="error",
                title=f"{_ranks_text(ranks).capitalize()} share one GPU (cuda:{index} on {host})",
                detail=f"Each of {_ranks_text(ranks)} keeps its model on the same device "
                       f"({models[ranks[0]]['cuda'].get('name')}, {gpu}); LOCAL_RANK per rank: {local}. "
                       "They split its memory and compute: the classic cause of 'OOM on every GPU' with DDP.",
                evidence={"ranks": ranks, "rank": ranks[1], "device": f"cuda:{index}", "gpu": gpu, "host": host,
                          "local_rank": {str(r): v for r, v in local.items()}},
                fix="Call torch.cuda.set_device(int(os.environ['LOCAL_RANK'])) before building the model, "
                    "move it with .to(f'cuda:{local_rank}') (not .cuda() / 'cuda' alone, which mean cuda:0), "
                    "and pass DDP(model, device_ids=[local_rank])."))
    sharing = {rank for f in findings for rank in f.evidence["ranks"]}  # said already
    for rank, model in models.items():
        cuda, env = model.get("cuda"), (envs.get(rank) or {}).get("env") or {}
        local, expected = _int(env.get("LOCAL_RANK")), _expected_index(env)
        if cuda and expected is not None and cuda.get("index") != expected and rank not in sharing:
            findings.append(Finding(
                code="distributed.device_mismatch", specialist=SPECIALIST, severity="warning",
                title=f"Rank {rank} (LOCAL_RANK {local}) trains on cuda:{cuda.get('index')}, not cuda:{expected}",
                detail=f"Its device index differs from the one its LOCAL_RANK selects "
                       f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')}).",
                evidence={"rank": rank, "device": f"cuda:{cuda.get('index')}", "local_rank": local,
                          "expected_device": f"cuda:{expected}"},
                fix="Use cuda:LOCAL_RANK (torch.cuda.set_device(local_rank)), or give each rank its own single "
                    "GPU with CUDA_VISIBLE_DEVICES and use cuda:0."))
    return findings


def _expected_index(env: dict) -> int | None:
    """The device index a rank should train on: cuda:0 when CUDA_VISIBLE_DEVICES shows the
    process exactly one GPU (it is then that rank's own, whatever its LOCAL_RANK), else
    cuda:LOCAL_RANK; None without a LOCAL_RANK."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and len([d for d in str(visible).split(",") if d.strip()]) == 1:
        return 0
    return _int(env.get("LOCAL_RANK"))


def ddp_findings(job: Job) -> list[Finding]:
    models, envs = job.first("dist_model"), job.first("dist_env")
    findings = []
    for rank, model in sorted(models.items())[:1]:  # the arguments are the same code on every rank
        ddp = model.get("ddp") or {}
        cuda = model.get("cuda")
        ids = ddp.get("device_ids")
        if cuda and ids and [str(i).split(":")[-1] for i in ids] != [str(cuda.get("index"))]:
            findings.append(Finding(
                code="distributed.ddp_arguments", specialist=SPECIALIST, severity="warning",
                title=f"DDP(device_ids={ids}) but the model is on cuda:{cuda.get('index')}",
                evidence={"rank": rank, "device_ids": ids, "device": f"cuda:{cuda.get('index')}"},
                fix="device_ids=[local_rank], the device the module lives on."))
        if ddp.get("find_unused_parameters"):
            unused = {r: e for r, es in job.events("dist_no_grad").items() for e in es if e.get("count")}
            if not unused and job.events("dist_no_grad"):
                findings.append(Finding(
                    code="distributed.ddp_arguments", specialist=SPECIALIST, severity="info",
                    title="DDP(find_unused_parameters=True), yet every parameter got a gradient",
                    detail="At the first optimizer steps no parameter lacked a gradient; the flag makes DDP "
                           "traverse the autograd graph after every forward.",
                    evidence={"rank": rank, "find_unused_parameters": True,
                              "checked_steps": sorted({e["step"] for es in job.events("dist_no_grad").values() for e in es})},
                    fix="Drop find_unused_parameters=True (or use static_graph=True if the set of used "
                        "parameters never changes)."))
    return findings


def batchnorm_findings(job: Job) -> list[Finding]:
    if job.world_size < 2:
        return []
    models, loaders = job.first("dist_model"), job.first("dist_loader")
    for rank, model in sorted(models.items())[:1]:
        batch = (loaders.get(rank) or {}).get("batch_size")
        if model.get("n_batchnorm") and not model.get("n_sync_batchnorm") and batch and batch < BN_MIN_PER_RANK_BATCH:
            return [Finding(
                code="distributed.batchnorm_not_synced", specialist=SPECIALIST, severity="warning",
                title=f"{model['n_batchnorm']} BatchNorm layers normalise over {batch} samples per rank",
                detail=f"With {job.world_size} ranks each BatchNorm sees only its own {batch} samples "
                       f"(global batch {batch * job.world_size}); below {BN_MIN_PER_RANK_BATCH} per rank "
                       f"the batch statistics are noisy and accuracy drops. Layers: {', '.join(model['batchnorm'][:5])}"
                       + (" ..." if model["n_batchnorm"] > 5 else "") + ".",
                evidence={"rank": rank, "per_rank_batch": batch, "world_size": job.world_size,
                          "batchnorm_layers": model["n_batchnorm"], "modules": model["batchnorm"][:5]},
                fix="model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) before wrapping in DDP "
                    "(or use GroupNorm, or a larger per-rank batch).")]
    return []
