"""Inspector for CUDA memory snapshots (`torch.cuda.memory._dump_snapshot` pickles).

`ptdiag inspect SNAPSHOT.pickle` and the memory specialist's OOM post-mortem both come
here: `sniff` recognises the file cheaply, `inspect` loads it without executing anything
(builtins-only unpickling) and `analyse_snapshot` measures it: totals per device, the
peak of the allocator trace and who was alive at it, each OOM with ranked fixes, and
fragmentation. Nothing here needs a GPU or imports torch.
"""

from __future__ import annotations

import io
import pickletools
from pathlib import Path
from typing import Any

from ptdiag.findings import Analysis, sort_findings
from ptdiag.specialists.memory.snapshot_findings import device_findings
from ptdiag.specialists.memory.snapshot_format import (
    ALLOCATED, SnapshotError, load_snapshot_file, parse_snapshot,
)
from ptdiag.specialists.memory.snapshot_measure import (
    TOP_SITES, DeviceMeasure, expandable_segments_setting, measure_device,
)
from ptdiag.specialists.memory.snapshot_layout import layout
from ptdiag.specialists.memory.snapshot_sites import top_sites

KIND = "memory_snapshot"

SNIFF_BYTES = 4096
# A snapshot pickle opens a dict whose first key is one of these (torch writes
# "segments" first); everything before it is framing or memo bookkeeping.
SNAPSHOT_KEYS = frozenset({"segments", "device_traces"})
PICKLE_BOOKKEEPING_OPS = frozenset({"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "MARK"})
PICKLE_DICT_OPS = frozenset({"EMPTY_DICT", "DICT"})

__all__ = ["KIND", "SnapshotError", "analyse_snapshot", "inspect", "sniff"]


def sniff(path: Path) -> bool:
    """True when the file is a pickle opening a dict keyed like a snapshot; reads 4 KiB only."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return False
    opened_dict = False
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name in PICKLE_BOOKKEEPING_OPS:
                continue
            if not opened_dict:
                if opcode.name not in PICKLE_DICT_OPS:
                    return False
                opened_dict = True
                continue
            return isinstance(arg, str) and arg in SNAPSHOT_KEYS
    except ValueError:  # not pickle opcodes, or the head ends mid-opcode
        return False
    return False


def inspect(path: Path) -> Analysis:
    """Load a snapshot file safely and analyse it; SnapshotError says why a file cannot be read."""
    return analyse_snapshot(load_snapshot_file(Path(path)))


def analyse_snapshot(snapshot: dict[str, Any], user_roots: list[str] | None = None) -> Analysis:
    """Findings and `metrics["memory_snapshot"]` for a snapshot dict as torch produces it.

    `user_roots`: directories holding the user's code; allocation sites are then the
    innermost frame under one of them (default: any frame outside torch, site-packages
    and the standard library).
    """
    parsed = parse_snapshot(snapshot)
    measures = [measure_device(parsed, device, user_roots) for device in parsed.devices]
    findings = [f for m in measures for f in device_findings(m)]
    live_blocks = [(b.size, b.frames) for s in parsed.segments for b in s.blocks if b.state == ALLOCATED]
    totals = layout(parsed.segments)
    peak = max((m for m in measures if m.peak), key=lambda m: m.peak.bytes, default=None)
    metrics = {
        "reserved_bytes": totals.reserved,
        "allocated_bytes": totals.allocated,
        "inactive_bytes": totals.inactive,
        "pending_free_bytes": totals.pending_free,
        "segments": totals.segments,
        "peak_allocated_bytes": peak.peak.bytes if peak else None,
        "peak_time_us": peak.peak.time_us if peak else None,
        "peak_event_index": peak.peak.event_index if peak else None,
        "peak_device": peak.device if peak else None,
        "peak_top_sites": [s.to_dict() for s in peak.peak_sites] if peak else [],
        "top_sites": [s.to_dict() for s in top_sites(live_blocks, user_roots, TOP_SITES)],
        "trace_events": sum(m.trace_events for m in measures),
        "oom_events": sum(len(m.ooms) for m in measures),
        "expandable_segments": expandable_segments_setting(parsed, totals),
        "allocator_settings": parsed.allocator_settings,
        "devices": [_device_metrics(m) for m in measures],
    }
    return Analysis(findings=sort_findings(findings), metrics={KIND: metrics})


def _device_metrics(measure: DeviceMeasure) -> dict[str, Any]:
    return {
        **measure.layout.to_dict(),
        "trace_events": measure.trace_events,
        "oom_events": len(measure.ooms),
        "peak_allocated_bytes": measure.peak.bytes if measure.peak else None,
        "peak_event_index": measure.peak.event_index if measure.peak else None,
        "peak_time_us": measure.peak.time_us if measure.peak else None,
    }
