"""One distributed job as the analysis sees it: every rank's events, live state and stacks.

A single-node job is one run dir. In a multi-node job each node runs its own
`ptdiag ... -- torchrun --nnodes N --node_rank K ...` and records its own ranks; the
runs share a job identity (rendezvous run id, store address and port, world size:
`dist_env.job`). When those runs are in the same store (a shared file system, or the
nodes simulated on one machine), the job is assembled from all of them, so any node's
report speaks about every rank. The sibling runs are read, never changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ptdiag.recorded import ProcessEvents, RecordedRun
from ptdiag.specialists.distributed.live import read_states

JOB_WINDOW_S = 6 * 3600  # sibling node runs started within this time of this one
IDENTITY_SCAN_LINES = 400  # dist_env comes right after start-up: look no further


@dataclass
class RankView:
    rank: int
    proc: ProcessEvents
    run_id: str
    state: dict | None = None
    stack: str | None = None

    def of(self, kind: str) -> list[dict]:
        return self.proc.of(kind)

    def first(self, kind: str) -> dict | None:
        return self.proc.first(kind)


@dataclass
class Job:
    identity: str | None
    world_size: int
    ranks: dict[int, RankView]
    runs: list[str] = field(default_factory=list)  # run ids the ranks came from, this one first

    @classmethod
    def from_run(cls, run: RecordedRun) -> "Job":
        ranks = _rank_views(run)
        identity = next((e.get("job") for v in ranks.values() for e in v.of("dist_env") if e.get("job")), None)
        runs = [run.meta.get("run_id", run.run_dir.name)]
        if identity:
            for sibling in _sibling_runs(run, identity):
                views = _rank_views(sibling)
                if not set(views) - set(ranks):  # the same ranks again: an earlier run of the command, not a node
                    continue
                for rank, view in views.items():
                    ranks.setdefault(rank, view)
                runs.append(sibling.meta.get("run_id", sibling.run_dir.name))
        world = max([e.get("world_size") or 0 for v in ranks.values() for e in v.of("dist_env")]
                    + [run.world_size])
        return cls(identity, world, dict(sorted(ranks.items())), runs)

    def events(self, kind: str) -> dict[int, list[dict]]:
        return {r: v.of(kind) for r, v in self.ranks.items() if v.of(kind)}

    def first(self, kind: str) -> dict[int, dict]:
        return {r: v.first(kind) for r, v in self.ranks.items() if v.first(kind)}

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or bool(self.first("dist_env"))


def _rank_views(run: RecordedRun) -> dict[int, RankView]:
    run_id = run.meta.get("run_id", run.run_dir.name)
    states = {(s.get("rank"), s.get("pid")): s for s in read_states(run.run_dir)}
    stacks = run.stack_dumps()
    views = {}
    for rank, proc in run.ranks.items():
        views[rank] = RankView(rank, proc, run_id, states.get((rank, proc.pid)),
                               stacks.get(f"rank{rank}.p{proc.pid}.txt"))
    return views


def _sibling_runs(run: RecordedRun, identity: str) -> list[RecordedRun]:
    store = run.run_dir.parent
    started = run.meta.get("started") or 0
    found = []
    for other in sorted(store.iterdir()) if store.is_dir() else []:
        if other == run.run_dir or not (other / "events").is_dir():
            continue
        meta = _read_json(other / "meta.json")
        if meta.get("companion_of") or abs((meta.get("started") or 0) - started) > JOB_WINDOW_S:
            continue
        if identity in _identities(other):
            found.append(RecordedRun.load(other))
    return found


def _identities(run_dir: Path) -> set[str]:
    found = set()
    for path in (run_dir / "events").glob("rank*.p*.jsonl"):
        with open(path, encoding="utf-8", errors="replace") as fh:
            for _, line in zip(range(IDENTITY_SCAN_LINES), fh):
                if '"dist_env"' in line:
                    try:
                        found.add(json.loads(line).get("job"))
                    except json.JSONDecodeError:
                        pass
                    break
    return found


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
