"""The probe's instruments inside torch (modes, MemTracker, profiler), in process: a fault of
ptdiag's instrument never reaches the program's call, the program's own errors pass
through unchanged, no mode of the program's is pushed over or popped, and every
instrument removed is said once."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals
from torch.optim import optimizer as optimizer_globals
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

from ptdiag.probe.instruments import Instruments, OpObserver

pytestmark = pytest.mark.filterwarnings("error")  # nothing of ptdiag's may warn into the program


class Recorder:
    def __init__(self) -> None:
        self.switched: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.instruments = Instruments(lambda what, why: self.switched.append((what, why)), self.errors.append)


@pytest.fixture
def rec():
    recorder = Recorder()
    yield recorder
    recorder.instruments.close_all()
    assert _get_current_dispatch_mode_stack() == []
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


class Breaks(OpObserver):
    def __init__(self) -> None:
        self.seen = 0

    def after(self, func, args, kwargs, out, before) -> None:
        self.seen += 1
        raise ValueError("ptdiag's own bug")


class Counts(OpObserver):
    def __init__(self) -> None:
        self.ops: list[str] = []

    def after(self, func, args, kwargs, out, before) -> None:
        self.ops.append(str(func))


class ProgramMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_an_observer_that_raises_is_detached_and_the_program_gets_its_result(rec):
    observer = Breaks()
    window = rec.instruments.watch_ops("op watch", observer)
    x = torch.arange(4.0)
    assert torch.equal(x * 2 + 1, torch.tensor([1.0, 3.0, 5.0, 7.0]))
    window.close()
    assert observer.seen == 1  # detached at its first fault
    assert rec.switched == [("op watch", "ValueError: ptdiag's own bug")]
    assert "ptdiag's own bug" in rec.errors[0]
    assert rec.instruments.watch_ops("op watch", Counts()) is None  # off for the run


def test_the_programs_own_op_error_passes_through_and_the_watch_goes_on(rec):
    observer = Counts()
    window = rec.instruments.watch_ops("op watch", observer)
    with pytest.raises(RuntimeError, match="size of tensor a"):
        torch.ones(2) + torch.ones(3)
    torch.ones(2) * 2
    window.close()
    assert rec.switched == [] and "aten.mul.Tensor" in observer.ops


def test_no_mode_is_pushed_over_one_the_program_has_active(rec):
    with ProgramMode() as mine:
        assert rec.instruments.watch_ops("op watch", Counts()) is None
        assert rec.instruments.track_memory("tracker", nn.Linear(2, 2), None) is None
        assert _get_current_dispatch_mode_stack() == [mine]
    assert [what for what, _ in rec.switched] == ["op watch", "tracker"]


def test_a_mode_the_program_pushed_over_ours_is_never_popped(rec):
    observer = Counts()
    window = rec.instruments.watch_ops("op watch", observer)
    mine = ProgramMode()
    mine.__enter__()
    window.close()  # ours lies under the program's: left there, inert
    torch.ones(2) * 2
    assert _get_current_dispatch_mode_stack()[-1] is mine and observer.ops == []
    assert [what for what, _ in rec.switched] == ["op watch"]
    mine.__exit__(None, None, None)  # the program leaves its own: ours is on top again
    rec.instruments.tidy()
    assert _get_current_dispatch_mode_stack() == []


def test_saved_tensor_hooks_of_the_program_inside_ours_are_never_popped(rec):
    seen = []
    x = torch.ones(3, requires_grad=True)
    window = rec.instruments.saved_tensors("saved", seen.append)
    program = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    program.__enter__()  # the program's, inside the forward, not left when ours close
    (x * x).sum()
    window.close()
    assert torch._C._autograd._top_saved_tensors_default_hooks(False)[0] is program.pack_hook
    assert [what for what, _ in rec.switched] == ["saved"] and seen == []  # saved under the program's hooks
    program.__exit__()
    rec.instruments.tidy()
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def test_saved_tensor_hooks_are_not_pushed_where_the_program_disabled_them(rec):
    torch._C._autograd._saved_tensors_hooks_disable("the program's transform")
    try:
        assert rec.instruments.saved_tensors("saved", print) is None
    finally:
        torch._C._autograd._saved_tensors_hooks_enable()
    assert rec.switched == []


def test_a_pack_that_raises_is_detached_and_autograd_keeps_the_tensor(rec):
    x = torch.ones(3, requires_grad=True)
    window = rec.instruments.saved_tensors("saved", lambda t: 1 / 0)
    y = (x * x).sum()
    window.close()
    y.backward()
    assert torch.equal(x.grad, 2 * torch.ones(3))
    assert [what for what, _ in rec.switched] == ["saved"]


def global_hook_counts() -> tuple:
    return (len(module_globals._global_forward_pre_hooks), len(module_globals._global_forward_hooks),
            len(optimizer_globals._global_optimizer_pre_hooks), len(optimizer_globals._global_optimizer_post_hooks))


def tiny_step(model, optimizer) -> torch.Tensor:
    loss = model(torch.ones(4, 8)).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def test_memory_window_measures_a_step_and_leaves_nothing_behind(rec):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters())
    tiny_step(model, optimizer)
    before = global_hook_counts()
    window = rec.instruments.track_memory("tracker", model, optimizer)
    tiny_step(model, optimizer)
    peak = window.close()
    assert peak["cpu"]["Parameter"] == sum(p.numel() * 4 for p in model.parameters())
    assert peak["cpu"]["Total"] >= peak["cpu"]["Parameter"] + peak["cpu"]["Optstate"]
    assert global_hook_counts() == before and _get_current_dispatch_mode_stack() == []
    assert rec.switched == []


def test_a_model_called_again_inside_the_tracked_step_goes_on_as_without_ptdiag(rec):
    """MemTracker raises NotImplementedError from the model's forward pre-hook when the
    root module runs twice in one tracked iteration (a generate loop in the training loop)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 8)
    with torch.no_grad():
        expected = model(model(x))
    before = global_hook_counts()
    window = rec.instruments.track_memory("memory breakdown", model, optimizer)
    with torch.no_grad():
        out = model(model(x))  # the second call is where MemTracker raises
    assert torch.equal(out, expected)
    tiny_step(model, optimizer)  # the rest of the step runs through the inert tracker
    assert window.close() is None  # a partial measurement is no measurement
    assert [what for what, _ in rec.switched] == ["memory breakdown"]
    assert rec.switched[0][1].startswith("NotImplementedError: MemTracker does not support")
    assert global_hook_counts() == before and _get_current_dispatch_mode_stack() == []


