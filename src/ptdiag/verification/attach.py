"""The analysis side of verification: what <run_dir>/verification.json recorded, put on
the findings it verified (`verified`, shared/contract.md).

A finding whose fix was tried and did not remove the symptom is demoted one severity (it
stays in the report, saying what was tried); where several interventions ran for one
finding, `verified` is the one that helped most (_rank) and `verified.also` lists the
others in that order: which change removed the symptom is the evidence that decides
between causes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ptdiag.findings import SEVERITIES, Finding

STATE_FILE = "verification.json"


def _load(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _rank(verified: dict) -> tuple:
    """Helped first, then not helped, then could not tell; among those that helped the one
    whose symptom measured least afterwards (the lower last loss, the lower wait share)."""
    order = {True: 0, False: 1, None: 2}[verified.get("helped")]
    after = (verified.get("measured") or {}).get("after") or {}
    least = after.get("last_finite_loss", after.get("data_wait_share"))
    return order, least if isinstance(least, (int, float)) else float("inf")


def attach(findings: list[Finding], run_dir: Path) -> list[str]:
    """Set `verified` on the findings verification.json names (demoting those not helped);
    returns the notes the report adds (why no verification ran, runs the budget skipped)."""
    record = _load(run_dir)
    if record.get("skipped"):
        return [f"fixes were not tried in verification runs: {record['skipped']}"]
    by_finding: dict[tuple, list[dict]] = {}
    notes = []
    for result in record.get("results", []):
        key = (result["finding"]["code"], result["finding"].get("step"))
        if "verified" in result:
            by_finding.setdefault(key, []).append(result["verified"])
        elif result.get("skipped"):
            notes.append(f"{result['finding']['code']} was not verified: {result['skipped']}")
    for finding in findings:
        tried = by_finding.get((finding.code, finding.evidence.get("step")))
        if not tried:
            continue
        best = min(tried, key=_rank)
        others = sorted((v for v in tried if v is not best), key=_rank)
        finding.verified = {**best, **({"also": others} if others else {})}
        if all(v.get("helped") is False for v in tried):
            finding.severity = SEVERITIES[min(SEVERITIES.index(finding.severity) + 1, len(SEVERITIES) - 1)]
    return list(dict.fromkeys(notes))
