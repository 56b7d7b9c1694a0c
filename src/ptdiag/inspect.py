"""`ptdiag inspect PATH`: analyse an artifact the user already has.

Each kind of artifact belongs to one specialist, whose module sniffs it cheaply and
analyses it. The first kind whose sniff accepts the path wins; the table is data.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ptdiag.report.model import Report


class InspectError(ValueError):
    """The path cannot be inspected; the message is the one line the user sees."""


@dataclass(frozen=True)
class ArtifactKind:
    name: str
    specialist: str
    module: str
    describes: str

    def load(self):
        return importlib.import_module(self.module)


KINDS = (
    ArtifactKind("profiler_trace", "performance", "ptdiag.specialists.performance.trace",
                 "a torch.profiler / Kineto Chrome trace (.json or .json.gz), or a folder of them (one per rank)"),
    ArtifactKind("memory_snapshot", "memory", "ptdiag.specialists.memory.snapshot",
                 "a CUDA memory snapshot pickle (torch.cuda.memory._dump_snapshot)"),
    ArtifactKind("flight_recorder", "distributed", "ptdiag.specialists.distributed.flight_recorder",
                 "NCCL Flight Recorder dumps (a folder with one file per rank)"),
    # last: a torch zip checkpoint is recognised by content the kinds above never have
    ArtifactKind("checkpoint", "reproducibility", "ptdiag.specialists.reproducibility.checkpoint",
                 "a torch.save checkpoint (.pt/.pth/.ckpt), loaded with weights_only=True"),
)


def detect(path: Path) -> ArtifactKind:
    if not path.exists():
        raise InspectError(f"no such file or directory: {path}")
    for kind in KINDS:
        if kind.load().sniff(path):
            return kind
    known = "; ".join(k.describes for k in KINDS)
    raise InspectError(f"{path}: not an artifact ptdiag knows (it reads {known})")


def inspect_path(path: Path) -> Report:
    kind = detect(path)
    try:
        analysis = kind.load().inspect(path)
    except (ValueError, OSError) as error:
        raise InspectError(f"{path}: {error}") from error
    return Report(
        run_id=f"inspect-{path.name}", symptom=None, command=None,
        route={"specialists": [kind.specialist], "ambiguous": False, "confidence": 1.0,
               "reasons": [{"specialist": kind.specialist, "matched": [kind.name]}], "notes": []},
        status="completed", exit_code=None, steps_observed=0,
        findings=analysis.findings, metrics=analysis.metrics,
        artifacts={"input": str(path), **analysis.artifacts})
