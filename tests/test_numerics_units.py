"""The numerics specialist's parts on real torch, in process: replay, sampler replay, history rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from ptdiag.specialists.numerics import history
from ptdiag.specialists.numerics.batches import BatchLedger, poisoned_indices
from ptdiag.specialists.numerics.localise import replay


class LogHead(nn.Module):
    def forward(self, x):
        return torch.log(torch.softmax(x / 0.001, dim=1))  # underflow: log(0)


class RootNorm(nn.Module):
    def forward(self, x):
        return x / (torch.sqrt((x - x) ** 2) + 1.0)  # finite forward, sqrt'(0) in backward


class MaskedSoftmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x.masked_fill(torch.ones_like(x, dtype=torch.bool), float("-inf")), dim=1)


def run_replay(model, x):
    out = model(x)
    return replay(model, (x,), {}, None, [torch.ones_like(out)], list(model.parameters()))


def test_forward_culprit_is_first_op_born_non_finite_with_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), LogHead())
    found = run_replay(model, torch.randn(16, 4) * 10)
    assert (found["phase"], found["op"], found["module"]) == ("forward", "aten::log", "1")
    assert found["output_inf"] and found["user_line"].endswith(f"test_numerics_units.py:{LogHead.forward.__code__.co_firstlineno + 1}")


def test_backward_culprit_names_node_forward_line_and_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), RootNorm(), nn.Linear(4, 2))
    found = run_replay(model, torch.randn(3, 4))
    assert (found["phase"], found["node"], found["module"]) == ("backward", "SqrtBackward0", "1")
    assert found["forward_user_line"].endswith(f":{RootNorm.forward.__code__.co_firstlineno + 1}")
    assert found["params"] == ["0.bias", "0.weight"]


def test_intentional_inf_mask_is_not_blamed_the_softmax_is():
    model = nn.Sequential(nn.Linear(4, 4), MaskedSoftmax())
    found = run_replay(model, torch.randn(2, 4))
    assert found["op"] == "aten::_softmax" and found["output_nan"]


def test_finite_step_replays_clean():
    model = nn.Sequential(nn.Linear(4, 2))
    assert run_replay(model, torch.randn(2, 4))["phase"] is None


@pytest.mark.parametrize("shuffle", [True, False])
def test_poisoned_rows_are_traced_to_dataset_indices(shuffle):
    x = torch.randn(40, 3)
    x[29] = float("nan")
    loader = DataLoader(TensorDataset(x), batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(1))
    ledger = BatchLedger()
    iterator = iter(loader)  # the probe's hook fires once DataLoader.__iter__ has built the iterator
    ledger.epoch_started(loader, 0)
    for position, (batch,) in enumerate(iterator):
        ledger.batch_handed(loader)
        rows = (~torch.isfinite(batch)).any(1).nonzero().flatten().tolist()
        if rows:
            break
    last = ledger.last_batch()
    assert last["batch"] == position
    assert poisoned_indices(loader, ledger.indices(loader, position), rows) == [29]


def test_explosion_measures_growth_onset_and_clip_value():
    norms = [(s, 1.0 + 0.01 * s) for s in range(1, 11)] + [(11, 20.0), (12, 400.0), (13, 8000.0)]
    found = history.explosion(norms, before_step=14)
    assert found.onset_step == 11 and found.peak_step == 13 and found.peak == 8000.0
    assert found.growth_per_step == pytest.approx((8000.0 / 1.10) ** (1 / 3))
    assert found.clip_at == pytest.approx(1.10)
    assert history.explosion([(s, 1.0 + 0.5 * s) for s in range(1, 20)]) is None


def test_loss_spikes_and_scale_collapse():
    losses = [(s, 2.0) for s in range(1, 8)] + [(8, 50.0), (9, 2.1), (10, float("nan"))]
    (spike,) = history.loss_spikes(losses)
    assert spike["step"] == 8 and spike["factor"] == pytest.approx(25.0)
    scales = [(s, 65536.0 / 2 ** s, False) for s in range(14)]
    collapsed = history.scale_collapse(scales)
    assert collapsed["lowest_scale"] == 65536.0 / 2 ** 13 and collapsed["skipped"] == 14
    assert history.scale_collapse([(s, 65536.0, True) for s in range(10)]) is None
