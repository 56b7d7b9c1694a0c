"""`memory.breakdown`: what filled memory at the peak, and the fixes ranked by bytes saved.

The split is MemTracker's peak of one real step when the probe watched one; otherwise it
is assembled from what the probe measured directly (parameter, gradient and optimizer
state bytes; the activations a training forward saved). Each remedy's saving is an
estimate derived from a measured quantity, named in the remedy, never a constant.
"""

from __future__ import annotations

from ptdiag.findings import Finding
from ptdiag.specialists.memory.snapshot_findings import Remedy, format_bytes

KINDS = ("Parameter", "Buffer", "Gradient", "Optstate", "Activation", "Temp", "Other")
LOW_PRECISION = ("torch.float16", "torch.bfloat16")


def measured_split(proc) -> tuple[str, dict] | None:
    """(source, {kind: bytes, 'Total': peak}) for the rank's process."""
    breakdowns = proc.of("mem_breakdown")
    if breakdowns:
        peak = max(breakdowns[-1]["peak"].values(), key=lambda kinds: kinds.get("Total", 0))
        return "MemTracker peak of step %d" % breakdowns[-1]["step"], peak
    model, grads, opt = proc.first("mem_model"), proc.first("mem_grads"), proc.first("mem_optimizer")
    if model is None:
        return None
    saved = [e["bytes"] for e in proc.of("mem_saved") if e["training"]]
    split = {"Parameter": model["params_bytes"], "Buffer": model["buffers_bytes"],
             "Gradient": grads["bytes"] if grads else 0, "Optstate": opt["bytes"] if opt else 0,
             "Activation": max(saved, default=0)}
    split["Total"] = sum(split.values())
    return "sum of measured parts (no step was watched by MemTracker)", split


def _sixteen_bit_activations(proc, model: dict) -> bool:
    """The program already keeps 16-bit activations: 16-bit parameters, or a training
    forward the probe measured ran under a 16-bit autocast."""
    autocasts = {e.get("autocast") for e in proc.of("mem_saved") if e["training"]}
    return model.get("dtype") in LOW_PRECISION or any(f"torch.{a}" in LOW_PRECISION for a in autocasts if a)


def remedies(proc, split: dict) -> list[Remedy]:
    found = []
    activations = max([split.get("Activation", 0)] + [e["bytes"] for e in proc.of("mem_saved") if e["training"]])
    model = proc.first("mem_model") or {}
    if activations:
        found.append(Remedy("smaller_batch", activations // 2,
                            f"halve the batch and accumulate gradients over 2 micro-batches: about "
                            f"{format_bytes(activations // 2)} less (half of the {format_bytes(activations)} of "
                            f"activations a training forward saved)"))
        if not _sixteen_bit_activations(proc, model):
            found.append(Remedy("autocast_bf16", activations // 2,
                                f"run forward under torch.autocast(dtype=torch.bfloat16): activations stored in "
                                f"16 bits, up to {format_bytes(activations // 2)} less"))
        found.append(Remedy("activation_checkpointing", activations // 2,
                            f"wrap the largest blocks in torch.utils.checkpoint: recomputes instead of storing, "
                            f"about {format_bytes(activations // 2)} less when half the blocks are checkpointed"))
    held = next((e for e in proc.of("mem_grads_in_forward")), None)
    grads = proc.first("mem_grads")
    if held and held["held"] and grads:
        found.append(Remedy("zero_grad_before_forward", grads["bytes"],
                            f"call optimizer.zero_grad(set_to_none=True) before the forward: the previous step's "
                            f"{format_bytes(grads['bytes'])} of gradients were still allocated during the forward"))
    opt = proc.first("mem_optimizer")
    temp = split.get("Optstate", 0) - (opt["bytes"] if opt else 0)
    if opt and opt.get("foreach") is not False and temp > 0 and proc.of("mem_breakdown"):
        found.append(Remedy("optimizer_foreach_off", temp,
                            f"{opt['cls']}(..., foreach=False): the step's temporaries added "
                            f"{format_bytes(temp)} over the optimizer state at the peak"))
    return sorted(found, key=lambda r: -r.bytes)


def breakdown_finding(proc, rank: int) -> Finding | None:
    measured = measured_split(proc)
    if measured is None:
        return None
    source, split = measured
    total = split.get("Total") or sum(split.get(k, 0) for k in KINDS)
    parts = "; ".join(f"{k.lower()} {format_bytes(split[k])} ({split[k] / total:.0%})"
                      for k in KINDS if split.get(k)) if total else ""
    end = proc.first("mem_end") or {}
    start = proc.first("mem_start") or {}
    ranked = remedies(proc, split)
    rss = (f" Process RSS peaked at {format_bytes(end['peak_rss'])} (after importing torch: "
           f"{format_bytes(start.get('rss'))})." if end.get("peak_rss") else "")
    return Finding(
        code="memory.breakdown", specialist="memory", severity="info",
        title=f"Peak {format_bytes(total)}: " + ", ".join(
            f"{k.lower()} {format_bytes(split[k])}" for k in sorted(KINDS, key=lambda k: -split.get(k, 0))[:3]
            if split.get(k)),
        detail=f"{source}: {parts}.{rss}",
        evidence={"rank": rank, "source": source, "peak_bytes": total,
                  **{f"{k.lower()}_bytes": split.get(k, 0) for k in KINDS},
                  "rss_peak_bytes": end.get("peak_rss"), "rss_start_bytes": start.get("rss"),
                  "cuda_peak_bytes": end.get("cuda_peak"),
                  "remedies": [{"action": r.action, "bytes": r.bytes} for r in ranked]},
        fix=" ".join(f"{i}. {r.text[0].upper()}{r.text[1:]}." for i, r in enumerate(ranked, 1)))
