"""`memory.eval_without_no_grad`: forwards that recorded a graph no backward ever used.

The count comes from the output hooks of forwards.py; the peak difference is the bytes
a sampled forward of the same mode saved for backward, which `torch.no_grad()` (or
`torch.inference_mode()`) would not have kept.
"""

from __future__ import annotations

from ptdiag.findings import Finding
from ptdiag.specialists.memory.snapshot_findings import format_bytes

MIN_UNUSED_FORWARDS = 2  # one stray forward (a shape probe, a summary) is not a pattern


def unused_forwards(events: list[dict]) -> list[dict]:
    """The last (cumulative) record per (location, mode), most forwards first."""
    last = {(e["location"], e["training"]): e for e in events}
    return sorted(last.values(), key=lambda e: -e["count"])


def eval_finding(events: list[dict], saved: list[dict], rank: int) -> Finding | None:
    records = [r for r in unused_forwards(events) if r["count"] >= MIN_UNUSED_FORWARDS]
    if not records:
        return None
    top = records[0]
    saved_same_mode = [s["bytes"] for s in saved if s["training"] == top["training"]]
    per_forward = max(saved_same_mode) if saved_same_mode else top.get("saved_bytes")
    mode = "training mode" if top["training"] else "eval mode (model.eval())"
    difference = (f" Each kept {format_bytes(per_forward)} of activations for a backward that never came: "
                  f"that is the peak difference no_grad makes per forward (more while outputs are kept)."
                  if per_forward else "")
    return Finding(
        code="memory.eval_without_no_grad", specialist="memory", severity="warning",
        title=f"{top['count']} forward passes at {top['location']} recorded an autograd graph that no backward used",
        detail=f"Forwards in {mode} with gradient recording on, first after step {top['first_step'] - 1}, were never "
               f"followed by a backward through their output.{difference}",
        evidence={"rank": rank, "location": top["location"], "forwards": top["count"],
                  "training_mode": top["training"], "first_step": top["first_step"],
                  "saved_bytes_per_forward": per_forward,
                  "sites": [{k: r[k] for k in ("location", "training", "count")} for r in records]},
        fix=f"Wrap the evaluation at {top['location']} in `with torch.no_grad():` (or `torch.inference_mode()`).")
