"""The ptdiag command line (typer). No torch import at module level: the parent process
never needs torch to supervise a run.

The main form is `ptdiag SYMPTOM [OPTIONS] -- COMMAND...`; `ptdiag.entry.main` splits
off the user's command (everything after the first `--`, untouched) before typer parses
the rest.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from ptdiag.cli_runs import STORE_HELP, runs_app
from ptdiag.errors import UsageProblem


EXAMPLES = """
Examples:

  ptdiag "loss is NaN after epoch 3" -- python train.py --lr 0.1

  ptdiag "training is slow, only 5 it/s" --max-steps 50 -- python train.py

  ptdiag "OOM on each GPU with DDP" -- torchrun --nproc_per_node 4 train.py

  ptdiag route "CUDA out of memory after a few batches"

  ptdiag runs list            ptdiag runs show 20261122-0130

  ptdiag inspect trace.json.gz      ptdiag env

  ptdiag options              (what each -o specialist.key=value takes)
"""

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Diagnose PyTorch training problems by running the training.\n\n"
                       "Say what you see, then give the command that shows it after `--`.\n" + EXAMPLES)
app.add_typer(runs_app, name="runs")

FAIL_ON = ("never", "error", "warning")
FAIL_ON_EXIT_CODE = 3
INTERNAL_ERROR_EXIT_CODE = 70  # EX_SOFTWARE
NO_COMMAND = "no command after '--': e.g. ptdiag \"loss is NaN\" -- python train.py"
# the user's command, everything after the first `--`; set by ptdiag.entry.main
user_command: list[str] | None = None


NAME_HELP = "Name of the run in the store [default: model, data and what changed since the last run]."
GROUP_HELP = "Group the run with others (e.g. a sweep): runs list --group G."
TAG_HELP = "k=v tag for the run (repeatable)."
TENSORBOARD_HELP = "Also export the run as TensorBoard event files into this directory."
MLFLOW_HELP = "Also log the run to this MLflow tracking server (http://host:port)."


@app.command(epilog=EXAMPLES)
def diagnose(
    symptom: str = typer.Argument(..., help="What you see, in your own words, or a pasted error line."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON report here."),
    html_path: Optional[Path] = typer.Option(None, "--html", help="Also write the HTML report here (report.html is always in the run dir)."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    only: Optional[str] = typer.Option(None, "--only", help="Run these specialists instead of the router's plan (comma-separated)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop the training cleanly after N training steps (optimizer steps, or hand-written updates)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help="End the run after S seconds, dumping every rank's stacks."),
    fail_on: str = typer.Option("never", "--fail-on", help="Exit 3 when a finding of this severity or worse is found: never, error, warning."),
    option: list[str] = typer.Option([], "--option", "-o", help="specialist.key=value for one specialist (repeatable), e.g. -o reproducibility.steps=20; `ptdiag options` lists them."),
    resume_cmd: Optional[str] = typer.Option(None, "--resume-cmd", help="Check that this command resumes the run exactly from its checkpoint (reproducibility), e.g. \"python train.py --resume ckpt.pt\"."),
    resume_step: Optional[int] = typer.Option(None, "--resume-step", min=1, help="The step whose checkpoint --resume-cmd resumes from [default: the first save]."),
    repeat: Optional[bool] = typer.Option(None, "--repeat/--no-repeat", help="Run the command a second time to prove it repeats (reproducibility) [default: when reproducibility is planned]."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify", envvar="PTDIAG_VERIFY", help="Try the fix of each top finding that has an intervention in a short companion run and report what changed (`ptdiag options` lists them) [default: when the run took under 3 minutes on one node; PTDIAG_VERIFY=0/1 sets it for every run]."),
    verify_budget: Optional[float] = typer.Option(None, "--verify-budget", min=1.0, help="At most S seconds of verification runs in all [default: 3x the run, at least 60]."),
    target_memory: Optional[str] = typer.Option(None, "--target-memory", help="Will it fit: a memory size (16GiB) or a GPU preset (V100-16GB); same as -o memory.target_memory=/memory.target=."),
    name: Optional[str] = typer.Option(None, "--name", help=NAME_HELP),
    group: Optional[str] = typer.Option(None, "--group", help=GROUP_HELP),
    tag: list[str] = typer.Option([], "--tag", help=TAG_HELP),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help=TENSORBOARD_HELP),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help=MLFLOW_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the report: no progress lines."),
) -> int:
    """Run COMMAND with the probe, diagnose SYMPTOM, record the run, print the report.

    The command's output, exit code, argv and working directory are exactly as without
    ptdiag; the report goes to stderr (and to --json PATH)."""
    from ptdiag.router import fixed_route, route as route_text, triage_steps

    if fail_on not in FAIL_ON:
        raise UsageProblem(f"--fail-on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")
    route = fixed_route([s.strip() for s in only.split(",") if s.strip()], "--only") if only else route_text(symptom)
    if route.ambiguous and max_steps is None and triage_steps():
        max_steps = triage_steps()
        route = replace(route, notes=route.notes + [f"the triage measures the first {max_steps} optimizer steps "
                                                    "(--max-steps changes it)"])
    if target_memory:
        key = "target_memory" if target_memory[:1].isdigit() else "target"
        option = [*option, f"memory.{key}={target_memory}"]
        route = _with_specialist(route, "memory", "--target-memory asks whether the step fits")
    reproducibility = {"resume_cmd": resume_cmd, "resume_step": resume_step,
                       "repeat": None if repeat is None else ("yes" if repeat else "no")}
    for key, value in reproducibility.items():
        if value is not None:
            option = [*option, f"reproducibility.{key}={value}"]
    if resume_cmd or repeat:
        route = _with_specialist(route, "reproducibility", "--resume-cmd/--repeat ask for it")
    return _run_and_report(symptom, route, json_path=json_path, html_path=html_path, store=store, max_steps=max_steps,
                           timeout=timeout, fail_on=fail_on, option=option, name=name, group=group, tag=tag,
                           tensorboard=tensorboard, mlflow=mlflow, quiet=quiet, verify=verify,
                           verify_budget=verify_budget)


@app.command()
def track(
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON report here."),
    html_path: Optional[Path] = typer.Option(None, "--html", help="Also write the HTML report here."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    name: Optional[str] = typer.Option(None, "--name", help=NAME_HELP),
    group: Optional[str] = typer.Option(None, "--group", help=GROUP_HELP),
    tag: list[str] = typer.Option([], "--tag", help=TAG_HELP),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help=TENSORBOARD_HELP),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help=MLFLOW_HELP),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop the training cleanly after N optimizer steps."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help="End the run after S seconds."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary: no progress lines."),
) -> int:
    """Record COMMAND as a tracked run, with no diagnosis: the passive recorder only.

    Example: ptdiag track --name baseline --tag lr=0.1 -- python train.py --lr 0.1
    """
    from ptdiag.router import Route

    route = Route(specialists=["tracking"], ambiguous=False, confidence=1.0,
                  reasons=[{"specialist": "tracking", "matched": ["ptdiag track"]}], notes=[])
    return _run_and_report(None, route, json_path=json_path, html_path=html_path, store=store, max_steps=max_steps,
                           timeout=timeout, fail_on="never", option=[], name=name, group=group, tag=tag,
                           tensorboard=tensorboard, mlflow=mlflow, quiet=quiet, verify=False, verify_budget=None)


def _with_specialist(route, name: str, why: str):
    if name in route.specialists:
        return route
    return replace(route, specialists=route.specialists + [name], notes=route.notes + [f"{name} added: {why}"],
                   cheap_checks=[n for n in route.cheap_checks if n != name])


def _run_and_report(symptom, route, *, json_path, html_path, store, max_steps, timeout, fail_on, option, name,
                    group, tag, tensorboard, mlflow, quiet, verify, verify_budget) -> int:
    from ptdiag import diagnose as diag
    from ptdiag.launch.command import resolve
    from ptdiag.progress import ProgressWatcher
    from ptdiag.report import terminal
    from ptdiag.runs.store import RunStore

    if user_command is None:
        raise UsageProblem(NO_COMMAND)
    options = diag.Options(max_steps=max_steps, timeout_s=timeout, name=name, group=group,
                           tags=_parse_pairs(tag, "--tag"),
                           specialist_options=_parse_specialist_options(option), verify=verify,
                           verify_budget_s=verify_budget)
    resolve(user_command, Path.cwd())  # bad commands fail before a run is created
    run_store = RunStore.resolve(store)
    run_id, run_dir, meta = diag.start_run(run_store, symptom, user_command, route, options)
    console = terminal.stderr_console()
    if not quiet:
        console.print(f"[dim]ptdiag ▸ run {run_id} ▸ plan: {' → '.join(route.specialists)} ▸ recording to {run_dir}[/]")
    watcher = ProgressWatcher(run_dir, console) if console.is_terminal and not quiet else None
    outcome = diag.run_child(user_command, run_dir, meta, options, watcher.tick if watcher else None)
    try:
        if not outcome.interrupted_by:
            diag.run_parent_parts(user_command, run_dir, meta, options,
                                  (lambda line: None) if quiet else (lambda line: console.print(line, markup=False)))
        report = diag.finish(run_store, run_dir, json_path, html_path)
    except Exception:  # ptdiag's own bug: the program's result still stands
        log = run_dir / "ptdiag-error.log"
        log.write_text(traceback.format_exc())
        console.print(f"ptdiag: internal error while analysing the run (details: {log}); "
                      "the program's exit code is passed through")
        return outcome.exit_code
    terminal.render(report, console)
    if tensorboard is not None or mlflow is not None:
        _export(run_store, run_id, tensorboard, mlflow, console)
    return _exit_code(outcome.exit_code, report, fail_on)


def _export(run_store, run_id: str, tensorboard: Path | None, mlflow: str | None, console) -> None:
    """Share the recorded run; an unreachable server is reported, never fatal to the run."""
    from ptdiag.cli_runs import export_one
    from ptdiag.runs.errors import StoreError

    try:
        for line in export_one(run_store, run_id, tensorboard, mlflow):
            console.print(line)
    except (StoreError, OSError) as error:
        console.print(f"ptdiag: export failed: {error}")


def _exit_code(child_exit: int, report, fail_on: str) -> int:
    if child_exit != 0 or fail_on == "never":
        return child_exit
    worst = FAIL_ON.index(fail_on)
    severities = ("never", "error", "warning")
    if any(severities.index(f.severity) <= worst for f in report.findings if f.severity in severities):
        return FAIL_ON_EXIT_CODE
    return 0


def _parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageProblem(f"{option} needs key=value, not {pair!r}")
        parsed[key] = value
    return parsed


def _parse_specialist_options(pairs: list[str]) -> dict[str, dict]:
    """`-o specialist.key=value` pairs, checked against the declared options and typed
    (ptdiag.options): a wrong key or value ends here, before any run starts."""
    from ptdiag.options import OPTIONS, parse_all

    options: dict[str, dict[str, str]] = {}
    for key, value in _parse_pairs(pairs, "--option").items():
        specialist, dot, name = key.partition(".")
        if not dot or not name:
            raise UsageProblem(f"-o needs specialist.key=value with a specialist of {', '.join(OPTIONS)}, not {key!r}"
                               " (ptdiag options lists them)")
        options.setdefault(specialist, {})[name] = value
    return parse_all(options)


@app.command()
def route(
    symptom: str = typer.Argument(..., help="What you see, or a pasted error line/traceback."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (contract shape)."),
) -> int:
    """Show which specialists the words route to, in order, and why.

    Example: ptdiag route "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" --json
    """
    from ptdiag.entry import print_route

    return print_route(symptom, as_json)


@app.command()
def env(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> int:
    """Print python, torch, CUDA/cuDNN, GPUs (NVML where present), CPU, RAM and git state.

    Examples: ptdiag env      ptdiag env --json > env.json
    """
    from ptdiag import environment

    data = {"host": environment.host_environment(), "torch": environment.torch_environment(),
            "git": environment.git_state(Path.cwd())}
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for section, values in data.items():
        typer.echo(f"{section}:")
        for key, value in (values or {"state": "not a git work tree"}).items():
            typer.echo(f"  {key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    return 0


@app.command()
def options(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> int:
    """List each specialist's options for -o specialist.key=value: type, default, what it does;
    then the fixes --verify tries in verification runs, and the findings each verifies.

    Example: ptdiag "training is slow" -o performance.profile_steps=5 -- python train.py
    """
    from ptdiag.interventions import INTERVENTIONS, METRICS
    from ptdiag.options import OPTIONS

    if as_json:
        print(json.dumps({**{s: [{"name": o.name, "type": o.kind, "default": o.default, "help": o.help,
                                  **({"choices": list(o.choices)} if o.choices else {})} for o in declared]
                             for s, declared in OPTIONS.items()},
                          "interventions": [{"name": i.name, "area": i.area, "changes": i.changes,
                                             "verifies": list(i.verifies), "defaults": i.defaults, "metric": i.metric,
                                             **({"metric_for": i.metric_for} if i.metric_for else {})}
                                            for i in INTERVENTIONS]}, indent=2))
        return 0
    for specialist, declared in OPTIONS.items():
        typer.echo(f"{specialist}:" + ("" if declared else " no options"))
        for option in declared:
            typer.echo(f"  -o {specialist}.{option.describe()}")
            typer.echo(f"       {option.help}")
    typer.echo("interventions (--verify: each tried in a companion run for the findings it verifies):")
    for i in INTERVENTIONS:
        settings = ", ".join(f"{k}={v}" for k, v in i.defaults.items())
        typer.echo(f"  {i.name} " + (f"({settings}; from the finding's evidence where it measured them)"
                                     if settings else "(no settings)"))
        typer.echo(f"       {i.changes}; verifies {', '.join(i.verifies)}; measures {METRICS[i.metric]}"
                   + "".join(f"; for {code}: {METRICS[m]}" for code, m in i.metric_for.items()))
    return 0


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A profiler trace (or a folder of rank traces), CUDA memory snapshot, "
                                          "Flight Recorder dump folder or checkpoint."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON report here."),
) -> int:
    """Analyse an artifact you already have; its kind is detected from its content.

    Examples: ptdiag inspect trace.pt.trace.json.gz   ptdiag inspect traces/ (one per rank)
    ptdiag inspect snapshot.pickle   ptdiag inspect fr_dumps/
    """
    from ptdiag.inspect import inspect_path
    from ptdiag.report import terminal
    from ptdiag.report.json_report import write_report

    report = inspect_path(path)
    if json_path is not None:
        write_report(report, json_path)
    terminal.render(report, terminal.stderr_console())  # stdout stays free, as for every report
    return 0


# typer raises its vendored click's exceptions, which it does not export: they are known
# by their shape (a message and an exit code), and a bare command's help by its name, as
# typer itself tells it (rich_utils.rich_format_error)
NO_ARGS_IS_HELP = "NoArgsIsHelpError"


def _is_usage_error(error: Exception) -> bool:
    return callable(getattr(error, "format_message", None)) and isinstance(getattr(error, "exit_code", None), int)


def run_app(head: list[str]) -> int:
    from ptdiag.errors import USER_ERRORS

    try:
        result = app(args=head, prog_name="ptdiag", standalone_mode=False)
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        print("ptdiag: aborted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        print(f"ptdiag: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if _is_usage_error(error):
            if type(error).__name__ == NO_ARGS_IS_HELP:  # a bare `ptdiag` or `ptdiag runs`: the help
                print(error.format_message())
            else:
                print(f"ptdiag: error: {error.format_message()}", file=sys.stderr)
            return error.exit_code
        if os.environ.get("PTDIAG_DEBUG"):
            raise
        print(f"ptdiag: internal error: {type(error).__name__}: {error} "
              "(set PTDIAG_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return INTERNAL_ERROR_EXIT_CODE
    return result if isinstance(result, int) else 0
