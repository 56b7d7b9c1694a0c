"""Findings about the run's checkpoints: what each holds, what an exact resume would
miss, and files overwritten with nothing to tell their versions apart."""

from __future__ import annotations

import os
from collections import defaultdict

from ptdiag.findings import Finding
from ptdiag.checkpoint_contents import CATEGORIES
from ptdiag.specialists.reproducibility.needs import missing
from ptdiag.specialists.reproducibility.trace import Trace

SPECIALIST = "reproducibility"
RESUME_KINDS = {"optimizer", "counter", "scheduler"}  # a save holding one of these is meant to resume from
TELLS_VERSIONS_APART = {"counter", "metric"}
FIX_BY_STATE = {
    "model": "model.state_dict()",
    "optimizer": "optimizer.state_dict()",
    "scheduler": "scheduler.state_dict()",
    "counter": "the epoch and global step",
    "rng.python": "random.getstate()",
    "rng.numpy": "np.random.get_state()",
    "rng.torch": "torch.get_rng_state()",
    "rng.cuda": "torch.cuda.get_rng_state_all()",
    "data": "the DataLoader generator's get_state() (and the batch index when saving mid-epoch)",
}


def checkpoint_findings(trace: Trace) -> list[Finding]:
    if not trace.ckpts:
        return []
    return [_contents(trace), *_incomplete(trace), *_overwritten(trace)]


def groups(trace: Trace) -> dict[int, list[dict]]:
    """Saves made at the same optimizer step form one checkpoint (model.pt + optim.pt)."""
    found: dict[int, list[dict]] = defaultdict(list)
    for ckpt in trace.ckpts:
        found[ckpt["step"]].append(ckpt)
    return dict(found)


def _is_resume_point(trace: Trace, step: int, ckpts: list[dict]) -> bool:
    """A save before the last step, or one holding training state; a final weights-only
    save is an export, not a checkpoint."""
    if step == 0:
        return False
    held = {item["category"] for c in ckpts for item in c["items"]}
    return step < trace.last_step or bool(held & RESUME_KINDS)


def _contents(trace: Trace) -> Finding:
    by_path: dict[str, list[dict]] = defaultdict(list)
    for ckpt in trace.ckpts:
        by_path[ckpt["path"]].append(ckpt)
    lines, evidence = [], []
    for path, saves in by_path.items():
        last = saves[-1]
        held = sorted({i["category"] for i in last["items"]}, key=list(CATEGORIES).index)
        lines.append(f"{_name(path)} saved {len(saves)}x (steps {_steps(saves)}) at {last.get('location')}: "
                     + (", ".join(f"{CATEGORIES[c]}" for c in held) or "nothing ptdiag recognises"))
        evidence.append({"path": path, "saves": len(saves), "steps": [s["step"] for s in saves],
                         "location": last.get("location"), "bytes": last.get("bytes"),
                         "contents": [dict(i) for i in last["items"]]})
    return Finding(code="reproducibility.ckpt_contents", specialist=SPECIALIST, severity="info",
                   title=f"{len(trace.ckpts)} torch.save call(s) to {len(by_path)} file(s) audited",
                   detail="; ".join(lines) + ".", evidence={"files": evidence})


def _incomplete(trace: Trace) -> list[Finding]:
    reported: dict[tuple, dict] = {}
    for step, ckpts in groups(trace).items():
        if not _is_resume_point(trace, step, ckpts):
            continue
        lacking = missing(trace, ckpts)
        if not lacking:
            continue
        key = (tuple(sorted({c.get("location") or "" for c in ckpts})), tuple(n.state for n in lacking))
        entry = reported.setdefault(key, {"ckpts": ckpts, "lacking": lacking, "steps": []})
        entry["steps"].append(step)
    findings = []
    for entry in reported.values():
        ckpts, lacking = entry["ckpts"], entry["lacking"]
        files = ", ".join(sorted({_name(c["path"]) for c in ckpts}))
        findings.append(Finding(
            code="reproducibility.ckpt_incomplete", specialist=SPECIALIST, severity="warning",
            title=f"{files} (saved at step{'s' if len(entry['steps']) > 1 else ''} "
                  f"{', '.join(map(str, entry['steps']))}) lacks what an exact resume needs: "
                  + ", ".join(CATEGORIES.get(n.state, n.state) for n in lacking),
            detail="Missing: " + "; ".join(f"{CATEGORIES.get(n.state, n.state)}: {n.why}" for n in lacking)
                   + ". Without it a resumed run does not continue the uninterrupted one.",
            evidence={"paths": sorted({c["path"] for c in ckpts}), "steps": entry["steps"],
                      "location": ckpts[0].get("location"),
                      "contents": sorted({i["category"] for c in ckpts for i in c["items"]}),
                      "missing": [n.to_dict() for n in lacking]},
            fix=f"At {ckpts[0].get('location')}, save " + ", ".join(FIX_BY_STATE.get(n.state, n.state) for n in lacking)
                + " with the checkpoint, and restore each of them before training continues."))
    return findings


def _overwritten(trace: Trace) -> list[Finding]:
    by_path: dict[str, list[dict]] = defaultdict(list)
    for ckpt in trace.ckpts:
        by_path[ckpt["path"]].append(ckpt)
    findings = []
    for path, saves in by_path.items():
        steps = sorted({s["step"] for s in saves})
        held = {i["category"] for s in saves for i in s["items"]}
        if len(steps) < 2 or held & TELLS_VERSIONS_APART:
            continue
        findings.append(Finding(
            code="reproducibility.ckpt_overwrite", specialist=SPECIALIST, severity="warning",
            title=f"{_name(path)} was overwritten {len(saves)} times (steps {_steps(saves)}) with nothing "
                  "that tells its versions apart",
            detail=f"Each save at {saves[-1].get('location')} replaced the previous file; it holds "
                   + (", ".join(CATEGORIES[c] for c in sorted(held)) or "nothing ptdiag recognises")
                   + " but no epoch/step counter and no metric, so the file on disk cannot say which step "
                     "it comes from, and every earlier version is lost.",
            evidence={"path": path, "saves": len(saves), "steps": steps, "location": saves[-1].get("location"),
                      "contents": sorted(held)},
            fix="Save the epoch, step and the metric that made it 'best' inside the file, or write to "
                "step-numbered names (ckpt_{step}.pt) and keep the last few."))
    return findings


def _name(path: str) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("..") else path
    except ValueError:
        return path


def _steps(saves: list[dict]) -> str:
    steps = [s["step"] for s in saves]
    return ", ".join(map(str, steps[:8])) + (", ..." if len(steps) > 8 else "")
