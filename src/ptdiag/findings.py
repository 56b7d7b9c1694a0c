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

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most important first: by severity, keeping each specialist's own order within it."""
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


@dataclass
class Analysis:
    """What one analyser returns: findings plus the numbers it measured and files it made."""

    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
