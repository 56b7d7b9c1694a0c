"""Answer "which run had lr 0.01?" from the symptom words: find `name value` pairs that
name a hyperparameter (the stored runs that match them are listed once, when the run is
recorded: store_facts)."""

from __future__ import annotations

import re

from ptdiag.runs.query import Condition

# Words people use for a hyperparameter, as the argparse name scripts give it.
ALIASES = {"learning rate": "lr", "learning_rate": "lr", "batch size": "batch_size",
           "batch-size": "batch_size", "bs": "batch_size", "weight decay": "weight_decay",
           "wd": "weight_decay", "momentum": "momentum", "epochs": "epochs", "seed": "seed"}
_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:e-?\d+)?"
# the key is bounded: an unbounded lazy run is quadratic on long symptoms (pasted logs)
_PAIR = re.compile(rf"(?P<key>[A-Za-z][A-Za-z0-9_.\- ]{{0,40}}?)\s*(?:=|:|of|is|at)?\s*(?P<value>{_NUMBER})(?![\w.])")


def conditions_in(words: str, known_keys: set[str]) -> list[Condition]:
    """`lr 0.01`, `batch size=128`, `learning rate of 1e-3`: a known parameter name (or
    an alias of one) right before a number."""
    found = []
    for match in _PAIR.finditer(words):
        key = match["key"].strip().lower()
        last = key.split()[-1] if key.split() else key
        key = last if last in known_keys else next(  # a script's own name first (nanoGPT's learning_rate)
            (ALIASES[a] for a in sorted(ALIASES, key=len, reverse=True) if key.endswith(a)), last)
        if key in known_keys:
            value = float(match["value"])
            found.append(Condition("params", key, "=", int(value) if value.is_integer() else value))
    return found

