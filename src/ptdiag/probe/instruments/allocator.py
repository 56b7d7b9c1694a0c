"""The CUDA caching allocator's history: every alloc/free with its Python stack, and an
observer called before each out-of-memory error.

The observer runs inside the program's allocation, before torch raises the OOM; an
exception there would replace the program's OOM error (facts.md), so ptdiag's callback is
guarded: its fault stops the history and the program's error goes on unchanged.
"""

from __future__ import annotations

from typing import Callable


class AllocatorHistory:
    def __init__(self, instruments, what: str, torch) -> None:
        self.instruments, self.what, self.torch = instruments, what, torch
        self.active = False

    def start(self, max_entries: int, on_oom: Callable) -> bool:
        torch = self.torch
        if not torch.cuda.is_available():
            return False
        try:
            torch.cuda.memory._record_memory_history(max_entries=max_entries, stacks="python")
            torch._C._cuda_attach_out_of_memory_observer(self._observer(on_oom))
        except Exception as exc:
            self._fault(exc)
            return False
        self.active = True
        return True

    def _observer(self, on_oom: Callable) -> Callable:
        """torch's binding calls this with (device, alloc_size, device_total or the memory
        fraction's limit, device_free) and turns any exception it raises into the error of
        the failing allocation (`throw py::error_already_set()`): nothing may leave it."""
        def observe(device, requested, device_limit, device_free) -> None:
            if not self.active:
                return
            try:
                on_oom(device, requested, device_limit, device_free)
            except Exception as exc:
                try:
                    self._fault(exc)
                except Exception:
                    pass  # even reporting the fault failed (disk full): the program's OOM goes on

        return observe

    def dump(self, path: str) -> bool:
        """Write the snapshot (pytorch.org/memory_viz reads it); False when not written."""
        if not (self.active and self.torch.cuda.is_initialized()):
            return False
        try:
            self.torch.cuda.memory._dump_snapshot(path)
        except Exception as exc:
            self._fault(exc)
            return False
        return True

    def _fault(self, exc: BaseException) -> None:
        self.active = False
        try:
            self.torch.cuda.memory._record_memory_history(enabled=None)
        except Exception:
            pass  # it never started: nothing to stop
        self.instruments.fault(self.what, exc)
