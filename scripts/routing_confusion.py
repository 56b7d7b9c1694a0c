"""Score the router on the routing corpus: per-specialist confusion table, accuracy,
misrouted cases. First choice is what is scored ("ambiguous" counts as a class); for
cases that expect two specialists, the full expected order is reported too.

    python scripts/routing_confusion.py [CORPUS.jsonl ...]

With no arguments it scores diagnostics/routing/cases.jsonl and holdout.jsonl.
"""

from __future__ import annotations

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


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] or list(CORPORA)
    for path in paths:
        print(report(path.name, evaluate(load_corpus(path))))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
