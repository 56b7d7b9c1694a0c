"""What a training step is and what the program's config is, on real torch objects in
this process: hand-written updates (probe/steps.py) and config objects of every common
style (probe/plugins/tracking/config.py), and how the run's record reads them back."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import types

import pytest
import torch

from ptdiag.probe.model_hooks import ModelHooks
from ptdiag.probe.plugins.tracking import config
from ptdiag.probe.steps import HandWrittenSteps, HandWrittenUpdate
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.tracking import record


@pytest.fixture
def watch():
    """A HandWrittenSteps on real module hooks, with the updates it counted."""
    hooks = ModelHooks(lambda what, why: None, lambda message: None)
    steps: list[HandWrittenUpdate] = []
    yield HandWrittenSteps(hooks, steps.append), steps
    hooks.close()


def _backward(model, watcher):
    loss = model(torch.randn(4, 3)).pow(2).mean()
    watcher.backward_begins()
    loss.backward()
    watcher.backward_ended(loss)


def test_an_update_through_data_is_a_step_seen_at_the_next_forward(watch):
    watcher, steps = watch
    model = torch.nn.Linear(3, 2)
    _backward(model, watcher)
    assert steps == []
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-0.1)  # bumps no version counter: found by value
    model(torch.randn(1, 3))
    assert len(steps) == 1
    assert {id(p) for p in steps[0].param_groups[0]["params"]} == {id(p) for p in model.parameters()}
    assert steps[0].param_groups[0]["lr"] is None


def test_accumulated_backward_passes_before_one_update_are_one_step(watch):
    watcher, steps = watch
    model = torch.nn.Linear(3, 2)
    for _ in range(3):
        _backward(model, watcher)
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad  # through the parameter: its version changes
    _backward(model, watcher)
    assert len(steps) == 1


def test_backward_without_an_update_is_no_step_and_the_end_counts_the_last(watch):
    watcher, steps = watch
    model = torch.nn.Linear(3, 2)
    _backward(model, watcher)
    model(torch.randn(1, 3))
    _backward(model, watcher)
    watcher.at_exit()
    assert steps == []  # gradients taken, nothing changed (a saliency map)
    _backward(model, watcher)
    model.weight.data = model.weight.data - 0.1  # new data: a new pointer
    watcher.at_exit()
    assert len(steps) == 1


def test_an_input_updated_by_its_gradient_is_not_a_step_of_the_model(watch):
    watcher, steps = watch
    model = torch.nn.Linear(3, 2)
    image = torch.randn(4, 3, requires_grad=True)
    loss = model(image).sum()
    watcher.backward_begins()
    loss.backward()
    watcher.backward_ended(loss)
    image.data.add_(image.grad.sign(), alpha=0.1)  # an adversarial step: the model is unchanged
    watcher.at_exit()
    assert steps == []


def test_a_bare_tensor_updated_by_hand_is_a_parameter_where_there_is_no_other(watch):
    watcher, steps = watch
    weights = torch.randn(3, requires_grad=True)  # a tutorial's model: no nn.Parameter anywhere
    loss = (torch.randn(5, 3) @ weights).pow(2).mean()
    loss.backward()
    watcher.backward_ended(loss)
    weights.data -= 0.1 * weights.grad
    watcher.at_exit()
    assert len(steps) == 1


def test_an_optimizer_step_ends_the_watch(watch):
    watcher, steps = watch
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _backward(model, watcher)
    optimizer.step()
    watcher.optimizer_stepped()
    model(torch.randn(1, 3))
    _backward(model, watcher)
    watcher.at_exit()
    assert steps == [] and watcher.ended


def test_gradients_from_autograd_grad_then_an_update_by_hand_are_a_step(watch):
    """`torch.autograd.grad(loss, params)` puts nothing in `.grad`: the parameters it was
    asked for are the ones watched (a MAML meta-update, `p -= lr * g`)."""
    watcher, steps = watch
    model = torch.nn.Linear(3, 2)
    params = list(model.parameters())
    loss = model(torch.randn(4, 3)).pow(2).mean()
    watcher.backward_begins()
    grads = torch.autograd.grad(loss, params)
    watcher.backward_ended(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= 0.1 * g
    model(torch.randn(1, 3))
    assert len(steps) == 1 and steps[0].param_groups[0]["params"] == params


@pytest.mark.parametrize("call, counted", [
    ("scalar loss to parameters", True),
    ("create_graph (an inner step, a penalty)", False),
    ("to an input (a saliency map)", False),
    ("a vector output", False),
])
def test_which_autograd_grad_calls_may_be_an_update(call, counted):
    from ptdiag.probe.patches import _training_gradient

    model = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    out = model(x)
    outputs, inputs, kwargs = {
        "scalar loss to parameters": (out.sum(), list(model.parameters()), {}),
        "create_graph (an inner step, a penalty)": (out.sum(), list(model.parameters()), {"create_graph": True}),
        "to an input (a saliency map)": ([out.sum()], [x], {}),
        "a vector output": (out, list(model.parameters()), {}),
    }[call]
    assert (_training_gradient(torch, outputs, inputs, (), kwargs) is not None) == counted


def test_autograd_grad_of_a_parameters_generator_is_seen_and_still_computed():
    """`torch.autograd.grad(loss, model.parameters())`: the generator is read once, by the
    wrapper, and torch gets every parameter (a consumed generator would give it none)."""
    import types

    from ptdiag.probe.patches import _autograd_grad

    seen = []
    probe = types.SimpleNamespace(hand_written=types.SimpleNamespace(ended=False),
                                  backward_called=lambda loss: seen.append("called"),
                                  backward_returned=lambda loss, params: seen.append(len(params)))
    fake = types.SimpleNamespace(autograd=types.SimpleNamespace(grad=torch.autograd.grad), Tensor=torch.Tensor,
                                 nn=torch.nn)
    _autograd_grad(probe, fake)
    model = torch.nn.Linear(3, 2)
    grads = fake.autograd.grad(model(torch.randn(4, 3)).sum(), model.parameters())
    assert [g.shape for g in grads] == [p.shape for p in model.parameters()]
    assert seen == ["called", 2]


class MinCfg:
    """minGPT's CfgNode: settings as attributes, nested."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


