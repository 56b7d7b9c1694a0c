"""Measure how reliable the real corpus's labels are, by relabelling a random sample blind.

    python scripts/routing_label_audit.py sample [--n 200] [--seed 17] > sample.txt
    python scripts/routing_label_audit.py compare blind.txt
    python scripts/routing_label_audit.py relabel fixes.txt

`sample` draws reports from both splits with a fixed seed and prints only each one's
source and text, never its labels, so that the relabelling cannot lean on them (nor on
any router output: none is read here). The relabeller writes one line per report:

    SOURCE | LABELS        (LABELS as in routing_corpus_add.py: mem, perf, num, dist,
                            rep, trk; a trailing `?` marks a vague report)

`compare` prints the agreement of first labels and of label sets with the corpus, and
each disagreement (source, blind labels, corpus labels) for checking against the thread.
Agreement bounds what any router can score on these labels.

`relabel` writes the labels a thread was checked to show (same `SOURCE | LABELS` lines)
into the corpus, keeping every other line byte for byte, and prints each change.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing_corpus_add import CORPUS, SHORT  # noqa: E402


def load() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


def parse_labels(field: str) -> tuple[list[str], bool]:
    field = field.strip()
    vague = field.endswith("?")
    names = [SHORT.get(name.strip(), name.strip()) for name in field.rstrip("?").split(",") if name.strip()]
    return names, vague


def sample(n: int, seed: int) -> None:
    reports = load()
    for report in random.Random(seed).sample(reports, n):
        text = report["text"].replace("\n", "\\n")
        print(f"{report['source']} | {text}")


def compare(path: Path) -> None:
    by_source = {report["source"]: report for report in load()}
    first = same_set = total = 0
    kinds: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        source, field = (part.strip() for part in line.split("|", 1))
        blind, blind_vague = parse_labels(field)
        report = by_source[source]
        total += 1
        first += blind[0] == report["expected"][0]
        same_set += set(blind) == set(report["expected"])
        if blind != report["expected"] or blind_vague != report["vague"]:
            if blind[0] != report["expected"][0]:
                kind = f"first {report['expected'][0]} -> {blind[0]}"
            elif set(blind) != set(report["expected"]):
                kind = "second label differs"
            elif blind != report["expected"]:
                kind = "order differs"
            else:
                kind = "vague flag differs"
            kinds[kind] += 1
            print(f"{source} | blind {','.join(blind)}{'?' if blind_vague else ''} "
                  f"| corpus {','.join(report['expected'])}{'?' if report['vague'] else ''} | {kind}")
    print(f"\n{total} relabelled: first label agrees {first}/{total} = {100 * first / total:.1f} %, "
          f"label set agrees {same_set}/{total} = {100 * same_set / total:.1f} %")
    for kind, count in kinds.most_common():
        print(f"  {count:3d}  {kind}")


def relabel(path: Path) -> None:
    fixes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            source, field = (part.strip() for part in line.split("|")[:2])
            fixes[source] = parse_labels(field)
    out = []
    for line in CORPUS.read_text().splitlines():
        report = json.loads(line)
        if report["source"] in fixes:
            labels, vague = fixes.pop(report["source"])
            print(f"{report['source']}: {','.join(report['expected'])}{'?' if report['vague'] else ''} "
                  f"-> {','.join(labels)}{'?' if vague else ''}")
            report["expected"], report["vague"] = labels, vague
            line = json.dumps(report, ensure_ascii=False)
        out.append(line)
    if fixes:
        raise SystemExit(f"routing_label_audit: not in the corpus: {', '.join(sorted(fixes))}")
    CORPUS.write_text("\n".join(out) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    draw = sub.add_parser("sample")
    draw.add_argument("--n", type=int, default=200)
    draw.add_argument("--seed", type=int, default=17)
    check = sub.add_parser("compare")
    check.add_argument("path", type=Path)
    fix = sub.add_parser("relabel")
    fix.add_argument("path", type=Path)
    args = parser.parse_args()
    if args.command == "sample":
        sample(args.n, args.seed)
    elif args.command == "compare":
        compare(args.path)
    else:
        relabel(args.path)


if __name__ == "__main__":
    main()
