"""Build CUDA memory snapshots in torch's own format, for tests on machines without a GPU.

`FakeAllocator` behaves like a tiny caching allocator: segments split into blocks on
allocation and merge back on free, and every action is written to the trace with the
fields torch writes (alloc/free events carry requested sizes and the allocation's stack,
an oom event carries `device_free` instead of `addr`). Its `snapshot()` is therefore
self-consistent, as a real `torch.cuda.memory._snapshot()` is. The newer format has
`time_us` on events and `allocator_settings`; the older one has neither.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

MiB = 2**20
GiB = 2**30
ROUNDING = 512  # torch rounds block sizes up to 512 bytes

SITE_PACKAGES = "/opt/venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"
CONV_FORWARD = (f"{SITE_PACKAGES}/torch/nn/modules/conv.py", 549, "_conv_forward")
MODULE_CALL = (f"{SITE_PACKAGES}/torch/nn/modules/module.py", 1786, "_call_impl")
MODULE_WRAPPED_CALL = (f"{SITE_PACKAGES}/torch/nn/modules/module.py", 1775, "_wrapped_call_impl")
AUTOGRAD_BACKWARD = (f"{SITE_PACKAGES}/torch/autograd/__init__.py", 353, "backward")
TENSOR_BACKWARD = (f"{SITE_PACKAGES}/torch/_tensor.py", 647, "backward")
OPTIM_STEP = (f"{SITE_PACKAGES}/torch/optim/adam.py", 247, "step")
RUNPY = ("<frozen runpy>", 88, "_run_code")
CPP_FRAME = ("??", 0, "at::native::empty_cuda(...)")


def stack(*frames: tuple[str, int, str]) -> list[dict[str, Any]]:
    """Frames innermost first, as torch records them."""
    return [{"filename": f, "line": line, "name": name} for f, line, name in frames]


def forward_stack(user_file: str, line: int, caller: tuple[str, int, str]) -> list[dict[str, Any]]:
    """An allocation inside a module's forward at `user_file:line`, called from `caller`."""
    return stack(CONV_FORWARD, (user_file, line, "forward"), MODULE_CALL, MODULE_WRAPPED_CALL,
                 caller, RUNPY)