def test_a_tracker_closed_under_another_of_ptdiags_modes_leaves_between_steps_once_on_top(rec):
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = global_hook_counts()
    tracker = rec.instruments.track_memory("tracker", model, optimizer)
    watch = rec.instruments.watch_ops("op watch", Counts())  # e.g. the loss watch of a forward without backward
    assert tracker.close() is not None  # measured; its mode cannot leave from under the watch yet
    assert len(_get_current_dispatch_mode_stack()) == 2
    watch.close()  # a pure stack operation: it leaves, but the tracker's hooks wait for a point between steps
    assert _get_current_dispatch_mode_stack() == [tracker.mode]
    rec.instruments.tidy(between_steps=True)
    assert _get_current_dispatch_mode_stack() == [] and global_hook_counts() == before
    assert rec.switched == []


def test_a_profiler_whose_export_raises_is_switched_off_and_the_training_goes_on(rec, tmp_path):
    from torch.profiler import ProfilerActivity, schedule

    def export(prof) -> None:
        raise OSError("disk full")

    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    window = rec.instruments.profile("profiler", tmp_path / "kineto.log", activities=[ProfilerActivity.CPU],
                                     schedule=schedule(wait=0, warmup=1, active=1, repeat=1), on_trace_ready=export)
    for _ in range(3):
        tiny_step(model, optimizer)
        window.step()
    assert not window.open
    assert rec.switched == [("profiler", "OSError: disk full")]
    assert not torch.autograd.profiler._is_profiler_enabled


def test_a_ctrl_c_inside_the_profilers_start_leaves_no_profiler_recording(rec, tmp_path, monkeypatch):
    # torch's start takes 1-2 s (more on a loaded box): a Ctrl-C as the window opens lands in it;
    # a profiler left recording traced the program's whole exit work with Python stacks
    from torch.profiler import ProfilerActivity, profile

    started = []
    real_start = profile.start

    def interrupted_start(self) -> None:
        real_start(self)
        started.append(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(profile, "start", interrupted_start)
    with pytest.raises(KeyboardInterrupt):
        rec.instruments.profile("profiler", tmp_path / "kineto.log", activities=[ProfilerActivity.CPU],
                                with_stack=True)
    recording = torch.autograd.profiler._is_profiler_enabled
    if recording:  # without the fix: stopped here, so that no other test runs under it
        started[0].stop()
    assert started and not recording
