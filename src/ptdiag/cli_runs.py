"""`ptdiag runs ...`: find, compare, keep and share the runs in the store, where every
ptdiag run is recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

runs_app = typer.Typer(no_args_is_help=True, help="Read the run store: every ptdiag run is recorded.")
STORE_HELP = "Run store directory [default: ./ptdiag-runs or $PTDIAG_STORE]."
TABLE_ROWS = 50  # the table's default length; --limit or --json for more
PIPED_WIDTH = 240  # piped tables are read by scripts and grep: never truncate headers
MAX_PARAM_COLUMNS = 6


@runs_app.command("list")
def runs_list(
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    where: list[str] = typer.Option([], "--where", "-w", help="Hyperparameter condition, repeatable: lr=0.01, batch_size>=64, optimizer.name=SGD."),
    status: Optional[str] = typer.Option(None, "--status", help="Only runs with this status (e.g. crashed)."),
    tag: list[str] = typer.Option([], "--tag", help="Only runs with this tag, k=v (repeatable)."),
    since: Optional[str] = typer.Option(None, "--since", help="Only runs started since: 2h, 3d, 1w or a date (2026-11-21)."),
    group: Optional[str] = typer.Option(None, "--group", help="Only runs of this group."),
    sort: Optional[str] = typer.Option(None, "--sort", help="Order by a metric (loss.last, steps_per_s, logged.val_acc.max) or params.KEY."),
    desc: bool = typer.Option(False, "--desc", help="With --sort: largest first."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help=f"At most N runs [table default: {TABLE_ROWS}]."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array (contract shape)."),
) -> int:
    """List recorded runs, newest first (or by --sort); the table shows the parameters that
    differ between the listed runs.

    Examples: ptdiag runs list --where lr=0.01 --status completed --sort loss.last
    """
    from ptdiag.runs.query import RunQuery, parse_condition, parse_since
    from ptdiag.runs.store import RunStore

    query = RunQuery(status=status, group=group, sort=sort, descending=desc,
                     conditions=[parse_condition(w) for w in where] + [parse_condition(t, "tags") for t in tag],
                     since=parse_since(since) if since else None,
                     limit=limit if limit or as_json else TABLE_ROWS + 1)
    runs = RunStore.resolve(store).list(query)
    if as_json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    console = _console()
    if not runs:
        console.print("no runs match" if query.conditions or status or since or group
                      else "no runs recorded in this store yet")
        return 0
    more = limit is None and len(runs) > TABLE_ROWS
    console.print(_list_table(runs[:TABLE_ROWS] if more else runs, sort))
    if more:
        console.print(f"[dim]newest {TABLE_ROWS} shown: --limit N or --json for more[/]")
    return 0


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=PIPED_WIDTH)


def _list_table(runs: list[dict], sort: str | None):
    from rich.table import Table

    from ptdiag.specialists.tracking.compare import differing

    params = list(differing([r.get("params") or {} for r in runs]))
    params = sorted(params, key=lambda k: ("." in k, k))[:MAX_PARAM_COLUMNS]
    metric_columns = [m for m in dict.fromkeys([sort, "loss.last"]) if m]
    table = Table("run id", "name", "status", "steps", *params, *metric_columns, box=None)
    for r in runs:
        table.add_row(r["run_id"], (r.get("name") or "")[:48], r.get("status") or "",
                      str(r.get("steps") or r.get("metrics", {}).get("steps_observed", "")),
                      *[_cell((r.get("params") or {}).get(k)) for k in params],
                      *[_cell(_metric(r, m)) for m in metric_columns])
    return table


def _metric(row: dict, key: str):
    if key.startswith("params."):
        return (row.get("params") or {}).get(key[len("params."):])
    value = row.get("metrics") or {}
    for part in key.removeprefix("metrics.").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@runs_app.command("show")
def runs_show(
    run_id: str = typer.Argument(..., help="Run id, or a unique prefix of it."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the full record as JSON."),
    open_html: bool = typer.Option(False, "--open", help="Open the run's HTML report in the browser."),
    reanalyse: bool = typer.Option(False, "--reanalyse", help="Analyse the recorded run again (e.g. once the other nodes of a multi-node job finished)."),
) -> int:
    """Show one run: its report (status, findings, metrics), config, seeds, git, environment.

    Examples: ptdiag runs show 20261122-013000      ptdiag runs show 20261122 --open
    """
    from ptdiag.runs.store import RunStore

    run_store = RunStore.resolve(store)
    run_dir = run_store.run_dir(run_id)
    if reanalyse:
        from ptdiag.diagnose import finish

        finish(run_store, run_dir, None)
    if open_html:
        return _open_html(run_dir)
    record = run_store.load(run_dir.name)
    record["pinned"] = run_store.is_pinned(record["run_id"])
    packages = run_dir / "packages.json"
    if as_json:
        record["packages"] = json.loads(packages.read_text()) if packages.exists() else None
        print(json.dumps(record, indent=2, default=str))
        return 0
    from ptdiag.findings import Finding
    from ptdiag.report import terminal
    from ptdiag.report.model import Report

    console = terminal.Console(highlight=False, soft_wrap=True)
    if "findings" in record:
        fields = {k: record.get(k) for k in Report.__dataclass_fields__ if k in record}
        fields["findings"] = [Finding.from_dict(f) for f in record["findings"]]
        terminal.render(Report(**fields), console)
    else:
        console.print(f"run {record['run_id']}: status {record.get('status')} (no report yet)")
    _print_record(console, record, packages)
    return 0


def _open_html(run_dir: Path) -> int:
    """Open report.html (written for runs of older versions on demand); print its path
    where no browser can be started (ssh sessions)."""
    import webbrowser

    page = run_dir / "report.html"
    if not page.exists():
        from ptdiag.diagnose import analyse_run
        from ptdiag.report.html import write_html

        write_html(analyse_run(run_dir), page)
    if not webbrowser.open(page.resolve().as_uri()):
        print(page)
    return 0


def _print_record(console, record: dict, packages: Path) -> None:
    """The experiment record below the report: what to rerun it with."""
    env = record.get("environment") or {}
    details = env.get("torch_details") or {}
    git = env.get("git") or record.get("git") or {}
    data = next((f["evidence"].get("data") for f in record.get("findings", [])
                 if f.get("code") == "tracking.run_recorded"), None)
    lines = {
        "name": record.get("name"), "pinned": "yes" if record.get("pinned") else None,
        "tags": " ".join(f"{k}={v}" for k, v in (record.get("tags") or {}).items()) or None,
        "config": " ".join(f"{k}={_cell(v)}" for k, v in sorted((record.get("params") or {}).items())) or None,
        "seeds": " ".join(f"{k}={v.get('value')}" for k, v in (record.get("seeds") or {}).items()) or None,
        "git": f"{(git.get('commit') or '?')[:12]} on {git.get('branch')}" + (" + uncommitted changes" if git.get("dirty") else "")
               if git else None,
        "torch": f"{env.get('torch')} cuda {env.get('cuda')} cudnn {env.get('cudnn')} threads {details.get('num_threads')}"
                 f" determinism {details.get('determinism')}" if env.get("torch") else None,
        "data": json.dumps(data) if data else None,
        "packages": f"{len(json.loads(packages.read_text()))} installed ({packages})" if packages.exists() else None,
    }
    console.print("\n[bold]Record[/]")
    for key, value in lines.items():
        if value:
            console.print(f"  {key}: {value}", markup=False)


@runs_app.command("compare")
def runs_compare(
    run_ids: list[str] = typer.Argument(..., help="Two or more run ids (or unique prefixes); curves are compared to the first."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    rtol: float = typer.Option(1e-6, "--rtol", min=0.0, help="Losses differ when |a-b| > rtol * max(1, |a|)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> int:
    """Side by side: command line, config, seeds, git, environment, packages, data and metrics that differ,
    and the first step where the loss curves part.

    Example: ptdiag runs compare 20261122-0130 20261122-0142
    """
    from ptdiag.errors import UsageProblem
    from ptdiag.runs.store import RunStore
    from ptdiag.specialists.tracking.compare import compare_runs

    if len(run_ids) < 2:
        raise UsageProblem("runs compare needs at least two run ids")
    run_store = RunStore.resolve(store)
    records = [run_store.load(r) for r in run_ids]
    result = compare_runs(records, [run_store.run_dir(r["run_id"]) for r in records], rtol)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    from rich.table import Table

    console = _console()
    for section in ("command", "config", "seeds", "git", "environment", "packages", "data", "metrics"):
        table = Table(section, *[f"{n or ''} {r}".strip() for r, n in zip(result["runs"], result["names"])],
                      box=None, title_justify="left")
        for key, values in result[section].items():
            table.add_row(key, *[_cell(v) for v in values])
        console.print(table if result[section] else f"{section}: same in every run")
        console.print()
    for name, curve in result["curves"].items():
        for other, found in zip(result["runs"][1:], curve["first_difference"]):
            where = (f"first differs at step {found['step']}: {found['values'][0]:.6g} vs {found['values'][1]:.6g}"
                     if found else "no difference beyond rtol on common steps")
            console.print(f"{name}: {curve['against']} vs {other}: {where}")
    return 0


@runs_app.command("pin")
def runs_pin(
    run_id: str = typer.Argument(..., help="Run id, or a unique prefix of it."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    unpin: bool = typer.Option(False, "--unpin", help="Remove the pin instead."),
) -> int:
    """Pin a run so that `ptdiag runs gc` never deletes it (--unpin to undo)."""
    from ptdiag.runs.store import RunStore

    full = RunStore.resolve(store).pin(run_id, not unpin)
    typer.echo(f"{'unpinned' if unpin else 'pinned'} {full}")
    return 0


@runs_app.command("gc")
def runs_gc(
    keep: int = typer.Option(..., "--keep", min=0, help="Keep the N newest runs."),
    best: Optional[str] = typer.Option(None, "--best", help="Also keep the best run by this metric (e.g. loss.min)."),
    desc: bool = typer.Option(False, "--desc", help="With --best: the largest value is best (accuracy)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be deleted."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> int:
    """Delete old runs, keeping the N newest, pinned runs, running ones and the best by --best.

    Example: ptdiag runs gc --keep 20 --best loss.min
    """
    from ptdiag.runs.query import RunQuery
    from ptdiag.runs.store import RunStore

    run_store = RunStore.resolve(store)
    delete, kept = run_store.gc_plan(keep, RunQuery(sort=best, descending=desc) if best else None)
    if not dry_run:
        run_store.delete(delete)
    typer.echo(f"{'would delete' if dry_run else 'deleted'} {len(delete)} run(s), kept {len(kept)}")
    for run_id, why in kept.items():
        if why != f"among the {keep} newest":
            typer.echo(f"  kept {run_id}: {why}")
    return 0


@runs_app.command("export")
def runs_export(
    run_ids: list[str] = typer.Argument(None, help="Runs to export [default: every run listed by the filters]."),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="Write TensorBoard event files under DIR (one sub-directory per run)."),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="Sync to the MLflow tracking server at this http(s) URI."),
    status: Optional[str] = typer.Option(None, "--status", help="Without ids: only runs with this status."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> int:
    """Share runs through TensorBoard or an MLflow server.

    Examples: ptdiag runs export --tensorboard tb/     ptdiag runs export ID --mlflow http://127.0.0.1:5000
    """
    from ptdiag.errors import UsageProblem
    from ptdiag.runs.store import RunStore

    if tensorboard is None and mlflow is None:
        raise UsageProblem("runs export needs --tensorboard DIR and/or --mlflow URI")
    run_store = RunStore.resolve(store)
    ids = run_ids or [r["run_id"] for r in run_store.list(status=status)]
    for run_id in ids:
        for line in export_one(run_store, run_id, tensorboard, mlflow):
            typer.echo(line)
    return 0


def export_one(run_store, run_id: str, tensorboard: Path | None, mlflow: str | None) -> list[str]:
    """Export one stored run; what `ptdiag track/diagnose --tensorboard/--mlflow` call
    after the run is recorded. Returns one line per destination."""
    record = run_store.load(run_id)
    run_dir = run_store.run_dir(record["run_id"])
    lines = []
    if tensorboard is not None:
        from ptdiag.tracking_export.tensorboard import export_run

        lines.append(f"{record['run_id']}: TensorBoard {export_run(record, run_dir, tensorboard)}")
    if mlflow is not None:
        from ptdiag.tracking_export.mlflow import sync_mlflow

        synced = sync_mlflow(record, run_dir, mlflow)
        lines.append(f"{record['run_id']}: MLflow run {synced['run_id']} in experiment {synced['experiment_id']}"
                     + ("" if synced["created"] else " (already synced)"))
    return lines
