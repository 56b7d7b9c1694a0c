"""Values as people read them: numbers rounded, lists shortened, evidence as short lines.

The JSON report keeps every number at full precision (machines compare them); what a
person reads in the terminal or the HTML page is rounded to SIGNIFICANT digits, a long
list shows its first items and how many there are, and evidence is `key value` pairs
on lines of at most LINE_CHARS, never a JSON dump.
"""

from __future__ import annotations

import math

SIGNIFICANT = 4
LIST_SHOWN = 4  # items of a list shown before "… (N in all)"
TEXT_CHARS = 80  # a longer string is cut
LINE_CHARS = 100
MAX_LINES = 4  # evidence lines per finding; the JSON report has all of it


def number(value: float | int) -> str:
    """SIGNIFICANT digits, a short exponent for large or tiny ones: 3.523414373397827 -> 3.523,
    261195.54 -> 2.612e+5."""
    if isinstance(value, (bool, int)) or not math.isfinite(value):
        return str(value)
    text = f"{value:.{SIGNIFICANT}g}"
    mantissa, sep, exponent = text.partition("e")
    return f"{mantissa}e{exponent[0]}{exponent[1:].lstrip('0') or '0'}" if sep else text


def shown(value) -> str:
    """Any evidence value, short: numbers rounded, lists cut to their first items."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value)
    if isinstance(value, (list, tuple)):
        items = [shown(v) for v in value[:LIST_SHOWN]]
        inner = ", ".join(items) + (f", … ({len(value)} in all)" if len(value) > LIST_SHOWN else "")
        return f"({inner})" if isinstance(value, tuple) or _pair(value) else f"[{inner}]"
    if isinstance(value, dict):
        items = [f"{k} {shown(v)}" for k, v in list(value.items())[:LIST_SHOWN]]
        return "{" + ", ".join(items) + (", …" if len(value) > LIST_SHOWN else "") + "}"
    text = str(value)
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS - 1] + "…"


def _pair(value: list) -> bool:
    """A (step, value) pair that went through JSON as a two-item list."""
    return len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def evidence_lines(evidence: dict) -> list[str]:
    """`key value` pairs, joined with ' · ' into lines of at most LINE_CHARS, at most MAX_LINES."""
    pairs = [f"{key.replace('_', ' ')} {shown(value)}" for key, value in evidence.items()
             if value not in (None, [], {}, "")]
    lines: list[str] = []
    for pair in pairs:
        if lines and len(lines[-1]) + 3 + len(pair) <= LINE_CHARS:
            lines[-1] += " · " + pair
        else:
            lines.append(pair)
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES - 1] + [f"… {len(pairs)} items in all: see the JSON report"]
    return lines
