"""Replaying a device's allocator trace to know what was allocated at any event.

The trace is a ring buffer (`max_entries`), so it usually starts after the training
did: some allocations were already alive at its first event. They show up two ways,
and both are counted from the start: a `free_completed` whose `alloc` the trace never
saw, and a block still allocated at snapshot time that no `alloc` in the trace made.

Bytes here are the requested sizes the trace records (torch writes `requested_size`
into alloc and free events); memory becomes reusable only at `free_completed`, which is
also where torch's memory visualiser lowers its curve.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ptdiag.specialists.memory.snapshot_format import (
    ALLOCATED, PENDING_FREE, Block, Frame, Segment, TraceEvent,
)

ALLOC_ACTION = "alloc"
FREE_ACTION = "free_completed"
# How each segment event changes reserved memory (expandable segments map and unmap).
RESERVED_CHANGE = {"segment_alloc": +1, "segment_map": +1, "segment_free": -1, "segment_unmap": -1}
LIVE_STATES = (ALLOCATED, PENDING_FREE)  # not yet free_completed at snapshot time


@dataclass(frozen=True)
class Allocation:
    addr: int
    size: int
    frames: tuple[Frame, ...]


@dataclass(frozen=True)
class Peak:
    bytes: int
    event_index: int | None  # None: the peak was the state before the first event
    time_us: int | None


class TraceReplay:
    """One device's trace, with the allocations alive before it began."""

    def __init__(self, events: list[TraceEvent], segments: list[Segment]):
        self.events = events
        self.segments = segments
        self.preexisting = _preexisting(events, [b for s in segments for b in s.blocks])

    def walk(self) -> Iterator[tuple[TraceEvent, int, dict[int, Allocation]]]:
        """Yield each event with the allocated bytes and live allocations just after it."""
        live = {a.addr: a for a in self.preexisting}
        allocated = sum(a.size for a in live.values())
        for event in self.events:
            if event.action == ALLOC_ACTION and event.addr is not None:
                # An address handed out again means its free fell out of the trace.
                replaced = live.pop(event.addr, None)
                allocated -= replaced.size if replaced else 0
                live[event.addr] = Allocation(event.addr, event.size, event.frames)
                allocated += event.size
            elif event.action == FREE_ACTION and event.addr in live:
                allocated -= live.pop(event.addr).size
            yield event, allocated, live

    def peak(self) -> Peak | None:
        """The highest allocated bytes in the trace, first reached at which event; None without a trace."""
        if not self.events:
            return None
        best = Peak(sum(a.size for a in self.preexisting), None, None)
        for event, allocated, _ in self.walk():
            if allocated > best.bytes:
                best = Peak(allocated, event.index, event.time_us)
        return best

    def state_after(self, index: int | None) -> tuple[int, list[Allocation]]:
        """Allocated bytes and live allocations just after event `index` (None: before the first)."""
        if index is None:
            return sum(a.size for a in self.preexisting), list(self.preexisting)
        for event, allocated, live in self.walk():
            if event.index == index:
                return allocated, list(live.values())
        raise IndexError(f"trace has no event {index}")

    def reserved_after(self, index: int) -> int | None:
        """Reserved bytes just after event `index`, counted back from the snapshot's segments.

        None when the trace and the segments disagree (the count would go negative).
        """
        reserved = sum(s.total_size for s in self.segments)
        later = self.events[index + 1:]
        reserved -= sum(RESERVED_CHANGE.get(e.action, 0) * e.size for e in later)
        return reserved if reserved >= 0 else None

    def allocator_events_after(self, index: int) -> int:
        """How many events after `index` changed allocations or segments."""
        changing = {ALLOC_ACTION, FREE_ACTION, *RESERVED_CHANGE}
        return sum(1 for e in self.events[index + 1:] if e.action in changing)


def _preexisting(events: list[TraceEvent], blocks: list[Block]) -> list[Allocation]:
    made_in_trace: set[int] = set()
    before: list[Allocation] = []
    for event in events:
        if event.action == ALLOC_ACTION and event.addr is not None:
            made_in_trace.add(event.addr)
        elif event.action == FREE_ACTION and event.addr is not None:
            if event.addr in made_in_trace:
                made_in_trace.discard(event.addr)
            else:
                # Free events carry the allocation's own stack (torch records
                # block->context_when_allocated), so the site is still known.
                before.append(Allocation(event.addr, event.size, event.frames))
    freed_before = {a.addr for a in before}
    before += [
        Allocation(b.address, b.requested_size, b.frames)
        for b in blocks
        if b.state in LIVE_STATES and b.address not in made_in_trace and b.address not in freed_before
    ]
    return before
