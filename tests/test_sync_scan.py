"""Host synchronisations: the call scan's table (what a CPU run can name), the GPU path
through torch's CUDA sync debug mode (faked at torch's boundary: its warning, raised from
a frame inside torch), and the trace's attribution of blocking CUDA calls, which must not
blame the program's line for ptdiag's own syncs."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

import ptdiag.probe as probe_package
from ptdiag.probe import patches
from ptdiag.probe.instruments import Instruments, ops_in_block
from ptdiag.probe.instruments.sync_debug import SYNC_WARNING
from ptdiag.probe.plugins.performance.scan import CallScan, is_sync
from ptdiag.specialists.performance import trace_cpu

HERE = Path(__file__).name
TORCH_DIR = os.path.dirname(torch.__file__)
PROBE_DIR = os.path.dirname(probe_package.__file__)


def _line() -> int:
    return sys._getframe(1).f_lineno


def _syncs(scan: CallScan, steps: int) -> dict:
    return {(s["call"], s["location"].split("/")[-1]): s["per_step"] for s in scan.summary(steps)["syncs"]}


def test_a_copy_to_the_host_is_a_sync_only_from_a_device_tensor():
    """On a CPU run the program's `.to(device)` of its batches is `.to("cpu")` too."""
    on_device, on_host = torch.empty(4, device="meta"), torch.empty(4)
    for device_is_cuda in (True, False):
        assert is_sync("to", (on_device, "cpu"), {}, device_is_cuda, torch)
        assert is_sync("to", (on_device,), {"device": torch.device("cpu")}, device_is_cuda, torch)
        assert is_sync("to", (on_device, on_host), {}, device_is_cuda, torch)
        assert not is_sync("to", (on_device, "cpu"), {"non_blocking": True}, device_is_cuda, torch)
        assert not is_sync("to", (on_device, torch.float16), {}, device_is_cuda, torch)
        assert not is_sync("to", (on_host, "cpu"), {}, device_is_cuda, torch)


def test_scan_names_the_syncs_a_call_table_missed():
    """Boolean-mask indexing, torch.where(cond) and torch.equal block the host on a GPU;
    the same calls with other arguments do not."""
    scan = CallScan(torch, device_is_cuda=False)
    x, mask = torch.randn(8, 3), torch.randn(8, 3) > 0
    with ops_in_block(scan, functions=True):
        for _ in range(2):
            x.to("cpu")  # a CPU run's batches moved "to the device"
            x[mask]; mask_line = _line()  # noqa: E702
            torch.where(mask); where_line = _line()  # noqa: E702
            torch.equal(x, x); equal_line = _line()  # noqa: E702
            x.to(torch.float64), x.to("cpu", non_blocking=True), x[0:2], x[mask.any(1).nonzero()[:, 0].tolist()]
            torch.where(mask, x, 0.0)
    syncs = _syncs(scan, steps=2)
    assert syncs.pop(("__getitem__", f"{HERE}:{mask_line}")) == 1.0
    assert syncs.pop(("where", f"{HERE}:{where_line}")) == 1.0
    assert syncs.pop(("equal", f"{HERE}:{equal_line}")) == 1.0
    assert {call for call, _ in syncs} == {"nonzero", "tolist"}  # the line that builds an index: its own syncs


def _in_torch(name: str, source: str, **names):
    """A function whose frame lies inside torch's package (as torch.cuda.synchronize's does)."""
    code = compile(source, os.path.join(TORCH_DIR, "cuda", f"{name}.py"), "exec")
    namespace = dict(names)
    exec(code, namespace)
    return namespace[name]


def _in_ptdiag(name: str, source: str, **names):
    """A function whose frame lies in ptdiag's own plugin code (a reading of ptdiag's)."""
    code = compile(source, os.path.join(PROBE_DIR, "plugins", "numerics", f"{name}.py"), "exec")
    namespace = dict(names)
    exec(code, namespace)
    return namespace[name]


class _SyncDebugTorch:
    """torch.cuda's sync debug API, recorded: the boundary the instrument talks to."""

    def __init__(self, mode: int = 0) -> None:
        self.set: list = []
        self.cuda = SimpleNamespace(is_initialized=lambda: True, get_sync_debug_mode=lambda: mode,
                                    set_sync_debug_mode=self.set.append)


