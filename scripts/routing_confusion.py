"""Score the router on the routing corpus: per-specialist confusion table, accuracy,
misrouted cases. First choice is what is scored ("ambiguous" counts as a class); for
cases that expect two specialists, the full expected order is reported too.

    python scripts/routing_confusion.py [CORPUS.jsonl ...]
    python scripts/routing_confusion.py --real [--baseline] [--split test|train|all]

With no arguments it scores diagnostics/routing/cases.jsonl and holdout.jsonl.

`--real` scores the corpus of real user reports (diagnostics/routing/real_reports.jsonl)
on one side of its frozen split (real_split.json: whole source groups, chosen by a hash
before any model was built). On the test split it prints figures and the confusion
table only, never the misses: looking at them would turn the test into tuning data.
`--baseline` scores the rule router alone (the router before the learned model).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:
    import ptdiag.router  # noqa: F401  (installed: use it)
except ModuleNotFoundError:
    sys.path.insert(0, str(ROOT / "src"))

from ptdiag.router import SPECIALISTS, route  # noqa: E402

AMBIGUOUS = "ambiguous"
CLASSES = (*SPECIALISTS, AMBIGUOUS)
CORPORA = (ROOT / "diagnostics/routing/cases.jsonl", ROOT / "diagnostics/routing/holdout.jsonl")
REAL = ROOT / "diagnostics/routing/real_reports.jsonl"
SPLIT = ROOT / "diagnostics/routing/real_split.json"
TEST_SHARE = 22  # percent of source groups; the rule in real_split.json


class CorpusError(ValueError):
    """A corpus line that is not {"text": str, "expected": [names] or "ambiguous"}."""


@dataclass
class Outcome:
    text: str
    expected: list[str] | str
    got: list[str] | str

    @property
    def expected_first(self) -> str:
        return self.expected if self.expected == AMBIGUOUS else self.expected[0]

    @property
    def got_first(self) -> str:
        return self.got if self.got == AMBIGUOUS else self.got[0]

    @property
    def first_ok(self) -> bool:
        return self.expected_first == self.got_first

    @property
    def order_ok(self) -> bool:
        """The expected specialists lead the plan in the expected order."""
        if self.expected == AMBIGUOUS or self.got == AMBIGUOUS:
            return self.expected == self.got
        return self.got[:len(self.expected)] == self.expected


def load_corpus(path: Path) -> list[dict]:
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        case = json.loads(line)
        expected = case.get("expected")
        valid = expected == AMBIGUOUS or (
            isinstance(expected, list) and expected and all(name in SPECIALISTS for name in expected))
        if not isinstance(case.get("text"), str) or not valid:
            raise CorpusError(f"{path}:{number}: needs text (str) and expected (specialists or 'ambiguous')")
        cases.append(case)
    return cases


def evaluate(cases: list[dict]) -> list[Outcome]:
    outcomes = []
    for case in cases:
        plan = route(case["text"])
        outcomes.append(Outcome(case["text"], case["expected"], AMBIGUOUS if plan.ambiguous else plan.specialists))
    return outcomes


def confusion_table(outcomes: list[Outcome]) -> str:
    """Rows: expected first choice; columns: the router's first choice."""
    width = max(len(name) for name in CLASSES) + 1
    short = {name: name[:6] for name in CLASSES}
    lines = ["expected \\ got".ljust(width) + "".join(short[c].rjust(8) for c in CLASSES) + "   total  acc"]
    for expected in CLASSES:
        row = [o for o in outcomes if o.expected_first == expected]
        if not row:
            continue
        counts = [sum(o.got_first == got for o in row) for got in CLASSES]
        accuracy = sum(o.first_ok for o in row) / len(row)
        lines.append(expected.ljust(width) + "".join(str(n).rjust(8) for n in counts)
                     + f"{len(row):8d}  {accuracy:.0%}")
    return "\n".join(lines)


