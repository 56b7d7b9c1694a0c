"""Answer "which run had lr 0.01?" from the symptom words: find `name value` pairs that
name a hyperparameter and list the stored runs that match them."""

from __future__ import annotations

import re
from pathlib import Path

from ptdiag.runs.query import Condition, RunQuery
from ptdiag.runs.store import INDEX_NAME, RunStore

# Words people use for a hyperparameter, as the argparse name scripts give it.
ALIASES = {"learning rate": "lr", "learning_rate": "lr", "batch size": "batch_size",
           "batch-size": "batch_size", "bs": "batch_size", "weight decay": "weight_decay",
           "wd": "weight_decay", "momentum": "momentum", "epochs": "epochs", "seed": "seed"}
_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:e-?\d+)?"
# the key is bounded: an unbounded lazy run is quadratic on long symptoms (pasted logs)
_PAIR = re.compile(rf"(?P<key>[A-Za-z][A-Za-z0-9_.\- ]{{0,40}}?)\s*(?:=|:|of|is|at)?\s*(?P<value>{_NUMBER})(?![\w.])")
MAX_LISTED = 20


def conditions_in(words: str, known_keys: set[str]) -> list[Condition]:
    """`lr 0.01`, `batch size=128`, `learning rate of 1e-3`: a known parameter name (or
    an alias of one) right before a number."""
    found = []
    for match in _PAIR.finditer(words):
        key = match["key"].strip().lower()
        key = next((ALIASES[a] for a in sorted(ALIASES, key=len, reverse=True)
                    if key.endswith(a)), key.split()[-1] if key.split() else key)
        if key in known_keys:
            value = float(match["value"])
            found.append(Condition("params", key, "=", int(value) if value.is_integer() else value))
    return found


def matching_runs(store_root: Path, words: str, known_keys: set[str], exclude: str
                  ) -> tuple[list[Condition], list[dict]]:
    conditions = conditions_in(words, known_keys)
    if not conditions or not (store_root / INDEX_NAME).exists():
        return conditions, []  # a companion run's dir is not in a store: never make one
    rows = RunStore(store_root).list(RunQuery(conditions=conditions, limit=MAX_LISTED + 1))
    return conditions, [row for row in rows if row["run_id"] != exclude][:MAX_LISTED]
