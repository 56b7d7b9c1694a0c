"""A cheap fingerprint of the batch a model is fed: equal on two ranks means equal data.

Sixty-four elements taken evenly from the first input tensor, hashed. Two ranks handed
the same samples in the same order get the same fingerprint; ranks reading different
shards of a real data set practically never do. One device-to-host copy of 64 numbers,
and only for the first few training forwards.
"""

from __future__ import annotations

import hashlib

SAMPLED_ELEMENTS = 64


def first_tensor(value, depth: int = 0):
    """The first tensor in a forward's arguments (through lists, tuples and dicts)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if depth > 3:
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = first_tensor(item, depth + 1)
        if found is not None:
            return found
    return None


def fingerprint(args) -> dict | None:
    import torch

    tensor = first_tensor(args)
    if tensor is None or tensor.numel() == 0:
        return None
    flat = tensor.detach().reshape(-1)
    index = torch.linspace(0, flat.numel() - 1, min(SAMPLED_ELEMENTS, flat.numel()), device=flat.device).long()
    values = flat[index].double().cpu().tolist()
    digest = hashlib.blake2b(repr((tuple(tensor.shape), values)).encode(), digest_size=8).hexdigest()
    return {"fp": digest, "shape": list(tensor.shape)}
