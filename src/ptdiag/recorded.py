"""A run dir read back: what the probe recorded in each process, per rank.

Analysis reads only this, never the live program, so `ptdiag runs show` can analyse a
run again later and every analyser is testable from recorded files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ptdiag.events import read_events


@dataclass
class ProcessEvents:
    """The events of one probed process."""

    rank: int
    pid: int
    events: list[dict]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["ev"] == kind]

    def first(self, kind: str) -> dict | None:
        return next((e for e in self.events if e["ev"] == kind), None)

    @property
    def skipped_counted(self) -> set[int]:
        """Steps the probe counted whose update a GradScaler skipped on the device (fused optimizers)."""
        return {e["step"] for e in self.of("step_skipped") if e.get("counted")}

    def training_loader(self) -> dict | None:
        """The `dataloader` event of the loader the steps trained on; where no step ended
        (an out-of-memory in the first), the only loader built (None where there were several)."""
        used = {e.get("loader") for e in self.of("step")}
        loaders = self.of("dataloader")
        found = next((e for e in loaders if e.get("loader") in used), None)
        return found if found or used or len(loaders) != 1 else loaders[0]

    @property
    def steps(self) -> int:
        """Updates made: optimizer steps taken (the last recorded, or the count at exit: the
        recorder may have kept 1 step in N, when ptdiag's budget shed its per-step lines),
        less those a fused optimizer's GradScaler skipped on the device."""
        taken = max([e["step"] for e in self.of("step")] + [e.get("steps") or 0 for e in self.of("exit")], default=0)
        return taken - len(self.skipped_counted)


@dataclass
class RecordedRun:
    run_dir: Path
    meta: dict = field(default_factory=dict)
    outcome: dict = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "RecordedRun":
        return cls(run_dir, _read_json(run_dir / "meta.json"), _read_json(run_dir / "outcome.json"))

    @cached_property
    def processes(self) -> list[ProcessEvents]:
        found = []
        for path in sorted((self.run_dir / "events").glob("rank*.p*.jsonl")):
            rank, pid = path.name[len("rank"):-len(".jsonl")].split(".p")
            found.append(ProcessEvents(int(rank), int(pid), read_events(path)))
        return found

    @cached_property
    def ranks(self) -> dict[int, ProcessEvents]:
        """Per rank, the process that trained (most optimizer steps; first started on a tie)."""
        best: dict[int, ProcessEvents] = {}
        for proc in self.processes:
            if proc.rank not in best or proc.steps > best[proc.rank].steps:
                best[proc.rank] = proc
        return dict(sorted(best.items()))

    @property
    def world_size(self) -> int:
        sizes = [e.get("world_size") for p in self.processes for e in p.of("start")]
        return max([s for s in sizes if s] or [max(len(self.ranks), 1)])

    @property
    def main(self) -> ProcessEvents | None:
        return self.ranks.get(0) or next(iter(self.ranks.values()), None)

    def all_events(self, kind: str) -> list[dict]:
        return [dict(e, rank=p.rank) for p in self.processes for e in p.of(kind)]

    @property
    def steps_observed(self) -> int:
        return max((p.steps for p in self.ranks.values()), default=0)

    def losses(self, rank: int | None = None) -> list[tuple[int, float]]:
        proc = self.main if rank is None else self.ranks.get(rank)
        if proc is None:
            return []
        skipped = proc.skipped_counted
        return [(e["step"], _as_float(e["value"])) for e in proc.of("loss")
                if not e.get("skipped") and e["step"] not in skipped]

    def step_times(self, rank: int | None = None) -> list[float]:
        proc = self.main if rank is None else self.ranks.get(rank)
        return [e["dt"] for e in proc.of("step") if e.get("dt") is not None] if proc else []

    def first_nonfinite_loss(self) -> dict | None:
        """The earliest non-finite loss over all ranks: {step, value, rank, epoch}."""
        found = None
        for rank, proc in self.ranks.items():
            epochs = {e["step"]: e.get("epoch") for e in proc.of("step")}
            for e in proc.of("loss"):
                if not e.get("finite", True) and (found is None or e["step"] < found["step"]):
                    found = {"step": e["step"], "value": e["value"], "rank": rank,
                             "epoch": epochs.get(e["step"])}
                    break
        return found

    @property
    def exceptions(self) -> list[dict]:
        return self.all_events("exception")

    @property
    def stopped_by_ptdiag(self) -> dict | None:
        """The first stop ptdiag made (Probe.stop), over all ranks: each rank of a DDP run
        stops itself at --max-steps."""
        stops = self.all_events("stopped")
        return min(stops, key=lambda e: (e["step"], e.get("wall", 0))) if stops else None

    @property
    def switched_off(self) -> list[dict]:
        """Instruments ptdiag removed (Probe.switch_off), once each: the first rank to say so."""
        first: dict[str, dict] = {}
        for e in sorted(self.all_events("switched_off"), key=lambda e: e["step"]):
            first.setdefault(e["what"], e)
        return list(first.values())

    def last_progress(self, before: float | None = None) -> float | None:
        """Wall time of the last event of any process: when the run last moved. `before`:
        the last one up to that time (a time-out's own exit work writes events after it)."""
        times = [next((e["t"] for e in reversed(p.events) if before is None or e.get("t", 0) <= before), None)
                 for p in self.processes if p.events]
        times = [t for t in times if t is not None]
        return max(times) if times else None

    @cached_property
    def probe_errors(self) -> str:
        path = self.run_dir / "probe-errors.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stack_dumps(self) -> dict[str, str]:
        folder = self.run_dir / "stacks"
        dumps = {}
        for path in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
            text = path.read_text(errors="replace").strip()
            if text:
                dumps[path.name] = text
        return dumps

    def per_rank_counts(self) -> dict[int, int]:
        return {rank: proc.steps for rank, proc in self.ranks.items()}


def _as_float(value) -> float:
    """Non-finite floats are written as the strings "nan"/"inf"; float() reads both."""
    return float(value)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}

