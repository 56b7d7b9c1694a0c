"""The step breakdown's GPU rows (CUDA events at the phase boundaries) on recorded event
times: torch.cuda.Event is replaced by a clock-reading stand-in, so the real GpuPhases and
StepBreakdown code runs on a CPU-only machine."""

from __future__ import annotations

import time

import torch

from ptdiag.probe.plugins.performance.breakdown import StepBreakdown
from ptdiag.specialists.performance.measured import breakdown
from test_performance_units import _train


class RecordedEvent:
    """torch.cuda.Event's interface over the host clock: recorded when record() is
    called, always complete."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.at = None

    def record(self) -> None:
        self.at = time.perf_counter()

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "RecordedEvent") -> float:
        return 1000.0 * (end.at - self.at)


def test_gpu_rows_of_instrumented_steps_say_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", RecordedEvent)
    emitted = []
    timer = StepBreakdown(lambda event, rows: emitted.append(rows))
    timer.use_cuda()
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
