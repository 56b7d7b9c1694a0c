"""`memory.fit`: the answer to "will it fit", from the probe's fake-execution estimate."""

from __future__ import annotations

from ptdiag.findings import Finding
from ptdiag.specialists.memory.snapshot_findings import format_bytes


def fit_finding(event: dict, rank: int) -> Finding:
    target, budget = event["target"], event["budget_bytes"]
    if event.get("error"):
        return Finding(
            code="memory.fit", specialist="memory", severity="warning",
            title=f"Could not estimate whether a training step fits in {target}",
            detail=f"The fake execution of the model could not run: {event['error']}",
            evidence={"rank": rank, "target": target, "budget_bytes": budget, "error": event["error"]},
            fix="Run a few steps on the target device with ptdiag instead; the OOM post-mortem and breakdown "
                "measure there what the estimate could not.")
    peak, batch, largest = event["peak_bytes"], event["batch_size"], event["largest_batch"]
    fits = peak <= budget
    amp = event.get("autocast")
    autocast = f", its forward under {amp['dtype']} autocast as the program's" if amp else ""
    points = ", ".join(f"batch {b}: {format_bytes(p)}" for b, p in event["points"])
    largest_text = (f"the largest batch that fits is about {largest}" if largest else
                    "no batch size fits: parameters, gradients and optimizer state alone exceed it"
                    if largest == 0 else "the peak does not grow with the batch size")
    return Finding(
        code="memory.fit", specialist="memory", severity="info" if fits else "error",
        title=(f"A training step at batch {batch} needs about {format_bytes(peak)}: "
               f"{'fits in' if fits else 'does NOT fit in'} {target} ({format_bytes(budget)}); {largest_text}"),
        detail=(f"Estimated by fake execution (FakeTensorMode + MemTracker, no real allocation) of the model and "
                f"optimizer{autocast} in {event['wall_s']:.1f} s: {points}. Peak at batch {batch} by kind: "
                + ", ".join(f"{k} {format_bytes(v)}" for kinds in event["by_kind"].values()
                            for k, v in kinds.items() if v and k != "Total") + "."),
        evidence={"rank": rank, "target": target, "budget_bytes": budget, "batch_size": batch,
                  "estimated_peak_bytes": peak, "largest_batch": largest, "points": event["points"],
                  "by_kind": event["by_kind"], "wall_s": event["wall_s"], "method": "fake_tensor_memtracker",
                  "autocast": amp and amp["dtype"]},
        fix="" if fits else (f"Use batch {largest} or less per step and accumulate gradients over "
                             f"{-(-batch // largest)} micro-batches to keep the effective batch {batch}; "
                             + ("activation checkpointing shrinks" if amp else
                                "bf16 autocast and activation checkpointing shrink") + " the per-sample part further."
                             if largest else "The model does not fit even at batch 1: shard it (FSDP), or use "
                                             "an optimizer with less state, or a larger device."))
