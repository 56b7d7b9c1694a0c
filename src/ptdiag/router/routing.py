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
- cross-cutting rules then reorder (several GPUs: distributed first).
"""

from __future__ import annotations

import math
from collections import defaultdict

from ptdiag.router.matching import Match, read
from ptdiag.router.plan import Route
from ptdiag.router.table import SymptomTable, default_table

NAMING_KINDS = ("error", "symptom")


def route(text: str) -> Route:
    """The plan for the user's words (a sentence, an error line or a whole traceback)."""
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
    signals = _without_proposed_fixes([m for m in reading.matches if m.group.specialist], table, notes)
    if any(m.group.multi_process and not m.cued for m in signals):
        signals = [m for m in signals if not m.group.single_process]

    scores = _scores(signals, table)
    naming = _scores(signals, table, NAMING_KINDS)
    ranked = sorted(scores, key=lambda name: (name not in naming, -scores[name], table.tie_break.index(name)))
    if not ranked or scores[ranked[0]] < table.min_score:
        top = scores[ranked[0]] if ranked else 0.0
        notes += [table.notes["too_weak"].format(specialist=name, matched=_quoted(_matched(name, signals, table)))
                  for name in ranked]
        confidence = round(min(table.ambiguous_confidence_cap, _strength(top, table)), 2)
        return Route(list(table.triage_plan), True, confidence, [], notes + [table.notes["triage"]])

    plan = _plan(ranked, naming, signals, table, notes)
    reasons = [{"specialist": name, "matched": _matched(name, signals, table),
                "score": round(scores[name], 2)} for name in plan if name in scores]
    return Route(plan, False, _confidence(plan, scores, table), reasons, notes)


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
    multi_process = {m.group.specialist for m in signals if m.group.multi_process and not m.cued}
    applied = []
    for rule in table.cross_cutting:
        if rule.then in plan and rule.first in multi_process:
            if rule.first not in plan or plan.index(rule.first) > plan.index(rule.then):
                if rule.first in plan:
                    plan.remove(rule.first)
                plan.insert(plan.index(rule.then), rule.first)
            applied.append(rule)
    full, plan = plan, plan[:table.max_plan]
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
