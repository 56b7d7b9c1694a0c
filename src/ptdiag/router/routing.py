"""route(): from matched words to an ordered, explained plan of specialists.

The rules, all tuned in symptoms.toml rather than here:
- each specialist scores the weights of the distinct phrases it matched;
- a fix the user proposes ("should I use mixed precision?") does not count when a
  symptom is named: the plan follows the symptom behind it;
- the best score below `min_score` means the words name no symptom: ambiguous, and
  the triage plan measures instead;
- a named symptom outranks mere context (DDP, seeds, DataLoader) for the first place;
- a further specialist joins only if the words name its symptom too, at least
  `secondary_ratio` as strongly as the best-named one;
- cross-cutting rules then reorder (several GPUs: distributed first), unless the
  learned model finds distributed much less likely than the specialist it would displace.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

from ptdiag.router.learned import Model, features, load_model
from ptdiag.router.matching import Match, read
from ptdiag.router.plan import Route
from ptdiag.router.table import CrossCutting, SymptomTable, default_table

NAMING_KINDS = ("error", "symptom")


@dataclass
class Evidence:
    """What the rules read in the user's words, before any plan is made."""
    table: SymptomTable
    notes: list[str]
    signals: list[Match]
    scores: dict[str, float]
    naming: dict[str, float]
    words: str  # the text the learned model reads: cleaned, pressure words and proposed fixes out
    rules: dict[str, float]  # the rules' findings as model features ("r:...")


