"""What `ptdiag runs list` asks of the index: filters and an order, turned into SQL.

Kept apart from the index so the words users type (`--where lr=0.01`, `--since 2d`,
`--sort loss.last`) are parsed and checked in one place, before any SQL is built, and
every value reaches SQLite as a bound parameter, never as SQL text.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ptdiag.runs.errors import QueryError

# Longest first, so that "<=" is not read as "<".
OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
_SQL_OPERATORS = {"=": "IS", "!=": "IS NOT", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SINCE_AGO = re.compile(r"^(?P<count>\d+(?:\.\d+)?)(?P<unit>[smhdw])$")
# A key names a value inside params or metrics: letters, digits, _ - . and /.
_KEY = re.compile(r"^[A-Za-z0-9_./-]+$")


@dataclass(frozen=True)
class Condition:
    column: str  # params | tags
    key: str
    operator: str
    value: Any


@dataclass
class RunQuery:
    status: str | None = None
    conditions: list[Condition] = field(default_factory=list)
    since: float | None = None
    group: str | None = None
    sort: str | None = None  # "metrics.loss.last", "params.lr", or a bare metric path
    descending: bool = False
    limit: int | None = None

    def sql(self) -> tuple[str, str, list[Any]]:
        """(WHERE clause, ORDER BY clause, arguments)."""
        clauses, arguments = [], []
        if self.status is not None:
            clauses.append("status = ?")
            arguments.append(self.status)
        if self.since is not None:
            clauses.append("started >= ?")
            arguments.append(self.since)
        if self.group is not None:
            clauses.append("run_group = ?")
            arguments.append(self.group)
        for condition in self.conditions:
            clauses.append(f"json_extract({condition.column}, ?) "
                           f"{_SQL_OPERATORS[condition.operator]} ?")
            arguments.extend([json_path([condition.key]), condition.value])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ORDER BY started DESC, run_id DESC"
        if self.sort is not None:
            column, path = sort_source(self.sort)
            direction = "DESC" if self.descending else "ASC"
            # Runs without a number there (crashed before it existed, "nan") go last.
            order = (f"ORDER BY coalesce(json_type({column}, ?) IN ('integer', 'real'), 0) DESC, "
                     f"json_extract({column}, ?) {direction}, started DESC, run_id DESC")
            return where, order, [*arguments, json_path(path), json_path(path)]
        return where, order, arguments


def json_path(members: list[str]) -> str:
    """Members as an SQLite JSON path, each one quoted: a params key may itself hold dots
    ("optimizer.lr" is one member), a metrics path nests (["loss", "last"])."""
    return "$." + ".".join(f'"{member}"' for member in members)


def sort_source(sort: str) -> tuple[str, list[str]]:
    """(column, path) of a sort key: params.X reads one params member (dots kept),
    metrics.X or a bare X reads the nested metrics path ("loss.last")."""
    _check_key(sort, "--sort")
    if sort.startswith("params."):
        return "params", [sort[len("params."):]]
    return "metrics", sort.removeprefix("metrics.").split(".")


def parse_condition(text: str, column: str = "params") -> Condition:
    """`lr=0.01`, `batch_size>=64`, `optimizer.name=SGD`: the value is read as JSON when
    it is a number, true/false or null (as the script parsed it), else as a string."""
    for operator in OPERATORS:
        key, sep, raw = text.partition(operator)
        if sep and key and not any(key.endswith(c) for c in "<>!"):
            _check_key(key, "--where" if column == "params" else "--tag")
            value = parse_value(raw) if column == "params" else raw
            if operator in ("<", ">", "<=", ">=") and not isinstance(value, (int, float)):
                raise QueryError(f"{text!r}: {operator} needs a number")
            if isinstance(value, bool):
                value = int(value)  # JSON true reads back from SQLite as 1
            return Condition(column, key, operator, value)
    option = "--where" if column == "params" else "--tag"
    raise QueryError(f"{option} needs key=value (or <, >, <=, >=, !=), not {text!r}")


def parse_value(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return value if isinstance(value, (int, float, bool)) or value is None else raw


def parse_since(text: str, now: float | None = None) -> float:
    """`30m`, `2h`, `3d`, `1w` ago, or a date/time `2026-11-21[ 10:15]` (local time)."""
    now = time.time() if now is None else now
    match = _SINCE_AGO.match(text.strip())
    if match:
        return now - float(match["count"]) * _SINCE_UNITS[match["unit"]]
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise QueryError(f"--since needs a duration like 2h or 3d, or a date like "
                           f"2026-11-21, not {text!r}") from None


def _check_key(key: str, option: str) -> None:
    if not _KEY.match(key):
        raise QueryError(f"{option}: {key!r} is not a parameter or metric name")
