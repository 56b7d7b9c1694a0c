"""Cheap fingerprints of training state, taken inside the user's process.

Two runs are compared bit for bit through these, so they must change when any bit
changes and cost little enough to take after every optimizer step:

- tensors: the sum of each tensor's raw bits as integers (a float viewed as int32 and
  summed with wrap-around). Integer addition is exact and order-free, so the checksum
  is the same for any thread count and changes with any single flipped bit. Summing in
  int32 keeps it at the speed of a plain sum (int64 accumulation is 10x slower on CPU).
  On CUDA all sums of a step are stacked into one tensor and copied to the host without
  blocking; they are read once the copy's event completed: no host sync in the step.
- random number generators: a short hash of each generator's state (python, numpy,
  torch, CUDA, and any DataLoader's own generator). Hashing 5 KB takes microseconds.

torch is never imported here: this module runs where the program already imported it.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections import deque

from ptdiag.probe import gpu


# element size in bytes -> (integer view, accumulation dtype) by name
_BIT_VIEWS = {1: ("uint8", "int32"), 2: ("int16", "int32"), 4: ("int32", "int32"), 8: ("int64", "int64")}


def _digest(*chunks: bytes) -> str:
    h = hashlib.blake2b(digest_size=8)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def bit_sum(torch, tensor):
    """0-dim integer tensor on the tensor's device: the sum of its raw bits."""
    t = tensor.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    view, acc = _BIT_VIEWS[t.element_size()]
    return t.view(getattr(torch, view)).sum(dtype=getattr(torch, acc))


def _tensor_bytes(t) -> bytes:
    try:
        return t.numpy().tobytes()
    except Exception:  # numpy missing or not a CPU tensor
        return bytes(t.cpu().tolist())


def rng_fingerprints(loaders=()) -> dict[str, str]:
    """A hash of every generator state the program can draw from; modules it never
    imported (numpy) or devices it never used (CUDA) are left out, never initialised."""
    found: dict[str, str] = {}
    random = sys.modules.get("random")
    if random is not None:
        version, state, gauss = random.getstate()
        found["python"] = _digest(array("Q", state).tobytes(), repr(gauss).encode())
    numpy = sys.modules.get("numpy")
    if numpy is not None and hasattr(numpy, "random"):
        kind, keys, pos, has_gauss, gauss = numpy.random.get_state()
        found["numpy"] = _digest(keys.tobytes(), repr((kind, pos, has_gauss, gauss)).encode())
    torch = sys.modules.get("torch")
    if torch is not None:
        found["torch"] = _digest(_tensor_bytes(torch.get_rng_state()))
        if torch.cuda.is_initialized():
            found["cuda"] = _digest(*(_tensor_bytes(s) for s in torch.cuda.get_rng_state_all()))
    for index, loader in loaders:
        generator = getattr(loader, "generator", None)
        if generator is not None:
            found[f"loader{index}"] = _digest(_tensor_bytes(generator.get_state()))
    return found


class PendingSums:
    """Per-step bit sums, read back without stalling a CUDA stream.

    `push` stacks the step's 0-dim sums into one tensor; on CPU it is read at once, on
    CUDA it is copied to the host asynchronously and `ready()` hands it over once the
    copy's event has completed (`wait=True` at exit). The event is recorded on the current
    stream of the sums' device, where torch queued them and the copy, not on the current
    device's (cuda:0 for a rank on cuda:k that never called set_device)."""

    def __init__(self) -> None:
        self._pending: deque = deque()

    def push(self, torch, key, sums: list) -> list:
        if not sums:
            return [(key, [])]
        stacked = torch.stack([s.to(torch.int64) for s in sums]) if len({s.device for s in sums}) == 1 \
            else torch.stack([s.to("cpu", torch.int64) for s in sums])
        if stacked.device.type == "cpu":
            return self.ready() + [(key, stacked.tolist())]
        host = stacked.to("cpu", non_blocking=True)
        event = gpu.record_event(torch, stacked.device)  # where the sums and the copy were queued
        self._pending.append((key, host, event))
        return self.ready()

    def ready(self, wait: bool = False) -> list:
        done = []
        while self._pending and (wait or self._pending[0][2].query()):
            key, host, event = self._pending.popleft()
            event.synchronize()
            done.append((key, host.tolist()))
        return done
