"""The Python API: diagnose training that runs inside this process (a notebook cell, a
framework that owns the loop) instead of a command ptdiag starts.

    import ptdiag
    with ptdiag.session("loss is NaN after epoch 3") as s:
        trainer.fit(model, data)
    s.report.status, s.run_dir

It produces the same run dir, report (terminal, JSON, HTML) and run-store record as
`ptdiag SYMPTOM -- COMMAND`, through the same steps (`ptdiag.diagnose.start_run`,
`finish`); only the program is not a child process: the probe is installed in this
process when the block starts and switched off when it ends.

Switching off: the probe's patches of torch stay in place (Python cannot take a
function wrapper back safely while other code may hold it), but with no subscriber
left each costs one attribute look-up and an empty dict look-up per call, and
`max_steps` no longer applies. A clean stop by ptdiag inside the block (`max_steps`, or
a specialist that stops the run once it has measured what it needs, as the numerics
specialist does after localising a NaN) ends the block, not the program. What differs from the CLI, because the program is this
process: no `--timeout` (ptdiag cannot end its own process), no specialist part that
runs the command again (reproducibility's second run), and one process only (under
torchrun, use the CLI). Seeds set and arguments parsed before the block are not seen;
pass hyperparameters with `config=`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import ptdiag.probe as probe_state
from ptdiag import diagnose
from ptdiag import options as option_tables
from ptdiag.probe.core import Probe

HTML_NAME = "report.html"


class Session:
    """A context manager; use `session(...)` to make one. After the block: `.report`
    (a ptdiag.report.model.Report), `.run_dir`, `.run_id`, `.html_path`."""

    def __init__(self, symptom: str | None, specialists: list[str] | None = None, *,
                 max_steps: int | None = None, name: str | None = None, tags: dict | None = None,
                 options: dict | None = None, config: dict | None = None, store: str | os.PathLike | None = None,
                 json_path: str | os.PathLike | None = None, html_path: str | os.PathLike | None = None,
                 quiet: bool = False) -> None:
        if symptom is None and not specialists:
            raise ValueError("say what you see (symptom) or name the specialists to run")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, not {max_steps}")
        self.symptom = symptom
        self.specialists = list(specialists) if specialists else None
        self.options = diagnose.Options(max_steps=max_steps, name=name, tags={k: str(v) for k, v in (tags or {}).items()},
                                        specialist_options=option_tables.parse_all(options or {}))
        self.config = dict(config or {})
        self.store_option = os.fspath(store) if store is not None else None
        self.json_path = Path(json_path) if json_path is not None else None
        self.extra_html_path = Path(html_path) if html_path is not None else None
        self.quiet = quiet
        self.report = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.html_path: Path | None = None
        self._probe: Probe | None = None

    # -- entering: the same start as the CLI, then the probe in this process --------------
    def __enter__(self) -> "Session":
        if probe_state._probe is not None:
            warnings.warn("ptdiag is already diagnosing this process (started by the ptdiag command or an "
                          "outer session): this session records nothing of its own", stacklevel=2)
            return self
        from ptdiag.runs.store import RunStore

        self._store = RunStore.resolve(self.store_option)
        command = [sys.executable, *sys.argv]
        self.run_id, self.run_dir, meta = diagnose.start_run(self._store, self.symptom, command, self._route(),
                                                             self.options)
        self._started = time.time()
        self._probe = Probe(self.run_dir, meta["plan"], int(os.environ.get("RANK", "0") or 0))
        self._probe.install()
        probe_state._probe = self._probe
        if self.config:
            self._probe.emit("args", values=self.config)
        return self

    def _route(self):
        if self.specialists:
            from ptdiag.router import fixed_route

            return fixed_route(self.specialists, "ptdiag.session(specialists=...)")
        from ptdiag.router import route

        return route(self.symptom)

    # -- leaving: switch the probe off, then the same analysis and report as the CLI ------
    def __exit__(self, exc_type, exc, tb) -> bool:
        probe = self._probe
        if probe is None:
            return False
        # ptdiag's own clean stop (max_steps, a specialist done measuring: Probe.stop)
        stopped_here = exc_type is SystemExit and exc.code in (0, None) and probe.stopped is not None
        if exc_type is not None and not stopped_here:
            probe.call("on_exception", exc_type, exc, tb)
        self._switch_off(probe)
        from ptdiag.launch.runner import ChildOutcome

        returncode, interrupted_by = _returncode(exc_type, exc, stopped_here)
        outcome = ChildOutcome(returncode, self._started, time.time(), interrupted_by=interrupted_by)
        try:
            from ptdiag.report.json_report import write_json

            write_json(outcome.to_dict(), self.run_dir / "outcome.json")
            self._report()
        except Exception:  # ptdiag's own failure must not replace the program's exception
            log = self.run_dir / "ptdiag-error.log"
            log.write_text(traceback.format_exc())
            warnings.warn(f"ptdiag: internal error while analysing the run (details: {log})", stacklevel=2)
        return stopped_here

    def _switch_off(self, probe: Probe) -> None:
        probe.close()
        probe_state._probe = None

    def _report(self) -> None:
        from ptdiag.report import terminal

        self.report = diagnose.finish(self._store, self.run_dir, self.json_path, self.extra_html_path)
        self.html_path = self.run_dir / HTML_NAME
        if not self.quiet:
            terminal.render(self.report, terminal.stderr_console())


def _returncode(exc_type, exc, stopped_here: bool) -> tuple[int, str | None]:
    """What the exit code of a script ending the way the block ended would have been."""
    if exc_type is None or stopped_here:
        return 0, None
    if issubclass(exc_type, KeyboardInterrupt):
        return -signal.SIGINT, "SIGINT"
    if issubclass(exc_type, SystemExit):
        return (exc.code if isinstance(exc.code, int) else int(exc.code is not None)), None
    return 1, None


def session(symptom: str | None, specialists: list[str] | None = None, **kwargs) -> Session:
    """Diagnose the training run inside the `with` block, like `ptdiag SYMPTOM -- COMMAND`.

    symptom: what you see, in your own words (routes to specialists like the CLI does);
    specialists: run these instead of the router's plan (like --only);
    max_steps: stop the training cleanly after N optimizer steps; this stop, like a
        specialist's own stop, ends the block without an exception and the code after it runs;
    name, tags, options ({"memory": {"target_memory": "16GiB"}}), store, json_path,
    html_path (an extra copy; report.html is always written in the run dir), quiet;
    config: hyperparameters to record when they are not parsed with argparse inside the block.
    """
    return Session(symptom, specialists, **kwargs)
