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


RELATIVE_TOLERANCE = 1e-7  # double sums of identical tensors agree far closer than this
MAX_DIFFERING_REPORTED = 10


def compare_checksums(job: Job) -> list[dict]:
    """Per check step that two or more ranks recorded (`dist_checksums`, each rank's own):
    the tensors whose sum or norm differ between ranks beyond rounding, against the
    lowest rank present. A rank that never reached a step (it hung, or crashed) is left
    out of that step."""
    names = next((e["tensors"] for es in job.events("dist_checksums").values() for e in es if e.get("tensors")), None)
    by_step: dict[int, dict[int, dict]] = {}
    for rank, events in job.events("dist_checksums").items():
        for e in events:
            by_step.setdefault(e["step"], {})[rank] = e
    checks = []
    for step, per_rank in sorted(by_step.items()):
        ranks = sorted(per_rank)
        if len(ranks) < 2 or names is None or any(len(per_rank[r]["sums"]) != len(names) for r in ranks):
            continue
        differing = []
        ref = ranks[0]
        for i, (kind, name) in enumerate(names):
            rows = {r: (per_rank[r]["sums"][i], per_rank[r]["norms"][i]) for r in ranks}
            scale = max(max(abs(v) for v in rows[ref]), 1e-30)
            spread = {r: max(abs(a - b) for a, b in zip(row, rows[ref])) for r, row in rows.items()}
            apart = [r for r in ranks if not spread[r] <= RELATIVE_TOLERANCE * scale]  # NaN is apart too
            if apart:
                differing.append({"kind": kind, "name": name, "relative_spread": max(spread.values()) / scale,
                                  "sum_per_rank": {r: rows[r][0] for r in ranks}, "ranks": apart})
        checks.append({"step": step, "ranks": ranks, "checked": len(names), "n_differing": len(differing),
                       "differing": differing[:MAX_DIFFERING_REPORTED]})
    return checks


def divergence_findings(job: Job) -> list[Finding]:
    checks = compare_checksums(job)
    bad = [c for c in checks if c["n_differing"]]
    if not bad:
        return []
    first = bad[0]
    same_before = [c["step"] for c in checks if not c["n_differing"] and c["step"] < first["step"]]
    tensor = first["differing"][0]
    only_buffers = all(d["kind"] == "buffer" for d in first["differing"])
    model = next(iter(job.first("dist_model").values()), {}) or {}
    no_broadcast = (model.get("ddp") or {}).get("broadcast_buffers") is False
    sums = ", ".join(f"rank {r}: {v:.6g}" for r, v in tensor["sum_per_rank"].items())
    differing_ranks = tensor["ranks"]
    return [Finding(
        code="distributed.rank_divergence", specialist=SPECIALIST,
        severity="warning" if only_buffers and no_broadcast else "error",
        title=f"Replicas differ after step {first['step']}: first {tensor['kind']} {tensor['name']} "
              f"({first['n_differing']} of {first['checked']} tensors differ)",
        detail=f"Each rank recorded checksums of every parameter and buffer at the next DDP forward after "
               f"steps {[c['step'] for c in checks]}; "
               + (f"identical after steps {same_before}, " if same_before else "")
               + f"different after step {first['step']}. {tensor['name']} sums: {sums} "
               f"(relative spread {tensor['relative_spread']:.2g}). Differing: "
               + ", ".join(d["name"] for d in first["differing"]) + ".",
        evidence={"step": first["step"], "tensor": tensor["name"], "kind": tensor["kind"],
                  "n_differing": first["n_differing"], "checked": first["checked"],
                  "ranks": differing_ranks, "rank": differing_ranks[0],
                  "identical_at_steps": same_before, "names": [d["name"] for d in first["differing"]]},
        fix=("Buffers are not broadcast (broadcast_buffers=False): each rank keeps its own running statistics; "
             "broadcast them or use SyncBatchNorm." if only_buffers and no_broadcast else
             "Something changes the weights on some ranks only: a learning rate or scheduler stepped on "
             "one rank, gradients edited per rank after backward, no_sync() around the last micro-batch of "
             "gradient accumulation, or weights loaded on rank 0 only after DDP was built. Keep every "
             "update identical on all ranks."))]
