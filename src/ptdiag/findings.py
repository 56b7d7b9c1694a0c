"""Findings: the claims ptdiag makes, each backed by measured evidence and a fix.

A Finding is plain data so that every renderer (terminal, JSON, HTML) and every
re-analysis of a stored run sees exactly the same thing. Codes and field names are the
machine-readable contract (shared/contract.md): never rename one silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    code: str
    specialist: str
    severity: str
    title: str
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""
    # the fix tried in a verification run and its measured effect (ptdiag.verification);
    # absent from the JSON when none ran
    verified: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        found = asdict(self)
        if found["verified"] is None:
            del found["verified"]
        return found

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# findings of these are about the run itself (it crashed, it never trained): always first
RUN_LEVEL = "ptdiag"


def sort_findings(findings: list[Finding], planned: list[str] | None = None) -> list[Finding]:
    """Most important first: the diagnosis of the specialists the person asked for (the
    plan) and the run-level findings before the rest (the tracking notes every run gets),
    then by severity, keeping each specialist's own order (its cause before its
    consequences) within it. Without a plan, by severity only."""
    def key(f: Finding) -> tuple[bool, int]:
        aside = planned is not None and f.specialist != RUN_LEVEL and f.specialist not in planned
        return aside, SEVERITIES.index(f.severity)

    return sorted(findings, key=key)


@dataclass
class Analysis:
    """What one analyser returns: findings plus the numbers it measured and files it made."""

    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
