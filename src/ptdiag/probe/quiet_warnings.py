"""Silence a warning that ptdiag's own work makes torch raise, without touching how the
program's warnings are shown.

`warnings.filterwarnings`, `catch_warnings` and `_filters_mutated` bump the filters'
version, and every module's `__warningregistry__` is cleared at its next warning: a
warning the program sees once per location (the default action) is then printed again.
A program whose DataLoader warns about `pin_memory` at each epoch printed it twice
under ptdiag. An "ignore" entry records nothing in any registry, so inserting and
removing one in place, with no version bump, changes nothing else: the C warnings module
reads `warnings.filters` at each warning.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from typing import Iterator


def ignore(message: str = "", category: type[Warning] = Warning) -> tuple:
    """Put an "ignore" filter first (message: a regular expression matched at the start,
    as `filterwarnings` does); hand the entry to `unignore` to take it out again."""
    return _first("ignore", message, category)


def always(message: str, category: type[Warning] = Warning) -> tuple:
    """Put an "always" filter first: each such warning reaches `showwarning` (where an
    instrument of ptdiag's takes its own, instrument/sync_debug.py); "always" records
    nothing in any registry either. `unignore` takes it out."""
    return _first("always", message, category)


def _first(action: str, message: str, category: type[Warning]) -> tuple:
    entry = (action, re.compile(message, re.I) if message else None, category, None, 0)
    warnings.filters.insert(0, entry)
    return entry


def unignore(entry: tuple) -> None:
    """Remove exactly this entry (by identity: the program may have added an equal one)."""
    for i, item in enumerate(warnings.filters):
        if item is entry:
            del warnings.filters[i]
            return


@contextmanager
def ignored(message: str = "", category: type[Warning] = Warning) -> Iterator[None]:
    entry = ignore(message, category)
    try:
        yield
    finally:
        unignore(entry)
