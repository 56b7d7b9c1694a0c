"""Where each step's time goes: data wait, forward, backward, optimizer, other.

Runs in the user's process on every step, so it only reads the clock at the phase
boundaries the probe already reports (batch handed over, backward called and returned,
optimizer step began and ended) plus a pre/post forward hook on the model. On CUDA the
host clock measures when work was *launched*, not when it ran, so the same boundaries
are also marked with CUDA events on the current stream of the model's device (not of the
current device: a rank on cuda:k may never have called set_device); their elapsed times are read
only once the GPU has passed them (`Event.query()`), never with a host synchronisation.
Rows are buffered and written a batch at a time to keep the event log off the hot path.

Inside the profiler/scan windows a row also carries `runq`: the seconds the step's thread
was ready to run but waited for a CPU (the kernel's run delay). On a machine with more
runnable threads than cores a rank can be held off the CPU step after step; its wall time
then looks like more work (a straggler) where it is the machine's, and the analysis takes
that wait out before comparing ranks.
"""

from __future__ import annotations

import time
from collections import deque

from ptdiag.events import STEP_PHASES as PHASES
from ptdiag.probe import gpu

FLUSH_EVERY = 32  # rows per perf_steps event
GPU_PENDING_MAX = 64  # steps of CUDA events kept waiting before the oldest are dropped
SCHEDSTAT = "/proc/thread-self/schedstat"  # "<on-CPU ns> <run delay ns> <timeslices>" (Linux)


def run_delay_s() -> float | None:
    """The calling thread's total wait for a CPU so far, in seconds; None where the kernel
    does not say (not Linux, or no schedstat): about 10 us, read only in the windows."""
    try:
        with open(SCHEDSTAT, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class StepBreakdown:
    def __init__(self, emit) -> None:
        self._emit = emit
        self._rows: list[dict] = []
        self._last_end: float | None = None
        self._data = 0.0
        self._phase = dict.fromkeys(PHASES, 0.0)
        self._started: dict[str, float] = {}
        self._gpu: GpuPhases | None = None
        self._run_delay: float | None = None  # run_delay_s() at the last step's end, in and before the windows
        self.instrumented: set[int] = set()  # steps inside a profiler/scan window

    def use_cuda(self, device) -> None:
        self._gpu = GpuPhases(device)

    # -- phase boundaries (probe hooks) ------------------------------------------------
    def data_wait(self, seconds: float) -> None:
        self._data += seconds

    def begin(self, phase: str) -> None:
        self._started[phase] = time.perf_counter()
        if self._gpu is not None:
            self._gpu.mark(f"{phase}_begin")

    def end(self, phase: str) -> None:
        started = self._started.pop(phase, None)
        if started is not None:
            self._phase[phase] += time.perf_counter() - started
            if self._gpu is not None:
                self._gpu.mark(f"{phase}_end")

    def forward_pre_hook(self, module, args) -> None:
        """Outermost call only: a model that calls itself again times once."""
        if "forward" not in self._started:
            self.begin("forward")

    def forward_hook(self, module, args, kwargs, output) -> None:
        self.end("forward")

    def step_end(self, step: int, keep: bool = True) -> None:
        """`keep`: whether this step's row is kept (the budget may keep 1 step in N)."""
        now = time.perf_counter()
        if self._last_end is not None and keep:
            dt = now - self._last_end
            row = {"step": step, "dt": dt, "data": self._data, **self._phase}
            row["other"] = max(0.0, dt - self._data - sum(self._phase.values()))
            waited = self._waited_for_cpu() if step in self.instrumented else None
            if waited is not None:
                row["runq"] = waited
            self._rows.append(self._flagged({k: round(v, 7) if isinstance(v, float) else v for k, v in row.items()}))
        if self._gpu is not None:
            self._gpu.step_end(step)
            self._rows.extend(map(self._flagged, self._gpu.ready()))
        self._last_end = now
        self._run_delay = run_delay_s() if step + 1 in self.instrumented else None
        self._started.clear()  # a phase still open at the step's end was cut short
        self._data = 0.0
        self._phase = dict.fromkeys(PHASES, 0.0)
        if len(self._rows) >= FLUSH_EVERY:
            self.flush()

    def _waited_for_cpu(self) -> float | None:
        """This step's run delay: the counter now less the one read at the last step's end."""
        before, now = self._run_delay, run_delay_s()
        return round(now - before, 7) if before is not None and now is not None else None

    def _flagged(self, row: dict) -> dict:
        """A host or GPU row of a step inside a profiler/scan window says so: the analysis
        leaves those steps out of the typical step."""
        if row["step"] in self.instrumented:
            row["instrumented"] = True
        return row

    def flush(self, wait_gpu: bool = False) -> None:
        if self._gpu is not None and wait_gpu:
            self._rows.extend(map(self._flagged, self._gpu.ready(wait=True)))
        if self._rows:
            self._emit("perf_steps", rows=self._rows)
            self._rows = []


class GpuPhases:
    """Per step, CUDA events at the phase boundaries; device times once they are done."""

    def __init__(self, device) -> None:
        import torch

        self._torch = torch
        self._device = device
        self._marks: dict[str, object] = {}
        self._pending: deque = deque()
        self._previous_end = None

    def mark(self, name: str) -> None:
        self._marks[name] = gpu.record_event(self._torch, self._device, enable_timing=True)

    def step_end(self, step: int) -> None:
        self.mark("step_end")
        marks, self._marks = self._marks, {}
        if self._previous_end is not None:
            self._pending.append((step, self._previous_end, marks))
            if len(self._pending) > GPU_PENDING_MAX:
                self._pending.popleft()
        self._previous_end = marks["step_end"]

    def ready(self, wait: bool = False) -> list[dict]:
        rows = []
        while self._pending and (wait or self._pending[0][2]["step_end"].query()):
            step, start, marks = self._pending.popleft()
            end = marks["step_end"]
            if wait:
                end.synchronize()
            row = {"step": step, "gpu": True, "dt": start.elapsed_time(end) / 1000.0}
            for phase in PHASES:
                begin, finish = marks.get(f"{phase}_begin"), marks.get(f"{phase}_end")
                row[phase] = begin.elapsed_time(finish) / 1000.0 if begin and finish else 0.0
            rows.append({k: round(v, 7) if isinstance(v, float) else v for k, v in row.items()})
        return rows