MinCfg.__name__ = "CfgNode"


@dataclasses.dataclass
class Optim:
    lr: float = 0.1
    betas: tuple = (0.9, 0.99)


@dataclasses.dataclass
class TrainCfg:
    optim: Optim = dataclasses.field(default_factory=Optim)
    epochs: int = 3
    api_key: str = "x"


def test_config_objects_are_flattened_with_dots():
    cfg = MinCfg(trainer=MinCfg(max_iters=300, learning_rate=5e-4), model=MinCfg(n_layer=2, module=torch.nn.ReLU()))
    assert config.flatten(cfg) == {"trainer.max_iters": 300, "trainer.learning_rate": 5e-4, "model.n_layer": 2}
    assert config.flatten(TrainCfg()) == {"optim.lr": 0.1, "optim.betas": [0.9, 0.99], "epochs": 3, "api_key": "x"}


def test_config_held_in_a_local_and_globals_set_by_key_value(monkeypatch):
    main = types.ModuleType("__main__")
    main.learning_rate, main.n_layer, main.config = 1000.0, 4, {"learning_rate": 1000.0, "n_layer": 4}
    monkeypatch.setitem(sys.modules, "__main__", main)

    def main_function():
        cfg = TrainCfg()  # noqa: F841 (read from this frame)
        return config.program_config(sys._getframe(), ["--learning_rate=1000.0", "--unknown=1", "file.py"])

    found = dict(main_function())
    assert found["config (dict)"] == {"learning_rate": 1000.0, "n_layer": 4}
    assert found["cfg (TrainCfg)"]["optim.lr"] == 0.1
    assert found["globals set by --key=value"] == {"learning_rate": 1000.0}


@pytest.mark.skipif(importlib.util.find_spec("yacs") is None, reason="yacs is not installed")
def test_yacs_cfgnode():
    from yacs.config import CfgNode

    cfg = CfgNode({"SOLVER": CfgNode({"LR_D": 2e-3, "ITERS": 10}), "SEED": 7})
    cfg.merge_from_list(["SOLVER.LR_D", "0.001"])
    assert config.flatten(cfg) == {"SOLVER.LR_D": 0.001, "SOLVER.ITERS": 10, "SEED": 7}


