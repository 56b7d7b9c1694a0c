"""Are the replicas the same model? Parameters that never get a gradient, and parameters
or buffers that differ across ranks after synchronised steps."""

from __future__ import annotations

from ptdiag.findings import Finding
from ptdiag.specialists.distributed.errors import classify, unused_from_message
from ptdiag.specialists.distributed.flight_recorder import _ranks_text
from ptdiag.specialists.distributed.job import Job

SPECIALIST = "distributed"


def unused_findings(job: Job) -> list[Finding]:
    """Names from the probe's look at .grad before the first steps, and from DDP's own error."""
    never: dict[int, list[str]] = {}
    checked: dict[int, list[int]] = {}
    for rank, events in job.events("dist_no_grad").items():
        sets = [set(e.get("names") or []) for e in events]
        checked[rank] = [e["step"] for e in events]
        never[rank] = sorted(set.intersection(*sets)) if sets else []
    error = None
    for rank, view in job.ranks.items():
        for exc in view.of("exception"):
            if classify(exc.get("message", "")) == "unused_parameters":
                model = view.first("dist_model") or {}
                names = unused_from_message(exc["message"], model.get("reducer_params") or [])
                error = error or {"rank": rank, "names": names, "location": exc.get("location"), "step": exc.get("step")}
    ranks = sorted(r for r, names in never.items() if names)
    if not ranks and error is None:
        return []
    names = never[ranks[0]] if ranks else error["names"]
    if error and error["names"]:
        names = sorted(set(names) | set(error["names"]))
    rank = ranks[0] if ranks else error["rank"]
    steps = checked.get(rank, [])
    wrapper = ((job.ranks[rank].first("dist_model") or {}).get("ddp") or {})
    detail = (f"{len(names)} parameters had no gradient at optimizer steps {steps} on {_ranks_text(ranks or [rank])}: "
              f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}.")
    if error:
        detail += (f" DDP stopped at {error['location']} (after step {error['step']}): it waits for every "
                   "parameter's gradient unless told some are unused.")
    return [Finding(
        code="distributed.unused_parameters", specialist=SPECIALIST, severity="error" if error else "warning",
        title=f"{len(names)} parameters never get a gradient ({', '.join(names[:3])}{' ...' if len(names) > 3 else ''})",
        detail=detail,
        evidence={"rank": rank, "ranks": ranks or [rank], "names": names[:50], "count": len(names),
                  "steps_checked": steps, "location": error["location"] if error else None,
                  "find_unused_parameters": wrapper.get("find_unused_parameters")},
        fix="Remove the unused modules, or make them part of the loss; if some parameters are unused only at "
            "some steps, DDP(find_unused_parameters=True) (an extra graph traversal per step), or "
            "static_graph=True when the unused set never changes.")]


def divergence_findings(job: Job) -> list[Finding]:
    checks = [e for es in job.events("dist_check").values() for e in es]
    if not checks:
        return []
    bad = [c for c in checks if c.get("n_differing")]
    if not bad:
        return []
    first = min(bad, key=lambda c: c["step"])
    same_before = [c["step"] for c in checks if not c.get("n_differing") and c["step"] < first["step"]]
    tensor = first["differing"][0]
    only_buffers = all(d["kind"] == "buffer" for d in first["differing"])
    model = next(iter(job.first("dist_model").values()), {}) or {}
    no_broadcast = (model.get("ddp") or {}).get("broadcast_buffers") is False
    sums = ", ".join(f"rank {r}: {v:.6g}" for r, v in enumerate(tensor["sum_per_rank"]))
    differing_ranks = [r for r, v in enumerate(tensor["sum_per_rank"]) if v != tensor["sum_per_rank"][0]]
    return [Finding(
        code="distributed.rank_divergence", specialist=SPECIALIST,
        severity="warning" if only_buffers and no_broadcast else "error",
        title=f"Replicas differ after step {first['step']}: first {tensor['kind']} {tensor['name']} "
              f"({first['n_differing']} of {first['checked']} tensors differ)",
        detail=f"Checksums of every parameter and buffer were all-gathered at the next DDP forward after "
               f"steps {sorted(c['step'] for c in checks)}; "
               + (f"identical after steps {same_before}, " if same_before else "")
               + f"different after step {first['step']}. {tensor['name']} sums: {sums} "
               f"(relative spread {tensor['relative_spread']:.2g}). Differing: "
               + ", ".join(d["name"] for d in first["differing"]) + ".",
        evidence={"step": first["step"], "tensor": tensor["name"], "kind": tensor["kind"],
                  "n_differing": first["n_differing"], "checked": first["checked"],
                  "ranks": differing_ranks, "rank": differing_ranks[0] if differing_ranks else None,
                  "identical_at_steps": same_before, "names": [d["name"] for d in first["differing"]]},
        fix=("Buffers are not broadcast (broadcast_buffers=False): each rank keeps its own running statistics; "
             "broadcast them or use SyncBatchNorm." if only_buffers and no_broadcast else
             "Something changes the weights on some ranks only: a learning rate or scheduler stepped on "
             "one rank, gradients edited per rank after backward, no_sync() around the last micro-batch of "
             "gradient accumulation, or weights loaded on rank 0 only after DDP was built. Keep every "
             "update identical on all ranks."))]