def test_torch_reported_syncs_count_at_the_programs_line_never_ptdiags_and_are_not_shown():
    errors, said = [], []
    instruments = Instruments(lambda what, why: said.append(what), errors.append)
    synchronize = _in_torch("synchronize", "def synchronize():\n    warn(MESSAGE, UserWarning)\n",
                            warn=warnings.warn, MESSAGE=f"{SYNC_WARNING} (Triggered internally at CUDAFunctions.cpp)")
    read = _in_ptdiag("read", "def read():\n    synchronize()\n", synchronize=synchronize)
    fake = _SyncDebugTorch()
    scan = CallScan(torch, device_is_cuda=True)
    with warnings.catch_warnings(record=True) as shown:  # restores showwarning, which the probe's patch replaces
        warnings.simplefilter("default")
        patches._warnings(SimpleNamespace(instruments=instruments, call=lambda *args: None), warnings)
        window = instruments.sync_debug("sync debug", fake, scan.on_sync)
        scan.by_sync_debug = True
        for _ in range(3):
            synchronize(); line = _line()  # noqa: E702
            read()  # ptdiag's own reading: not the program's
        window.close()
        warnings.warn("the program's own warning", UserWarning)
    assert fake.set == ["warn", "default"]
    assert _syncs(scan, steps=3) == {("synchronize", f"{HERE}:{line}"): 1.0}
    assert [str(w.message) for w in shown] == ["the program's own warning"]
    assert not errors and not said and not instruments.warning_takers


def test_a_sync_inside_a_watched_call_is_that_calls_unless_ptdiag_made_it():
    """A sync torch reports while a watched call runs (here: backward, whose gradient hooks
    synchronise) counts at the program's line of that call; ptdiag's own reading inside the
    same backward (its hook) does not make the program's backward a sync."""
    synchronize = _in_torch("synchronize", "def synchronize():\n    on_sync(sys._getframe())\n", sys=sys)
    ptdiag_hook = _in_ptdiag("hook", "def hook(grad):\n    synchronize()\n", synchronize=synchronize)
    scan = CallScan(torch, device_is_cuda=True)
    scan.by_sync_debug = True
    synchronize.__globals__["on_sync"] = scan.on_sync
    with ops_in_block(scan, functions=True):
        x = torch.randn(3, requires_grad=True)
        x.register_hook(lambda grad: synchronize())  # the program's hook: its sync
        (x * 2).sum().backward(); user_line = _line()  # noqa: E702
        y = torch.randn(3, requires_grad=True)
        y.register_hook(ptdiag_hook)
        (y * 2).sum().backward()
    assert _syncs(scan, steps=1) == {("backward", f"{HERE}:{user_line}"): 1.0}


def test_a_programs_own_sync_debug_mode_is_left_alone():
    fake = _SyncDebugTorch(mode=1)
    instruments = Instruments(lambda what, why: None, print)
    assert instruments.sync_debug("sync debug", fake, lambda frame: None) is None
    assert fake.set == []


def _frame(name: str, start: float, end: float) -> dict:
    return {"ph": "X", "cat": "python_function", "name": name, "ts": start, "dur": end - start, "pid": 1, "tid": 1}


def test_trace_does_not_blame_the_programs_backward_line_for_ptdiags_sync():
    """A sync under ptdiag's reading inside backward (a relative or an absolute frame path,
    as torch names them with or without ptdiag's directory on sys.path) is ptdiag's; one
    under the backward wrapper alone is the program's."""
    for ptdiag_file in ("ptdiag/probe/plugins/numerics/watch.py", "/opt/src/ptdiag/probe/plugins/numerics/watch.py"):
        events = [{"ph": "X", "cat": "cpu_op", "name": "ProfilerStep#1", "ts": 0, "dur": 1000, "pid": 1, "tid": 1},
                  _frame("train.py(10): <module>", 0, 1000),
                  _frame("ptdiag/probe/patches.py(60): backward", 100, 900),
                  _frame("torch/autograd/__init__.py(200): backward", 110, 700),
                  _frame(f"{ptdiag_file}(120): read", 710, 890),
                  {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 300, "dur": 50,
                   "pid": 1, "tid": 1},
                  {"ph": "X", "cat": "cuda_runtime", "name": "cudaMemcpy", "ts": 720, "dur": 150, "pid": 1, "tid": 1}]
        syncs = trace_cpu.host_metrics({"traceEvents": events})["syncs"]
        assert syncs["per_step"] == 1.0 and syncs["blocked_ms_per_step"] == 0.05
        assert syncs["ptdiag_per_step"] == 1.0 and syncs["ptdiag_blocked_ms_per_step"] == 0.15
        assert syncs["locations"] == [{"location": "train.py:10", "per_step": 1.0, "blocked_ms_per_step": 0.05}]
