"""Bytes held by the objects a training step keeps: parameters, gradients, optimizer state.

Storages are counted once even when several tensors view them (tied weights, flattened
parameter buffers), so the sums are memory, not a count of tensor sizes.
"""

from __future__ import annotations

from typing import Iterable


def _storage_key(t) -> tuple:
    try:
        return (t.device.type, t.device.index, t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # fake/meta tensors without data
        return ("id", id(t))


def unique_bytes(tensors: Iterable) -> int:
    seen: dict[tuple, int] = {}
    for t in tensors:
        if t is None:
            continue
        try:
            size = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            size = t.numel() * t.element_size()
        seen[_storage_key(t)] = max(seen.get(_storage_key(t), 0), size)
    return sum(seen.values())


def parameter_bytes(model) -> int:
    return unique_bytes(model.parameters())


def buffer_bytes(model) -> int:
    return unique_bytes(model.buffers())


def gradient_bytes(params: Iterable) -> int:
    return unique_bytes(p.grad for p in params)


def optimizer_params(optimizer) -> list:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_state_bytes(optimizer) -> int:
    import torch

    return unique_bytes(v for state in optimizer.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor))
