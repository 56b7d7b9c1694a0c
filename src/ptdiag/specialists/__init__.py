"""The six specialists of the contract, each a package with one concern.

A specialist package may hold:
- `probe.py`: its in-process part, a `Plugin` subscribing to probe events (runs inside
  the user's processes; imported only when the specialist is in the plan);
- `analyse(run) -> Analysis` in `__init__.py`: turns a recorded run into findings;
- `CHILD_ENV` in `__init__.py`: environment variables the program needs for this
  specialist's measurements (`{run_dir}` is filled in; the folder of a path in the run
  dir is made before the program starts); a variable the user set wins;
- `parent.py`: its part in ptdiag's own process, `after_run(ctx: ParentContext)`,
  called once the command has ended and before analysis, for work that needs more runs
  of the command (a second run to compare, a resumed run); whatever it measures goes into
  the run dir, so the analysis still reads only the run dir;
- artifact inspectors (modules with `sniff(path)` and `inspect(path)`), listed in
  `ptdiag.inspect.KINDS`.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ptdiag.findings import Analysis
from ptdiag.recorded import RecordedRun
from ptdiag.router.plan import SPECIALISTS as NAMES


def analyse(name: str, run: RecordedRun) -> Analysis | None:
    """The specialist's analysis of a recorded run, or None where it has none yet."""
    module = importlib.import_module(f"ptdiag.specialists.{name}")
    analyser = getattr(module, "analyse", None)
    return analyser(run) if analyser else None


def parent_part(name: str):
    """The specialist's `parent` module, or None where it needs nothing in ptdiag's process."""
    module_name = f"ptdiag.specialists.{name}.parent"
    return importlib.import_module(module_name) if importlib.util.find_spec(module_name) else None


def child_env(names: list[str], run_dir) -> dict[str, str]:
    """The environment the planned specialists ask for (see CHILD_ENV above)."""
    env: dict[str, str] = {}
    for name in names:
        wanted = getattr(importlib.import_module(f"ptdiag.specialists.{name}"), "CHILD_ENV", {})
        for key, value in wanted.items():
            env[key] = value.format(run_dir=run_dir)
            if "{run_dir}/" in value:  # libraries create no folders (NCCL makes its pipe as the group starts)
                Path(env[key]).parent.mkdir(parents=True, exist_ok=True)
    return env
