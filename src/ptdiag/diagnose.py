"""One diagnosis from start to end: plan, record, run, analyse, report.

`analyse_run` reads only the run dir, so a stored run can be analysed again later
(`ptdiag runs show`) and the analysis is testable without running anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ptdiag import __version__, environment, interventions, verification
from ptdiag import options as option_tables
from ptdiag.findings import Finding, sort_findings
from ptdiag.launch.command import resolve
from ptdiag.launch.runner import OUTPUT_LOGS, Supervisor
from ptdiag.recorded import RecordedRun
from ptdiag.report.json_report import write_json, write_report
from ptdiag.report.model import Report, announcements
from ptdiag.router import Route, with_evidence
from ptdiag.runs.store import RunStore
from ptdiag.series import plot_series
from ptdiag.specialists import analyse as specialist_analysis
from ptdiag.specialists import child_env, parent_part
from ptdiag.specialists.tracking import naming, record, store_facts
from ptdiag.stackdump import user_frame
from ptdiag.verification import attach as verification_attach
from ptdiag.verdict import run_findings, run_metrics, run_status, stopped_by, switched_off, without_repeated_failure

@dataclass
class Options:
    max_steps: int | None = None
    timeout_s: float | None = None
    name: str | None = None
    group: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # per specialist, from `-o specialist.key=value`, typed (ptdiag.options.parse_all):
    # {"memory": {"target_memory": "16GiB", "breakdown_step": 3}}
    specialist_options: dict[str, dict] = field(default_factory=dict)
    verify: bool | None = None  # verification runs: --verify/--no-verify; None: by default (ptdiag.verification)
    verify_budget_s: float | None = None  # their wall time in all; None: the default budget


@dataclass
class ParentContext:
    """What a specialist's parent-side part gets: the run, and a way to run the command again.
    `announce` prints one line of ptdiag's own on the terminal (nothing with --quiet)."""

    command: list[str]
    run_dir: Path
    meta: dict
    options: Options
    announce: Callable[[str], None] = lambda line: None

    def specialist_options(self, name: str) -> dict:
        """All of the specialist's options, typed, with their defaults (ptdiag.options)."""
        return option_tables.settings(name, self.options.specialist_options.get(name, {}))

    def run_again(self, command: list[str], companion_dir: Path, max_steps: int | None = None,
                  env: dict[str, str] | None = None, timeout_s: float | None = None, change: str | None = None):
        """Run a command with the probe into `companion_dir` (a RecordedRun can read it). Its
        output goes to stdout.log and stderr.log there, never into the user's streams, and
        the terminal gets one line saying where (and with what `change`, for a verification
        run). `timeout_s` replaces --timeout for this run."""
        companion_dir.mkdir(parents=True, exist_ok=True)
        plan = dict(self.meta["plan"], max_steps=max_steps)
        meta = dict(self.meta, command=environment.redact_argv(command), plan=plan, companion_of=self.meta["run_id"])
        write_json(meta, companion_dir / "meta.json")
        program = resolve(command, Path.cwd())
        logs = ", ".join(str(companion_dir / name) for name in OUTPUT_LOGS)
        steps = f" for {max_steps} steps" if max_steps else ""
        changed = f" with {change}" if change else ""
        self.announce(f"ptdiag ▸ {companion_dir.name} run: the command again{changed}{steps} ▸ its output: {logs}")
        timeout = timeout_s if timeout_s is not None else self.options.timeout_s
        outcome = Supervisor(command, program, companion_dir, plan, timeout, env=env,
                             output_dir=companion_dir).run()
        write_json(outcome.to_dict(), companion_dir / "outcome.json")
        return outcome

    @contextlib.contextmanager
    def keeping_saved_files(self, run: RecordedRun):
        """Companion runs write the program's files again, and one cut short may leave an
        older checkpoint behind: every file the main run saved with torch.save is moved
        aside (into the run dir) for the block and put back after it, so the user finds
        what the main run left."""
        folder = self.run_dir / "checkpoints" / "main-run"
        moved = []
        cwd = self.meta.get("cwd") or os.getcwd()
        saved = (os.path.join(cwd, e["path"]) for e in run.all_events("save") if isinstance(e.get("path"), str))
        for i, path in enumerate(dict.fromkeys(saved)):
            if os.path.isfile(path):
                folder.mkdir(parents=True, exist_ok=True)
                kept = folder / f"{i}-{os.path.basename(path)}"
                shutil.move(path, kept)
                moved.append((path, kept))
        try:
            yield
        finally:
            for path, kept in moved:
                shutil.move(kept, path)


