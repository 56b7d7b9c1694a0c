"""What this run's record depends on in the other runs of the store, decided once, when
the run is recorded, and kept in its run dir (store_facts.json):

- its name, when the user gave none: what was trained, the hyperparameters that changed
  since the previous run of the same script, and when (naming.informative_name);
- the stored runs matching the hyperparameters named in the symptom ("which run had
  lr 0.01?", lookup.conditions_in), as they were when the question was asked.

This is the tracking specialist's part in ptdiag's own process (it reads the store); the
analysis reads only the file, so `ptdiag runs show ID --reanalyse` keeps the run's name
and answer however many runs were recorded since. A run recorded before this file
existed keeps the name its report was written with.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ptdiag.recorded import RecordedRun
from ptdiag.runs.query import RunQuery
from ptdiag.runs.store import INDEX_NAME, RunStore
from ptdiag.specialists.tracking import lookup, naming, record
from ptdiag.specialists.tracking.record import STORE_FACTS

PREVIOUS_LOOKED_AT = 50  # newest runs searched for the previous run of the same script
MAX_LISTED = 20  # matching runs kept


def record_once(store: RunStore, run_dir: Path) -> dict:
    """The run's store facts: read from its run dir when they were decided before,
    otherwise decided now from the store and written there."""
    path = run_dir / STORE_FACTS
    if path.exists():
        return json.loads(path.read_text())
    run = RecordedRun.load(run_dir)
    run_id = run.meta.get("run_id", run_dir.name)
    indexed = (store.root / INDEX_NAME).exists()
    facts = {"decided": time.time(),
             "name": run.meta.get("name") or _earlier_name(run_dir) or _informative_name(run, store if indexed else None),
             "runs_matching": _runs_matching(run, store if indexed else None, run_id)}
    tmp = path.with_name(f".{STORE_FACTS}.tmp")
    tmp.write_text(json.dumps(facts, indent=2, default=str))
    tmp.replace(path)
    return facts


def _earlier_name(run_dir: Path) -> str | None:
    """The name an earlier version of ptdiag wrote the run's report with."""
    try:
        return json.loads((run_dir / "report.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def _informative_name(run: RecordedRun, store: RunStore | None) -> str:
    command = run.meta.get("command") or []
    previous = None
    for row in store.list(limit=PREVIOUS_LOOKED_AT) if store else []:
        if row["run_id"] != run.meta.get("run_id") and (row.get("command") or [])[:2] == command[:2] \
                and row.get("params"):
            previous = row["params"]
            break
    return naming.informative_name(record.params(run), previous, run.meta.get("started") or time.time(), command)


def _runs_matching(run: RecordedRun, store: RunStore | None, run_id: str) -> dict | None:
    params = record.params(run)
    known = {k for k in params if "." not in k} | set(lookup.ALIASES.values())
    conditions = lookup.conditions_in(run.meta.get("symptom") or "", known)
    if not conditions:
        return None
    rows = store.list(RunQuery(conditions=conditions, limit=MAX_LISTED + 1)) if store else []
    return {"query": {c.key: c.value for c in conditions},
            "runs": [{"run_id": r["run_id"], "name": r.get("name"), "status": r.get("status")}
                     for r in rows if r["run_id"] != run_id][:MAX_LISTED]}
