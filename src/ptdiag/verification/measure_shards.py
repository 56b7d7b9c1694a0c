"""The distributed data fixes' metrics, read from every rank's `dist_indices` (the sample
indices its training loader drew in its first passes, probe/plugins/distributed/drawn.py).

- shards_disjoint: of the indices one rank drew in its first training pass, the share some
  other rank also drew (the rank that shares most). A DistributedSampler removes it but
  for the padding it adds so every rank gets as many samples (ceil(n / ranks) * ranks - n
  indices drawn twice, only when the pass completes).
- epoch_order: the ranks whose training loader drew the same indices in the same order at
  its first two training passes (the epochs a sampler without set_epoch replays).

Both are structural (indices, not times): a loaded machine cannot change the verdict, and
a verification run ended at its budget is still judged (`judged_when_cut`) when every rank
that drew from a training loader recorded what the metric compares; when one did not
(its process ended before its pass was written) the metric measured nothing: cannot tell.
"""

from __future__ import annotations

from ptdiag.recorded import RecordedRun
from ptdiag.specialists.distributed.checks_data import training_loader
from ptdiag.verification.measure import Metric


def training_passes(run: RecordedRun) -> dict[int, list[dict]]:
    """Per rank that has a training loader, the `dist_indices` of its passes that trained
    steps (a peek such as next(iter(loader)) is no epoch), in order; knowable ones only
    (`complete`: plain indices, in order). A rank with none recorded maps to []."""
    found = {}
    for rank, proc in run.ranks.items():
        loader = training_loader(proc)
        if loader is None:
            continue
        index = loader["loader"]
        trained = {e.get("epoch") for e in proc.of("step") if e.get("loader") == index and e.get("epoch") is not None}
        passes = [e for e in proc.of("dist_indices") if e.get("loader") == index and e.get("complete")
                  and (not trained or e.get("epoch") in trained)]
        found[rank] = sorted(passes, key=lambda e: e["epoch"])
    return found


# -- shards disjoint -----------------------------------------------------------------------------
def _shards(run: RecordedRun) -> dict | None:
    passes = training_passes(run)
    if len(passes) < 2 or not all(passes.values()):  # a rank's first pass unrecorded: cannot tell
        return None
    drawn = {rank: set(found[0]["indices"]) for rank, found in passes.items()}
    shared = {rank: len(mine & set().union(*(other for r, other in drawn.items() if r != rank)))
              for rank, mine in drawn.items()}
    worst = max(drawn, key=lambda rank: (shared[rank] / max(len(drawn[rank]), 1), -rank))
    n = passes[worst][0].get("n")
    return {"shared_share": round(shared[worst] / max(len(drawn[worst]), 1), 4), "shared_indices": shared[worst],
            "rank": worst, "drawn": len(drawn[worst]), "ranks": len(passes), "dataset_len": n,
            "padding": (-n) % len(passes) if n else 0, "steps": run.steps_observed}


def _shards_before(run: RecordedRun) -> dict | None:
    found = _shards(run)
    return found if found and found["shared_indices"] else None


def _shards_helped(before: dict, after: dict) -> bool:
    return after["shared_indices"] <= after["padding"]


def _shards_sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    was = (f"without it rank {before['rank']} shared {before['shared_indices']} of the {before['drawn']} indices "
           f"it drew ({before['shared_share']:.0%})")
    if helped:
        padded = f", {after['shared_indices']} the sampler's padding" if after["shared_indices"] else ""
        return (f"with {change} the {after['ranks']} ranks drew disjoint shards of the data (in their first "
                f"epoch: {after['drawn']} indices on rank {after['rank']}, none drawn by another rank{padded}; {was})")
    return (f"with {change} rank {after['rank']} still shared {after['shared_indices']} of its {after['drawn']} "
            f"indices with another rank ({after['shared_share']:.0%}; {was}): the ranks still overlap")


# -- a new order at each epoch ---------------------------------------------------------------------
def _orders(run: RecordedRun) -> dict | None:
    repeating, compared, epochs = [], [], None
    passes = training_passes(run)
    if not all(passes.values()):  # a rank that trained recorded no pass (its process cut first): cannot tell
        return None
    for rank, found in passes.items():
        if len(found) < 2:
            continue
        first, second = found[0]["indices"], found[1]["indices"]
        length = min(len(first), len(second))
        if not length:
            continue
        compared.append(rank)
        epochs = epochs or [found[0]["epoch"], found[1]["epoch"]]
        if first[:length] == second[:length]:
            repeating.append(rank)
    if not compared:
        return None
    return {"ranks_repeating": len(repeating), "repeating": repeating, "ranks_compared": len(compared),
            "passes": epochs, "steps": run.steps_observed}


def _orders_before(run: RecordedRun) -> dict | None:
    found = _orders(run)
    return found if found and found["ranks_repeating"] else None


def _orders_helped(before: dict, after: dict) -> bool:
    return after["ranks_repeating"] == 0


def _orders_sentence(change: str, before: dict, after: dict, helped: bool | None) -> str:
    was = (f"without it {before['ranks_repeating']} of {before['ranks_compared']} ranks replayed the first "
           "epoch's order")
    if helped:
        return (f"with {change} every rank drew its samples in a new order at the second epoch "
                f"({after['ranks_compared']} ranks compared; {was})")
    return (f"with {change} {after['ranks_repeating']} of {after['ranks_compared']} ranks still drew the same order "
            f"at both epochs ({was}): the order is fixed elsewhere (the sampler's seed, a generator)")


def _same_steps(before: dict, run: RecordedRun) -> int:
    """The main run's steps: they covered the passes compared (two epochs for the order)."""
    return max(run.steps_observed, 1)


METRICS: dict[str, Metric] = {
    "shards_disjoint": Metric("shared_share", _shards_before, lambda runs: _shards(runs[0]), _shards_helped,
                              _shards_sentence, _same_steps, judged_when_cut=True),
    "epoch_order": Metric("ranks_repeating", _orders_before, lambda runs: _orders(runs[0]), _orders_helped,
                          _orders_sentence, _same_steps, judged_when_cut=True),
}
