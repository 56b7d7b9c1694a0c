"""Which dataset samples were in a batch: the indices the DataLoader's sampler drew for it.

The probe sees the sampler's indices as the DataLoader draws them in the main process,
also when worker processes load the samples (they get their indices from there, and in
order batches come back in the order their indices were drawn). Only the last batch's
indices are kept. When a batch turns out to be poisoned, the claim is checked by loading
those samples from the dataset again; where it cannot be checked (an iterable dataset,
`in_order=False`, a custom `__getitem__` that is not repeatable), the indices are
reported as not knowable rather than guessed.
"""

from __future__ import annotations

import weakref

import torch

from ptdiag.probe.plugins.numerics.localise import all_finite, float_tensors


def _plain_indices(indices) -> list[int] | None:
    """A batch sampler's list of ints (an iterable dataset's sampler draws None)."""
    if isinstance(indices, (list, tuple)) and indices and all(isinstance(i, int) for i in indices):
        return list(indices)
    return None


class BatchLedger:
    """Per DataLoader: its epoch and how many batches it handed out; the last batch's indices."""

    def __init__(self) -> None:
        self._epochs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._last: dict | None = None

    def epoch_started(self, loader, epoch: int) -> None:
        self._epochs[loader] = [epoch, 0]

    def batch_handed(self, loader, indices) -> None:
        record = self._epochs.get(loader) if loader is not None else None
        if record is None:
            return
        self._last = {"loader": weakref.ref(loader), "epoch": record[0], "batch": record[1],
                      "indices": _plain_indices(indices)}
        record[1] += 1

    def last_batch(self) -> dict | None:
        """{epoch, batch (position in the epoch), loader, indices} of the last batch handed out."""
        if self._last is None:
            return None
        return {**self._last, "loader": self._last["loader"]()}


def poisoned_indices(loader, indices: list[int] | None, rows: list[int]) -> list[int] | None:
    """The indices of the batch rows that hold NaN/Inf, if the dataset confirms each of them."""
    if indices is None or any(r >= len(indices) for r in rows):
        return None
    claimed = [indices[r] for r in rows]
    try:
        with torch.random.fork_rng(devices=[]):
            for index in claimed:
                if all_finite(float_tensors(loader.dataset[index])):
                    return None
    except Exception:  # a dataset that cannot be indexed again: not confirmed, not guessed
        return None
    return claimed
