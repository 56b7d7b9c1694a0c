"""Route: the router's answer, an ordered plan of specialists with its explanation.

It is plain data with the exact shape of `ptdiag route --json` (shared/contract.md), so
the CLI, the report and a re-analysed stored run all see the same plan. It validates
itself on construction: a plan naming an unknown specialist is a bug to catch early,
not something to carry into a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The contract's six names (shared/contract.md). Defined here, not imported from
# ptdiag.specialists, so that `ptdiag route` never loads the analysis side.
SPECIALISTS: tuple[str, ...] = ("memory", "performance", "numerics", "distributed", "reproducibility", "tracking")


class RouteError(ValueError):
    """A Route (or its dict form) that breaks the contract's shape."""


@dataclass
class Route:
    specialists: list[str]
    ambiguous: bool
    confidence: float
    reasons: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # specialists that run only their cheap checks beside the plan (a triage's
    # reproducibility/distributed/tracking audits; distributed's for a run with several
    # ranks): no second run, no per-step checksums, no hooks left on the model
    cheap_checks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [name for name in self.specialists + self.cheap_checks if name not in SPECIALISTS]
        if unknown:
            raise RouteError(f"unknown specialist(s) {unknown}; known: {list(SPECIALISTS)}")
        if len(set(self.specialists)) != len(self.specialists):
            raise RouteError(f"specialists repeat in the plan: {self.specialists}")
        if set(self.cheap_checks) & set(self.specialists) or len(set(self.cheap_checks)) != len(self.cheap_checks):
            raise RouteError(f"cheap checks {self.cheap_checks} repeat or are already planned: {self.specialists}")
        if not 0.0 <= self.confidence <= 1.0:
            raise RouteError(f"confidence must be within 0..1, not {self.confidence}")
        for reason in self.reasons:
            if not (isinstance(reason, dict) and isinstance(reason.get("specialist"), str)
                    and isinstance(reason.get("matched"), list)):
                raise RouteError(f"a reason needs 'specialist' (str) and 'matched' (list), not {reason!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "specialists": list(self.specialists),
            "ambiguous": self.ambiguous,
            "confidence": self.confidence,
            "reasons": [dict(reason, matched=list(reason["matched"])) for reason in self.reasons],
            "notes": list(self.notes),
            "cheap_checks": list(self.cheap_checks),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Route":
        if not isinstance(data, dict):
            raise RouteError(f"a route must be a dict, not {type(data).__name__}")
        missing = [key for key in ("specialists", "ambiguous", "confidence") if key not in data]
        if missing:
            raise RouteError(f"route dict lacks {missing}")
        return cls(
            specialists=list(data["specialists"]),
            ambiguous=bool(data["ambiguous"]),
            confidence=float(data["confidence"]),
            reasons=[dict(reason) for reason in data.get("reasons", [])],
            notes=list(data.get("notes", [])),
            cheap_checks=list(data.get("cheap_checks", [])),
        )


def fixed_route(names: list[str], chosen_by: str) -> Route:
    """A plan the user chose (`--only`, `specialists=`) instead of the router's."""
    unknown = [n for n in names if n not in SPECIALISTS]
    if unknown or not names:
        named = ", ".join(unknown) if unknown else "none given"
        raise RouteError(f"unknown specialist in {chosen_by}: {named} (known: {', '.join(SPECIALISTS)})")
    return Route(specialists=list(names), ambiguous=False, confidence=1.0,
                 reasons=[{"specialist": n, "matched": [chosen_by]} for n in names],
                 notes=[f"plan chosen with {chosen_by}"])
