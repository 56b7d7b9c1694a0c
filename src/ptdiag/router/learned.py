"""The learned half of the router: a linear text model over word and character n-grams.

Phrases in symptoms.toml catch what is certain (pasted error messages, measured
numbers, named fixes); people describe the same problems in words nobody wrote into a
table. This model reads those words. It was trained by scripts/train_router.py on real
user reports (diagnostics/routing/real_reports.jsonl, training side of the split only)
with scikit-learn, and ships as plain numbers in model.json: applying it here is a
dictionary look-up per feature and a sigmoid, in pure Python, with no scikit-learn and
no torch.

The features are computed by `features()` below both when training and when routing,
so the two can never disagree:
- `w:` word unigrams and `b:` word bigrams (case-folded, accents dropped, digits read
  as 0), presence only, the block scaled to unit length;
- `c:` character 3- to 5-grams inside words (padded with a space at each end) and
  CJK character 2- and 3-grams, presence only, the block scaled to unit length;
- `r:` what the symptom table's rules found (error messages, named symptoms, context,
  several processes), so the model learns how far to trust each kind of rule.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ptdiag.router.text import CJK_RE, TOKEN_RE, canonical_word

MODEL_PATH = Path(__file__).with_name("model.json")

_CJK_RUN_RE = re.compile(CJK_RE.pattern + "+")
_DIGITS_RE = re.compile(r"\d+")
# Long pastes: the head says what the user asks, the tail holds the error.
_HEAD_CHARS, _TAIL_CHARS = 3000, 1500
_MAX_WORD_CHARS = 30  # longer tokens are hashes, paths, base64: no character n-grams


def features(text: str, rules: dict[str, float] | None = None) -> dict[str, float]:
    """The model's features of a cleaned text (see the module doc) plus rule features."""
    tokens, cjk_runs = _tokens(text)
    word = {"w:" + t for t in tokens}
    word.update("b:" + a + " " + b for a, b in zip(tokens, tokens[1:]))
    chars: set[str] = set()
    for token in set(tokens):
        chars.update(_grams(token))
    for run in cjk_runs:
        word.add("w:" + run[:8])
        chars.update(_grams(run))
    out: dict[str, float] = {}
    for block in (word, chars):
        if block:
            value = 1.0 / math.sqrt(len(block))
            out.update(dict.fromkeys(block, value))
    if rules:
        out.update(rules)
    return out


def _tokens(text: str) -> tuple[list[str], list[str]]:
    """Word tokens (canonical, digits as 0) and CJK runs of a text, long pastes cut."""
    if len(text) > _HEAD_CHARS + _TAIL_CHARS:
        text = text[:_HEAD_CHARS] + "\n" + text[-_TAIL_CHARS:]
    return [_DIGITS_RE.sub("0", canonical_word(t)) for t in TOKEN_RE.findall(text)], _CJK_RUN_RE.findall(text)


def _grams(token: str) -> list[str]:
    """Character n-grams of a word (3-5, space-padded) or of a CJK run (2-3)."""
    if CJK_RE.match(token):
        return ["c:" + token[i:i + n] for n in (2, 3) for i in range(len(token) - n + 1)]
    if len(token) > _MAX_WORD_CHARS:
        return []
    padded = " " + token + " "
    return ["c:" + padded[i:i + n] for n in (3, 4, 5) for i in range(len(padded) - n + 1)]


@dataclass(frozen=True)
class Model:
    classes: tuple[str, ...]
    intercepts: tuple[float, ...]
    weights: dict[str, list[int]]  # per feature, one integer weight per class
    scale: float  # weights are stored multiplied by this
    abstain_below: dict[str, float]  # per specialist: the best probability under its own, and no rule: ambiguous
    secondary_at: float  # a further specialist joins the plan from this probability
    temperature: float  # calibration: logits are divided by it
    first_at: float = 2.0  # a cross-cutting rule's specialist this probable counts as named (2: never)
    rules_at: float = math.inf  # a table score this high keeps the table's first choice

    def probabilities(self, feats: dict[str, float]) -> dict[str, float]:
        sums = [0.0] * len(self.classes)
        for name, value in feats.items():
            row = self.weights.get(name)
            if row is not None:
                for i, weight in enumerate(row):
                    sums[i] += weight * value
        return {name: _sigmoid((bias + total / self.scale) / self.temperature)
                for name, bias, total in zip(self.classes, self.intercepts, sums)}

    def drivers(self, text: str, feats: dict[str, float], specialist: str, top: int = 5) -> list[str]:
        """The user's words that pushed hardest towards `specialist`: each word with its
        character n-grams, each word pair, strongest first."""
        i = self.classes.index(specialist)

        def push(name: str) -> float:
            row = self.weights.get(name)
            return row[i] * feats.get(name, 0.0) if row is not None else 0.0

        tokens, cjk_runs = _tokens(text)
        pushes = {}
        for token in dict.fromkeys(tokens + cjk_runs):
            pushes[token] = push("w:" + token[:8] if token in cjk_runs else "w:" + token) + sum(
                push(g) for g in set(_grams(token)))
        for a, b in dict.fromkeys(zip(tokens, tokens[1:])):
            pushes[a + " " + b] = push("b:" + a + " " + b)
        ranked = sorted((p, words) for words, p in pushes.items() if p > 0)
        return [words for p, words in reversed(ranked)][:top]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@lru_cache(maxsize=4)
def load_model(path: Path = MODEL_PATH) -> Model | None:
    """The shipped model, or None when there is none (the rules then route alone)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    classes = tuple(data["classes"])
    abstain = data["abstain_below"]  # one number for every class, or one per class
    abstain = {name: float(abstain[name] if isinstance(abstain, dict) else abstain) for name in classes}
    return Model(classes, tuple(data["intercepts"]), data["weights"], float(data["scale"]),
                 abstain, float(data["secondary_at"]), float(data.get("temperature", 1.0)),
                 float(data.get("first_at", 2.0)), float(data.get("rules_at", math.inf)))
