"""The in-process fingerprints: bit-exact, order-free, cheap."""

from __future__ import annotations

import random

import torch

from ptdiag.probe.plugins.reproducibility.fingerprint import PendingSums, bit_sum, rng_fingerprints


def test_bit_sum_sees_a_single_flipped_bit_and_ignores_summation_order():
    t = torch.randn(10_000)
    flipped = t.clone()
    flipped.view(torch.int32)[1234] ^= 1  # one ulp in one element
    assert bit_sum(torch, t).item() != bit_sum(torch, flipped).item()
    assert bit_sum(torch, t).item() == bit_sum(torch, t.flip(0)).item()
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool, torch.complex64):
        assert bit_sum(torch, torch.ones(3, dtype=dtype)).dim() == 0


def test_bit_sum_is_the_same_for_any_thread_count():
    t = torch.randn(1_000_000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bit_sum(torch, t).item()
        torch.set_num_threads(2)
        assert bit_sum(torch, t).item() == one
    finally:
        torch.set_num_threads(threads)


def test_rng_fingerprints_move_when_drawn_from_and_repeat_when_reseeded():
    random.seed(1)
    torch.manual_seed(1)
    before = rng_fingerprints()
    random.random()
    after = rng_fingerprints()
    assert after["python"] != before["python"] and after["torch"] == before["torch"]
    random.seed(1)
    assert rng_fingerprints()["python"] == before["python"]


def test_loader_generators_are_fingerprinted():
    loader = torch.utils.data.DataLoader(list(range(8)), shuffle=True, generator=torch.Generator().manual_seed(0))
    before = rng_fingerprints([(0, loader)])["loader0"]
    list(loader)
    assert rng_fingerprints([(0, loader)])["loader0"] != before


def test_pending_sums_on_cpu_are_ready_at_once():
    pending = PendingSums()
    done = pending.push(torch, "k", [bit_sum(torch, torch.ones(2)), bit_sum(torch, torch.zeros(2, dtype=torch.float64))])
    assert done == [("k", [2 * 1065353216, 0])]
