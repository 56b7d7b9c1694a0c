"""Find which table phrases and patterns the user's words contain.

Matching is token-based and linear in the text (a pasted 100 kB log included):
phrases are looked up by their first word, the longest phrase at a position wins and
uses its words up, so a word never counts for two phrases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ptdiag.router.table import PHRASE_END, Phrase, SignalGroup, SymptomTable
from ptdiag.router.text import TOKEN_RE, canonical_word, has_cjk, junk_share, normalise, squeeze

# Where a matched pattern is reported, it is cut to this many characters.
_REPORTED_PATTERN_CHARS = 80


@dataclass(frozen=True)
class Match:
    group: SignalGroup
    key: str  # the phrase or pattern that matched: each counts once per text
    text: str  # the user's words as they appeared
    cued: bool = False  # a fix the words propose ("should I use ...") rather than use


@dataclass(frozen=True)
class Reading:
    matches: list[Match]
    original_chars: int = 0  # > 0 when the text was too long and only its ends were read
    junk_share: float = 0.0  # share of binary-only characters; above the table's limit, nothing was read
    cleaned: str = ""  # the text as read: normalised, traceback frames blanked, each line once


def read(text: str, table: SymptomTable) -> Reading:
    original_chars = 0
    if len(text) > table.max_chars:
        original_chars = len(text)
        half = table.max_chars // 2
        text = text[:half] + "\n" + text[-half:]
    junk = junk_share(text)
    if junk > table.junk_max_share:
        return Reading([], original_chars, junk)
    lines = _distinct_lines(_blank_ignored(normalise(text), table))
    matches = _phrase_matches(lines, table) + _pattern_matches(lines, table)
    cjk_lines = [line for line in lines.split("\n") if has_cjk(line)]
    if cjk_lines:
        matches += _cjk_matches(cjk_lines, table)
    return Reading(matches, original_chars, junk, lines)


def _blank_ignored(text: str, table: SymptomTable) -> str:
    """Traceback frames and paths replaced by spaces (offsets kept)."""
    for regex in table.ignore_regexes:
        text = regex.sub(lambda m: " " * len(m.group()), text)
    return text


def _distinct_lines(text: str) -> str:
    """Each line once: a repeated log line says nothing new (phrases count once anyway)
    and reading it again would only cost time on a long paste."""
    return "\n".join(dict.fromkeys(line.strip() for line in text.split("\n")))


def _phrase_matches(text: str, table: SymptomTable) -> list[Match]:
    written = TOKEN_RE.findall(text)
    forms = {token: _forms(token, table) for token in set(written)}
    kept = [i for i, token in enumerate(written) if forms[token][0] not in table.filler_words]
    raw = [forms[written[i]][0] for i in kept]  # as written, case-folded
    canon = [forms[written[i]][1] for i in kept]  # the table word it stands for
    trie = table.phrase_trie
    starts = [p for p in range(len(raw)) if raw[p] in trie or canon[p] in trie]

    matches: list[Match] = []
    seen: set[tuple] = set()  # a phrase is reported once (per group, proposed or not)
    free = 0  # words before this position are used up by an earlier phrase
    for position in starts:
        if position < free:
            continue
        phrase = _longest_phrase_at(position, raw, canon, trie)
        if phrase is None:
            continue
        free = position + len(phrase.words)
        for group in phrase.groups:
            cued = group.kind == "fix" and _is_proposed(position, free, raw, table)
            if (phrase.key, group, cued) not in seen:
                seen.add((phrase.key, group, cued))
                shown = _as_written(text, written[kept[position]:kept[free - 1] + 1])
                matches.append(Match(group, phrase.key, shown, cued))
    return matches


def _as_written(text: str, tokens: list[str]) -> str:
    """The words as the user wrote them, separators included ("max_split_size_mb")."""
    found = re.search(r"[\W_]+".join(map(re.escape, tokens)), text)
    return found.group() if found else " ".join(tokens)


def _forms(token: str, table: SymptomTable) -> tuple[str, str]:
    word = canonical_word(token)
    return word, table.canonical(word)


def _longest_phrase_at(position: int, raw: list[str], canon: list[str], trie: dict) -> Phrase | None:
    """The longest table phrase starting at `position`, each word read as written or
    as the table word it stands for."""
    best = None
    pending = [(trie, position)]
    while pending:
        node, at = pending.pop()
        phrase = node.get(PHRASE_END)
        if phrase is not None and (best is None or len(phrase.words) > len(best.words)):
            best = phrase
        if at < len(raw):
            pending.extend((node[word], at + 1) for word in dict.fromkeys((raw[at], canon[at])) if word in node)
    return best


def _is_proposed(start: int, end: int, raw: list[str], table: SymptomTable) -> bool:
    """A fix near a cue word ("should I use X", "would X help") is proposed, not in use."""
    before = raw[max(0, start - table.cue_window_before):start]
    after = raw[end:end + table.cue_window_after]
    return any(w in table.cues_before for w in before) or any(w in table.cues_after for w in after)


def _pattern_matches(text: str, table: SymptomTable) -> list[Match]:
    lowered = text.lower()
    shown_from = text if len(lowered) == len(text) else lowered
    matches = []
    for pattern in table.patterns:
        found = pattern.regex.search(lowered)
        if found is not None:
            shown = " ".join(shown_from[found.start():found.end()].split())[:_REPORTED_PATTERN_CHARS]
            matches.append(Match(pattern.group, pattern.regex.pattern, shown))
    return matches


def _cjk_matches(lines: list[str], table: SymptomTable) -> list[Match]:
    squeezed = "\n".join(squeeze(line) for line in lines)
    matches = []
    for phrase, groups in table.cjk_phrases:
        if phrase in squeezed:
            matches.extend(Match(group, phrase, phrase) for group in groups)
            squeezed = squeezed.replace(phrase, "\0")  # used up, as with word phrases
    return matches
