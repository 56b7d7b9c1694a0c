"""What a snapshot's segments hold at the moment it was taken, per device.

Reserved memory is what the caching allocator took from CUDA (sum of segments);
allocated is what live tensors use (blocks in state active_allocated, rounded block
sizes as torch's `memory_allocated` counts them); inactive blocks are cached and free
for reuse. Free memory only serves a request from one contiguous block, so the largest
inactive block against all inactive bytes measures fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdiag.specialists.memory.snapshot_format import ALLOCATED, INACTIVE, PENDING_FREE, Segment


@dataclass(frozen=True)
class Layout:
    device: int | None  # None: all devices together
    segments: int
    reserved: int
    allocated: int
    pending_free: int
    inactive: int
    free_blocks: int
    largest_free_block: int
    expandable_segments: bool | None  # True when every segment is expandable; None: not recorded

    @property
    def fragmentation(self) -> float | None:
        """1 - largest free block / all free bytes: 0 when it is one block, None when nothing is free."""
        if not self.inactive:
            return None
        return 1.0 - self.largest_free_block / self.inactive

    def to_dict(self) -> dict[str, object]:
        return {
            "device": self.device, "segments": self.segments, "reserved_bytes": self.reserved,
            "allocated_bytes": self.allocated, "pending_free_bytes": self.pending_free,
            "inactive_bytes": self.inactive, "free_blocks": self.free_blocks,
            "largest_free_block_bytes": self.largest_free_block,
            "fragmentation": self.fragmentation, "expandable_segments": self.expandable_segments,
        }


def layout(segments: list[Segment], device: int | None = None) -> Layout:
    blocks = [b for s in segments for b in s.blocks]

    def bytes_in(state: str) -> int:
        return sum(b.size for b in blocks if b.state == state)

    free = [b.size for b in blocks if b.state == INACTIVE]
    flags = [s.is_expandable for s in segments]
    return Layout(
        device=device,
        segments=len(segments),
        reserved=sum(s.total_size for s in segments),
        allocated=bytes_in(ALLOCATED),
        pending_free=bytes_in(PENDING_FREE),
        inactive=sum(free),
        free_blocks=len(free),
        largest_free_block=max(free, default=0),
        expandable_segments=None if not flags or None in flags else all(flags),
    )
