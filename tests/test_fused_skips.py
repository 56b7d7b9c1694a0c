"""Reading a fused optimizer's found_inf on CUDA without a host sync, at torch's call
boundary (no GPU here): a non-blocking copy and an event on the stream current on the
flag's device, read only once the event says the copy landed."""

from __future__ import annotations

import contextlib

import torch

from ptdiag.probe.plugins.tracking.fused_skips import FusedSkips


class Recorded:
    """The CUDA calls FusedSkips makes, and events that complete when the test says."""

    def __init__(self) -> None:
        self.calls, self.events = [], []

    def event(self):
        recorder = self

        class Event:
            def __init__(self) -> None:
                self.done = False
                recorder.events.append(self)

            def record(self, stream) -> None:
                recorder.calls.append(("record", stream))

            def query(self) -> bool:
                return self.done

            def synchronize(self) -> None:
                recorder.calls.append(("synchronize", self.done))

        return Event()


class CudaFlag:
    """found_inf as the fused step sees it: a 0-dim float tensor on cuda:1."""

    def __init__(self, value: float, recorder: Recorded) -> None:
        self.device, self.value, self.recorder = torch.device("cuda", 1), value, recorder

    def detach(self):
        return self

    def to(self, device, non_blocking=False):
        self.recorder.calls.append(("copy", device, non_blocking))
        return torch.tensor(self.value)


def test_a_cuda_found_inf_is_read_once_its_copy_landed_and_never_waited_for(monkeypatch):
    recorder = Recorded()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", recorder.event)
    skips = FusedSkips()
    assert skips.push(1, CudaFlag(1.0, recorder)) == []  # skipped on the device; not known yet
    assert skips.push(2, CudaFlag(0.0, recorder)) == []
    assert recorder.calls[:2] == [("copy", "cpu", True), ("record", "stream of cuda:1")]
    assert not any(call[0] == "synchronize" for call in recorder.calls)  # nothing waited for
    recorder.events[0].done = True
    assert skips.poll() == [1]  # step 2's copy has not landed: not read
    assert skips.poll(wait=True) == []  # at exit: step 2 was an update
    assert ("synchronize", False) in recorder.calls
