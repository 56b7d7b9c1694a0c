"""The step breakdown's GPU rows (CUDA events at the phase boundaries) on recorded event
times: torch.cuda.Event is replaced by a clock-reading stand-in (and the stream and device
look-ups by recording ones), so the real GpuPhases and StepBreakdown code runs on a
CPU-only machine."""

from __future__ import annotations

import contextlib
import time

import torch

from ptdiag.probe.plugins.performance.breakdown import StepBreakdown
from ptdiag.specialists.performance.measured import breakdown
from test_performance_units import _train


class RecordedEvent:
    """torch.cuda.Event's interface over the host clock: recorded when record() is
    called, always complete."""

    recorded_on: list = []  # the stream of each record()

    def __init__(self, enable_timing: bool = False) -> None:
        self.at = None

    def record(self, stream=None) -> None:
        self.at = time.perf_counter()
        self.recorded_on.append(stream)

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "RecordedEvent") -> float:
        return 1000.0 * (end.at - self.at)


def test_gpu_rows_of_instrumented_steps_say_so(monkeypatch):
    """Marked on the current stream of the model's device (cuda:1 here), whatever device is
    current: a rank on cuda:1 that never called set_device has cuda:0 current."""
    monkeypatch.setattr(torch.cuda, "Event", RecordedEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"current stream of {device}")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    RecordedEvent.recorded_on.clear()
    emitted = []
    timer = StepBreakdown(lambda event, rows: emitted.append(rows))
    timer.use_cuda(torch.device("cuda", 1))
    timer.instrumented.update({4, 5})
    for _ in _train(8, timer):
        pass
    timer.flush(wait_gpu=True)
    rows = [r for batch in emitted for r in batch]
    gpu_rows = [r for r in rows if r.get("gpu")]
    assert [r["step"] for r in gpu_rows] == list(range(2, 9))
    assert [r["step"] for r in gpu_rows if r.get("instrumented")] == [4, 5]
    assert all(r["backward"] > 0 for r in gpu_rows)
    summary = breakdown(gpu_rows, batch=32)
    assert not {4, 5} & set(summary["steps_used"])
    assert set(RecordedEvent.recorded_on) == {"current stream of cuda:1"}
