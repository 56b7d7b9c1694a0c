"""Data checks: does each rank read its own shard, and does the order change per epoch?

Evidence: the training loader's sampler (`dist_loader`), fingerprints of the first
batches each rank's model was fed (`dist_batch`), the sampler's epoch at each pass over
the loader (`dist_epoch`).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ptdiag.findings import Finding
from ptdiag.specialists.distributed.flight_recorder import _ranks_text
from ptdiag.specialists.distributed.job import Job, RankView

SPECIALIST = "distributed"


def training_loader(view: RankView) -> dict | None:
    """The `dist_loader` event of the loader whose batches the optimizer steps trained on."""
    used = Counter(e.get("loader") for e in view.of("step") if e.get("loader") is not None)
    loaders = {e["loader"]: e for e in view.of("dist_loader")}
    if used:
        return loaders.get(used.most_common(1)[0][0])
    return next(iter(loaders.values()), None)


def identical_batches(job: Job) -> list[tuple[list[int], list[int]]]:
    """Groups of ranks fed exactly the same batches: (ranks, the forwards compared)."""
    by_rank = {r: {e["n"]: e["fp"] for e in es} for r, es in job.events("dist_batch").items()}
    groups = defaultdict(list)
    for rank, fps in by_rank.items():
        groups[tuple(sorted(fps.items()))].append(rank)
    return [(sorted(ranks), [n for n, _ in key]) for key, ranks in groups.items() if len(ranks) > 1 and key]


def sampler_findings(job: Job) -> list[Finding]:
    if job.world_size < 2:
        return []
    loaders = {r: training_loader(v) for r, v in job.ranks.items()}
    loaders = {r: l for r, l in loaders.items() if l}
    same = identical_batches(job)
    unsharded = sorted(r for r, l in loaders.items() if not l.get("sharded") and not l.get("iterable"))
    wrong = sorted(r for r, l in loaders.items() if l.get("sharded") and
                   (l.get("num_replicas") != job.world_size or l.get("sampler_rank") != r))
    if not (same or unsharded or wrong):
        return []
    example = loaders[(unsharded or wrong or sorted(loaders))[0]] if loaders else {}
    parts = []
    if unsharded:
        parts.append(f"{_ranks_text(unsharded)} read the training DataLoader through {example.get('sampler')}, "
                     "not a DistributedSampler")
    for r in wrong:
        parts.append(f"rank {r}'s DistributedSampler has num_replicas={loaders[r].get('num_replicas')}, "
                     f"rank={loaders[r].get('sampler_rank')} (the job has {job.world_size} ranks)")
    for ranks, forwards in same:
        parts.append(f"{_ranks_text(ranks)} were fed identical batches at the first {len(forwards)} training forwards "
                     "(same input fingerprints)")
    culprits = sorted(set(unsharded) | set(wrong) | {r for ranks, _ in same for r in ranks})
    measured = bool(same)
    return [Finding(
        code="distributed.no_distributed_sampler", specialist=SPECIALIST,
        severity="error" if measured or wrong else "warning",
        title=(f"{_ranks_text(same[0][0]).capitalize()} train on the same data" if measured else
               "The training data is not sharded across ranks"),
        detail="; ".join(parts) + ". " + (
            "Every rank does the same work: the job trains as one GPU would, at N times the cost."
            if measured else "Ranks draw from the whole data set independently, so they overlap and an "
                             "epoch covers the data world-size times."),
        evidence={"ranks": culprits, "rank": culprits[0], "sampler": example.get("sampler"),
                  "location": example.get("location"), "identical_batches": [r for r, _ in same],
                  "forwards_compared": max((len(f) for _, f in same), default=0), "world_size": job.world_size},
        fix="DataLoader(dataset, batch_size=..., sampler=DistributedSampler(dataset, shuffle=True)) "
            "(no shuffle= on the DataLoader), and sampler.set_epoch(epoch) before each epoch. "
            "DistributedSampler takes num_replicas and rank from the process group: do not pass them by hand.")]


def training_passes(view: RankView, loader: int) -> list[dict]:
    """The passes over `loader` that are epochs: those whose batches the optimizer stepped on.
    A pass that fed no step is a peek (`next(iter(loader))` to read the batch size, a
    sanity check before training) and says nothing about the order epochs see. When no
    step names the pass it trained on (steps not counted), every pass counts."""
    passes = [e for e in view.of("dist_epoch") if e.get("loader") == loader]
    trained = {e.get("epoch") for e in view.of("step") if e.get("loader") == loader and e.get("epoch") is not None}
    return [e for e in passes if e.get("epoch") in trained] if trained else passes


def set_epoch_findings(job: Job) -> list[Finding]:
    stale = {}
    for rank, view in job.ranks.items():
        loader = training_loader(view)
        if not loader or not loader.get("sharded") or loader.get("shuffle") is False:
            continue
        passes = training_passes(view, loader["loader"])
        if len(passes) >= 2 and len({e.get("sampler_epoch") for e in passes}) == 1:
            stale[rank] = passes
    if not stale:
        return []
    ranks = sorted(stale)
    passes = stale[ranks[0]]
    return [Finding(
        code="distributed.sampler_epoch_not_set", specialist=SPECIALIST, severity="warning",
        title=f"DistributedSampler.set_epoch was never called: {len(passes)} epochs in the same order",
        detail=f"At each of the {len(passes)} passes over the training loader that trained steps (passes "
               f"{', '.join(str(e['epoch']) for e in passes)}, peeks not counted) the sampler's epoch was still "
               f"{passes[0].get('sampler_epoch')}; its shuffle is seeded by seed + epoch, so every epoch "
               f"replays the same permutation on {_ranks_text(ranks)}.",
        evidence={"rank": ranks[0], "ranks": ranks, "epochs": [e["epoch"] for e in passes],
                  "sampler_epoch": passes[0].get("sampler_epoch"), "location": passes[-1].get("location")},
        fix=f"Call sampler.set_epoch(epoch) at the start of every epoch, before iterating "
            f"(the loop at {passes[-1].get('location')}).")]
