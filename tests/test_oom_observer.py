"""The CUDA OOM observer, driven at torch's call boundary as c10's CUDACachingAllocator
drives it (no GPU here): the allocator records an `oom` trace event, then calls each
observer with (device, alloc_size, device_total or the memory-fraction limit,
device_free), then throws, and whoever catches it may be torch itself (cuDNN retrying
with a smaller workspace). The snapshots it dumps are built by `snapshot_builders`'
allocator, whose state is the one the trace describes at each call."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from snapshot_builders import GiB, MiB, FakeAllocator, forward_stack, stack, write_snapshot

from ptdiag.probe.core import Probe
from ptdiag.probe.event_log import EventWriter
from ptdiag.probe.instruments import Instruments
from ptdiag.probe.plugins.memory import Plugin as MemoryPlugin
from ptdiag.probe.plugins.memory.cuda_history import CudaHistory
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.memory import analyse

MODEL, TRAIN = "/home/user/proj/model.py", "/home/user/proj/train.py"
TRAIN_STEP = (TRAIN, 57, "main")
DEVICE_TOTAL = 16 * GiB


class CudaBoundary:
    """The torch calls AllocatorHistory makes, answered from a FakeAllocator."""

    def __init__(self, allocator: FakeAllocator) -> None:
        self.allocator = allocator
        self.observers = []
        self.cuda = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True,
                                    memory=SimpleNamespace(_record_memory_history=lambda **kw: None,
                                                           _dump_snapshot=self._dump))
        self._C = SimpleNamespace(_cuda_attach_out_of_memory_observer=self.observers.append)

    def _dump(self, path: str) -> None:
        write_snapshot(Path(path), self.allocator.snapshot())

    def refuse(self, nbytes: int, device_free: int, frames) -> None:
        """What c10's malloc does before it throws OutOfMemoryError."""
        self.allocator.oom(nbytes, device_free, frames)
        for observe in self.observers:
            observe(0, nbytes, DEVICE_TOTAL, device_free)


def _history(tmp_path, emit, switched_off: list):
    allocator = FakeAllocator()
    segment = allocator.new_segment(6 * GiB)
    for _ in range(4):
        allocator.malloc(1 * GiB, forward_stack(MODEL, 30, TRAIN_STEP), segment)
    boundary = CudaBoundary(allocator)
    instruments = Instruments(lambda what, why: switched_off.append((what, why)), lambda message: None)
    history = CudaHistory(boundary, instruments, tmp_path, 0, emit, lambda: 3)
    assert history.start()
    return history, boundary


CONV = stack(("/opt/venv/lib/python3.11/site-packages/torch/nn/modules/conv.py", 549, "_conv_forward"),
             (MODEL, 28, "forward"), TRAIN_STEP)


def _recorded(tmp_path, history_events: list, exception: bool) -> RecordedRun:
    (tmp_path / "meta.json").write_text(json.dumps({"run_id": "r", "cwd": "/home/user/proj"}))
    writer = EventWriter(tmp_path / "events" / "rank0.p1.jsonl")
    writer.write("step", step=2, dt=0.1)
    for kind, fields in history_events:
        writer.write(kind, **fields)
    if exception:
        writer.write("exception", type="OutOfMemoryError", location="train.py:57", step=2,
                     message="CUDA out of memory. Tried to allocate 2.00 GiB.")
    writer.close()
    return RecordedRun.load(tmp_path)


def test_the_oom_that_reached_the_program_keeps_the_snapshot_not_the_one_cudnn_retried(tmp_path):
    events, off = [], []
    history, boundary = _history(tmp_path, lambda kind, **f: events.append((kind, f)), off)
    boundary.refuse(1536 * MiB, 1 * GiB, CONV)  # cuDNN's workspace: torch catches it, retries smaller
    retry = boundary.allocator.malloc(64 * MiB, CONV)
    boundary.allocator.free(retry)
    boundary.refuse(2 * GiB, 1 * GiB, forward_stack(MODEL, 32, TRAIN_STEP))  # this one reaches the program
    history.oom_raised()
    history.finish()
    ooms = [f for kind, f in events if kind == "mem_cuda_oom"]
    assert [(o["requested"], o["device_limit"], o["step"], o["count"]) for o in ooms] == [
        (1536 * MiB, DEVICE_TOTAL, 3, 1), (2 * GiB, DEVICE_TOTAL, 3, 2)]
    kept = [f for kind, f in events if kind == "mem_snapshot"]
    assert [(k["reason"], k["oom"]) for k in kept] == [("oom", 2), ("end", None)]
    assert sorted(p.name for p in (tmp_path / "memory").iterdir()) == ["rank0.end.pickle", "rank0.oom.pickle"]
    oom = next(f for f in analyse(_recorded(tmp_path, events, True)).findings if f.code == "memory.oom")
    assert oom.severity == "error" and oom.evidence["requested_bytes"] == 2 * GiB
    assert oom.evidence["top_sites"][0]["location"].endswith("model.py:30")
    assert oom.evidence["refused_requests"] == 2 and oom.evidence["snapshot"] == "memory/rank0.oom.pickle"
    assert not off


def test_ooms_that_never_reached_the_program_are_information_not_an_error(tmp_path):
    events = []
    history, boundary = _history(tmp_path, lambda kind, **f: events.append((kind, f)), [])
    boundary.refuse(1536 * MiB, 1 * GiB, CONV)
    history.finish()
    assert [f["reason"] for kind, f in events if kind == "mem_snapshot"] == ["oom_caught", "end"]
    oom = next(f for f in analyse(_recorded(tmp_path, events, False)).findings if f.code == "memory.oom")
    assert oom.severity == "info" and "did not end the run" in oom.title
    assert oom.evidence["requested_bytes"] == 1536 * MiB and oom.evidence["reached_program"] is False


def test_an_error_in_the_observer_never_replaces_the_programs_oom(tmp_path):
    """torch's binding throws whatever the observer raises in place of the OutOfMemoryError
    (batch-size finders catch that error by type)."""
    def emit(kind, **fields):
        raise OSError("No space left on device")

    off = []
    history, boundary = _history(tmp_path, emit, off)
    boundary.refuse(2 * GiB, 1 * GiB, CONV)  # raises nothing
    assert off and off[0][0] == "CUDA allocator history" and "No space left" in off[0][1]
    boundary.refuse(2 * GiB, 1 * GiB, CONV)  # switched off: the observer returns at once

    def failing_switch_off(what, why):
        raise OSError("the report of the fault failed too")

    history, boundary = _history(tmp_path / "again", emit, [])
    history.instruments._switch_off = failing_switch_off
    boundary.refuse(2 * GiB, 1 * GiB, CONV)


def test_the_memory_plugin_claims_the_oom_snapshot_when_an_out_of_memory_error_ends_the_program(tmp_path):
    events = []
    plugin = MemoryPlugin(Probe(tmp_path / "run", {"specialists": []}, 0))
    plugin.torch = torch
    plugin.cuda, boundary = _history(tmp_path, lambda kind, **f: events.append((kind, f)), [])
    boundary.refuse(2 * GiB, 1 * GiB, CONV)
    plugin.on_exception(ValueError, ValueError("not an OOM"), None)
    assert not [f for kind, f in events if kind == "mem_snapshot"]
    plugin.on_exception(torch.cuda.OutOfMemoryError, torch.cuda.OutOfMemoryError("CUDA out of memory"), None)
    assert [(f["reason"], f["oom"]) for kind, f in events if kind == "mem_snapshot"] == [("oom", 1)]
    plugin.probe.events.close()
