"""Text normalisation shared by the symptom table's phrases and the user's words.

Both sides go through the same functions, so a phrase written naturally in the data
("doesn't fit", "torch.compile", "pérdida") matches however the user types it
("DOESNT FIT", "torch .compile", "perdida", full-width "ＯＯＭ").
"""

from __future__ import annotations

import re
import unicodedata

# Scripts written without reliable spaces between words: matched as substrings.
_CJK_CLASS = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
CJK_RE = re.compile(f"[{_CJK_CLASS}]")
# A word token: letters and digits of any script except the CJK ones, so "loss变成NaN"
# yields "loss" and "NaN" and the CJK run is left to substring matching. Underscores
# split words: "torch.cuda.memory_allocated" reads as "... memory allocated".
# Apostrophes inside a word belong to it ("doesn't"); canonical_word drops them.
TOKEN_RE = re.compile(f"[^\\W_{_CJK_CLASS}]+(?:['\u2019`][^\\W_{_CJK_CLASS}]+)*")
_DROP_APOSTROPHES = str.maketrans("", "", "'\u2019`")
_WHITESPACE_RE = re.compile(r"\s+")
# Control codes (tab and newlines aside), U+FFFD and lone surrogates: what binary data
# looks like once decoded.
_JUNK_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ud800-\udfff]")


def normalise(text: str) -> str:
    """NFKC: full-width letters and digits, ligatures and compatibility forms unified.

    Length may change here, so offsets are taken from this text, never the raw input.
    """
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


def canonical_word(word: str) -> str:
    """Case-folded, accents and apostrophes stripped: 'Pérdida' is 'perdida', "doesn't"
    is 'doesnt'."""
    folded = word.casefold().translate(_DROP_APOSTROPHES)
    if folded.isascii():
        return folded
    decomposed = unicodedata.normalize("NFKD", folded)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def words(text: str) -> list[str]:
    """The canonical word tokens of an already normalised text."""
    return [canonical_word(m.group()) for m in TOKEN_RE.finditer(text)]


def junk_share(text: str) -> float:
    """Share of characters that only binary data has."""
    return len(_JUNK_RE.findall(text)) / len(text) if text else 0.0


def has_cjk(text: str) -> bool:
    return CJK_RE.search(text) is not None


def squeeze(text: str) -> str:
    """Case-folded with all whitespace removed: how CJK phrases are compared."""
    return _WHITESPACE_RE.sub("", text.casefold())
