"""ptdiag's own use of CUDA inside the program: never first, never inside a captured CUDA
graph, always on the device of the tensors concerned.

Never first. `torch.cuda.is_available()` calls `cudaGetDeviceCount` (torch/cuda/__init__.py:
"initializes the CUDA Driver API via cuInit"; `_cuda_getDeviceCount` also poisons fork), and
the allocator's history and OOM observer initialise the device. Done by ptdiag at `import
torch`, a `CUDA_VISIBLE_DEVICES` or `PYTORCH_CUDA_ALLOC_CONF` the program sets later is
ignored, a forked child that uses CUDA fails, and a CPU-only program gets a CUDA context.
So work that needs CUDA is queued with torch's own queue of calls run at initialisation
(`torch.cuda._lazy_call`: run by `_lazy_init` right after `_cuda_init`, before the
program's first CUDA tensor exists), and what is asked before that reads NVML
(`device_count()`'s NVML path), which needs no CUDA context.

Never inside a capture. Inside `torch.cuda.graph` (or any stream capture) an event query,
a `.tolist()` or a copy to the host invalidates the capture and the program crashes; a
kernel ptdiag launches would become part of the program's graph. `capturing()` is the one
predicate every path of the probe that can reach the device asks first: the plugins'
hooks (Dispatcher), the model's hooks (ModelHooks) and the op watches (instruments).
Replays of the graph run no Python at all, so nothing of ptdiag runs there anyway.

On the right device. A rank on `cuda:k` that never called `set_device` still has device 0
as its current device: an event recorded there completes at once, before the copy from
`cuda:k` it should fence, and creates a context on GPU 0. `record_event` records on the
current stream of the tensors' own device.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Callable

from ptdiag.probe import quiet_warnings

CAPTURE = "probe hooks inside CUDA graph capture"
CAPTURE_WHY = ("the program captures a CUDA graph: ptdiag's device work there would invalidate the capture, "
               "so its hooks do nothing while the capture runs, and the graph's replays run no Python: the steps "
               "they train are not seen")
_capture_said: list[Callable[[], None]] = []  # what the probe does the first time a capture is seen


def capturing() -> bool:
    """Whether the calling thread's current CUDA stream is capturing a graph (the first time,
    the probe says what it turned off). Never initialises CUDA: with no CUDA state yet
    nothing can be capturing, and torch's own check "returns False without initializing
    the context" (torch/cuda/graphs.py `is_current_stream_capturing`). It runs in every
    hook of the probe: a CPU program pays a flag read (`torch.cuda._initialized`)."""
    cuda = _torch_cuda[0] if _torch_cuda else _bind_torch_cuda()
    if cuda is None or not cuda._initialized or not cuda.is_initialized() or not cuda.is_current_stream_capturing():
        return False
    if _capture_said:
        _capture_said.pop()()
    return True


_torch_cuda: list = []  # [torch.cuda] once the program imported torch: what `capturing` asks


def _bind_torch_cuda():
    """torch.cuda once it is fully there (a hook may run while torch is still importing:
    a warning torch raises at import)."""
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    if not hasattr(cuda, "is_current_stream_capturing"):
        return None
    _torch_cuda.append(cuda)
    return cuda


def on_first_capture(say: Callable[[], None]) -> None:
    """`say()` once, the first time `capturing()` is true (the probe records what it turned off)."""
    _capture_said[:] = [say]


def after_cuda_init(torch, work: Callable[[], None], log_error: Callable[[str], None]) -> None:
    """Run `work` once the program has initialised CUDA: now if it has, else from torch's
    queue of calls deferred to initialisation. A queued call that raises turns the
    program's first CUDA use into `DeferredCudaCallError` (torch/cuda/__init__.py
    `_lazy_init`), so `work`'s failure is logged, never raised."""
    lazy_call = getattr(torch.cuda, "_lazy_call", None)
    if lazy_call is None:  # a torch without the queue: ptdiag does without, rather than go first
        return
    queued_by = os.getpid()

    def guarded() -> None:
        if os.getpid() != queued_by:  # a forked child inherited the queue: its CUDA is not the probed process's
            return
        try:
            work()
        except Exception:
            log_error(f"{getattr(work, '__qualname__', work)} at CUDA initialisation failed:\n"
                      f"{traceback.format_exc()}")

    lazy_call(guarded)


def visible_device_count(torch) -> int | None:
    """CUDA devices this process may use, as NVML counts them with CUDA_VISIBLE_DEVICES
    applied (`torch.cuda._device_count_nvml`, which `device_count()` tries first); None when
    NVML cannot tell. Once CUDA is initialised, torch's own count. `device_count()` itself
    is not called before: it falls back to `cudaGetDeviceCount` when NVML fails."""
    if torch.cuda.is_initialized():
        return torch.cuda.device_count()
    count_nvml = getattr(torch.cuda, "_device_count_nvml", None)
    if count_nvml is None:
        return None
    with quiet_warnings.ignored("Can't (initialize NVML|get nvml device count)"):  # torch warns on a box without a GPU driver
        count = count_nvml()
    return count if count >= 0 else None


def wait_for_device(torch, tensor) -> float:
    """Block until the work queued so far on the current stream of `tensor`'s device is
    done; the seconds waited (the program's device time, not ptdiag's work)."""
    start = time.perf_counter()
    record_event(torch, tensor.device).synchronize()
    return time.perf_counter() - start


def record_event(torch, device, **options):
    """A CUDA event recorded on the current stream of `device` (the tensors' own device,
    not the current one): it completes once the work queued there so far is done."""
    with torch.cuda.device(device):
        event = torch.cuda.Event(**options)
        event.record(torch.cuda.current_stream(device))
    return event