class FakeAllocator:
    def __init__(self, device: int = 0, start_address: int = 0x7F0000000000, expandable: bool = False):
        self.device = device
        self.expandable = expandable
        self.segments: list[dict[str, Any]] = []
        self.trace: list[dict[str, Any]] = []
        self.recording = True
        self.clock_us = 1_000
        self.next_address = start_address

    def _record(self, event: dict[str, Any]) -> None:
        if self.recording:
            self.clock_us += 10
            self.trace.append({"stream": 0, "frames": [], **event, "time_us": self.clock_us})

    def new_segment(self, size: int) -> dict[str, Any]:
        address = self.next_address
        self.next_address += size + 64 * MiB
        segment = {
            "device": self.device, "address": address, "total_size": size, "stream": 0,
            "segment_type": "large", "segment_pool_id": (0, 0), "is_expandable": self.expandable,
            "frames": [],
            "blocks": [{"address": address, "size": size, "requested_size": 0, "state": "inactive",
                        "frames": []}],
        }
        self.segments.append(segment)
        self._record({"action": "segment_alloc", "addr": address, "size": size})
        return segment

    def malloc(self, nbytes: int, frames: list[dict[str, Any]],
               segment: dict[str, Any] | None = None) -> int:
        size = -(-nbytes // ROUNDING) * ROUNDING
        for seg in [segment] if segment else self.segments:
            for i, block in enumerate(seg["blocks"]):
                if block["state"] == "inactive" and block["size"] >= size:
                    used = {"address": block["address"], "size": size, "requested_size": nbytes,
                            "state": "active_allocated", "frames": frames}
                    rest = block["size"] - size
                    tail = [{"address": block["address"] + size, "size": rest, "requested_size": 0,
                             "state": "inactive", "frames": []}] if rest else []
                    seg["blocks"][i:i + 1] = [used, *tail]
                    self._record({"action": "alloc", "addr": used["address"], "size": nbytes,
                                  "frames": frames})
                    return used["address"]
        raise MemoryError(f"test allocator: no free block of {size} bytes")

    def free(self, address: int) -> None:
        for seg in self.segments:
            for block in seg["blocks"]:
                if block["address"] == address and block["state"] == "active_allocated":
                    for action in ("free_requested", "free_completed"):
                        self._record({"action": action, "addr": address, "size": block["requested_size"],
                                      "frames": block["frames"]})
                    block.update(state="inactive", requested_size=0, frames=[])
                    seg["blocks"] = _merged(seg["blocks"])
                    return
        raise KeyError(f"test allocator: {address:#x} is not allocated")

    def oom(self, nbytes: int, device_free: int, frames: list[dict[str, Any]]) -> None:
        self._record({"action": "oom", "device_free": device_free, "size": nbytes, "frames": frames})

    def snapshot(self, newer: bool = True) -> dict[str, Any]:
        segments = copy.deepcopy(self.segments)
        for seg in segments:
            active = [b for b in seg["blocks"] if b["state"] != "inactive"]
            seg["allocated_size"] = sum(b["size"] for b in active if b["state"] == "active_allocated")
            seg["active_size"] = sum(b["size"] for b in active)
            seg["requested_size"] = sum(b["requested_size"] for b in active)
        trace = copy.deepcopy(self.trace)
        traces = [[] for _ in range(self.device)] + [trace]  # device_traces is indexed by device
        snap: dict[str, Any] = {"segments": segments, "device_traces": traces}
        if newer:
            snap["allocator_settings"] = {
                "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True" if self.expandable else "",
                "max_split_size": -1, "garbage_collection_threshold": 0.0,
                "expandable_segments": self.expandable, "release_lock_on_cudamalloc": False,
                "pinned_use_cuda_host_register": False, "roundup_power2_divisions": {"1": 0},
            }
        else:
            for event in trace:
                del event["time_us"]
        return snap


def _merged(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for block in blocks:
        if out and block["state"] == "inactive" and out[-1]["state"] == "inactive":
            out[-1]["size"] += block["size"]
        else:
            out.append(block)
    return out


def write_snapshot(path: Path, snapshot: Any, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(snapshot, protocol=protocol))
    return path


TRAIN = "/home/user/proj/train.py"
MODEL = "/home/user/proj/model.py"
TRAIN_STEP = (TRAIN, 57, "main")


def forward_oom_allocator() -> FakeAllocator:
    """A run that dies in forward: 1 GiB of parameters from before recording began, four
    1 GiB activations at model.py:30, a freed 256 MiB temporary, then a 2 GiB request at
    model.py:32 with 512 MiB free on the device."""
    alloc = FakeAllocator()
    alloc.recording = False
    params = alloc.new_segment(1 * GiB)
    alloc.malloc(1 * GiB, stack((MODEL, 12, "__init__"), (TRAIN, 20, "main"), RUNPY), params)
    alloc.recording = True
    activations = alloc.new_segment(4 * GiB + 512 * MiB)
    for _ in range(4):
        alloc.malloc(1 * GiB, forward_stack(MODEL, 30, TRAIN_STEP), activations)
    alloc.free(alloc.malloc(256 * MiB, forward_stack(MODEL, 31, TRAIN_STEP), activations))
    alloc.oom(2 * GiB, 512 * MiB, forward_stack(MODEL, 32, TRAIN_STEP))
    return alloc


def fragmented_oom_allocator(expandable: bool = False) -> FakeAllocator:
    """One 3 GiB segment of twelve 256 MiB tensors from train.py:40, every third kept:
    2 GiB free in four 512 MiB holes, then a 768 MiB request that fits none of them."""
    alloc = FakeAllocator(expandable=expandable)
    segment = alloc.new_segment(3 * GiB)
    addresses = [alloc.malloc(256 * MiB, stack((TRAIN, 40, "main"), RUNPY), segment) for _ in range(12)]
    for i, address in enumerate(addresses):
        if i % 3:
            alloc.free(address)
    alloc.oom(768 * MiB, 100 * MiB, stack((TRAIN, 44, "main"), RUNPY))
    return alloc
