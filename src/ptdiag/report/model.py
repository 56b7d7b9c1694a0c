"""The Report: everything one diagnosis says, in the shape of shared/contract.md.

Built once from the recorded run, then handed unchanged to every renderer, so the
terminal, the JSON file and the run store can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ptdiag.findings import Finding

SCHEMA = "ptdiag.report/1"


@dataclass
class Report:
    run_id: str
    symptom: str | None
    command: list[str] | None
    route: dict
    status: str
    exit_code: int | None
    steps_observed: int
    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    started: float | None = None
    ended: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # what ptdiag changed about the run (contract.md): absent from the JSON when nothing
    stopped_by: dict[str, Any] | None = None
    switched_off: list[dict[str, Any]] = field(default_factory=list)
    # what the plots draw (ptdiag.series: loss, gradient norms, step times, memory, per
    # rank), so renderers need nothing but the Report; absent from the JSON when empty
    series: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        changed = {"stopped_by": self.stopped_by, "switched_off": self.switched_off, "series": self.series}
        return {
            "schema": SCHEMA, "run_id": self.run_id, "name": self.name,
            "symptom": self.symptom, "command": self.command, "route": self.route,
            "status": self.status, "exit_code": self.exit_code,
            "steps_observed": self.steps_observed,
            "findings": [f.to_dict() for f in self.findings],
            "metrics": self.metrics, "artifacts": self.artifacts,
            "environment": self.environment, "started": self.started, "ended": self.ended,
            "params": self.params, "seeds": self.seeds, "tags": self.tags, "notes": self.notes,
            **{key: value for key, value in changed.items() if value},
        }

    def announcements(self, condensed: bool = False) -> list[str]:
        return announcements(self.stopped_by, self.switched_off, condensed)

    @property
    def ran_a_command(self) -> bool:
        """False for `ptdiag inspect`: an artifact was read, no program ran (no exit code, no steps)."""
        return self.command is not None

    def headline(self) -> str:
        """The verdict in one line: the most important finding that is not bookkeeping."""
        top = next((f for f in self.findings if f.specialist != "tracking"), None)
        if top:
            return top.title
        if self.status == "completed":
            return "No problem found in what was measured"
        return f"The run ended: {self.status}"

    def summary(self) -> dict[str, Any]:
        """The `runs list` object of contract.md."""
        return {"run_id": self.run_id, "name": self.name, "status": self.status,
                "started": self.started, "command": self.command, "symptom": self.symptom,
                "params": self.params, "metrics": self.metrics, "tags": self.tags,
                "ended": self.ended, "exit_code": self.exit_code, "steps": self.steps_observed}


def announcements(stopped_by: dict[str, Any] | None, switched_off: list[dict[str, Any]],
                  condensed: bool = False) -> list[str]:
    """What ptdiag changed about the run, one sentence each: the first notes of a report,
    and the lines the terminal shows right under the run. `condensed` (the terminal): the
    per-step budget's samplings in one sentence, where a sub-millisecond step took five
    lines before the findings; the report's notes and JSON keep each."""
    said = [stop_sentence(stopped_by)] if stopped_by else []
    sampled = [entry for entry in switched_off if condensed and entry.get("budget")]
    said += [switched_off_sentence(entry) for entry in switched_off if entry not in sampled]
    if len(sampled) == 1:
        said.append(switched_off_sentence(sampled[0]))
    elif sampled:
        steps = sorted(entry["step"] for entry in sampled)
        said.append(f"ptdiag sampled down or switched off its per-step instruments {len(sampled)} times (steps "
                    f"{steps[0]}-{steps[-1]}) to keep its cost within its budget of the program's step; the report's "
                    "switched_off says which and why. The training went on without them.")
    return said


def stop_sentence(stopped_by: dict[str, Any]) -> str:
    """An early stop said so that nobody takes it for the program's own end, nor for the
    --max-steps they gave."""
    who = "ptdiag" if stopped_by["by"] == "max_steps" else f"ptdiag's {stopped_by['by']} specialist"
    sentence = f"{who} stopped the training after step {stopped_by['step']}"
    if stopped_by.get("max_steps"):
        sentence += f", before the --max-steps {stopped_by['max_steps']} it was given"
    sentence += f": {_clause(stopped_by['reason'])}."
    if stopped_by.get("keep_running"):
        sentence += f" {stopped_by['keep_running']} keeps it running."
    return sentence


def switched_off_sentence(entry: dict[str, Any]) -> str:
    what = entry["what"] if entry["what"].startswith("the ") else f"its {entry['what']}"  # "the recorder's lines"
    return (f"ptdiag switched off {what} at step {entry['step']}: {_clause(entry['why'])}. "
            "The training went on without it.")


def _clause(text: str) -> str:
    """A reason set inside a sentence: an error message's own full stop would double it."""
    return str(text).rstrip().rstrip(".")


# a verification's verdict (`verified.helped`) -> how renderers label it
VERIFIED_LABELS = {True: "verified", False: "tried, did not help", None: "not verified"}
ALSO_LABELS = {True: "also tried, helped", False: "also tried, did not help", None: "also tried, not verified"}


def verifications(finding: Finding) -> list[tuple[str, dict]]:
    """(label, verification) of the fix tried for a finding, then of the other fixes tried
    for it (`verified.also`, ranked): what the renderers show under the finding."""
    verified = finding.verified
    if not verified:
        return []
    also = [(ALSO_LABELS[v.get("helped")], v) for v in verified.get("also", [])]
    return [(VERIFIED_LABELS[verified.get("helped")], verified), *also]

