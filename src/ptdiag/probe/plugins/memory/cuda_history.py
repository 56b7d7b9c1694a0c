"""CUDA allocator history from the first use, and snapshots where they answer questions.

The allocator records every alloc/free with its Python stack from the moment
`_record_memory_history` is on, so it is switched on as the program initialises CUDA,
before its first allocation (torch's queue of calls run at initialisation: switched on
at `import torch`, it would initialise CUDA before the program, probe/gpu.py).

An out-of-memory observer attached to the allocator is called before each OOM the
allocator raises: in forward, backward, optimizer step or evaluation alike, while the
memory that failed is still held. Not every such OOM reaches the program: torch catches
some itself (cuDNN retries with a smaller workspace, c10's CUDACachingAllocator calls
the observers before it throws whoever catches), others the program catches. Which one
ended the run is known only later, so each call's snapshot replaces the previous call's
in one slot, and the slot is kept as the OOM's snapshot when an OutOfMemoryError ends
the program (`oom_raised`: the last observer call before it is that error's), as the
last caught OOM's otherwise (`finish`). Another snapshot is dumped at the end.
Files are `_dump_snapshot` pickles: pytorch.org/memory_viz opens them, and
`snapshot.analyse_snapshot` reads them back.
"""

from __future__ import annotations

import os
from pathlib import Path

from ptdiag.events import OOM_CAUGHT as CAUGHT, OOM_RAISED as RAISED

WHAT = "CUDA allocator history"
MAX_ENTRIES = 100_000  # alloc/free events kept (ring buffer); a few KB each
SNAPSHOT_DIR = "memory"
# snapshots written by observer calls in one run: OOMs torch retries itself can come by the
# dozen (cuDNN's benchmark tries every algorithm), each dump costs a pickle of the history;
# past this many the OOM that ends the run is dumped when it does (counts replayed, not blocks)
MAX_OOM_DUMPS = 8
SLOT = "oom-slot"  # the last observer call's snapshot, until it is known which OOM it was


def snapshot_path(run_dir: Path, rank: int, reason: str) -> Path:
    folder = run_dir / SNAPSHOT_DIR
    folder.mkdir(exist_ok=True)
    return folder / f"rank{rank}.{reason}.pickle"


class CudaHistory:
    def __init__(self, torch, instruments, run_dir: Path, rank: int, emit, step=lambda: None) -> None:
        self.torch, self.instruments, self.run_dir, self.rank, self._emit = torch, instruments, run_dir, rank, emit
        self._step = step  # the step in progress, for the OOM events
        self.ooms = 0
        self.history = None
        self._slot_oom = 0  # the observer call whose snapshot the slot holds (0: none)
        self._dumps = 0
        self._decided = False

    def start(self) -> bool:
        self.history = self.instruments.record_allocator_history(WHAT, self.torch, MAX_ENTRIES, self._on_oom)
        return self.history is not None

    def _on_oom(self, device, requested, device_limit, device_free) -> None:
        """The allocator's observer (device, alloc_size, device_total or the memory-fraction
        limit, device_free): recorded, and its snapshot put in the slot. Called inside the
        failing allocation; AllocatorHistory keeps any error here from replacing the OOM."""
        self.ooms += 1
        self._emit("mem_cuda_oom", step=self._step(), device=device, requested=requested, device_limit=device_limit,
                   device_free=device_free, count=self.ooms)
        if self._decided or self._dumps >= MAX_OOM_DUMPS or self.history is None:
            return
        self._dumps += 1
        slot = snapshot_path(self.run_dir, self.rank, SLOT)
        partial = slot.with_suffix(".partial")
        if self.history.dump(str(partial)):
            os.replace(partial, slot)  # a dump cut short never replaces a whole one
            self._slot_oom = self.ooms

    def oom_raised(self) -> None:
        """An OutOfMemoryError ended the program: the last observer call was its OOM."""
        if self._decided or not self.ooms:
            return
        self._decided = True
        if self._slot_oom == self.ooms:
            self._keep_slot(RAISED)
        else:  # past MAX_OOM_DUMPS: its trace event is still in the history
            self.dump(RAISED, oom=self.ooms)

    def finish(self) -> None:
        """At exit: a slot not claimed by a raised OOM holds the last OOM that did not end the program."""
        if not self._decided and self._slot_oom:
            self._decided = True
            self._keep_slot(CAUGHT)
        self.dump("end")

    def _keep_slot(self, reason: str) -> None:
        path = snapshot_path(self.run_dir, self.rank, reason)
        os.replace(snapshot_path(self.run_dir, self.rank, SLOT), path)
        self._emit("mem_snapshot", reason=reason, path=str(path.relative_to(self.run_dir)), oom=self._slot_oom)

    def dump(self, reason: str, oom: int | None = None) -> None:
        if self.history is None:
            return
        path = snapshot_path(self.run_dir, self.rank, reason)
        if self.history.dump(str(path)):
            self._emit("mem_snapshot", reason=reason, path=str(path.relative_to(self.run_dir)), oom=oom)
