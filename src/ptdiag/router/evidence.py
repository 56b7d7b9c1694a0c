"""Evidence beats words: after the run, its outcome adds the matching post-mortem.

Whatever the user said, a run that ended out of memory, went non-finite or hung gets
the specialist who can explain that outcome, and a run with several ranks gets
distributed's cheap checks. Which status calls whom is data (symptoms.toml, [evidence]).
"""

from __future__ import annotations

import copy

from ptdiag.router.plan import Route
from ptdiag.router.table import default_table


def with_evidence(route: Route, status: str, world_size: int = 1) -> Route:
    """A new Route: `route` plus the post-mortem the run's `status` calls for."""
    table = default_table()
    if not isinstance(route, Route):
        raise ValueError(f"with_evidence() needs a Route, not {type(route).__name__}")
    if status not in table.statuses:
        raise ValueError(f"unknown run status {status!r}; known: {list(table.statuses)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, not {world_size!r}")
    updated = copy.deepcopy(route)
    for rule in table.evidence_rules:
        if rule.status == status and world_size >= rule.min_world_size:
            if rule.specialist not in updated.specialists:
                updated.specialists.append(rule.specialist)
                if rule.specialist in updated.cheap_checks:  # its post-mortem now, not only its cheap checks
                    updated.cheap_checks.remove(rule.specialist)
                updated.notes.append(rule.note.format(world_size=world_size))
            break
    several = table.several_ranks
    if world_size >= several.min_world_size and several.specialist not in updated.specialists + updated.cheap_checks:
        updated.cheap_checks.append(several.specialist)
        updated.notes.append(several.note.format(world_size=world_size))
    return updated
