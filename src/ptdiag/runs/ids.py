"""Run ids: `YYYYMMDD-HHMMSS-xxxx`, local start time plus 4 random hex digits.

Readable, sortable by start time (to the second), short enough to type a prefix of, and
unique enough that a collision (same second, same 16 random bits) only costs a retry.
"""

from __future__ import annotations

import re
import secrets
import time

_TIME_FORMAT = "%Y%m%d-%H%M%S"
RUN_ID_PATTERN = re.compile(r"^(?P<time>\d{8}-\d{6})-(?P<random>[0-9a-f]{4})$")


def new_run_id(started: float) -> str:
    return f"{time.strftime(_TIME_FORMAT, time.localtime(started))}-{secrets.token_hex(2)}"


def started_from_run_id(run_id: str) -> float | None:
    """The start time (to the second) written into a run id; None for a foreign name."""
    match = RUN_ID_PATTERN.match(run_id)
    if match is None:
        return None
    return time.mktime(time.strptime(match["time"], _TIME_FORMAT))
