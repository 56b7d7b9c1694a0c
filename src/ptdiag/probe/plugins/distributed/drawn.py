"""The sample indices each rank's loaders drew in their first passes: what the ranks read.

The batch fingerprints (fingerprint.py) say whether two ranks were fed the same batches;
the indices say how much of the data they share, and whether an epoch repeats the last
one's order. They are what a verification run with a DistributedSampler, or with
set_epoch called, is measured by (ptdiag.verification.measure_shards): shards disjoint
across ranks, a different order at each epoch.

One `dist_indices` event per pass over a loader, for its first PASSES_KEPT passes (two
epochs, each after a peek such as the DDP tutorial's next(iter(loader)) for the batch
size, and room to spare), each with at most INDICES_KEPT indices: written when the next
pass begins or at exit. Per batch the cost is a list extend.
"""

from __future__ import annotations

from typing import Callable

PASSES_KEPT = 6
INDICES_KEPT = 1024


class DrawnIndices:
    def __init__(self, emit: Callable[..., None]) -> None:
        self.emit = emit
        self.open: dict[int, dict] = {}  # loader index -> the pass being drawn

    def pass_began(self, loader: int, epoch: int, dataset_len: int | None) -> None:
        self.close(loader)
        if epoch < PASSES_KEPT:
            self.open[loader] = {"loader": loader, "epoch": epoch, "n": dataset_len, "indices": [], "complete": True,
                                 "truncated": False}

    def batch(self, loader: int | None, indices) -> None:
        drawn = self.open.get(loader)
        if drawn is None or not drawn["complete"]:
            return
        batch = indices if isinstance(indices, (list, tuple)) else [indices]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in batch):
            drawn["complete"] = False  # not knowable (out-of-order workers) or not plain indices: say so
            return
        room = INDICES_KEPT - len(drawn["indices"])
        drawn["indices"].extend(batch[:room])
        drawn["truncated"] = len(batch) > room

    def close(self, loader: int) -> None:
        drawn = self.open.pop(loader, None)
        if drawn is not None and (drawn["indices"] or not drawn["complete"]):
            self.emit("dist_indices", **drawn)

    def close_all(self) -> None:
        for loader in list(self.open):
            self.close(loader)
