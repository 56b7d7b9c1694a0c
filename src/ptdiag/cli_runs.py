"""`ptdiag runs ...`: read the run store, where every ptdiag run is recorded."""

from __future__ import annotations

import json
from typing import Optional

import typer

runs_app = typer.Typer(no_args_is_help=True, help="Read the run store: every ptdiag run is recorded.")
STORE_HELP = "Run store directory [default: ./ptdiag-runs or $PTDIAG_STORE]."


@runs_app.command("list")
def runs_list(
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    status: Optional[str] = typer.Option(None, "--status", help="Only runs with this status (e.g. crashed)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most N runs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array (contract shape)."),
) -> int:
    """List recorded runs, newest first.  Example: ptdiag runs list --status diverged"""
    from ptdiag.runs.store import RunStore

    runs = RunStore.resolve(store).list(status=status, limit=limit)
    if as_json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("run id", "name", "status", "steps", "symptom", box=None)
    for r in runs:
        table.add_row(r["run_id"], r.get("name") or "", r.get("status") or "",
                      str(r.get("steps") or r.get("metrics", {}).get("steps_observed", "")),
                      (r.get("symptom") or "")[:60])
    Console(highlight=False).print(table if runs else "no runs recorded in this store yet")
    return 0


@runs_app.command("show")
def runs_show(
    run_id: str = typer.Argument(..., help="Run id, or a unique prefix of it."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the full record as JSON."),
) -> int:
    """Show one run: its report (status, findings, metrics), config, seeds, git, environment.

    Example: ptdiag runs show 20261122-013000
    """
    from ptdiag.runs.store import RunStore

    record = RunStore.resolve(store).load(run_id)
    if as_json:
        print(json.dumps(record, indent=2, default=str))
        return 0
    from ptdiag.findings import Finding
    from ptdiag.report import terminal
    from ptdiag.report.model import Report

    if "findings" not in record:
        typer.echo(f"run {record['run_id']}: status {record.get('status')} (no report yet)")
        return 0
    fields = {k: record.get(k) for k in Report.__dataclass_fields__ if k in record}
    fields["findings"] = [Finding.from_dict(f) for f in record["findings"]]
    terminal.render(Report(**fields), terminal.Console(highlight=False, soft_wrap=True))
    return 0
