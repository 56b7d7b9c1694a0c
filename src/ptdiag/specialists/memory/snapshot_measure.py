"""The numbers measured for one device of a snapshot: state, trace peak, and each OOM.

Findings are written from these records only, so every number a finding states can be
traced back to a field here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdiag.specialists.memory.snapshot_format import ALLOCATED, Snapshot
from ptdiag.specialists.memory.snapshot_frames import Site, infer_phase, user_site
from ptdiag.specialists.memory.snapshot_layout import Layout, layout
from ptdiag.specialists.memory.snapshot_replay import Allocation, Peak, TraceReplay
from ptdiag.specialists.memory.snapshot_sites import SiteTotal, top_sites

OOM_ACTION = "oom"
TOP_SITES = 10  # how many allocation sites a finding or the metrics list


@dataclass(frozen=True)
class OomMeasure:
    device: int | None
    event_index: int
    time_us: int | None
    requested: int
    device_free: int | None
    allocated: int
    reserved: int | None
    unallocated: int | None  # reserved but not allocated at the OOM: cached memory no request could use
    largest_free_block: int | None  # known only when nothing changed between the OOM and the snapshot
    site: Site  # the user line whose request failed
    phase: str | None
    top_sites: list[SiteTotal]
    expandable_segments: bool | None

    @property
    def shortfall(self) -> int | None:
        """Bytes the device lacked for this request."""
        return None if self.device_free is None else max(self.requested - self.device_free, 0)


@dataclass(frozen=True)
class DeviceMeasure:
    device: int
    layout: Layout
    trace_events: int
    peak: Peak | None
    peak_sites: list[SiteTotal]
    snapshot_sites: list[SiteTotal]
    ooms: list[OomMeasure]
    expandable_segments: bool | None


def expandable_segments_setting(snapshot: Snapshot, state: Layout) -> bool | None:
    """From allocator_settings (newer torch) or, failing that, the segments' own flags."""
    setting = (snapshot.allocator_settings or {}).get("expandable_segments")
    return setting if isinstance(setting, bool) else state.expandable_segments


def measure_device(snapshot: Snapshot, device: int, user_roots: list[str] | None) -> DeviceMeasure:
    segments = [s for s in snapshot.segments if s.device == device]
    events = snapshot.traces.get(device, [])
    state = layout(segments, device)
    expandable = expandable_segments_setting(snapshot, state)
    replay = TraceReplay(events, segments)
    peak = replay.peak()
    peak_sites = _sites(replay.state_after(peak.event_index)[1], user_roots) if peak else []
    live_blocks = [(b.size, b.frames) for s in segments for b in s.blocks if b.state == ALLOCATED]
    return DeviceMeasure(
        device=device,
        layout=state,
        trace_events=len(events),
        peak=peak,
        peak_sites=peak_sites,
        snapshot_sites=top_sites(live_blocks, user_roots, TOP_SITES),
        ooms=[_oom(replay, state, e.index, expandable, user_roots)
              for e in events if e.action == OOM_ACTION],
        expandable_segments=expandable,
    )


def _oom(replay: TraceReplay, state: Layout, index: int, expandable: bool | None,
         user_roots: list[str] | None) -> OomMeasure:
    event = replay.events[index]
    allocated, live = replay.state_after(index)
    # With no allocator change after the OOM the snapshot's layout is the OOM's layout
    # (block-exact); otherwise only the trace's counts hold.
    unchanged = replay.allocator_events_after(index) == 0
    reserved = state.reserved if unchanged else replay.reserved_after(index)
    if unchanged:
        unallocated: int | None = state.inactive
    else:
        unallocated = None if reserved is None else max(reserved - allocated, 0)
    return OomMeasure(
        device=state.device,
        event_index=index,
        time_us=event.time_us,
        requested=event.size,
        device_free=event.device_free,
        allocated=allocated,
        reserved=reserved,
        unallocated=unallocated,
        largest_free_block=state.largest_free_block if unchanged else None,
        site=user_site(event.frames, user_roots),
        phase=infer_phase(event.frames),
        top_sites=_sites(live, user_roots),
        expandable_segments=expandable,
    )


def _sites(live: list[Allocation], user_roots: list[str] | None) -> list[SiteTotal]:
    return top_sites([(a.size, a.frames) for a in live], user_roots, TOP_SITES)