def report(name: str, outcomes: list[Outcome]) -> str:
    first = sum(o.first_ok for o in outcomes)
    multi = [o for o in outcomes if o.expected != AMBIGUOUS and len(o.expected) > 1]
    lines = [f"== {name}: {len(outcomes)} cases",
             confusion_table(outcomes),
             f"first-choice accuracy: {first}/{len(outcomes)} = {first / len(outcomes):.1%}"]
    if multi:
        ordered = sum(o.order_ok for o in multi)
        lines.append(f"two-symptom cases with the full expected order: {ordered}/{len(multi)}")
    wrong = [o for o in outcomes if not o.first_ok or not o.order_ok]
    if wrong:
        lines.append("misrouted (expected -> got):")
        for o in wrong:
            text = " ".join(o.text.split())
            lines.append(f"  {o.expected} -> {o.got}: {text[:110]!r}")
    return "\n".join(lines)


def in_test_split(group: str) -> bool:
    """The frozen rule: a whole source group falls on one side, by a hash of its name."""
    digest = hashlib.sha256(("routing-split/" + group).encode()).hexdigest()
    return int(digest[:8], 16) % 100 < TEST_SHARE


def load_real(split: str = "test", path: Path = REAL) -> list[dict]:
    """Real reports of one side of the split ("test", "train" or "all")."""
    cases = load_corpus(path)
    if split == "all":
        return cases
    want = split == "test"
    return [case for case in cases if in_test_split(case["group"]) == want]


@dataclass
class RealOutcome:
    expected: list[str]
    vague: bool
    got: list[str] | str

    @property
    def first_ok(self) -> bool:
        """Right first specialist; for a report whose words are vague, abstaining
        (the triage plan measures) is right too."""
        if self.got == AMBIGUOUS:
            return self.vague
        return self.got[0] == self.expected[0]

    @property
    def both_found(self) -> bool:
        """Two-symptom reports: both expected specialists are in the plan."""
        return self.got != AMBIGUOUS and set(self.expected[:2]) <= set(self.got)


def rule_router(text: str):
    """The router as it was before the learned model (issue 17's baseline): rules only."""
    from ptdiag.router.routing import _rule_route, read_evidence
    return _rule_route(read_evidence(text))


def evaluate_real(cases: list[dict], router=None) -> list[RealOutcome]:
    router = router or route
    outcomes = []
    for case in cases:
        plan = router(case["text"])
        outcomes.append(RealOutcome(case["expected"], bool(case.get("vague")),
                                    AMBIGUOUS if plan.ambiguous else plan.specialists))
    return outcomes


def real_figures(outcomes: list[RealOutcome]) -> dict:
    two = [o for o in outcomes if len(o.expected) > 1]
    return {"cases": len(outcomes),
            "top1": sum(o.first_ok for o in outcomes) / max(1, len(outcomes)),
            "two_label_cases": len(two),
            "two_label_recall": sum(o.both_found for o in two) / max(1, len(two)),
            "abstained": sum(o.got == AMBIGUOUS for o in outcomes)}


def real_report(split: str, outcomes: list[RealOutcome], texts: list[str] | None = None) -> str:
    figures = real_figures(outcomes)
    as_cases = [Outcome("", o.expected, o.got) for o in outcomes]
    lines = [f"== real reports, {split} split: {figures['cases']} cases",
             confusion_table(as_cases),
             f"top-1 (vague reports: abstaining counts as right): {figures['top1']:.1%}",
             f"two-label recall (both specialists in the plan): {figures['two_label_recall']:.1%}"
             f" of {figures['two_label_cases']}",
             f"abstained (ambiguous): {figures['abstained']}"]
    if texts is not None and split != "test":
        lines.append("misrouted (expected -> got):")
        for text, o in zip(texts, outcomes):
            if not o.first_ok or (len(o.expected) > 1 and not o.both_found):
                lines.append(f"  {o.expected} -> {o.got}: {' '.join(text.split())[:110]!r}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--real":
        baseline = "--baseline" in argv
        argv = [arg for arg in argv if arg != "--baseline"]
        split = argv[2] if len(argv) > 2 and argv[1] == "--split" else "test"
        if split not in ("test", "train", "all"):
            raise SystemExit("--split is test, train or all")
        cases = load_real(split)
        router = rule_router if baseline else None
        if baseline:
            print("(baseline: the rule router alone, without the learned model)")
        print(real_report(split, evaluate_real(cases, router), [c["text"] for c in cases]))
        return 0
    paths = [Path(arg) for arg in argv] or list(CORPORA)
    for path in paths:
        print(report(path.name, evaluate(load_corpus(path))))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
