"""What issue 18 asks of every diagnosis with verification on: each top finding (the first,
and every error) that an intervention can verify comes out verified, with the measured
before/after in the direction that matters, or demoted saying what was tried, or the report
says why its fix could not be tried. Used by the sweep over the samples and diagnostics
programs (test_verification_sweep.py) and on the reports other verification tests make."""

from __future__ import annotations

from ptdiag import interventions
from ptdiag.verification.attach import FAILURE_METRICS

# metrics whose headline is a step where the symptom occurred: gone (None) or later is better
STEP_METRICS = ("first_nonfinite_step", "oom_step", "repeat_identical")


def top_findings(report: dict) -> list[dict]:
    """The first finding and every error, where some intervention's settings apply to it."""
    findings = report["findings"]
    top = [f for i, f in enumerate(findings) if i == 0 or f["severity"] == "error"]
    return [f for f in top if any(i.settings_for(f.get("evidence") or {}, f["code"]) is not None
                                  for i in interventions.for_code(f["code"]))]


def moved_the_right_way(verified: dict) -> bool:
    """The headline number after the fix is better than before: the NaN gone (or later), the
    runs bit-identical, the wait/step/shared share/repeating ranks/peak lower."""
    before, after = verified["before"], verified["after"]
    if verified["metric"] in STEP_METRICS:
        return after is None or (before is not None and after > before)
    return before is not None and after is not None and after < before


def problems(report: dict) -> list[str]:
    """Each top finding with an intervention that came out neither verified in the right
    direction, nor demoted by a fix that did not help, nor explained by a note."""
    notes = " ".join(report.get("notes") or [])
    found = []
    for finding in top_findings(report):
        code, verified = finding["code"], finding.get("verified")
        if not verified:
            if f"{code} was not verified:" not in notes and "fixes were not tried" not in notes:
                found.append(f"{code}: no verification and no note why")
            continue
        if not verified.get("summary") or "before" not in verified or "after" not in verified:
            found.append(f"{code}: verified without before/after or a sentence: {verified}")
        elif verified["helped"] is True and not moved_the_right_way(verified):
            found.append(f"{code}: helped, yet {verified['metric']} went {verified['before']} -> {verified['after']}")
        elif verified["helped"] is False and verified["metric"] not in FAILURE_METRICS \
                and finding["severity"] == "error":
            found.append(f"{code}: its fix did not help, yet it was not demoted: {verified['summary']}")
    return found
