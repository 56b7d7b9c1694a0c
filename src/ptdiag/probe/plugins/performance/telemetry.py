"""Host and GPU telemetry sampled in the background while the training runs.

psutil: CPU use of the training process and of its children (DataLoader workers), and
the cores it may use. NVML (nvidia-ml-py), only when a CUDA device is in use: GPU
utilisation, memory, SM clock, power and the clock-throttle reasons. One daemon thread
samples every SAMPLE_S seconds; each source is optional and a failing one is dropped,
so nothing is ever reported that was not measured.
"""

from __future__ import annotations

import os
import threading
import time

SAMPLE_S = 0.5
MAX_SAMPLES = 2000  # ~17 minutes at SAMPLE_S; older samples are summarised, not kept
# NVML clock-throttle reason bits worth naming (nvmlClocksThrottleReason*).
THROTTLE_REASONS = {
    0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake",
}


class Telemetry:
    def __init__(self) -> None:
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = None
        self._nvml = None
        self._gpu = None

    def start(self, cuda_device: int | None) -> None:
        try:
            import psutil

            self._process = psutil.Process()
            self._process.cpu_percent(None)
        except Exception:
            self._process = None
        if cuda_device is not None:
            self._gpu = _nvml_handle(cuda_device)
            if self._gpu is not None:
                import pynvml

                self._nvml = pynvml
        self._thread = threading.Thread(target=self._run, name="ptdiag-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * SAMPLE_S)
        return self.summary()

    def _run(self) -> None:
        workers: dict[int, object] = {}
        while not self._stop.wait(SAMPLE_S):
            sample = {"t": time.time()}
            if self._process is not None:
                try:
                    sample["main_cpu_pct"] = self._process.cpu_percent(None)
                    sample["workers_cpu_pct"] = _children_cpu(self._process, workers)
                except Exception:
                    self._process = None
            if self._gpu is not None:
                try:
                    sample.update(_gpu_sample(self._nvml, self._gpu))
                except Exception:
                    self._gpu = None
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append(sample)

    def summary(self) -> dict:
        found = {"samples": len(self.samples), "interval_s": SAMPLE_S, "cores": usable_cores(),
                 "gpu": self._nvml is not None}
        for key in ("main_cpu_pct", "gpu_util_pct", "gpu_mem_used_mb", "sm_clock_mhz", "power_w"):
            values = [s[key] for s in self.samples if key in s]
            if values:
                found[key] = {"mean": round(sum(values) / len(values), 1), "max": max(values)}
        worker_rows = [s["workers_cpu_pct"] for s in self.samples if s.get("workers_cpu_pct")]
        if worker_rows:
            found["workers"] = max(len(r) for r in worker_rows)
            found["workers_cpu_pct"] = {"mean": round(sum(sum(r) for r in worker_rows) / len(worker_rows), 1),
                                        "max": max(sum(r) for r in worker_rows)}
        reasons = sorted({r for s in self.samples for r in s.get("throttle", [])})
        if self._nvml is not None:
            found["throttle_reasons"] = reasons
        return found


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _children_cpu(process, known: dict) -> list[float]:
    """cpu_percent of each live child; the first reading of a new child is skipped (0)."""
    found = []
    for child in process.children(recursive=False):
        tracked = known.setdefault(child.pid, child)
        try:
            found.append(tracked.cpu_percent(None))
        except Exception:
            known.pop(child.pid, None)
    return found


def _nvml_handle(cuda_device: int):
    """The NVML handle of the CUDA device in use, matched by PCI bus id (CUDA and NVML
    number devices differently under CUDA_VISIBLE_DEVICES)."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        props = torch.cuda.get_device_properties(cuda_device)
        bus_id = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    except Exception:
        return None


def _gpu_sample(nvml, handle) -> dict:
    util = nvml.nvmlDeviceGetUtilizationRates(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    sample = {"gpu_util_pct": util.gpu, "gpu_mem_used_mb": round(memory.used / 2**20),
              "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)}
    try:
        sample["power_w"] = round(nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, 1)
    except Exception:
        pass
    try:
        bits = nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
        sample["throttle"] = [name for bit, name in THROTTLE_REASONS.items() if bits & bit]
    except Exception:
        pass
    return sample
