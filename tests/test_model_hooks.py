"""The probe's owner of module and tensor hooks (ptdiag.probe.model_hooks), on real torch:
what it calls, that nothing of it is on the program's modules (pickle, deepcopy, jit,
export see the model as bare), that it stays out of traced graphs, and that a fault of
ptdiag's callback is caught, switched off and leaves the program's call unchanged."""

from __future__ import annotations

import copy
import gc
import io
import os
import pickle
import signal

import pytest
import torch
from torch.nn.modules import module as nn_module

from ptdiag.probe.model_hooks import ModelHooks


class Recorder:
    """A ModelHooks with the switch-offs it reported."""

    def __init__(self) -> None:
        self.switched: list[tuple[str, str]] = []
        self.charged: dict[str, float] = {}
        self.hooks = ModelHooks(lambda what, why: self.switched.append((what, why)), lambda message: None,
                                lambda what, seconds: self.charged.__setitem__(what, seconds))


@pytest.fixture
def owner():
    recorder = Recorder()
    yield recorder
    recorder.hooks.close()
    assert not nn_module._global_forward_hooks and not nn_module._global_forward_pre_hooks


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def _watch_every_module(hooks: ModelHooks, model, seen: list) -> None:
    for name, module in model.named_modules():
        hooks.after_forward(module, lambda m, args, kwargs, out, name=name: seen.append(name), "test watch")


def test_callbacks_get_the_call_and_run_innermost_first(owner):
    model, seen = _model(), []
    owner.hooks.before_forward(model, lambda m, args: seen.append(("before", m is model, args[0].shape)), "test")
    owner.hooks.after_forward(model, lambda m, args, kwargs, out: seen.append(("after", kwargs, out.shape)), "test")
    _watch_every_module(owner.hooks, model, seen)
    model(torch.ones(2, 4))
    assert seen == [("before", True, (2, 4)), "0", "1", "2", ("after", {}, (2, 1)), ""]


def test_nothing_is_on_the_programs_modules(owner):
    model, seen = _model(), []
    bare = {"pickle": pickle.dumps(model), "state": {k: v.clone() for k, v in model.state_dict().items()}}
    _watch_every_module(owner.hooks, model, seen)
    owner.hooks.before_forward(model, lambda m, args: None, "test")
    model(torch.ones(1, 4))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert pickle.dumps(model) == bare["pickle"] and b"ptdiag" not in pickle.dumps(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert b"ptdiag" not in buffer.getvalue()
    assert torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)(torch.ones(1, 4)).shape == (1, 1)
    assert model.state_dict().keys() == bare["state"].keys()
    scripted = torch.jit.script(model)  # a Python hook on a module would have to be scripted too
    assert torch.equal(scripted(torch.ones(1, 4)), model(torch.ones(1, 4)))


def test_an_ema_copy_is_not_watched_and_the_original_still_is(owner):
    model, seen = _model(), []
    _watch_every_module(owner.hooks, model, seen)
    ema = copy.deepcopy(model)
    ema(torch.ones(1, 4))
    assert seen == []
    model(torch.ones(1, 4))
    assert seen == ["0", "1", "2", ""]


def test_nothing_of_ptdiags_is_traced_into_a_graph(owner):
    model, seen = _model(), []
    bare = torch.export.export(model, (torch.ones(2, 4),)).graph_module.code
    _watch_every_module(owner.hooks, model, seen)
    owner.hooks.before_forward(model, lambda m, args: seen.append("before"), "test")
    exported = torch.export.export(model, (torch.ones(2, 4),))
    assert exported.graph_module.code == bare and seen == []
    traced = torch.jit.trace(model, (torch.ones(2, 4),), check_trace=False)  # the check reruns it eagerly
    assert seen == [] and "sum" not in str(traced.inlined_graph)
    compiled = torch.compile(model, backend="eager")
    assert torch.equal(compiled(torch.ones(2, 4)), model(torch.ones(2, 4)))
    assert seen == ["before", "0", "1", "2", ""]  # the eager call only; the compiled graph has none of it


def test_a_faulty_callback_is_switched_off_and_the_call_goes_on_unchanged(owner):
    model, seen = _model(), []
    x = torch.ones(2, 4)
    expected = model(x)

    def faulty(module, args, kwargs, output):
        raise ValueError("ptdiag's own bug")

    owner.hooks.after_forward(model[0], faulty, "broken watch")
    owner.hooks.after_forward(model[2], lambda *a: seen.append("broken watch, other module"), "broken watch")
    owner.hooks.after_forward(model, lambda *a: seen.append("other instrument"), "other")
    assert torch.equal(model(x), expected)
    assert owner.switched == [("broken watch", "ValueError: ptdiag's own bug")]
    assert seen == ["other instrument"]  # the whole instrument is gone, the others stay
    assert owner.hooks.after_forward(model, lambda *a: None, "broken watch") is None  # off for the run
    model(x)
    assert seen == ["other instrument"] * 2 and len(owner.switched) == 1


def test_a_faulty_gradient_callback_leaves_the_gradient_alone(owner):
    w = torch.ones(3, requires_grad=True)
    y = w * 2
    owner.hooks.on_gradient(y, lambda grad: 1 / 0, "grad watch")
    y.sum().backward()
    assert torch.equal(w.grad, torch.full((3,), 2.0))
    assert owner.switched[0][0] == "grad watch" and owner.switched[0][1].startswith("ZeroDivisionError")