def read_evidence(text: str) -> Evidence:
    """The rules' reading of `text` (also what scripts/train_router.py trains on)."""
    if not isinstance(text, str):
        raise ValueError(f"route() needs the symptom as text (str), not {type(text).__name__}")
    table = default_table()
    reading = read(text, table)
    notes = []
    if reading.original_chars:
        notes.append(table.notes["truncated"].format(chars=reading.original_chars, keep=table.max_chars // 2))
    if reading.junk_share > table.junk_max_share:
        notes.append(table.notes["junk"].format(share=reading.junk_share))
    pressure = _unique(m.text for m in reading.matches if m.group.kind == "pressure")
    if pressure:
        notes.append(table.notes["pressure"].format(words=_quoted(pressure)))
    specialist_matches = [m for m in reading.matches if m.group.specialist]
    signals = _without_proposed_fixes(specialist_matches, table, notes)
    if any(m.group.multi_process and not m.cued for m in signals):
        signals = [m for m in signals if not m.group.single_process]
    dropped = [m.text for m in specialist_matches if m not in signals and m.cued]
    words = _without(reading.cleaned, pressure + dropped)
    return Evidence(table, notes, signals, _scores(signals, table), _scores(signals, table, NAMING_KINDS),
                    words, _rule_features(signals, table))


def route(text: str) -> Route:
    """The plan for the user's words (a sentence, an error line or a whole traceback)."""
    evidence = read_evidence(text)
    model = load_model()
    if model is None:
        return _rule_route(evidence)
    return _learned_route(evidence, model)


def _learned_route(evidence: Evidence, model: Model) -> Route:
    """The learned model weighs the words and the rules' findings; the rules keep the
    last word on what they are sure of (order with several GPUs unless the model finds
    distributed much less likely, a named fix routing by its symptom, pressure words
    counting for nothing)."""
    table, notes, signals = evidence.table, evidence.notes, evidence.signals
    feats = features(evidence.words, evidence.rules)
    probs = model.probabilities(feats) if evidence.words.strip() else dict.fromkeys(model.classes, 0.0)
    plan = decide(evidence, probs, model.abstain_below, model.secondary_at, model.first_at, model.rules_at, notes)
    if plan is None:
        best = max(probs, key=probs.get)
        notes += [table.notes["too_weak"].format(specialist=name, matched=_quoted(_matched(name, signals, table)))
                  for name in evidence.scores]
        notes.append(table.notes["unsure"].format(specialist=best, probability=probs[best]))
        top = max(evidence.scores.values(), default=0.0)
        confidence = round(min(table.ambiguous_confidence_cap, _strength(top, table)), 2)
        return _triage(table, confidence, notes)
    reasons = [{"specialist": name, "matched": _matched(name, signals, table),
                "words": model.drivers(evidence.words, feats, name), "probability": round(probs[name], 2),
                "score": round(evidence.scores.get(name, 0.0), 2)} for name in plan]
    for name in sorted(evidence.naming, key=lambda n: -probs[n]):
        if name not in plan:
            notes.append(table.notes["weaker"].format(specialist=name, matched=_quoted(_matched(name, signals, table)),
                                                      first=plan[0]))
    return Route(plan, False, round(probs[plan[0]], 2), reasons, notes)


def decide(evidence: Evidence, probs: dict[str, float], abstain_below: dict[str, float], secondary_at: float,
           first_at: float = 2.0, rules_at: float = math.inf, notes: list[str] | None = None) -> list[str] | None:
    """The plan from the model's probabilities and the rules, or None to abstain: the
    best probability is below its specialist's `abstain_below` and no rule names a
    symptom. The cross-cutting rules
    reorder as the seed's do; a specialist they put first also counts as named by the
    words when the model gives it at least `first_at` (several GPUs said in words no
    table lists). Words the table knows well (a named score of `rules_at` or more: a
    pasted error, a symptom said plainly) keep the table's first choice."""
    table = evidence.table
    ranked = sorted(probs, key=lambda name: (-probs[name], table.tie_break.index(name)))
    best_named = max(evidence.naming.values(), default=0.0)
    rule_named = best_named >= table.min_score
    asked = [m.group.specialist for m in evidence.signals if m.cued]
    if probs[ranked[0]] < abstain_below[ranked[0]] and not (rule_named or asked):
        return None
    if asked and not rule_named:  # a fix asked about, no symptom: its owner answers (seed rule)
        ranked.remove(asked[0])
        ranked.insert(0, asked[0])
    elif best_named >= rules_at:
        by_rules = min(evidence.naming, key=lambda name: (-evidence.naming[name], table.tie_break.index(name)))
        ranked.remove(by_rules)
        ranked.insert(0, by_rules)
    plan = [ranked[0]]
    for name in ranked[1:]:
        by_words = probs[name] >= secondary_at
        by_rules = rule_named and evidence.naming.get(name, 0.0) >= max(table.min_score,
                                                                        table.secondary_ratio * best_named)
        if by_words or by_rules:
            plan.append(name)
    learned = {name for name, p in probs.items() if p >= first_at}
    return _reordered(plan, evidence.signals, table, notes if notes is not None else [], learned, probs)


def _reordered(plan: list[str], signals: list[Match], table: SymptomTable, notes: list[str],
               learned: set[str] = frozenset(), probs: dict[str, float] | None = None) -> list[str]:
    """The cross-cutting rules (several GPUs: distributed first), then the plan's cap."""
    plan, applied = _cross_cut(plan, signals, table, learned, probs)
    plan = plan[:table.max_plan]
    notes.extend(rule.note for rule in applied if rule.then in plan and rule.first in plan)
    return plan


def _cross_cut(plan: list[str], signals: list[Match], table: SymptomTable, learned: set[str] = frozenset(),
               probs: dict[str, float] | None = None) -> tuple[list[str], list[CrossCutting]]:
    """The seed's cross-cutting rules: a specialist the words say the run calls for
    (several GPUs/processes: distributed) goes before the one its rule names, unless the
    learned model (`probs`, when there is one) finds it much less likely than that one:
    then "on 8 GPUs" is context of a problem one process would have too. Returns the
    reordered (uncapped) plan and the rules that fired, whose notes say why."""
    multi_process = {m.group.specialist for m in signals if m.group.multi_process and not m.cued} | learned
    plan, applied = list(plan), []
    for rule in table.cross_cutting:
        if probs is not None and probs[rule.first] < rule.learned_ratio * probs.get(rule.then, 0.0):
            continue
        if rule.then in plan and rule.first in multi_process:
            if rule.first not in plan or plan.index(rule.first) > plan.index(rule.then):
                if rule.first in plan:
                    plan.remove(rule.first)
                plan.insert(plan.index(rule.then), rule.first)
            applied.append(rule)
    return plan, applied


def _rule_features(signals: list[Match], table: SymptomTable) -> dict[str, float]:
    """The rules' findings, as features the learned model weighs."""
    out: dict[str, float] = {}
    for kind, cap in (("error", 6.0), ("symptom", 6.0), ("context", 3.0), ("fix", 3.0)):
        for name, score in _scores([m for m in signals if not m.cued], table, (kind,)).items():
            out[f"r:{name}:{kind}"] = min(score, cap) / 3.0
    for m in signals:
        if m.cued:
            out[f"r:{m.group.specialist}:asked"] = 1.0
        if m.group.multi_process:
            out["r:multi"] = 1.0
    return out


def _without(text: str, spans: list[str]) -> str:
    """`text` with the given words blanked (pressure words, fixes the symptom overrides)."""
    for span in spans:
        text = re.sub(re.escape(span), " ", text, flags=re.IGNORECASE)
    return text


def _rule_route(evidence: Evidence) -> Route:
    """The rules alone (no model shipped): the seed's phrase-table router."""
    table, notes, signals, scores, naming = (evidence.table, evidence.notes, evidence.signals,
                                             evidence.scores, evidence.naming)
    ranked = sorted(scores, key=lambda name: (name not in naming, -scores[name], table.tie_break.index(name)))
    if not ranked or scores[ranked[0]] < table.min_score:
        top = scores[ranked[0]] if ranked else 0.0
        notes += [table.notes["too_weak"].format(specialist=name, matched=_quoted(_matched(name, signals, table)))
                  for name in ranked]
        confidence = round(min(table.ambiguous_confidence_cap, _strength(top, table)), 2)
        return _triage(table, confidence, notes)

    plan = _plan(ranked, naming, signals, table, notes)
    reasons = [{"specialist": name, "matched": _matched(name, signals, table),
                "score": round(scores[name], 2)} for name in plan if name in scores]
    return Route(plan, False, _confidence(plan, scores, table), reasons, notes)


def _triage(table: SymptomTable, confidence: float, notes: list[str]) -> Route:
    """Words that name no symptom: the triage plan measures, and the cheap checks of the
    specialists the words may have missed run beside it."""
    return Route(list(table.triage_plan), True, confidence, [], notes + [table.notes["triage"]],
                 cheap_checks=list(table.triage_cheap))


def _without_proposed_fixes(signals: list[Match], table: SymptomTable, notes: list[str]) -> list[Match]:
    """Drop fixes the user proposes when a symptom is named: the symptom routes."""
    named = [m for m in signals if m.group.kind in NAMING_KINDS]
    proposed = [m for m in signals if m.group.kind == "fix" and m.cued]
    if not (named and proposed):
        return signals
    symptoms = _quoted(_unique(m.text for m in named)[:3])
    notes.extend(table.notes["fix"].format(fix=fix, symptoms=symptoms) for fix in _unique(m.text for m in proposed))
    return [m for m in signals if m not in proposed]


def _scores(signals: list[Match], table: SymptomTable, kinds=None) -> dict[str, float]:
    """Per specialist: each group adds its weight once per distinct phrase, up to its
    kind's cap. `kinds` limits which groups count."""
    keys_by_group = defaultdict(set)
    for match in signals:
        if kinds is None or match.group.kind in kinds:
            keys_by_group[match.group].add(match.key)
    scores: dict[str, float] = defaultdict(float)
    for group, keys in keys_by_group.items():
        scores[group.specialist] += group.weight * min(len(keys), table.group_cap[group.kind])
    return dict(scores)


def _plan(ranked: list[str], naming: dict[str, float], signals: list[Match], table: SymptomTable,
          notes: list[str]) -> list[str]:
    """The first choice, then every specialist whose symptom the words name nearly as
    clearly, then the cross-cutting reorderings; notes say why anything matched was
    left out."""
    best_named = max(naming.values(), default=0.0)
    plan = [ranked[0]] + [name for name in ranked[1:]
                          if name in naming and naming[name] >= table.secondary_ratio * best_named]
    full, applied = _cross_cut(plan, signals, table)
    plan = full[:table.max_plan]
    notes.extend(rule.note for rule in applied if rule.then in plan and rule.first in plan)
    for name in ranked:
        if name in plan:
            continue
        why = ("plan_full" if name in full else "weaker" if name in naming else "context_only")
        notes.append(table.notes[why].format(specialist=name, matched=_quoted(_matched(name, signals, table)),
                                             first=plan[0], max_plan=table.max_plan))
    return plan


def _strength(score: float, table: SymptomTable) -> float:
    return 1.0 - math.exp(-score / table.confidence_scale)


def _confidence(plan: list[str], scores: dict[str, float], table: SymptomTable) -> float:
    """Strong matches and a clear margin over the best specialist left out."""
    top = max(scores.get(name, 0.0) for name in plan)
    rival = max((score for name, score in scores.items() if name not in plan), default=0.0)
    separation = max(0.0, 1.0 - rival / top)
    return round(_strength(top, table) * (0.5 + 0.5 * separation), 2)


def _matched(specialist: str, signals: list[Match], table: SymptomTable) -> list[str]:
    """The words that matched for `specialist`, strongest evidence first (a few)."""
    return _unique(m.text for m in sorted(signals, key=lambda m: -m.group.weight)
                   if m.group.specialist == specialist)[:table.matched_per_specialist]


def _quoted(words: list[str]) -> str:
    return ", ".join(f"'{w}'" for w in words)


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def triage_steps() -> int | None:
    """How many optimizer steps a triage (an ambiguous symptom) measures by default."""
    return default_table().triage_steps
