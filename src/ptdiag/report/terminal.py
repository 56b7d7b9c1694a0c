"""The terminal renderer: headline verdict first, then the findings in the report's order
(the cause first), each with its evidence as short lines of rounded numbers.

It writes to stderr, so the program's stdout stays exactly the program's (pipelines
that read it keep working). Colours only on a terminal; plain text otherwise.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from ptdiag.report.model import Report, verifications
from ptdiag.report.people import evidence_lines

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
STATUS_STYLE = {"completed": "green", "diverged": "bold red", "crashed": "bold red", "oom": "bold red",
                "hung": "bold red", "timeout": "yellow", "interrupted": "yellow", "killed": "bold red"}
VERIFIED_STYLE = {True: "bold green", False: "yellow", None: "dim"}  # by verified.helped


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def render(report: Report, console: Console | None = None) -> None:
    c = console or stderr_console()
    style = STATUS_STYLE.get(report.status, "bold")
    c.print()
    c.print(f"[bold]ptdiag[/] ▸ [{style}]{escape(report.status)}[/] ▸ {escape(report.headline())}")
    _render_route(c, report)
    _render_run(c, report)
    announced = report.announcements()
    for sentence in report.announcements(condensed=True):
        c.print(f"[yellow]{escape(sentence)}[/]")
    _render_findings(c, report)
    for note in report.notes:
        if note not in announced:  # said above, where nobody misses it
            c.print(f"[dim]note: {escape(note)}[/]")
    if report.artifacts:
        c.print("[bold]Artifacts[/]: " + ", ".join(f"{escape(k)}: {escape(v)}" for k, v in report.artifacts.items()))


def _render_route(c: Console, report: Report) -> None:
    route = report.route or {}
    plan = " → ".join(route.get("specialists", [])) or "none"
    kind = "triage (the words name no symptom)" if route.get("ambiguous") else f"confidence {route.get('confidence', 0):.2f}"
    c.print(f"[bold]Plan[/]: {escape(plan)} [dim]({escape(kind)})[/]")
    for reason in route.get("reasons", []):
        if reason.get("matched"):
            c.print(f"  [dim]{escape(reason['specialist'])}: matched {escape(', '.join(map(str, reason['matched'])))}[/]")
    for note in route.get("notes", []):
        c.print(f"  [dim]{escape(note)}[/]")


def _render_run(c: Console, report: Report) -> None:
    if not report.ran_a_command:
        return  # an inspected artifact: the Artifacts line names it
    m = report.metrics
    parts = [f"exit code {report.exit_code}", f"{report.steps_observed} training steps"]
    if m.get("step_time_s"):
        st = m["step_time_s"]
        parts.append(f"step time p50 {st['p50']:.3g} s, p90 {st['p90']:.3g} s")
    if m.get("samples_per_s"):
        parts.append(f"{m['samples_per_s']:.1f} samples/s")
    if m.get("loss"):
        loss = m["loss"]
        parts.append(f"loss {loss['first']:.4g} → {loss['last']:.4g}")
    c.print(f"[bold]Run[/] {escape(report.run_id)}: " + escape(", ".join(parts)))


def _render_findings(c: Console, report: Report) -> None:
    if not report.findings:
        c.print("[bold]Findings[/]: none")
        return
    c.print("[bold]Findings[/]")
    for f in report.findings:
        c.print(f"  [{SEVERITY_STYLE[f.severity]}]{f.severity.upper():7}[/] [bold]{escape(f.title)}[/] [dim]({escape(f.code)})[/]")
        if f.detail:
            c.print(f"          {escape(f.detail)}")
        for i, line in enumerate(evidence_lines(f.evidence)):
            c.print(f"          [dim]{'evidence:' if i == 0 else '         '} {escape(line)}[/]")
        if f.fix:
            c.print(f"          [green]fix:[/] {escape(f.fix)}")
        for label, verified in verifications(f):
            c.print(f"          [{VERIFIED_STYLE[verified.get('helped')]}]{label}:[/] {escape(verified.get('summary', ''))}")
