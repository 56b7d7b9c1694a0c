"""The SQLite index of a run store: one row per run, so listing 10,000 runs stays instant.

The index is a cache of the run directories, which hold the truth: whatever happens to
it (corruption, deletion) it can be rebuilt from them. WAL mode lets `runs list` read
while other invocations write; a busy timeout makes concurrent writers wait their turn
instead of failing.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptdiag.runs.errors import StoreError
from ptdiag.runs.query import RunQuery

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
# rw-rw-r-- before the umask: like the run dirs, never writable by the world.
FILE_MODE = 0o664

# The keys of a `runs list` object (contract.md), then the optional ones.
SUMMARY_KEYS = ("run_id", "name", "status", "started", "command", "symptom", "params",
                "metrics", "tags")
OPTIONAL_KEYS = ("ended", "exit_code", "group", "steps")
ROW_KEYS = SUMMARY_KEYS + OPTIONAL_KEYS
JSON_KEYS = frozenset({"command", "params", "metrics", "tags"})
_COLUMNS = tuple("run_group" if key == "group" else key for key in ROW_KEYS)  # GROUP is SQL

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, started REAL NOT NULL,
        command TEXT, symptom TEXT, params TEXT, metrics TEXT, tags TEXT,
        ended REAL, exit_code INTEGER, run_group TEXT, steps INTEGER)""",
    "CREATE INDEX IF NOT EXISTS runs_by_started ON runs (started DESC, run_id DESC)",
)
# SQL that takes the schema from version N to N + 1; empty while there is only version 1.
_MIGRATIONS: dict[int, tuple[str, ...]] = {}

_CORRUPTION_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
_SQLITE_READONLY = 8
_CORRUPT_SIDE_FILES = ("", "-wal", "-shm")

_INSERT = (f"INTO runs ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)})")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM runs"


class IndexCorrupt(StoreError):
    """The index file is not a readable SQLite database: move it aside and rebuild."""


class RunIndex:
    def __init__(self, path: Path) -> None:
        self.path = path

    def upsert(self, summaries: Iterable[dict[str, Any]]) -> None:
        """Write one row per summary, replacing the run's row if it has one."""
        rows = [_encode(summary) for summary in summaries]
        with self._transaction() as connection:
            connection.executemany(f"INSERT OR REPLACE {_INSERT}", rows)

    def sync(self, final: list[dict[str, Any]], provisional: list[dict[str, Any]],
             run_exists: Callable[[str], bool]) -> None:
        """Bring the index in line with the run dirs in one transaction: final summaries
        (from report.json) replace rows, provisional ones (from meta.json) only fill gaps,
        rows of runs whose directory is gone are dropped. Whether a directory is gone is
        asked under the write lock: a run created since the caller looked is not gone."""
        final_rows = [_encode(summary) for summary in final]
        provisional_rows = [_encode(summary) for summary in provisional]
        with self._transaction() as connection:
            connection.executemany(f"INSERT OR REPLACE {_INSERT}", final_rows)
            connection.executemany(f"INSERT OR IGNORE {_INSERT}", provisional_rows)
            indexed = [run_id for (run_id,) in connection.execute("SELECT run_id FROM runs")]
            connection.executemany("DELETE FROM runs WHERE run_id = ?",
                                   [(run_id,) for run_id in indexed if not run_exists(run_id)])

    def select(self, query: RunQuery) -> list[dict[str, Any]]:
        where, order, arguments = query.sql()
        rows = self._read(f"{_SELECT} {where} {order} LIMIT ?",
                          [*arguments, -1 if query.limit is None else query.limit])
        return [_decode(row) for row in rows]

    def delete(self, run_ids: Iterable[str]) -> None:
        with self._transaction() as connection:
            connection.executemany("DELETE FROM runs WHERE run_id = ?",
                                   [(run_id,) for run_id in run_ids])

    def get(self, run_id: str) -> dict[str, Any] | None:
        rows = self._read(f"{_SELECT} WHERE run_id = ?", [run_id])
        return _decode(rows[0]) if rows else None

    def _read(self, query: str, arguments: list[Any]) -> list[tuple[Any, ...]]:
        """Rows of a query. A store we may not write (a colleague's, a read-only mount)
        cannot host WAL's shared-memory file, so reading it falls back to opening the
        index as immutable: a snapshot that ignores writes not yet checkpointed."""
        try:
            with self._connection() as connection:
                return connection.execute(query, arguments).fetchall()
        except StoreError as error:
            if not _is_read_only(error.__cause__):
                raise
        with self._connection(immutable=True) as connection:
            return connection.execute(query, arguments).fetchall()

    def move_aside(self) -> None:
        """Rename a corrupt index (and its WAL files) to index.sqlite.corrupt-<timestamp>,
        keeping it for inspection."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in _CORRUPT_SIDE_FILES:
            try:
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            except FileNotFoundError:
                pass  # another process moved it first, or there was no WAL
            except OSError as error:
                raise StoreError(f"cannot move corrupt run store index {self.path} aside: "
                                 f"{error.strerror}") from error

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as connection, _write_transaction(connection):
            yield connection

    @contextmanager
    def _connection(self, *, immutable: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection with the schema in place; sqlite errors become StoreErrors."""
        try:
            if immutable:
                connection = sqlite3.connect(f"{self.path.absolute().as_uri()}?immutable=1",
                                             uri=True, isolation_level=None)
            else:
                self._create_file()
                connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S,
                                             isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open run store index {self.path}: "
                             f"{_reason(error)}") from error
        try:
            with _translate_errors(self.path):
                _prepare(connection, self.path, writable=not immutable)
                yield connection
        finally:
            connection.close()

    def _create_file(self) -> None:
        """Create the index file ourselves so that its mode (which SQLite copies to the WAL
        files) is never world-writable. An empty file is a valid empty database."""
        try:
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
        except FileExistsError:
            pass


