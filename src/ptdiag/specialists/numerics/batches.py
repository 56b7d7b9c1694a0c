"""Which dataset samples were in a batch: knowable when the sampler can be replayed.

A shuffling sampler draws its permutation from its generator (or from the global torch
RNG) when the epoch's first batch is fetched, after the DataLoader's `__iter__` hook
fires. Keeping that RNG state at each epoch start costs one small copy per epoch; when
a batch turns out to be poisoned, the sampler is replayed from it to the batch's
position, and the claim is checked by loading those samples from the dataset again.
Where the replay does not reproduce the batch (worker processes that prefetched indices,
custom samplers), the indices are reported as not knowable rather than guessed.
"""

from __future__ import annotations

import itertools
import weakref

import torch

from ptdiag.specialists.numerics.localise import all_finite, float_tensors


def _generator(loader):
    return getattr(loader.sampler, "generator", None)


class BatchLedger:
    """Per DataLoader: the RNG state at the epoch's start and how many batches it handed out."""

    def __init__(self) -> None:
        self._epochs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.last: tuple | None = None  # (loader ref, epoch, batch position in the epoch)

    def epoch_started(self, loader, epoch: int) -> None:
        generator = _generator(loader)
        state = generator.get_state() if generator is not None else torch.get_rng_state()
        self._epochs[loader] = [epoch, state, 0]

    def batch_handed(self, loader) -> None:
        record = self._epochs.get(loader) if loader is not None else None
        if record is not None:
            self.last = (weakref.ref(loader), record[0], record[2])
            record[2] += 1

    def last_batch(self) -> dict | None:
        if self.last is None:
            return None
        loader_ref, epoch, position = self.last
        return {"epoch": epoch, "batch": position, "loader": loader_ref()}

    def indices(self, loader, position: int) -> list[int] | None:
        """Dataset indices of batch `position` of the current epoch, from a replayed sampler."""
        record = self._epochs.get(loader)
        if record is None or loader.batch_sampler is None or loader.num_workers:
            return None
        generator = _generator(loader)
        now = generator.get_state() if generator is not None else torch.get_rng_state()
        try:
            (generator.set_state if generator is not None else torch.set_rng_state)(record[1])
            batch = next(itertools.islice(iter(loader.batch_sampler), position, None), None)
        finally:
            (generator.set_state if generator is not None else torch.set_rng_state)(now)
        return list(batch) if batch is not None else None


def poisoned_indices(loader, indices: list[int], rows: list[int]) -> list[int] | None:
    """The indices of the batch rows that hold NaN/Inf, if the dataset confirms each of them."""
    if indices is None or any(r >= len(indices) for r in rows):
        return None
    claimed = [indices[r] for r in rows]
    with torch.random.fork_rng(devices=[]):
        for index in claimed:
            if all_finite(float_tensors(loader.dataset[index])):
                return None
    return claimed
