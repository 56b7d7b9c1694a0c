"""The numerics specialist: where NaN/Inf is born, and why."""

from __future__ import annotations

from ptdiag.findings import Analysis, Finding
from ptdiag.recorded import RecordedRun

HISTORY_STEPS = 5  # loss values shown before the first non-finite one


def analyse(run: RecordedRun) -> Analysis:
    first = run.first_nonfinite_loss()
    if first is None:
        return Analysis()
    before = [(s, v) for s, v in run.losses(first["rank"]) if s < first["step"]][-HISTORY_STEPS:]
    lr = next((e["lr"] for e in run.ranks[first["rank"]].of("step") if e["step"] == first["step"]), None)
    epoch = f" (epoch {first['epoch']})" if first.get("epoch") is not None else ""
    return Analysis(findings=[Finding(
        code="numerics.nonfinite_loss", specialist="numerics", severity="error",
        title=f"The loss became {first['value']} at step {first['step']}{epoch}",
        detail="Loss before it: " + (", ".join(f"step {s}: {v:.4g}" for s, v in before) or "none recorded")
               + (f"; learning rate at that step: {lr}" if lr else "") + ".",
        evidence={"step": first["step"], "epoch": first.get("epoch"), "rank": first["rank"],
                  "value": first["value"], "loss_before": before, "lr": lr},
        fix="Localise the first non-finite value; a loss that grows by orders of magnitude before it "
            "points at the learning rate (lower it or clip gradients).")])
