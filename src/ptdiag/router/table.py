"""The symptom table: symptoms.toml read once, checked, and compiled for fast matching.

Everything the router knows about words is data in symptoms.toml; this module only
turns it into lookup structures (a word trie of phrases, compiled regexes, a
typo index) and refuses a table that names an unknown specialist or holds a broken
regex, with a message saying which entry is wrong.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

from ptdiag.router.plan import SPECIALISTS
from ptdiag.router.text import canonical_word, has_cjk, normalise, squeeze, words

TABLE_PATH = Path(__file__).with_name("symptoms.toml")
SIGNAL_KINDS = ("error", "symptom", "context", "fix")
PREFIX_MARK = "*"
NOTE_KEYS = ("triage", "too_weak", "context_only", "weaker", "plan_full", "fix", "pressure", "junk",
             "truncated", "unsure")
PHRASE_END = ""  # never a word: words have at least one letter or digit


class SymptomTableError(ValueError):
    """symptoms.toml is malformed (unknown specialist, bad regex, missing key)."""


@dataclass(frozen=True)
class SignalGroup:
    """One [[signal]] entry: what its phrases and patterns say, and how strongly."""

    specialist: str  # "" for words that are read and ignored (pressure, look-alikes)
    kind: str  # one of SIGNAL_KINDS, or "pressure" / "ignore"
    weight: float
    multi_process: bool  # the words say the run uses several GPUs/processes
    single_process: bool = False  # counts only when no words say so


@dataclass(frozen=True)
class Phrase:
    key: str  # canonical words joined by spaces: identifies the phrase in scoring
    words: tuple[str, ...]
    groups: tuple[SignalGroup, ...]


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    group: SignalGroup


@dataclass(frozen=True)
class CrossCutting:
    first: str
    requires: str
    then: str
    note: str
    # With a learned model: the rule holds only when the model gives `first` at least this
    # share of `then`'s probability (words that merely mention several GPUs on a plain
    # OOM or slow configuration keep memory/performance first; 0 = always holds)
    learned_ratio: float = 0.0


@dataclass(frozen=True)
class EvidenceRule:
    status: str
    specialist: str
    min_world_size: int
    note: str


PRESSURE = SignalGroup("", "pressure", 0.0, False)
IGNORED = SignalGroup("", "ignore", 0.0, False)


class SymptomTable:
    """symptoms.toml compiled. Build with load_table(); use default_table() normally."""

    def __init__(self, data: dict[str, Any]) -> None:
        try:
            self._build(data)
        except KeyError as missing:
            raise SymptomTableError(f"symptoms table lacks the key {missing}") from None

    def _build(self, data: dict[str, Any]) -> None:
        settings = data["settings"]
        self.min_score = float(settings["min_score"])
        self.secondary_ratio = float(settings["secondary_ratio"])
        self.max_plan = int(settings["max_plan"])
        self.group_cap = {kind: float(settings["group_cap"][kind]) for kind in SIGNAL_KINDS}
        self.confidence_scale = float(settings["confidence_scale"])
        self.ambiguous_confidence_cap = float(settings["ambiguous_confidence_cap"])
        self.cue_window_before = int(settings["fix_cue_window_before"])
        self.cue_window_after = int(settings["fix_cue_window_after"])
        self.max_chars = int(settings["max_chars"])
        self.matched_per_specialist = int(settings["matched_per_specialist"])
        self.tie_break = _specialist_list(settings["tie_break"], "settings.tie_break")

        self.triage_plan = _specialist_list(data["triage"]["plan"], "triage.plan")
        self.triage_steps = int(data["triage"].get("steps", 0)) or None
        self.triage_cheap = [name for name in _specialist_list(data["triage"].get("cheap", []), "triage.cheap")
                             if name not in self.triage_plan]
        self.notes: dict[str, str] = {key: data["notes"][key] for key in NOTE_KEYS}

        self.ignore_regexes = [_compile(p, "text.ignore_patterns", lower_case_text=False)
                               for p in data["text"]["ignore_patterns"]]
        self.filler_words = frozenset(canonical_word(w) for w in data["text"]["filler_words"])
        self.junk_max_share = float(data["text"]["junk_max_share"])

        fixes = data["fixes"]
        self.cues_before = frozenset(canonical_word(w) for w in fixes["cues_before"])
        self.cues_after = frozenset(canonical_word(w) for w in fixes["cues_after"])

        self.cross_cutting = [
            CrossCutting(
                first=_specialist(rule["first"], "cross_cutting.first"),
                requires=rule["requires"],
                then=_specialist(rule["then"], "cross_cutting.then"),
                note=rule["note"],
                learned_ratio=float(rule.get("learned_ratio", 0.0)),
            )
            for rule in data["cross_cutting"]
        ]
        for rule in self.cross_cutting:
            if rule.requires != "multi_process":
                raise SymptomTableError(f"cross_cutting.requires must be 'multi_process', not {rule.requires!r}")

        evidence = data["evidence"]
        self.statuses = tuple(evidence["statuses"])
        self.evidence_rules = [
            EvidenceRule(
                status=rule["status"],
                specialist=_specialist(rule["specialist"], "evidence.rules.specialist"),
                min_world_size=int(rule.get("min_world_size", 1)),
                note=rule["note"],
            )
            for rule in evidence["rules"]
        ]
        several = evidence["several_ranks"]
        self.several_ranks = EvidenceRule(status="", note=several["note"],
                                          specialist=_specialist(several["specialist"], "evidence.several_ranks"),
                                          min_world_size=int(several["min_world_size"]))
        for rule in self.evidence_rules:
            if rule.status not in self.statuses:
                raise SymptomTableError(f"evidence rule for unknown status {rule.status!r}")

        self._index_phrases(data)

    def _index_phrases(self, data: dict[str, Any]) -> None:
        groups_by_phrase: dict[tuple[str, ...], list[SignalGroup]] = {}
        groups_by_cjk: dict[str, list[SignalGroup]] = {}
        self.patterns: list[Pattern] = []

        def add(phrase: str, group: SignalGroup, where: str) -> None:
            if has_cjk(phrase):
                groups = groups_by_cjk.setdefault(squeeze(normalise(phrase)), [])
            else:
                written = words(normalise(phrase))
                tokens = [w for w in written if w not in self.filler_words]
                if len(tokens) < min(len(written), 2):
                    raise SymptomTableError(f"{where}: phrase {phrase!r} reads as {tokens} once filler "
                                            f"words are skipped; write the word alone if that is meant")
                if phrase.endswith(PREFIX_MARK):
                    tokens[-1] += PREFIX_MARK
                groups = groups_by_phrase.setdefault(tuple(tokens), [])
            if group not in groups:  # "-inf" and "inf" are one phrase
                groups.append(group)

        for phrase in data["pressure"]["phrases"]:
            add(phrase, PRESSURE, "pressure")
        for phrase in data["text"]["ignore_phrases"]:
            add(phrase, IGNORED, "text.ignore_phrases")
        for number, entry in enumerate(data["signal"]):
            where = f"signal #{number + 1} ({entry.get('specialist')}, {entry.get('kind')})"
            kind = entry["kind"]
            if kind not in SIGNAL_KINDS:
                raise SymptomTableError(f"{where}: kind must be one of {SIGNAL_KINDS}")
            weight = float(entry["weight"])
            if weight <= 0:
                raise SymptomTableError(f"{where}: weight must be positive")
            group = SignalGroup(
                specialist=_specialist(entry["specialist"], where),
                kind=kind,
                weight=weight,
                multi_process=bool(entry.get("multi_process", False)),
                single_process=bool(entry.get("single_process", False)),
            )
            for phrase in entry.get("phrases", []):
                add(phrase, group, where)
            self.patterns.extend(Pattern(_compile(p, where), group) for p in entry.get("patterns", []))

        # A word trie: each node maps a word to the next node; PHRASE_END holds the
        # phrase ending there. Matching walks it word by word from each position.
        self.phrase_trie: dict[str, Any] = {}
        for tokens, groups in groups_by_phrase.items():
            node = self.phrase_trie
            for word in tokens:
                node = node.setdefault(word, {})
            node[PHRASE_END] = Phrase(" ".join(tokens), tokens, tuple(groups))
        # Longest first, so "显存溢出" (memory) is read before "溢出" (overflow).
        self.cjk_phrases = sorted(((text, tuple(groups)) for text, groups in groups_by_cjk.items()),
                                  key=lambda item: -len(item[0]))

        vocabulary = {word for tokens in groups_by_phrase for word in tokens}
        self.vocabulary = frozenset(w for w in vocabulary if not w.endswith(PREFIX_MARK))
        prefixes = sorted((w[:-1] for w in vocabulary if w.endswith(PREFIX_MARK)), key=len, reverse=True)
        self.prefix_regex = re.compile("|".join(map(re.escape, prefixes))) if prefixes else None
        # Typo index (symmetric deletions): a word and a key word sharing a one-letter
        # deletion are candidates, confirmed by _one_edit_apart.
        self.typo_index: dict[str, set[str]] = {}
        for word in map(canonical_word, data["text"]["typo_words"]):
            if word not in self.vocabulary:
                raise SymptomTableError(f"text.typo_words: {word!r} is in no phrase")
            for variant in _one_deletions(word) | {word}:
                self.typo_index.setdefault(variant, set()).add(word)
        self.typo_lengths = range(min(map(len, self.typo_index), default=0), max(map(len, self.typo_index), default=0) + 2)

    def canonical(self, word: str) -> str:
        """The table word a text word stands for: its singular, itself, the prefix it
        starts with, or the one table word it is a single typo of. (A match also
        accepts the word as written, so "slows" matches both "slow" and "slows down".)"""
        if len(word) >= 4 and word.endswith("s"):
            for singular in (word[:-1], word[:-2] if word.endswith("es") else ""):
                if singular in self.vocabulary:
                    return singular
        if word in self.vocabulary:
            return word
        if self.prefix_regex is not None:
            prefix = self.prefix_regex.match(word)
            if prefix is not None:
                return prefix.group() + PREFIX_MARK
        if len(word) in self.typo_lengths and word.isalpha():
            candidates = set()
            for variant in _one_deletions(word) | {word}:
                candidates |= self.typo_index.get(variant, set())
            candidates = {c for c in candidates if c[0] == word[0] and _one_edit_apart(word, c)}
            if len(candidates) == 1:
                return candidates.pop()
        return word


def _one_deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def _one_edit_apart(a: str, b: str) -> bool:
    """One letter substituted, inserted, deleted, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return a == b
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    if len(a) == len(b):
        swapped = a[start + 1:start + 2] + a[start:start + 1] + a[start + 2:] == b[start:]
        return a[start + 1:] == b[start + 1:] or swapped
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[start + 1:] == shorter[start:]