def start_run(store: RunStore, symptom: str | None, command: list[str], route: Route,
              options: Options) -> tuple[str, Path, dict]:
    """Create the run dir and write what is known before the program starts."""
    cwd = Path.cwd()
    started = time.time()
    run_id, run_dir = store.create_run(started)
    git = environment.git_state(cwd)
    if git and git.get("dirty"):
        (run_dir / "git.patch").write_text(environment.git_diff(cwd))
    meta = {
        "run_id": run_id, "name": options.name, "group": options.group, "symptom": symptom,
        "command": environment.redact_argv(command), "cwd": str(cwd), "started": started,
        "route": route.to_dict(), "plan": plan_for(route, options, run_dir), "tags": options.tags,
        "ptdiag": __version__, "host": environment.host_environment(), "git": git,
        "environ": environment.redact_environ(os.environ),
    }
    write_json(meta, run_dir / "meta.json")
    return run_id, run_dir, meta


def plan_for(route: Route, options: Options, run_dir: Path) -> dict:
    return {"specialists": route.specialists, "cheap": route.cheap_checks, "max_steps": options.max_steps,
            "options": options.specialist_options, "env": child_env(route.specialists, run_dir)}


def run_child(command: list[str], run_dir: Path, meta: dict, options: Options, on_tick=None):
    program = resolve(command, Path.cwd())
    supervisor = Supervisor(command, program, run_dir, meta["plan"], options.timeout_s, on_tick)
    outcome = supervisor.run()
    write_json(outcome.to_dict(), run_dir / "outcome.json")
    return outcome


def run_parent_parts(command: list[str], run_dir: Path, meta: dict, options: Options,
                     announce: Callable[[str], None] = lambda line: None) -> None:
    """Each planned specialist's parent-side part, after the command ended (see specialists)."""
    context = ParentContext(command, run_dir, meta, options, announce)
    for name in meta["plan"]["specialists"]:
        part = parent_part(name)
        if part is not None:
            part.after_run(context)
    areas = [name for name in meta["plan"]["specialists"] if name in interventions.AREAS]
    if areas:
        verification.after_run(context, areas)


