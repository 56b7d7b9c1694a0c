"""An informative default run name: what was trained on what, the hyperparameters that
changed since the previous run of the same script, and when.

    ResNet·FakeData lr=0.01 batch_size=64 · 01:16

A sweep's runs then read apart at a glance in `ptdiag runs list`, without --name. Pure:
the store is read once, when the run is recorded (store_facts), never by the analysis.
"""

from __future__ import annotations

import time

from ptdiag.recorded import RecordedRun
from ptdiag.specialists.tracking import record

# Shown first when they differ, and shown when there is no previous run to differ from.
KEY_PARAMS = ("lr", "learning_rate", "batch_size", "optimizer.name", "epochs", "weight_decay",
              "momentum", "seed")
MAX_SHOWN = 3


def run_name(run: RecordedRun) -> str:
    """The name the user gave, else the one decided when the run was recorded (store
    facts), else one from this run alone (a companion run, a fixture: nothing to differ from)."""
    return (run.meta.get("name") or record.store_facts(run).get("name")
            or informative_name(record.params(run), None, run.meta.get("started") or time.time(),
                                run.meta.get("command") or []))


def informative_name(params: dict, previous: dict | None, started: float,
                     command: list[str]) -> str:
    """`previous`: the params of the newest earlier run of the same program (interpreter
    and script), None when there is none; store_facts looks it up once, when the run is
    recorded."""
    what = "·".join(str(v) for v in (params.get("model.class"), params.get("dataloader.dataset"))
                    if v) or _script(command)
    changed = [k for k in _by_importance(params) if previous is None or previous.get(k) != params[k]]
    shown = [k for k in changed if k in KEY_PARAMS or previous is not None][:MAX_SHOWN]
    settings = " ".join(f"{k}={_short(params[k])}" for k in shown)
    return " ".join(p for p in (what, settings, "· " + time.strftime("%H:%M", time.localtime(started))) if p)


def _by_importance(params: dict) -> list[str]:
    """Key hyperparameters first, then the script's own arguments; derived keys
    (dataloader.*, model.*) only when nothing else says it."""
    own = sorted(k for k in params if "." not in k and k not in KEY_PARAMS)
    return [k for k in KEY_PARAMS if k in params] + own


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _script(command: list[str]) -> str:
    for arg in command[1:]:
        if arg.endswith(".py"):
            return arg.rsplit("/", 1)[-1][:-3]
    return command[0].rsplit("/", 1)[-1] if command else "run"