def _specialist(name: Any, where: str) -> str:
    if name not in SPECIALISTS:
        raise SymptomTableError(f"{where}: unknown specialist {name!r}; known: {list(SPECIALISTS)}")
    return name


def _specialist_list(names: Any, where: str) -> list[str]:
    return [_specialist(name, where) for name in names]


_ESCAPE_RE = re.compile(r"\\.")


def _compile(pattern: str, where: str, lower_case_text: bool = True) -> re.Pattern[str]:
    """Signal patterns run on lower-cased text (IGNORECASE makes Python's re 2-3x slower
    on long logs), so one with an upper-case letter could never match: refuse it.
    Ignore patterns run on the text as written (a traceback's `File "..."`)."""
    if lower_case_text and any(ch.isupper() for ch in _ESCAPE_RE.sub("", pattern)):
        raise SymptomTableError(f"{where}: patterns are matched against lower-cased text; "
                                f"write {pattern!r} in lower case")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise SymptomTableError(f"{where}: bad regex {pattern!r}: {error}") from None


def load_table(path: Path = TABLE_PATH) -> SymptomTable:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise SymptomTableError(f"{path}: not valid TOML: {error}") from None
    return SymptomTable(data)


@functools.lru_cache(maxsize=1)
def default_table() -> SymptomTable:
    """The shipped table, read and compiled on first use only."""
    return load_table()
