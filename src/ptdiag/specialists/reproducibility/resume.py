"""Does a run resumed from the checkpoint continue the uninterrupted one step for step?

The main run kept a copy of the checkpoint it saved at step K (probe.py); the resume
command ran from that copy (parent.py). Its step j is the main run's step K + j. What
explains a divergence is measured at the resume point: the weights the resumed run
started from, its optimizer state and learning rate when its first step began, and
every generator's state when that step's forward pass began; plus what the checkpoint
lacked (needs.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ptdiag.findings import Finding
from ptdiag.specialists.reproducibility.compare import compare
from ptdiag.specialists.reproducibility.determinism import environment_causes
from ptdiag.specialists.reproducibility.needs import missing
from ptdiag.specialists.reproducibility.trace import Trace, rng_label

SPECIALIST = "reproducibility"
STATE_FILE = "reproducibility.json"  # what parent.py did, or why it could not


def resume_findings(main: Trace, resumed: Trace | None, repeat_diverged_at: int | None) -> list[Finding]:
    plan = parent_record(main).get("resume")
    if not plan:
        return []
    if plan.get("skipped"):
        return [Finding(code="reproducibility.resume_not_checked", specialist=SPECIALIST, severity="info",
                        title="The resume check could not run", detail=plan["skipped"] + ".",
                        evidence=plan, fix=plan.get("fix", ""))]
    if resumed is None:
        return []
    k = plan["step"]
    snapshot = [c for c in main.ckpts if c.get("snapshot") and c["step"] == k]
    result = compare(main, resumed, offset=k)
    if result.difference is None:
        if not result.compared:
            return [Finding(code="reproducibility.resume_not_checked", specialist=SPECIALIST, severity="info",
                            title="The resumed run took no step that could be compared",
                            detail=f"It ended with exit code {resumed.run.outcome.get('exit_code')} after "
                                   f"{resumed.last_step} steps.", evidence=plan)]
        return [Finding(
            code="reproducibility.resume_exact", specialist=SPECIALIST, severity="info",
            title=f"Resuming from the step-{k} checkpoint continued the uninterrupted run bit for bit "
                  f"for {result.compared} steps",
            detail=f"`{plan['command']}` started from the checkpoint saved at step {k} "
                   f"({', '.join(sorted({c['path'] for c in snapshot}))}); steps {k + 1}-{k + result.compared} "
                   f"matched the uninterrupted run in batch, loss, learning rate, generator states and all "
                   f"{result.tensors} parameters and buffers.",
            evidence={"step": k, "steps_compared": result.compared, "command": plan["command"],
                      "resume_run": str(resumed.run.run_dir)})]
    d = result.difference
    explained = _at_resume_point(main, resumed, k, snapshot) + environment_causes(main, resumed)
    if d.stage == "weights":
        explained.append({"cause": f"the weights it started from differ from the uninterrupted run's after step {k} "
                                   f"({d.tensor_count} tensors, first {d.tensors[0]})", "kind": "weights"})
    elif d.input:
        explained.append({"cause": f"the batch of step {d.step} differed (data order or augmentation)", "kind": "input"})
    lacking = missing(main, snapshot) if snapshot else []
    if repeat_diverged_at is not None and repeat_diverged_at <= d.step:
        explained.append({"cause": f"two uninterrupted runs already differ from step {repeat_diverged_at}: "
                                   "the command is not deterministic even without resuming", "kind": "nondeterministic"})
    first = resumed.steps.get(d.other_step)
    main_first = main.steps.get(d.step)
    return [Finding(
        code="reproducibility.resume_divergence", specialist=SPECIALIST, severity="error",
        title=f"The run resumed from the step-{k} checkpoint departs from the uninterrupted run at step {d.step}"
              + (f": loss {d.loss[1]!r} instead of {d.loss[0]!r}" if d.loss else ""),
        detail="Measured at the resume point: " + ("; ".join(c["cause"] for c in explained) or "nothing differed")
               + (". The checkpoint lacks: " + ", ".join(n.to_dict()["what"] for n in lacking) if lacking else "")
               + ".",
        evidence={**d.to_dict(), "checkpoint_step": k, "command": plan["command"],
                  "loss_uninterrupted": main_first.loss if main_first else None,
                  "loss_resumed": first.loss if first else None,
                  "lr_uninterrupted": main_first.lr if main_first else None,
                  "lr_resumed": first.lr if first else None,
                  "causes": explained, "missing": [n.to_dict() for n in lacking],
                  "resume_run": str(resumed.run.run_dir)},
        fix=("Save and restore " + ", ".join(n.to_dict()["what"] for n in lacking) + "."
             if lacking else "Restore every state listed above before the first resumed step."))]


def _at_resume_point(main: Trace, resumed: Trace, k: int, snapshot: list[dict]) -> list[dict]:
    found = []
    if not resumed.loads:
        found.append({"cause": "the resume command never called torch.load: it started from scratch", "kind": "no_load"})
    saved = snapshot[0] if snapshot else {}
    begin = resumed.begin or {}
    if saved.get("opt_entries") and not begin.get("opt_entries"):
        found.append({"cause": f"the optimizer held state for {saved['opt_entries']} parameters at step {k}; the "
                               "resumed run's first step began with none (momentum/moments restarted)",
                      "kind": "optimizer"})
    elif saved and begin and saved.get("opt_sum") != begin.get("opt_sum"):
        found.append({"cause": "the optimizer state the resumed run began with differs from the one saved",
                      "kind": "optimizer"})
    after = main.steps.get(k + 1)
    if after and after.lr is not None and begin.get("lr") is not None and begin["lr"] != after.lr:
        found.append({"cause": f"its learning rate at step {k + 1} was {begin['lr']}, the uninterrupted run used "
                               f"{after.lr}: the LR schedule was not restored", "kind": "lr"})
    start = resumed.steps.get(1)
    if after and start:
        drawn = set(main.consumed()) | set(resumed.consumed())
        moved = [kind for kind in set(after.rng) & set(start.rng) & drawn if after.rng[kind] != start.rng[kind]]
        if moved:
            found.append({"cause": "generator state at step " + str(k + 1) + " not restored: "
                                   + ", ".join(rng_label(m) for m in sorted(moved)), "kind": "rng",
                          "rngs": sorted(moved)})
    return found


def parent_record(trace: Trace) -> dict:
    path = Path(trace.run.run_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
