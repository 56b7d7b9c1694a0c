"""The six specialists of the contract, each a package with one concern.

A specialist package may hold:
- `probe.py`: its in-process part, a `Plugin` subscribing to probe events (runs inside
  the user's processes; imported only when the specialist is in the plan);
- `analyse(run) -> Analysis` in `__init__.py`: turns a recorded run into findings;
- artifact inspectors (modules with `sniff(path)` and `inspect(path)`), listed in
  `ptdiag.inspect.KINDS`.
"""

from __future__ import annotations

import importlib

from ptdiag.findings import Analysis
from ptdiag.recorded import RecordedRun

NAMES = ("memory", "performance", "numerics", "distributed", "reproducibility", "tracking")


def analyse(name: str, run: RecordedRun) -> Analysis | None:
    """The specialist's analysis of a recorded run, or None where it has none yet."""
    module = importlib.import_module(f"ptdiag.specialists.{name}")
    analyser = getattr(module, "analyse", None)
    return analyser(run) if analyser else None
