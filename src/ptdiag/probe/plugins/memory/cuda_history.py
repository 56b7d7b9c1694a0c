"""CUDA allocator history from the first use, and snapshots where they answer questions.

The allocator records every alloc/free with its Python stack from the moment
`_record_memory_history` is on, so it is switched on as the program initialises CUDA,
before its first allocation (torch's queue of calls run at initialisation: switched on
at `import torch`, it would initialise CUDA before the program, probe/gpu.py). An
out-of-memory observer attached to the allocator fires on every OOM, raised or caught
by the program, in forward, backward, optimizer step or evaluation alike: it dumps the
snapshot then, while the memory that failed is still held. Another is dumped at the end.
Files are `_dump_snapshot` pickles: pytorch.org/memory_viz opens them, and
`snapshot.analyse_snapshot` reads them back.
"""

from __future__ import annotations

from pathlib import Path

WHAT = "CUDA allocator history"
MAX_ENTRIES = 100_000  # alloc/free events kept (ring buffer); a few KB each
SNAPSHOT_DIR = "memory"


def snapshot_path(run_dir: Path, rank: int, reason: str) -> Path:
    folder = run_dir / SNAPSHOT_DIR
    folder.mkdir(exist_ok=True)
    return folder / f"rank{rank}.{reason}.pickle"


class CudaHistory:
    def __init__(self, torch, instruments, run_dir: Path, rank: int, emit) -> None:
        self.torch, self.instruments, self.run_dir, self.rank, self._emit = torch, instruments, run_dir, rank, emit
        self.ooms = 0
        self.history = None

    def start(self) -> bool:
        self.history = self.instruments.record_allocator_history(WHAT, self.torch, MAX_ENTRIES, self._on_oom)
        return self.history is not None

    def _on_oom(self, device, requested, device_allocated, device_free) -> None:
        """Called by the allocator before it raises; the first OOM's state is the one to keep."""
        self.ooms += 1
        self._emit("mem_cuda_oom", device=device, requested=requested, device_allocated=device_allocated,
                   device_free=device_free, count=self.ooms)
        if self.ooms == 1:
            self.dump("oom")

    def dump(self, reason: str) -> None:
        if self.history is None:
            return
        path = snapshot_path(self.run_dir, self.rank, reason)
        if self.history.dump(str(path)):
            self._emit("mem_snapshot", reason=reason, path=str(path.relative_to(self.run_dir)))
