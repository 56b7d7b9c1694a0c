"""The event vocabulary (`ptdiag.events.EVENTS`) against the code on both sides of it.

The probe writes events with `emit("kind", field=...)` and the analysis reads them with
`run.of("kind")` and friends; both are string literals, so these tests read the source
with `ast`: a kind written but not declared, a field written but not declared, a kind
declared that nothing reads, or a read of a kind nobody declared fails here, not as a
finding that silently never appears.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from ptdiag.events import EVENTS

SRC = Path(__file__).resolve().parents[1] / "src" / "ptdiag"
# where events are written: everything that runs in the user's process
WRITING = [*sorted((SRC / "probe").rglob("*.py")), SRC / "api.py"]
# the calls that write one event: Probe.emit, the callables plugins' helpers get as `emit`
WRITE_CALLS = ("emit", "_emit")
# the calls that read events of one kind (RecordedRun, ProcessEvents, distributed's Job and
# RankView, performance's _last); a module-level table of kinds is named like these
READ_CALLS = ("of", "first", "all_events", "events", "_last")
KIND_TABLES = ("_EVENT", "_EVENTS")


def _call_name(node: ast.Call) -> str | None:
    fn = node.func
    return fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC))


def _writes() -> list[tuple[str, str | None, list[str]]]:
    """(where, kind or None when not a literal, keyword field names) of every write call
    outside the relays that pass a caller's kind on (functions named emit themselves)."""
    found = []
    for path in WRITING:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relays = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in WRITE_CALLS
                  for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in WRITE_CALLS and id(node) not in relays:
                kind = _literal(node.args[0]) if node.args else None
                found.append((f"{_rel(path)}:{node.lineno}", kind, [k.arg for k in node.keywords if k.arg]))
    return found


def _is_ev(node: ast.AST) -> bool:
    """e["ev"] or e.get("ev")"""
    if isinstance(node, ast.Subscript):
        return _literal(node.slice) == "ev"
    return isinstance(node, ast.Call) and _call_name(node) == "get" and bool(node.args) and _literal(node.args[0]) == "ev"


def _reads() -> dict[str, list[str]]:
    """kind -> where the analysis and the parent side read it."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        if (SRC / "probe") in path.parents or path in (SRC / "events.py", SRC / "api.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        literals: list[tuple[int, str]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in READ_CALLS and node.args:
                literals += [(node.lineno, k) for k in [_literal(node.args[-1] if _call_name(node) == "_last"
                                                                   else node.args[0])] if k]
            elif isinstance(node, ast.Compare) and (_is_ev(node.left) or any(_is_ev(c) for c in node.comparators)):
                literals += [(node.lineno, k) for c in [node.left, *node.comparators] for k in [_literal(c)] if k]
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id.endswith(KIND_TABLES) for t in targets):
                first_items = [n.elts[0] if isinstance(n, ast.Tuple) and n.elts else n for n in
                               (node.value.elts if isinstance(node.value, (ast.Tuple, ast.List)) else [node.value])]
                literals += [(node.lineno, k) for n in first_items for k in [_literal(n)] if k]
        for line, kind in literals:
            found.setdefault(kind, []).append(f"{_rel(path)}:{line}")
    return found


def test_every_kind_written_is_declared_with_the_fields_it_writes():
    problems = []
    for where, kind, fields in _writes():
        if kind is None:
            problems.append(f"{where}: the kind is not a string literal, so it cannot be checked")
        elif kind not in EVENTS:
            problems.append(f"{where}: {kind!r} is not declared in ptdiag.events.EVENTS")
        else:
            problems += [f"{where}: {kind}.{f} is not a declared field" for f in fields
                         if f not in EVENTS[kind].fields]
    assert problems == []


def test_every_kind_declared_is_written_and_read():
    written = {kind for _, kind, _ in _writes()}
    reads = _reads()
    assert sorted(set(EVENTS) - written) == [], "declared, but the probe never writes them"
    assert sorted(set(EVENTS) - set(reads)) == [], "declared and written, but nothing reads them"


def test_every_kind_read_is_declared():
    undeclared = {kind: where for kind, where in _reads().items() if kind not in EVENTS}
    assert undeclared == {}


def test_the_scan_sees_writes_and_reads_as_the_code_makes_them():
    """The scanner itself: a known write with its fields, reads through each reader form."""
    writes = {(where.split(":")[0], kind): fields for where, kind, fields in _writes()}
    assert writes[("probe/core.py", "exit")] == ["steps"]
    reads = _reads()
    assert any(w.startswith("progress.py") for w in reads["step"])  # event.get("ev") == "step"
    assert any(w.startswith("verdict.py") for w in reads["args"])  # SEEN_EVENTS
    assert any(w.startswith("specialists/distributed") for w in reads["dist_step"])  # job.events(...)
    assert any(w.startswith("specialists/performance/measured.py") for w in reads["perf_scan"])  # _last(...)


def undeclared_in(run_dir: Path) -> list[str]:
    """What a recorded run's event logs hold that EVENTS does not declare (fields filled in
    from a dict at run time cannot be checked from the source)."""
    problems = []
    for path in sorted((run_dir / "events").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            kind = EVENTS.get(event["ev"])
            extra = set(event) - {"ev", "t"} - set(kind.fields) if kind else None
            if kind is None or extra:
                problems.append(f"{path.name}: {event['ev']} " + (f"fields {sorted(extra)}" if kind else "undeclared"))
    return sorted(set(problems))


@pytest.mark.slow
@pytest.mark.parametrize("bug, written", [
    (None, {"step", "mem_step", "mem_breakdown", "numerics", "perf_steps", "perf_scan", "perf_trace", "dist_step",
            "repro_step", "exit"}),
    ("poison", {"numerics_culprit", "stopped"}),
])
def test_a_run_under_every_specialist_writes_only_declared_kinds_and_fields(workdir, bug, written):
    """The fields filled in from dicts at run time (**found, **sample), checked on real runs:
    every specialist on a healthy ResNet, and numerics localising a poisoned batch."""
    from conftest import FAST_SAMPLE_ARGS, PYTHON, SAMPLES, run_ptdiag

    proc = run_ptdiag("everything", "--only", "tracking,memory,numerics,performance,reproducibility,distributed",
                      "--max-steps", "12", "--no-repeat", "--json", "r.json", "--", PYTHON,
                      str(SAMPLES / "resnet_nan.py"), *FAST_SAMPLE_ARGS, *(["--bug", bug] if bug else []),
                      cwd=workdir, timeout=400)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    run_dir = workdir / "ptdiag-runs" / json.loads((workdir / "r.json").read_text())["run_id"]
    kinds = {json.loads(line)["ev"] for path in (run_dir / "events").glob("*.jsonl")
             for line in path.read_text().splitlines()}
    assert written <= kinds
    assert undeclared_in(run_dir) == []
