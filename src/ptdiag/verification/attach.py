"""The analysis side of verification: what <run_dir>/verification.json recorded, put on
the findings it verified (`verified`, shared/contract.md).

A finding whose fix was tried and did not remove the symptom is demoted one severity (it
stays in the report, saying what was tried); where several interventions ran for one
finding, `verified` is the one that helped most (_rank) and `verified.also` lists the
others in that order: which change removed the symptom is the evidence that decides
between causes: the findings whose fix removed the symptom are ranked above those whose fix
did not (_rank_causes).
"""

from __future__ import annotations

import json
from pathlib import Path

from ptdiag.findings import SEVERITIES, Finding

STATE_FILE = "verification.json"
# the metrics whose findings are candidate causes of one symptom (a run has one first NaN)
CAUSE_METRICS = ("first_nonfinite_step", "loss_growth")
# the metrics whose finding is the failure itself, not a candidate cause of it: the run did
# run out of memory whatever a smaller batch did, so a fix that did not help demotes nothing
# (the sentence says the batch is not the only thing that does not fit)
FAILURE_METRICS = ("oom_step",)


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
        key = (result["finding"]["code"], result["finding"].get("step"), result["finding"].get("op"))
        if "verified" in result:
            by_finding.setdefault(key, []).append(result["verified"])
        elif result.get("skipped"):
            notes.append(f"{result['finding']['code']} was not verified: {result['skipped']}")
    severities = {id(f): f.severity for f in findings}
    for finding in findings:
        tried = by_finding.get((finding.code, finding.evidence.get("step"), finding.evidence.get("op") or None))
        if not tried:
            continue
        best = min(tried, key=_rank)
        others = sorted((v for v in tried if v is not best), key=_rank)
        finding.verified = {**best, **({"also": others} if others else {})}
        if all(v.get("helped") is False and v.get("metric") not in FAILURE_METRICS for v in tried):
            finding.severity = SEVERITIES[min(SEVERITIES.index(finding.severity) + 1, len(SEVERITIES) - 1)]
    _rank_causes(findings, severities)
    return list(dict.fromkeys(notes))


def _rank_causes(findings: list[Finding], severities: dict[int, str]) -> None:
    """Where the fixes of several findings of one symptom ran (the NaN: an explosion and the
    op it surfaced in, each a possible cause), the findings whose fix removed it are the
    cause: they take the highest severity any of them had and come first, in place (the
    report's sort keeps that order within a severity); those whose fixes did not help were
    demoted above. With every fix helping, or none, the specialist's own order stands."""
    for metric in CAUSE_METRICS:
        group = [i for i, f in enumerate(findings) if f.verified and f.verified.get("metric") == metric]
        verdicts = {i: findings[i].verified.get("helped") for i in group}
        if not (True in verdicts.values() and False in verdicts.values()):
            continue
        top = min((severities[id(findings[i])] for i in group), key=SEVERITIES.index)
        for i in group:
            if verdicts[i]:
                findings[i].severity = top
        order = sorted(group, key=lambda i: ({True: 0, None: 1, False: 2}[verdicts[i]], i))
        ranked = [findings[i] for i in order]
        for position, finding in zip(group, ranked):
            findings[position] = finding
