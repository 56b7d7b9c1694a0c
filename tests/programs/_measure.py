"""Shared by the budget programs: each step's wall time and CPU time and the process's
peak memory, written by the program itself, so a bare run and a run under ptdiag are
measured alike. CPU time (all the process's threads) does not count the time a loaded
box left the process waiting for a core."""
import atexit
import json
import resource
import sys
import time

MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


class StepTimes:
    """`tick()` once per training step; at exit, {"steps": [...s], "cpu": [...s],
    "peak_rss": bytes} to `path`."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.steps: list[float] = []
        self.cpu: list[float] = []
        self._last, self._last_cpu = time.perf_counter(), time.process_time()
        if path:
            atexit.register(self.write)

    def tick(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.steps.append(now - self._last)
        self.cpu.append(cpu - self._last_cpu)
        self._last, self._last_cpu = now, cpu

    def write(self) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_UNIT
        with open(self.path, "w") as fh:
            json.dump({"steps": self.steps, "cpu": self.cpu, "peak_rss": peak}, fh)
