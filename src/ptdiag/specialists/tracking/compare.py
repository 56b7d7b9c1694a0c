"""Side by side: what differs between stored runs, and from which step their curves part.

Only differences are reported (a key equal in every run says nothing about why results
differ). Curves are compared against the first run given: the first common step where
the loss differs by more than `rtol * max(1, |a|)` (or goes non-finite in one run only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ptdiag.recorded import RecordedRun
from ptdiag.specialists.tracking import record

DEFAULT_RTOL = 1e-6
ENV_KEYS = ("torch", "cuda", "cudnn", "num_threads", "cuda_available")
HOST_KEYS = ("python", "hostname", "cpu_model", "platform")
METRIC_KEYS = (("loss", "first"), ("loss", "last"), ("loss", "min"), ("steps_observed",),
               ("steps_per_s",), ("samples_per_s",), ("peak_rss_bytes",))


def compare_runs(records: list[dict], run_dirs: list[Path], rtol: float = DEFAULT_RTOL) -> dict:
    runs = [RecordedRun.load(path) for path in run_dirs]
    return {
        "runs": [r["run_id"] for r in records],
        "names": [r.get("name") for r in records],
        "status": [r.get("status") for r in records],
        "command": differing([{"argv": _argv(r.get("command"))} for r in records]),
        "config": differing([r.get("params") or {} for r in records]),
        "seeds": differing([{k: v.get("value") for k, v in (r.get("seeds") or {}).items()} for r in records]),
        "git": _git(records, run_dirs),
        "environment": differing([_environment(r, run) for r, run in zip(records, runs)]),
        "packages": differing([_packages(path) for path in run_dirs]),
        "data": differing([_flat(record.data_identity(run)) for run in runs]),
        "metrics": differing([_metrics(r) for r in records]),
        "curves": _curves(runs, rtol),
    }


def differing(rows: list[dict]) -> dict[str, list]:
    """{key: [value in each run]} for the keys whose values are not all equal (a key a
    run lacks counts as None there)."""
    keys = sorted({k for row in rows for k in row})
    return {k: [row.get(k) for row in rows] for k in keys
            if len({json.dumps(row.get(k), sort_keys=True, default=str) for row in rows}) > 1}


def first_difference(a: list[tuple[int, float]], b: list[tuple[int, float]], rtol: float) -> dict | None:
    """The first common step where two curves differ beyond the tolerance."""
    other = dict(b)
    for step, value in a:
        if step not in other:
            continue
        theirs = other[step]
        finite = math.isfinite(value), math.isfinite(theirs)
        if finite != (True, True):
            if finite != (False, False):
                return {"step": step, "values": [value, theirs]}
            continue
        if abs(value - theirs) > rtol * max(1.0, abs(value)):
            return {"step": step, "values": [value, theirs], "abs_diff": abs(value - theirs)}
    return None


def _curves(runs: list[RecordedRun], rtol: float) -> dict:
    base = runs[0]
    curves = {"loss": (lambda run: run.losses())}
    for tag in record.logged_scalars(base):
        curves[f"logged/{tag}"] = (lambda run, tag=tag: record.logged_scalars(run).get(tag, []))
    found = {}
    for name, read in curves.items():
        reference = read(base)
        found[name] = {"rtol": rtol, "against": base.meta.get("run_id", base.run_dir.name),
                       "first_difference": [first_difference(reference, read(run), rtol) for run in runs[1:]],
                       "common_steps": [len(set(dict(reference)) & set(dict(read(run)))) for run in runs[1:]]}
    return found


def _git(records: list[dict], run_dirs: list[Path]) -> dict:
    states = [(r.get("environment") or {}).get("git") or r.get("git") or {} for r in records]
    patches = [(path / "git.patch").read_text(errors="replace") if (path / "git.patch").exists() else ""
               for path in run_dirs]
    found = differing([{"commit": s.get("commit"), "branch": s.get("branch"), "dirty": s.get("dirty")}
                       for s in states])
    if len(set(patches)) > 1:
        found["patch"] = [f"{len(p.splitlines())} lines" if p else None for p in patches]
    return found


def _environment(record_: dict, run: RecordedRun) -> dict:
    torch_env = record.torch_environment(run)
    host = (record_.get("environment") or {}).get("host") or {}
    found = {k: torch_env.get(k) for k in ENV_KEYS}
    main = run.main
    ended = main.first("resources") if main else None
    if ended and ended.get("num_threads") is not None:
        found["num_threads"] = ended["num_threads"]  # what the program set, not torch's default
    found.update({f"determinism.{k}": v for k, v in (torch_env.get("determinism") or {}).items()})
    found["gpus"] = [g.get("name") for g in torch_env.get("gpus") or []]
    found["driver"] = next((g.get("driver") for g in torch_env.get("gpus") or []), None)
    found.update({f"host.{k}": host.get(k) for k in HOST_KEYS})
    return found


def _packages(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "packages.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _metrics(record_: dict) -> dict:
    metrics = record_.get("metrics") or {}
    found = {}
    for path in METRIC_KEYS:
        value = metrics
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        found[".".join(path)] = value
    for tag, summary in (metrics.get("logged") or {}).items():
        found[f"logged.{tag}.last"] = summary.get("last")
    return found


def _argv(command) -> str | None:
    """The command line as one string (a shell-quoted join): runs that differ only in an
    argument show it, whatever style of config that argument fed."""
    import shlex

    return shlex.join(command) if isinstance(command, list) else command


def _flat(data: dict) -> dict:
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in data.items()}
