"""Findings from a snapshot's measured numbers: the OOM, a fragmented cache, who holds memory.

Each claim is gated by a threshold below and states the numbers that passed it. An OOM's
remedies are ranked by the bytes each one addresses, so the first fix is the one the
measurement says matters most.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdiag.findings import Finding
from ptdiag.specialists.memory.snapshot_measure import DeviceMeasure, OomMeasure

SPECIALIST = "memory"

# Recommend expandable segments at an OOM when reserved-but-unallocated memory is at
# least this share of reserved (torch's own OOM message gives the same advice when
# "reserved but unallocated memory is large"), or when it alone covers the shortfall.
EXPANDABLE_MIN_UNALLOCATED_SHARE = 0.2
# A cache is fragmented when free cached memory is large in bytes and in share of the
# reserved memory, yet its largest single block is a small part of it.
FRAGMENTATION_MIN_INACTIVE_BYTES = 256 * 2**20
FRAGMENTATION_MIN_INACTIVE_SHARE = 0.3
FRAGMENTATION_MAX_LARGEST_SHARE = 0.5
# A site holding at least this share of the allocated bytes is said to dominate.
DOMINANT_SITE_SHARE = 0.5

PHASE_ADVICE = {
    "forward": "these are activations kept for backward: a smaller batch or sequence length, "
               "torch.utils.checkpoint around the largest blocks, or autocast to bfloat16 shrinks them",
    "backward": "these are gradients and backward temporaries: smaller micro-batches with gradient "
                "accumulation, or activation checkpointing, lowers them",
    "optimizer": "these are optimizer state and step temporaries: foreach=False lowers the step's "
                 "temporary peak; an optimizer with less state, or state sharded across ranks "
                 "(ZeRO / FSDP), lowers what stays",
    None: "free these tensors sooner (del them, and keep no tensor that still holds the autograd "
          "graph) or make them smaller",
}
FRAGMENTATION_FIX = {
    False: "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in the environment before the first "
           "CUDA allocation: segments then grow in place instead of stranding free memory between "
           "live blocks.",
    True: "Expandable segments are already on, so the free space sits between long-lived blocks: "
          "create long-lived tensors (model, optimizer state, buffers) before the loop, and keep "
          "tensor shapes stable from step to step.",
}
VIEWER_HINT = "Open the snapshot at https://pytorch.org/memory_viz to see these allocations over time."

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


@dataclass(frozen=True)
class Remedy:
    action: str
    bytes: int
    text: str


def format_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    value, unit = float(n), BYTE_UNITS[0]
    for unit in BYTE_UNITS:
        if abs(value) < 1024 or unit == BYTE_UNITS[-1]:
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"


def device_findings(measure: DeviceMeasure) -> list[Finding]:
    findings = []
    if measure.ooms:
        findings.append(oom_finding(measure.ooms[-1], len(measure.ooms)))
    for maybe in (fragmentation_finding(measure), allocation_sites_finding(measure)):
        if maybe is not None:
            findings.append(maybe)
    return findings


def oom_remedies(oom: OomMeasure) -> list[Remedy]:
    """Candidate fixes for one OOM, largest measured effect first."""
    remedies = []
    unallocated, reserved = oom.unallocated or 0, oom.reserved or 0
    large_share = reserved > 0 and unallocated >= EXPANDABLE_MIN_UNALLOCATED_SHARE * reserved
    covers = oom.shortfall is not None and unallocated >= oom.shortfall > 0
    if oom.expandable_segments is not True and unallocated and (large_share or covers):
        largest = ""
        if oom.largest_free_block is not None and oom.largest_free_block < oom.requested:
            largest = f", and no free block was larger than {format_bytes(oom.largest_free_block)}"
        remedies.append(Remedy(
            "expandable_segments", unallocated,
            f"set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before the first CUDA allocation: "
            f"{format_bytes(unallocated)} ({_share(unallocated, reserved)} of reserved) was cached but "
            f"unallocated at the OOM{largest}; expandable segments let the allocator reuse it",
        ))
    if oom.top_sites:
        top = oom.top_sites[0]
        remedies.append(Remedy(
            "reduce_site", top.bytes,
            f"reduce what {top.site.location} keeps alive: {format_bytes(top.bytes)} in {top.count} "
            f"allocation(s), {_share(top.bytes, oom.allocated)} of allocated at the OOM "
            f"(phase: {top.phase or 'unknown'}); {PHASE_ADVICE[top.phase]}",
        ))
    return sorted(remedies, key=lambda r: -r.bytes)


def oom_finding(oom: OomMeasure, oom_events: int) -> Finding:
    remedies = oom_remedies(oom)
    top = oom.top_sites[0] if oom.top_sites else None
    where = f" at {oom.site.location}" if oom.site.file else ""
    phase = f" during {oom.phase}" if oom.phase else ""
    detail = (
        f"A request for {format_bytes(oom.requested)}{where} failed on device {oom.device} "
        f"(trace event {oom.event_index}{_at(oom.time_us)}) with {format_bytes(oom.device_free)} "
        f"free on the device, {format_bytes(oom.shortfall)} short. The allocator held "
        f"{format_bytes(oom.allocated)} allocated of {format_bytes(oom.reserved)} reserved."
    )
    if top is not None:
        dominates = " dominates:" if top.bytes >= DOMINANT_SITE_SHARE * oom.allocated else ""
        detail += (f" Largest holder{dominates} {top.site.location} with {format_bytes(top.bytes)} "
                   f"({_share(top.bytes, oom.allocated)}).")
    if oom_events > 1:
        detail += f" The trace holds {oom_events} OOM events; this is the last."
    return Finding(
        code="memory.oom",
        specialist=SPECIALIST,
        severity="error",
        title=f"CUDA out of memory{phase}: {format_bytes(oom.requested)} requested{where}, "
              f"{format_bytes(oom.device_free)} free",
        detail=detail,
        evidence={
            "device": oom.device, "event_index": oom.event_index, "time_us": oom.time_us,
            "requested_bytes": oom.requested, "device_free_bytes": oom.device_free,
            "shortfall_bytes": oom.shortfall, "reserved": oom.reserved, "allocated": oom.allocated,
            "unallocated_bytes": oom.unallocated, "largest_free_block_bytes": oom.largest_free_block,
            "location": oom.site.location if oom.site.file else None, "phase": oom.phase,
            "top_sites": [s.to_dict() for s in oom.top_sites],
            "expandable_segments": oom.expandable_segments, "oom_events": oom_events,
            "remedies": [{"action": r.action, "bytes": r.bytes} for r in remedies],
        },
        fix=" ".join(f"{i}. {r.text[0].upper()}{r.text[1:]}." for i, r in enumerate(remedies, 1)),
    )


def fragmentation_finding(measure: DeviceMeasure) -> Finding | None:
    """Free cached memory split into blocks too small to use: measured from the block layout."""
    state = measure.layout
    failed = next((o for o in reversed(measure.ooms)
                   if o.largest_free_block is not None and o.unallocated is not None
                   and o.largest_free_block < o.requested <= o.unallocated), None)
    spread = (
        state.inactive >= FRAGMENTATION_MIN_INACTIVE_BYTES
        and state.inactive >= FRAGMENTATION_MIN_INACTIVE_SHARE * state.reserved
        and state.largest_free_block <= FRAGMENTATION_MAX_LARGEST_SHARE * state.inactive
    )
    if failed is None and not spread:
        return None
    title = (f"Fragmented CUDA cache on device {state.device}: {format_bytes(state.inactive)} free in "
             f"{state.free_blocks} blocks, the largest {format_bytes(state.largest_free_block)}")
    detail = (f"{_share(state.inactive, state.reserved)} of the {format_bytes(state.reserved)} reserved "
              f"is cached but free, yet no single free block exceeds "
              f"{format_bytes(state.largest_free_block)}.")
    if failed is not None:
        title += f"; a {format_bytes(failed.requested)} request found no block to fit"
        detail += (f" The {format_bytes(failed.requested)} request at trace event {failed.event_index} "
                   f"would have fit in the free total but not in any one block.")
    return Finding(
        code="memory.fragmentation",
        specialist=SPECIALIST,
        severity="warning",
        title=title,
        detail=detail,
        evidence={
            "device": state.device, "reserved": state.reserved, "allocated": state.allocated,
            "inactive_bytes": state.inactive,
            "inactive_share": state.inactive / state.reserved if state.reserved else None,
            "free_blocks": state.free_blocks, "largest_free_block_bytes": state.largest_free_block,
            "fragmentation": state.fragmentation, "segments": state.segments,
            "requested_bytes": failed.requested if failed else None,
            "expandable_segments": measure.expandable_segments,
        },
        fix=FRAGMENTATION_FIX[measure.expandable_segments is True],
    )


def allocation_sites_finding(measure: DeviceMeasure) -> Finding | None:
    """Who holds the memory: at the trace's peak when there is a trace, else at the snapshot."""
    if measure.peak is not None:
        basis, total, sites = "peak", measure.peak.bytes, measure.peak_sites
        when = f"at its peak (trace event {measure.peak.event_index}{_at(measure.peak.time_us)})"
    else:
        basis, total, sites = "snapshot", measure.layout.allocated, measure.snapshot_sites
        when = "when the snapshot was taken"
    if not total or not sites:
        return None
    top = sites[0]
    listing = "; ".join(
        f"{s.site.location} {format_bytes(s.bytes)} ({_share(s.bytes, total)})" for s in sites)
    return Finding(
        code="memory.allocation_sites",
        specialist=SPECIALIST,
        severity="info",
        title=f"{format_bytes(total)} allocated on device {measure.device} {when}; largest holder "
              f"{top.site.location} with {format_bytes(top.bytes)} ({_share(top.bytes, total)})",
        detail=f"Bytes by the user line that allocated them: {listing}.",
        evidence={
            "device": measure.device, "basis": basis, "total_bytes": total,
            "peak_event_index": measure.peak.event_index if measure.peak else None,
            "peak_time_us": measure.peak.time_us if measure.peak else None,
            "location": top.site.location if top.site.file else None,
            "top_sites": [s.to_dict() for s in sites],
        },
        fix=VIEWER_HINT,
    )


def _share(part: int, whole: int | None) -> str:
    return f"{part / whole:.0%}" if whole else "n/a"


def _at(time_us: int | None) -> str:
    return "" if time_us is None else f", t={time_us} us"

