"""`memory.leak`: memory held at step boundaries grows, and what holds it.

Two independent measurements back the claim: the trend of memory at step boundaries
(series.py) and the holders the probe found in the training loop's variables
(holders.py). A holder counts when it kept growing over consecutive boundaries: a tensor
whose graph reaches losses of ever more steps, or a container of graph tensors whose
length grew. Either measurement alone can carry the finding; both are reported.
"""

from __future__ import annotations

from ptdiag.findings import Finding
from ptdiag.specialists.memory.series import Trend, trend
from ptdiag.specialists.memory.snapshot_findings import format_bytes

MIN_GROWTH_BOUNDARIES = 2  # a holder must grow at this many boundaries in a row
# Growth without a found holder: at least this per step, this much in all, on a steady line.
MIN_SLOPE_BYTES = 1 * 2**20
MIN_TOTAL_BYTES = 16 * 2**20
MIN_R2 = 0.8

FIXES = {
    "graph_tensor": "Accumulate the number, not the tensor: `{name} += loss.item()` (or `loss.detach()`) "
                    "at {location}; the tensor keeps every step's autograd graph alive.",
    "container": "Keep what you need without the graph: append `out.detach()` (or `.cpu()`, `.item()`, "
                 "`.argmax(1)`) to `{name}` at {location}, or empty it every step.",
}
WHAT = {
    "graph_tensor": "`{name}` is a tensor whose autograd graph still reaches the losses of steps {from_step}..{step}: "
                    "each step chains one more graph to it",
    "container": "`{name}` holds {count} tensors with autograd graphs ({items} items, growing by about "
                 "{per_step:.1f} per step)",
}


def growing_holders(step_events: list[dict]) -> list[dict]:
    """Holders that grew at MIN_GROWTH_BOUNDARIES consecutive boundaries, with their last state."""
    history: dict[tuple, list[tuple[int, dict]]] = {}
    for event in step_events:
        for h in event.get("holders", []):
            history.setdefault((h["name"], h["kind"], h["location"]), []).append((event["step"], h))
    found = []
    for states in history.values():
        run, best = 0, 0
        for (s0, a), (s1, b) in zip(states, states[1:]):
            grew = s1 == s0 + 1 and (b["from_step"] == a["from_step"] if b["kind"] == "graph_tensor"
                                     else b["items"] > a["items"])
            run = run + 1 if grew else 0
            best = max(best, run)
        if best >= MIN_GROWTH_BOUNDARIES:
            first_step, first = states[0]
            last_step, last = states[-1]
            span = max(last_step - first_step, 1)
            found.append(dict(last, step=last_step, boundaries=len(states),
                              per_step=(last["items"] - first["items"]) / span))
    return sorted(found, key=lambda h: -h["boundaries"])


def steady_growth(t: Trend | None) -> bool:
    return (t is not None and t.slope >= MIN_SLOPE_BYTES and t.r2 >= MIN_R2
            and t.last - t.first >= MIN_TOTAL_BYTES)


def leak_finding(step_events: list[dict], rank: int, windows: list[dict] = ()) -> Finding | None:
    """windows: the rank's `window` events (ptdiag's own one-off measurements), whose
    retained memory is not the program's (series.without_ptdiag)."""
    t = trend(step_events, windows)
    held = growing_holders(step_events)
    if not held and not steady_growth(t):
        return None
    growth = (f"{t.basis} at step boundaries grew {format_bytes(int(t.slope))} per step over {t.steps} steps "
              f"({format_bytes(t.first)} → {format_bytes(t.last)}, R²={t.r2:.2f})"
              + (f", after taking out the {format_bytes(t.ptdiag_bytes)} ptdiag's own measurement windows kept "
                 "(measured at their close) and the boundaries inside them" if t.ptdiag_bytes else "")
              if t else "too few steps to measure a rate")
    evidence = {"rank": rank, "basis": t.basis if t else None,
                "rate_bytes_per_step": int(t.slope) if t else None, "r2": round(t.r2, 3) if t else None,
                "steps": t.steps if t else None, "first_bytes": t.first if t else None,
                "last_bytes": t.last if t else None, "ptdiag_window_bytes": t.ptdiag_bytes if t else None,
                "holders": held}
    if held:
        top = held[0]
        evidence.update(location=top["location"], holder=top["name"], kind=top["kind"])
        what = WHAT[top["kind"]].format(**top)
        title = f"Memory kept across steps: `{top['name']}` at {top['location']} holds autograd graphs"
        detail = f"{what[0].upper()}{what[1:]}. Measured: {growth}."
        fix = FIXES[top["kind"]].format(name=top["name"], location=top["location"])
    else:
        title = f"Memory grows step after step: {format_bytes(int(t.slope))} per step ({t.basis})"
        detail = (f"Measured: {growth}. No variable of the training loop was found holding autograd graphs; "
                  "the growth comes from elsewhere (a cache, a global list, tensors kept by a callback).")
        fix = ("Look for containers that grow every step (caches, lists of tensors, logged values) and keep "
               "plain numbers or detached CPU copies instead; a CUDA snapshot (on a GPU run) names the lines.")
    return Finding(code="memory.leak", specialist="memory", severity="warning", title=title, detail=detail,
                   evidence=evidence, fix=fix)