def test_an_exception_from_the_programs_signal_handler_reaches_the_program(owner):
    """torch raises a dead DataLoader worker's error from its SIGCHLD handler, wherever the
    main process is, possibly inside ptdiag's callback: it is the program's."""
    model = _model()
    owner.hooks.after_forward(model, lambda *a: os.kill(os.getpid(), signal.SIGUSR1), "test")

    def handler(signum, frame):
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Killed.")

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with pytest.raises(RuntimeError, match="DataLoader worker"):
            model(torch.ones(1, 4))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert owner.switched == []


def test_ptdiags_own_stop_goes_through(owner):
    model = _model()

    def stop(*args):
        raise SystemExit(0)

    owner.hooks.before_forward(model, stop, "test")
    with pytest.raises(SystemExit):
        model(torch.ones(1, 4))
    assert owner.switched == []


def test_an_always_callback_runs_when_the_forward_raised(owner):
    class Failing(torch.nn.Module):
        def forward(self, x):
            raise MemoryError("out of memory")

    model, seen = Failing(), []
    owner.hooks.after_forward(model, lambda m, args, kwargs, out: seen.append(("always", kwargs, out)), "a",
                              always=True)
    owner.hooks.after_forward(model, lambda *a: seen.append("not always"), "b")
    with pytest.raises(MemoryError):
        model(torch.ones(1))
    assert seen == [("always", None, None)]


def test_subscribed_during_a_pre_hook_starts_with_the_next_call(owner):
    model, seen = _model(), []

    def first(module, args):
        subscription.remove()
        owner.hooks.before_forward(module, lambda m, a: seen.append("pre"), "test")
        owner.hooks.after_forward(module, lambda *a: seen.append("post"), "test")

    subscription = owner.hooks.before_any_forward(first, "test")
    model(torch.ones(1, 4))
    assert seen == ["post"]
    model(torch.ones(1, 4))
    assert seen == ["post", "pre", "post"]


def test_an_instrument_given_up_leaves_the_others(owner):
    model, seen = _model(), []
    _watch_every_module(owner.hooks, model, seen)
    owner.hooks.after_forward(model, lambda *a: seen.append("capture"), "capture")
    owner.hooks.unsubscribe("test watch")
    model(torch.ones(1, 4))
    assert seen == ["capture"] and owner.switched == []


def test_global_hooks_are_held_only_while_something_is_subscribed(owner):
    model = _model()
    subscription = owner.hooks.after_forward(model, lambda *a: None, "test")
    ids = owner.hooks.hook_ids()
    assert len(ids) == 1 and set(nn_module._global_forward_hooks) == ids
    subscription.remove()
    assert not nn_module._global_forward_hooks and not (ids & set(nn_module._global_forward_hooks_with_kwargs))
    owner.hooks.after_forward(model, lambda *a: None, "test", always=True)
    assert set(nn_module._global_forward_hooks_always_called) == owner.hooks.hook_ids()


def test_a_freed_module_is_forgotten(owner):
    model = _model()
    owner.hooks.after_forward(model, lambda *a: None, "test")
    del model
    gc.collect()
    assert not nn_module._global_forward_hooks


def test_callbacks_are_charged_to_their_instrument(owner):
    model = _model()
    owner.hooks.before_forward(model, lambda m, args: None, "numerics step capture")
    owner.hooks.after_forward(model, lambda *a: None, "numerics module watch")
    model(torch.ones(1, 4))  # the first call after the forward is one of those timed
    assert set(owner.charged) == {"numerics step capture", "numerics module watch"}


def test_a_parked_instrument_leaves_torchs_hooks_until_put_back(owner):
    """The steps a sampled instrument does not watch cost the program's module calls
    nothing: its subscriptions and, with nothing else subscribed, torch's global hooks go."""
    model, seen = _model(), []
    owner.hooks.before_forward(model, lambda m, args: seen.append("before"), "sampled")
    _watch_every_module(owner.hooks, model, seen)
    owner.hooks.after_forward(model, lambda *a: seen.append("kept"), "other")
    owner.hooks.set_active("test watch", False)
    owner.hooks.set_active("sampled", False)
    owner.hooks.set_active("sampled", False)  # idempotent
    model(torch.ones(1, 4))
    assert seen == ["kept"]
    owner.hooks.unsubscribe("other")
    assert not nn_module._global_forward_hooks and not nn_module._global_forward_pre_hooks
    late = owner.hooks.after_forward(model[0], lambda *a: seen.append("late"), "test watch")  # waits, parked
    model(torch.ones(1, 4))
    assert seen == ["kept"] and not nn_module._global_forward_hooks
    late.remove()
    owner.hooks.set_active("sampled", True)
    owner.hooks.set_active("test watch", True)
    seen.clear()
    model(torch.ones(1, 4))
    assert seen == ["before", "0", "1", "2", ""]


def test_a_module_freed_while_parked_is_not_put_back(owner):
    model = _model()
    owner.hooks.after_forward(model, lambda *a: None, "sampled")
    owner.hooks.set_active("sampled", False)
    del model
    gc.collect()
    owner.hooks.set_active("sampled", True)
    assert not nn_module._global_forward_hooks
