"""Append real user reports to diagnostics/routing/real_reports.jsonl.

Reads lines from stdin, one report each:

    SOURCE | LABELS | TEXT

- SOURCE: `owner/repo#number` for a GitHub issue thread, or the page URL.
- LABELS: ordered specialists, comma-separated, short names allowed
  (mem, perf, num, dist, rep, trk); a trailing `?` marks a vague report (the words
  alone do not say which specialist; the thread does).
- TEXT: the title and first sentences as the user wrote them; a literal `\\n` is a line
  break (pasted error lines keep theirs).

A source listed in ../shared/routing_exclude.sha256 (threads held out to judge the
router) is refused, as is a source already in the corpus. Prints what was added.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "diagnostics/routing/real_reports.jsonl"
# the shared exclude list: beside the checkout (../shared) or the project's shared folder
EXCLUDE_PLACES = (ROOT.parent / "shared/routing_exclude.sha256", Path("/work/shared/routing_exclude.sha256"))
SHORT = {"mem": "memory", "perf": "performance", "num": "numerics", "dist": "distributed",
         "rep": "reproducibility", "trk": "tracking"}
SPECIALISTS = set(SHORT.values())
GITHUB_RE = re.compile(r"^([\w.-]+/[\w.-]+)#(\d+)$")


def source_key(source: str) -> str:
    """How routing_exclude.sha256 writes a source: `owner/repo#number`, or a URL
    lower-cased without scheme, `www.` and trailing slash."""
    if GITHUB_RE.match(source):
        return source
    key = re.sub(r"^[a-z]+://", "", source.strip().lower())
    key = re.sub(r"^www\.", "", key)
    return key.rstrip("/")


def source_group(source: str) -> str:
    """The unit kept whole in one split: the repository, or the site of a web page."""
    found = GITHUB_RE.match(source)
    if found:
        return found.group(1).lower()
    return source_key(source).split("/")[0]


def excluded_hashes() -> set[str]:
    """The held-out threads' hashes (first column of each line); refusing to run without
    the list is safer than adding a thread that judges the router."""
    for path in EXCLUDE_PLACES:
        if path.exists():
            return {line.split()[0].lower() for line in path.read_text().splitlines() if line.strip()}
    raise SystemExit(f"routing_corpus_add: no exclude list at {' or '.join(map(str, EXCLUDE_PLACES))}")


def is_excluded(source: str, hashes: set[str]) -> bool:
    """Listed as written, or as its lower-cased spelling (GitHub names are case-blind)."""
    key = source_key(source)
    return any(hashlib.sha256(k.encode()).hexdigest() in hashes for k in {key, key.lower()})


def main() -> int:
    hashes = excluded_hashes()
    known = set()
    if CORPUS.exists():
        known = {source_key(json.loads(line)["source"]).lower() for line in CORPUS.read_text().splitlines() if line}
    added, refused = [], []
    for line in sys.stdin.read().splitlines():
        if not line.strip():
            continue
        parts = line.split(" | ", 2)
        if len(parts) != 3:
            refused.append(("format", line[:60]))
            continue
        source, labels, text = (p.strip() for p in parts)
        source = re.sub(r"^https://github\.com/([\w.-]+/[\w.-]+)/(?:issues|pull|discussions)/(\d+).*$", r"\1#\2", source)
        vague = labels.endswith("?")
        names = [SHORT.get(n.strip(), n.strip()) for n in labels.rstrip("?").split(",")]
        if not names or any(n not in SPECIALISTS for n in names) or len(set(names)) != len(names):
            refused.append(("labels", line[:60]))
            continue
        if is_excluded(source, hashes):
            refused.append(("excluded", source))
            continue
        if source_key(source).lower() in known:
            refused.append(("duplicate", source))
            continue
        known.add(source_key(source).lower())
        text = text.replace("\\n", "\n")
        added.append({"text": text, "expected": names, "vague": vague, "source": source,
                      "group": source_group(source)})
    with CORPUS.open("a", encoding="utf-8") as out:
        for case in added:
            out.write(json.dumps(case, ensure_ascii=False) + "\n")
    total = sum(1 for line in CORPUS.read_text().splitlines() if line)
    print(f"added {len(added)}, refused {len(refused)}: {refused}; corpus now {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