def analyse_run(run_dir: Path) -> Report:
    run = RecordedRun.load(run_dir)
    meta = run.meta
    status = run_status(run)
    route = with_evidence(Route.from_dict(meta["route"]), status, run.world_size)
    findings: list[Finding] = run_findings(run, status) + stack_findings(run, status)
    notes: list[str] = []
    artifacts_found: dict[str, str] = {}
    metrics_found: dict = {}
    for name in dict.fromkeys([*route.specialists, *route.cheap_checks, "tracking"]):
        analysis = specialist_analysis(name, run)
        if analysis is None:
            notes.append(f"{name}: this version has no analysis of its own yet; "
                         "only the run-level measurements apply")
            continue
        findings.extend(analysis.findings)
        artifacts_found.update(analysis.artifacts)
        metrics_found.update(analysis.metrics)
    findings = without_repeated_failure(findings, status)
    notes += verification_attach.attach(findings, run_dir)  # before sorting: a fix that did not help demotes
    if run.probe_errors:
        notes.append(f"the probe logged internal errors (the training was not affected): {run_dir / 'probe-errors.log'}")
    torch_env = record.torch_environment(run)
    artifacts = {"events": str(run_dir / "events"), "report": str(run_dir / "report.json"), **artifacts_found}
    if run.stack_dumps():
        artifacts["stacks"] = str(run_dir / "stacks")
    if (run_dir / "git.patch").exists():
        artifacts["git_patch"] = str(run_dir / "git.patch")
    stop, removed = stopped_by(run), switched_off(run)
    return Report(
        run_id=meta.get("run_id", run_dir.name), name=meta.get("name") or naming.run_name(run),
        symptom=meta.get("symptom"),
        command=meta.get("command"), route=route.to_dict(), status=status,
        exit_code=run.outcome.get("exit_code"), steps_observed=run.steps_observed,
        findings=sort_findings(findings, route.specialists), metrics={**run_metrics(run), **metrics_found}, artifacts=artifacts,
        environment={"python": meta.get("host", {}).get("python", {}).get("version")
                     if isinstance(meta.get("host", {}).get("python"), dict) else meta.get("host", {}).get("python"),
                     "torch": torch_env.get("torch"), "cuda": torch_env.get("cuda") if torch_env.get("cuda_available") else None,  # usable, as the contract shows
                     "cudnn": torch_env.get("cudnn"), "gpus": torch_env.get("gpus", []),
                     "git": meta.get("git"), "host": meta.get("host"), "torch_details": torch_env},
        started=meta.get("started"), ended=run.outcome.get("ended"),
        params=record.params(run), seeds=record.seeds(run), tags=meta.get("tags", {}),
        notes=[*announcements(stop, removed), *notes], stopped_by=stop, switched_off=removed,
        series=plot_series(run))


def stack_findings(run: RecordedRun, status: str) -> list[Finding]:
    """Where each process was when the time-out ended it: its innermost user frame."""
    if status not in ("hung", "timeout"):
        return []
    where = {}
    for name, text in run.stack_dumps().items():
        frame = user_frame(text, run.meta.get("cwd"))
        if frame:
            where[name.split(".")[0]] = f"{frame[0]} in {frame[1]}"
    ended = run.outcome.get("timed_out_at", 0)
    silent = max(0.0, ended - (run.last_progress(before=ended) or run.outcome.get("started", 0)))
    title = ("The run stopped making progress" if status == "hung" else "The run was still going at the time-out")
    return [Finding(
        code=f"ptdiag.{status}", specialist="ptdiag", severity="error" if status == "hung" else "warning",
        title=f"{title}: ended after {run.outcome.get('timed_out_at', 0) - run.outcome.get('started', 0):.0f} s",
        detail=f"Last recorded event {silent:.1f} s before the time-out; "
               + ("; ".join(f"{k} was at {v}" for k, v in where.items()) or "no Python stack of user code was dumped")
               + ".",
        evidence={"steps": run.steps_observed, "silent_s": round(silent, 3), "locations": where},
        fix="Look at the lines above: a rank waiting in a collective that another never reached, "
            "a DataLoader worker that died, or an input() waiting for the keyboard."
            if status == "hung" else "Raise --timeout, or use --max-steps to diagnose a shorter run.")]


def finish(store: RunStore, run_dir: Path, json_path: Path | None, html_path: Path | None = None) -> Report:
    """Record what the run takes from the store (once), analyse, then write report.json and
    report.html in the run dir (and where asked)."""
    from ptdiag.report.html import write_html

    store_facts.record_once(store, run_dir)  # the run's name and store answers, decided once
    report = analyse_run(run_dir)
    report.artifacts["html"] = str(run_dir / "report.html")
    write_report(report, run_dir / "report.json")
    store.record(report.summary())
    if json_path is not None:
        write_report(report, json_path)
    write_html(report, run_dir / "report.html")
    if html_path is not None:
        write_html(report, html_path)
    return report
