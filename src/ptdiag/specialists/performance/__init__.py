"""The performance specialist: where each step's time goes and what bounds it.

In the run (probe.py): a per-step phase breakdown, a torch.profiler window after
warm-up (every rank writes its own trace), a short call scan, telemetry. Here: read it
all back (measured.py; the main rank's trace drives the findings, every rank's goes into
metrics.trace_per_rank and trace_ranks.py compares them) and decide (detectors.py). Profiler traces the user already has go through trace.py
(`ptdiag inspect`).
"""

from __future__ import annotations

from ptdiag.findings import Analysis
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.performance.detectors import detect
from ptdiag.specialists.performance.measured import measure


def analyse(run: RecordedRun) -> Analysis:
    measured = measure(run)
    metrics = {
        "breakdown": measured.breakdown,
        "gpu_breakdown": measured.gpu_breakdown,
        "host": measured.host,
        "scan": measured.scan,
        "telemetry": measured.telemetry,
        "optimizers": measured.optimizers,
        "notes": measured.notes,
    }
    if measured.trace:
        metrics["top_cpu_ops"] = measured.trace.get("top_cpu_ops")
        metrics["profiled_steps"] = measured.trace.get("steps")
        for key in ("gpu_timeline", "kernel_breakdown"):
            if key in measured.trace:
                metrics[key] = measured.trace[key]
    if run.world_size > 1:
        metrics["trace_per_rank"] = {str(rank): row for rank, row in measured.per_rank.items()}
    artifacts = {"trace": measured.trace_path} if measured.trace_path else {}
    return Analysis(findings=detect(measured), metrics={k: v for k, v in metrics.items() if v},
                    artifacts=artifacts)
