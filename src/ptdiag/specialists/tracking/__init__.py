"""The tracking specialist: every run is recorded; say what was kept and what is at risk."""

from __future__ import annotations

from ptdiag.findings import Analysis, Finding
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.tracking import record


def analyse(run: RecordedRun) -> Analysis:
    params = record.params(run)
    seeds = record.seeds(run)
    git = run.meta.get("git")
    kept = [f"{len(params)} parameters" if params else "no parameters (none were parsed or seen)",
            f"seeds ({', '.join(seeds)})" if seeds else "no seeds (the program set none)",
            "git state" if git else "no git state (not a git work tree)",
            "environment", f"{run.steps_observed} steps of loss and step time"]
    findings = [Finding(
        code="tracking.run_recorded", specialist="tracking", severity="info",
        title=f"Run {run.meta.get('run_id', run.run_dir.name)} recorded in {run.run_dir}",
        detail="Recorded: " + "; ".join(kept) + ". `ptdiag runs show "
               f"{run.meta.get('run_id', run.run_dir.name)}` shows it again.",
        evidence={"run_dir": str(run.run_dir), "params": sorted(params), "seeds": sorted(seeds),
                  "git": bool(git), "steps": run.steps_observed},
        fix="")]
    if git and git.get("dirty"):
        patch = run.run_dir / "git.patch"
        findings.append(Finding(
            code="tracking.dirty_tree", specialist="tracking", severity="warning",
            title="The code had uncommitted changes: the run's result is not tied to a commit",
            detail=f"Commit {git.get('commit', '?')[:12]} plus uncommitted changes; the diff was saved to "
                   f"{patch} so the run can be reproduced. The diff may contain secrets: check it before sharing.",
            evidence={"commit": git.get("commit"), "branch": git.get("branch"),
                      "patch": str(patch) if patch.exists() else None},
            fix="Commit (or stash) before runs you want to keep; `git apply` the saved patch to reproduce this one."))
    return Analysis(findings=findings)
