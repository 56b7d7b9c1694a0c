"""The memory specialist: what fills memory, what leaks, what will fit.

`analyse(run)` reads what the probe (probe.py) recorded: events per rank and, on CUDA,
allocator snapshots under `memory/` in the run dir. Each finding comes from its own
module: oom.py, leak.py, eval_grad.py, breakdown.py, fit_finding.py.
"""

from __future__ import annotations

from ptdiag.findings import Analysis, sort_findings
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.memory.breakdown import breakdown_finding
from ptdiag.specialists.memory.eval_grad import eval_finding
from ptdiag.specialists.memory.fit_finding import fit_finding
from ptdiag.specialists.memory.leak import leak_finding
from ptdiag.specialists.memory.oom import oom_findings, snapshot_analyses, snapshot_extra_findings


def analyse(run: RecordedRun) -> Analysis:
    snapshots = snapshot_analyses(run)
    findings = oom_findings(run, snapshots) + snapshot_extra_findings(snapshots)
    for rank, proc in run.ranks.items():
        findings += [f for f in (leak_finding(proc.of("mem_step"), rank, proc.of("window")),
                                 eval_finding(proc.of("mem_unused_forward"), proc.of("mem_saved"), rank))
                     if f is not None]
        findings += [fit_finding(e, rank) for e in proc.of("mem_fit")[-1:]]
        if rank == min(run.ranks):
            findings += [f for f in (breakdown_finding(proc, rank),) if f is not None]
    metrics = {f"memory_snapshot:{path}": a.metrics.get("memory_snapshot") for path, a in snapshots.items()}
    artifacts = {"memory_snapshot" if i == 0 else f"memory_snapshot_{i}": str(run.run_dir / p)
                 for i, p in enumerate(snapshots)}
    return Analysis(findings=sort_findings(findings), metrics=metrics, artifacts=artifacts)