@pytest.mark.skipif(importlib.util.find_spec("omegaconf") is None, reason="omegaconf is not installed")
def test_omegaconf_dictconfig_with_an_interpolation():
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.structured(TrainCfg), OmegaConf.from_dotlist(["optim.lr=0.01"]))
    cfg2 = OmegaConf.create({"base": 2, "twice": "${base}"})
    assert config._kind("cfg", cfg) == "DictConfig"
    assert config.flatten(cfg)["optim.lr"] == 0.01
    assert config.flatten(cfg2) == {"base": 2, "twice": 2}


def _run(tmp_path, *events) -> RecordedRun:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "rank0.p1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return RecordedRun.load(tmp_path)


def test_params_keep_argparse_first_then_config_then_logged_and_the_configured_lr(tmp_path):
    run = _run(tmp_path,
               {"ev": "args", "values": {"lr": 0.1}},
               {"ev": "config", "source": "cfg", "values": {"lr": 0.5, "trainer.max_iters": 300}},
               {"ev": "logged_params", "source": "wandb", "params": {"batch_size": 64}},
               {"ev": "optimizer", "cls": "AdamW", "params": 10,
                "groups": [{"lr": 9.9e-6, "weight_decay": 0.1}], "defaults": {"lr": 6e-4}},
               {"ev": "step", "step": 1, "lr": [9.9e-6]},
               {"ev": "other_loss", "step": 1, "optimizer": 2, "cls": "Adam", "value": 0.7, "finite": True})
    found = record.params(run)
    assert found["lr"] == 0.1 and found["trainer.max_iters"] == 300 and found["batch_size"] == 64
    assert found["optimizer.lr"] == 6e-4
    assert record.other_losses(run) == {"optimizer 2 (Adam)": [(1, 0.7)]}


def test_configured_lr_prefers_the_schedulers_initial_lr():
    assert record.configured_lr({"groups": [{"lr": 0.0, "initial_lr": 5e-3}], "defaults": {"lr": 1.0}}) == 5e-3
    assert record.configured_lr({"groups": [{"lr": 4e-4, "initial_lr": 4e-4, "max_lr": 0.01}]}) == 0.01  # OneCycle
    assert record.configured_lr({"groups": [{"lr": 0.2}]}) == 0.2


def test_a_scripts_own_name_wins_over_an_alias_in_the_symptom():
    from ptdiag.specialists.tracking.lookup import conditions_in

    found = conditions_in("which run had learning_rate 1000.0", {"learning_rate", "lr"})
    assert [(c.key, c.value) for c in found] == [("learning_rate", 1000)]
    assert [c.key for c in conditions_in("learning_rate 0.1", {"lr"})] == ["lr"]


def test_logged_params_of_every_shape_are_flattened():
    """wandb.init(config=args) hands a Namespace; a Hydra program a nested dict."""
    import argparse

    from ptdiag.probe.plugins.tracking import Plugin

    emitted = []
    probe = types.SimpleNamespace(emit=lambda kind, **fields: emitted.append((kind, fields)))
    plugin = Plugin(probe)
    plugin.on_log_params("wandb", argparse.Namespace(lr=0.1, wandb_api_key="secret", layers=[1, 2]))
    plugin.on_log_params("wandb", {"model": {"depth": 2}, "bos_token_id": 0})
    assert [fields["params"] for _, fields in emitted] == [
        {"lr": 0.1, "wandb_api_key": "<redacted>", "layers": [1, 2]}, {"model.depth": 2, "bos_token_id": 0}]


def test_an_object_that_only_looks_like_a_config_is_left_out():
    class CfgNode:
        __slots__ = ("lr",)  # vars() of it raises

    def holder():
        odd, cfg = CfgNode(), MinCfg(lr=0.3)  # noqa: F841 (read from this frame)
        return config.config_objects(sys._getframe())

    assert [values for source, values in holder() if source.startswith(("odd", "cfg"))] == [{"lr": 0.3}]
