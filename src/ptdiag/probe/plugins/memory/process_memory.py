"""Process memory at one instant, read without a host synchronisation.

Host: resident set size now (psutil) and the process's lifetime peak (getrusage; it is
never reset, so the program's own readings of it stay what they would be without
ptdiag). CUDA: the caching allocator's host-side counters, which need no device sync.
"""

from __future__ import annotations

import resource
import sys

import psutil

_PROCESS = psutil.Process()
# ru_maxrss is KiB on Linux, bytes on macOS
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


def host_sample() -> dict:
    return {"rss": _PROCESS.memory_info().rss,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_UNIT}


def cuda_sample(torch, device) -> dict:
    """The allocator's counters of `device`, the model's (not the current device: a rank
    on cuda:k that never called set_device has cuda:0 current). Empty when the model is not
    on CUDA, or CUDA is unused: asking an uninitialised CUDA would create a context."""
    if device is None or device.type != "cuda" or not torch.cuda.is_initialized():
        return {}
    return {"cuda_allocated": torch.cuda.memory_allocated(device),
            "cuda_reserved": torch.cuda.memory_reserved(device),
            "cuda_peak": torch.cuda.max_memory_allocated(device),
            "cuda_total": torch.cuda.get_device_properties(device).total_memory}
