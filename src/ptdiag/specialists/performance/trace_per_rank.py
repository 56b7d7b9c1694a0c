"""`ptdiag inspect DIR`: every rank's trace of one job, side by side.

Each trace is read and judged alone, one at a time (a rank's trace can be hundreds of
MB); what is kept is its compact row (trace_ranks.rank_row) and its findings. A verdict
several ranks share is said once, by the lowest such rank, naming every rank it holds on;
the rank the others wait for, when there is one, is a finding of its own.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ptdiag.findings import Analysis, Finding, sort_findings
from ptdiag.specialists.performance import trace_cpu, trace_ranks


def inspect_ranks(paths: list[Path]) -> Analysis:
    from ptdiag.specialists.performance import detectors
    from ptdiag.specialists.performance.measured import Measured
    from ptdiag.specialists.performance.trace import judged
    from ptdiag.specialists.performance.trace_events import read_trace

    rows: dict[int, dict] = {}
    found: dict[str, list[tuple[int, Finding]]] = {}
    for index, path in enumerate(paths):
        trace = read_trace(path)
        analysis = judged(trace)
        rank = analysis.metrics["trace"].get("rank")
        rank = index if rank is None or rank in rows else rank
        rows[rank] = {"trace": path.name, **trace_ranks.rank_row(analysis.metrics, trace_cpu.host_metrics(trace))}
        for finding in analysis.findings:
            found.setdefault(finding.code, []).append((rank, finding))
    findings = [_shared(code, held, len(rows)) for code, held in found.items()]
    slow = trace_ranks.imbalance(rows)
    verdict = detectors.rank_imbalance(Measured(imbalance=slow, per_rank=rows)) if slow else None
    if verdict is not None:
        findings.append(verdict[0])
    return Analysis(findings=sort_findings(findings),
                    metrics={"trace_per_rank": {str(rank): row for rank, row in sorted(rows.items())},
                             "ranks": sorted(rows)},
                    artifacts={"input": str(paths[0].parent), "traces": ", ".join(p.name for p in paths)})


def _shared(code: str, held: list[tuple[int, Finding]], ranks: int) -> Finding:
    held.sort(key=lambda pair: pair[0])
    first_rank, first = held[0]
    on = [rank for rank, _ in held]
    which = "every rank" if len(on) == ranks > 1 else f"rank{'s' if len(on) > 1 else ''} {', '.join(map(str, on))}"
    return replace(first, title=f"{first.title} ({which}{'; numbers of rank ' + str(first_rank) if len(on) > 1 else ''})",
                   evidence={**first.evidence, "rank": first_rank, "ranks": on})
