"""One run as the reproducibility specialist reads it back: step by step, the states
two runs must agree on (see probe.py for how each is taken)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ptdiag.recorded import RecordedRun

COMPANIONS = "companions"
REPEAT = "repeat"
RESUME = "resume"
AUDIT = "audit"


@dataclass
class StepState:
    step: int
    sums: list[int] | None = None  # parameters and buffers after the step (step 0: before training)
    input: int | None = None  # the batch of the step's first forward pass
    rng: dict[str, str] = field(default_factory=dict)  # generator states at that forward pass
    loss: float | None = None
    lr: list | None = None
    epoch: int | None = None


@dataclass
class Trace:
    run: RecordedRun
    names: list[str]
    steps: dict[int, StepState]
    begin: dict | None  # optimizer state and lr when the first step began
    env: dict | None
    seeds: list[dict]
    ckpts: list[dict]
    loaders: list[dict]
    ops: list[dict]  # non-deterministic ops the audit run was warned about
    loads: list[dict]
    settings: list[dict]  # settings the audit run was warned make ops non-deterministic (cuBLAS's workspace)

    @classmethod
    def of(cls, run: RecordedRun) -> "Trace":
        proc = run.main
        if proc is None:
            return cls(run, [], {}, None, None, [], [], [], [], [], [])
        steps: dict[int, StepState] = {}
        for e in proc.of("repro_step"):
            steps[e["step"]] = StepState(e["step"], e.get("sums"), e.get("input"), e.get("rng") or {})
        for step, value in run.losses():
            steps.setdefault(step, StepState(step)).loss = value
        for e in proc.of("step"):
            state = steps.setdefault(e["step"], StepState(e["step"]))
            state.lr, state.epoch = e.get("lr"), e.get("epoch")
        names = proc.first("repro_names")
        return cls(run, names["names"] if names else [], dict(sorted(steps.items())), proc.first("repro_begin"),
                   proc.first("repro_env"), proc.of("seed"), proc.of("ckpt"), proc.of("repro_loader"),
                   proc.of("nondeterministic_op"), proc.of("load"), proc.of("nondeterministic_setting"))

    @property
    def last_step(self) -> int:
        return max((s for s in self.steps if s > 0), default=0)

    def consumed(self) -> dict[str, int]:
        """Generators drawn from during training: kind -> first step whose forward pass
        found a state other than the previous step's."""
        found: dict[str, int] = {}
        previous: dict[str, str] = {}
        for step, state in self.steps.items():
            for kind, digest in state.rng.items():
                if kind in previous and previous[kind] != digest:
                    found.setdefault(kind, step)
                previous[kind] = digest
        return found

    def seed_calls(self, kind: str) -> list[dict]:
        """The program's own seed calls that set this generator (torch.manual_seed seeds CUDA too)."""
        kinds = {"cuda": ("cuda", "torch")}.get(kind, (kind,))
        return [s for s in self.seeds if s.get("kind") in kinds]


def companion(run: RecordedRun, name: str) -> Trace | None:
    folder = Path(run.run_dir) / COMPANIONS / name
    if not (folder / "events").is_dir():
        return None
    return Trace.of(RecordedRun.load(folder))


def rng_label(kind: str) -> str:
    if kind.startswith("loader"):
        return f"DataLoader {kind[len('loader'):]}'s generator"
    return {"python": "python random", "numpy": "numpy.random", "torch": "torch (CPU)", "cuda": "CUDA"}.get(kind, kind)
