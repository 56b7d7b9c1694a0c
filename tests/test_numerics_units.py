"""The numerics specialist's parts on real torch, in process: replay, watch flags, the loss
computation's ops, batch ledger, history rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode, _get_current_dispatch_mode_stack

from ptdiag.probe.plugins.numerics import watch
from ptdiag.specialists.numerics import history
from ptdiag.probe.instruments import Instruments
from ptdiag.probe.plugins.numerics import loss_region
from ptdiag.probe.plugins.numerics.loss_region import LossRegion
from ptdiag.probe.plugins.numerics.batches import BatchLedger, poisoned_indices
from ptdiag.probe.plugins.numerics.localise import replay
from ptdiag.probe.model_hooks import ModelHooks


class LogHead(nn.Module):
    def forward(self, x):
        return torch.log(torch.softmax(x / 0.001, dim=1))  # underflow: log(0)


class RootNorm(nn.Module):
    def forward(self, x):
        return x / (torch.sqrt((x - x) ** 2) + 1.0)  # finite forward, sqrt'(0) in backward


class MaskedSoftmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x.masked_fill(torch.ones_like(x, dtype=torch.bool), float("-inf")), dim=1)


@pytest.fixture
def hooks():
    owner = ModelHooks(lambda what, why: None, lambda message: None)
    yield owner
    owner.close()


def run_replay(model, x):
    out = model(x)
    owner = ModelHooks(lambda what, why: None, lambda message: None)
    try:
        return replay(model, (x,), {}, None, [torch.ones_like(out)], list(model.parameters()), owner)
    finally:
        owner.close()


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


def test_ledger_keeps_the_last_batch_and_poisoned_rows_are_confirmed_by_the_dataset():
    x = torch.randn(40, 3)
    x[29] = float("nan")
    loader = DataLoader(TensorDataset(x), batch_size=8, sampler=list(range(39, -1, -1)))
    ledger = BatchLedger()
    ledger.epoch_started(loader, 0)
    ledger.batch_handed(loader, list(range(39, 31, -1)))
    ledger.batch_handed(loader, list(range(31, 23, -1)))  # holds 29 at row 2
    last = ledger.last_batch()
    assert (last["epoch"], last["batch"], last["loader"]) == (0, 1, loader)
    assert poisoned_indices(loader, last["indices"], [2]) == [29]
    assert poisoned_indices(loader, last["indices"], [3]) is None  # index 28 is finite: not claimed
    ledger.batch_handed(loader, [None] * 8)  # an iterable dataset's sampler draws None
    assert ledger.last_batch()["indices"] is None


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
    assert spike["recovered"] is None  # NaN after one step: too few losses to tell
    recovered = [(s, 2.0) for s in range(1, 8)] + [(8, 50.0)] + [(s, 2.1) for s in range(9, 15)]
    assert history.loss_spikes(recovered)[0]["recovered"] is True
    stuck = [(s, 2.0) for s in range(1, 8)] + [(8, 50.0)] + [(s, 9.0) for s in range(9, 15)]
    assert history.loss_spikes(stuck)[0]["recovered"] is False
    scales = [(s, 65536.0 / 2 ** s, False) for s in range(14)]
    collapsed = history.scale_collapse(scales)
    assert collapsed["lowest_scale"] == 65536.0 / 2 ** 13 and collapsed["skipped"] == 14
    assert history.scale_collapse([(s, 65536.0, True) for s in range(10)]) is None


class MaskedNaN(nn.Module):
    """A block whose inner output holds NaN (once `poison` is set) that its own code then
    hides: the loss stays finite."""

    def __init__(self):
        super().__init__()
        self.inner = Poisonable(4, 4)

    def forward(self, x):
        h = self.inner(x)
        return torch.where(torch.isfinite(h), h, torch.zeros_like(h))


class Poisonable(nn.Linear):
    poison = False

    def forward(self, x):
        out = super().forward(x)
        return out / 0 if self.poison else out


def test_watch_flags_each_module_whose_output_was_nonfinite_with_one_read(hooks):
    model = nn.Sequential(nn.Linear(4, 4), MaskedNaN(), nn.Linear(4, 1))
    outputs = watch.ModuleOutputs(model, hooks)
    loss = model(torch.ones(2, 4)).sum()
    loss.backward()
    reading = watch.read(loss, outputs, None, [list(model.parameters())], None)
    assert reading.loss_finite and reading.flagged_modules == []  # the inner output itself was finite
    model[1].inner.poison = True
    loss = model(torch.ones(2, 4)).sum()
    loss.backward()
    reading = watch.read(loss, outputs, None, [list(model.parameters())], None)
    assert reading.flagged_modules == ["1.inner"] and reading.loss_finite  # innermost first; hidden downstream
    assert watch.read(loss, outputs, None, [], None).flagged_modules is None  # taken: nothing reported since


def _instruments(switched: list | None = None) -> Instruments:
    return Instruments(lambda what, why: (switched if switched is not None else []).append(what), lambda message: None)


def test_loss_region_names_the_first_op_born_nonfinite_and_its_line():
    region = LossRegion(_instruments())
    logits = torch.randn(4, 3, requires_grad=True)
    region.enter()
    masked = logits.masked_fill(torch.tensor([True, False, False]), float("-inf"))  # Inf on purpose
    ratio = masked.exp().sum(1) / torch.zeros(4)  # line below: first NaN/Inf by accident
    loss = ratio.mean()
    region.leave()
    reading = watch.read(loss, None, region, [], None)
    assert reading.loss_op["op"] == "aten::div" and reading.loss_op["output_inf"]
    line = next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if "line below: first" in text)
    assert reading.loss_op["user_line"].endswith(f"test_numerics_units.py:{line}")


class ProgramMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_loss_region_never_pops_a_mode_the_program_pushed_on_top():
    switched = []
    region = LossRegion(_instruments(switched))
    region.enter()
    mine = ProgramMode()
    mine.__enter__()
    region.leave()  # not on top: left under the program's mode, inert, and watching stops for the run
    assert _get_current_dispatch_mode() is mine and switched == [loss_region.WHAT]
    mine.__exit__(None, None, None)
    region.enter()  # ours is on top again: popped now, and not pushed again
    torch.ones(2) * 2
    assert region.take() == ([], []) and _get_current_dispatch_mode_stack() == []
    assert switched == [loss_region.WHAT]


def test_loss_region_is_not_pushed_over_a_mode_the_program_has_active():
    switched = []
    region = LossRegion(_instruments(switched))
    with ProgramMode() as mine:
        region.enter()
        torch.ones(2) * 2
        assert _get_current_dispatch_mode_stack() == [mine]
    region.leave()
    assert region.take() == ([], []) and switched == [loss_region.WHAT]


def test_a_model_with_more_modules_than_watched_is_watched_at_its_shallowest_levels(monkeypatch, hooks):
    monkeypatch.setattr(watch, "MAX_WATCHED_MODULES", 4)
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    assert watch.ModuleOutputs(model, hooks).names == ["", "0", "1", "0.0"]


class DropLogMean(nn.Module):
    """log of the mean of dropped-out positive units: -inf exactly when dropout zeroes all of
    a row, so whether a forward fails depends on its dropout draws only."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return torch.log(self.drop(x.exp()).mean(dim=1))


def _dropout_replays(rng):
    from ptdiag.probe.plugins.numerics.localise import rng_state

    torch.manual_seed(5)  # this step's draws zero a whole row; the draws after it do not
    model, x = DropLogMean(), torch.zeros(4, 2)
    state = rng_state(torch, [])
    out = model(x)
    owner = ModelHooks(lambda what, why: None, lambda message: None)
    try:
        found = replay(model, (x,), {}, None, [torch.ones_like(out)], list(model.parameters()), owner,
                       state if rng else None)
    finally:
        owner.close()
    return out, found


def test_the_replay_draws_the_steps_own_dropout_masks():
    out, found = _dropout_replays(rng=True)
    assert not torch.isfinite(out).all()  # the step itself failed
    assert (found["phase"], found["op"], found["rng"]) == ("forward", "aten::log", "the step's")


def test_a_replay_without_the_steps_rng_state_says_its_draws_differ():
    out, found = _dropout_replays(rng=False)
    assert not torch.isfinite(out).all()
    assert found["rng"] == "other" and found["phase"] is None  # the next draws zero no row: not repeated