def _ensure_wal(connection: sqlite3.Connection) -> None:
    """Switch a new index to WAL (persistent: once per file). Switching needs an exclusive
    lock and SQLite does not wait for it: when several processes create the store at
    once, the losers retry until one has switched it."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            connection.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _prepare(connection: sqlite3.Connection, path: Path, *, writable: bool) -> None:
    """Check the index is a database of a schema we know; create or migrate it if needed."""
    connection.execute("PRAGMA synchronous = NORMAL")  # WAL: durable against app crashes
    version = _schema_version(connection)
    if version == SCHEMA_VERSION:
        return
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(f"run store index {path} has schema version {version}, "
                         f"newer than this ptdiag's {SCHEMA_VERSION}: upgrade ptdiag")
    if not writable:
        raise StoreError(f"run store index {path} needs creating or upgrading, "
                         "but the store is read-only")
    _ensure_wal(connection)
    with _write_transaction(connection):
        version = _schema_version(connection)  # another process may have been first
        if version is None:
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute("INSERT INTO schema_version (version) VALUES (?)",
                               [SCHEMA_VERSION])
        else:
            for from_version in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[from_version]:
                    connection.execute(statement)
            connection.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION])


@contextmanager
def _write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE takes the write lock up front (waiting out the busy timeout), so a
    transaction never fails half-way for a lock another writer holds."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _schema_version(connection: sqlite3.Connection) -> int | None:
    """The schema version, or None for an empty (new) database. Reading sqlite_master is
    what reveals a file that is not a database at all."""
    tables = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if tables is None:
        return None
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0]


@contextmanager
def _translate_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as error:
        if _is_corruption(error):
            raise IndexCorrupt(f"run store index {path} is corrupt: {error}") from error
        raise StoreError(f"cannot use run store index {path}: {error}") from error


def _is_corruption(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # Python < 3.11: corruption is the plain DatabaseError
        return type(error) is sqlite3.DatabaseError
    return code & 0xFF in _CORRUPTION_CODES


def _is_read_only(error: BaseException | None) -> bool:
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if code is None:  # Python < 3.11: only the message tells
            return "readonly" in str(error)
        return code & 0xFF == _SQLITE_READONLY
    return isinstance(error, PermissionError)


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _encode(summary: dict[str, Any]) -> tuple[Any, ...]:
    """A summary as a row: every contract key present, nested values as JSON."""
    run_id = summary.get("run_id")
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise StoreError(f"run summary {run_id!r} lacks {', '.join(missing)}")
    if not isinstance(run_id, str) or not run_id:
        raise StoreError(f"run summary has run_id {run_id!r}: a non-empty string is needed")
    if not isinstance(summary["status"], str):
        raise StoreError(f"run summary {run_id!r} has status {summary['status']!r}: "
                         "a string is needed")
    started = summary["started"]
    if isinstance(started, bool) or not isinstance(started, (int, float)):
        raise StoreError(f"run summary {run_id!r} has started {started!r}: "
                         "seconds since the epoch are needed")
    row = []
    for key in ROW_KEYS:
        value = summary.get(key)
        if key in JSON_KEYS and value is not None:
            try:
                value = json.dumps(_finite(value), sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise StoreError(f"run summary {run_id!r}: {key} is not JSON: {error}") from error
        row.append(value)
    return tuple(row)


def _finite(value: Any) -> Any:
    """NaN/Inf as the strings "nan"/"inf" (as in the event logs): SQLite's JSON functions,
    which filters and sorting use, reject the NaN that json.dumps writes by default."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _decode(row: tuple[Any, ...]) -> dict[str, Any]:
    return {key: json.loads(value) if key in JSON_KEYS and value is not None else value
            for key, value in zip(ROW_KEYS, row)}
