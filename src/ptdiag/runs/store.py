"""The run store: a directory per ptdiag invocation, plus an index to find them again.

    <store>/index.sqlite         the index (a cache: rebuilt from the run dirs when lost)
    <store>/<run_id>/meta.json   written when the run starts
    <store>/<run_id>/report.json written when it ends (the final record)
    <store>/<run_id>/pinned      present while the run is pinned: gc never deletes it

The store owns directories, ids and the index; what goes into a run directory is
written by the launcher and the report. The store is `./ptdiag-runs/` unless `--store`
or PTDIAG_STORE says otherwise (contract.md).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ptdiag.runs.errors import RunNotFound, StoreError
from ptdiag.runs.ids import new_run_id, started_from_run_id
from ptdiag.runs.index import ROW_KEYS, IndexCorrupt, RunIndex
from ptdiag.runs.query import RunQuery

STORE_ENV_VAR = "PTDIAG_STORE"
DEFAULT_STORE_DIR = "ptdiag-runs"
INDEX_NAME = "index.sqlite"
META_NAME = "meta.json"
REPORT_NAME = "report.json"
PIN_NAME = "pinned"
# A run being deleted is renamed to this first, so nobody ever reads half a run.
_TRASH_PREFIX = ".deleting-"
# rwxrwxr-x before the umask: group access follows the user's umask, but no umask makes
# the store writable by the world (whose users could plant files in a victim's runs).
DIR_MODE = 0o775
# Keeps runs out of the project's `git status` (and out of its untracked count).
_GITIGNORE = "# written by ptdiag: run records stay out of the project's git\n*\n"
_ID_ATTEMPTS = 100
_AMBIGUOUS_SHOWN = 10

T = TypeVar("T")


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._index = RunIndex(self.root / INDEX_NAME)

    @classmethod
    def resolve(cls, store_option: str | None, cwd: Path | None = None) -> RunStore:
        """--store, else $PTDIAG_STORE, else ./ptdiag-runs; relative paths from cwd."""
        cwd = Path.cwd() if cwd is None else Path(cwd)
        chosen = store_option or os.environ.get(STORE_ENV_VAR) or DEFAULT_STORE_DIR
        return cls(cwd / Path(chosen).expanduser())

    def create_run(self, started: float | None = None) -> tuple[str, Path]:
        """A new run directory under a fresh id, indexed with status "running"."""
        started = time.time() if started is None else started
        self._ensure_root()
        for _ in range(_ID_ATTEMPTS):
            run_id = new_run_id(started)
            path = self.root / run_id
            try:
                os.mkdir(path, DIR_MODE)
                break
            except FileExistsError:
                continue
            except OSError as error:
                raise self._write_error(error) from error
        else:
            raise StoreError(f"cannot find a free run id in run store {self.root} "
                             f"after {_ID_ATTEMPTS} tries")
        summary = dict.fromkeys(ROW_KEYS) | {"run_id": run_id, "status": "running",
                                             "started": started, "params": {},
                                             "metrics": {}, "tags": {}}
        try:
            self.record(summary)
        except StoreError:
            path.rmdir()
            raise
        return run_id, path

    def run_dir(self, run_id: str) -> Path:
        """The directory of a run, given its id or a unique prefix of it."""
        if not run_id or run_id.startswith(".") or "/" in run_id or os.sep in run_id:
            raise self._not_found(run_id)
        exact = self.root / run_id
        if exact.is_dir():
            return exact
        candidates = sorted(name for name in self._run_dir_names() if name.startswith(run_id))
        if not candidates:
            raise self._not_found(run_id)
        if len(candidates) > 1:
            shown = ", ".join(candidates[:_AMBIGUOUS_SHOWN])
            more = f" and {len(candidates) - _AMBIGUOUS_SHOWN} more" \
                if len(candidates) > _AMBIGUOUS_SHOWN else ""
            raise StoreError(f"run id prefix {run_id!r} matches several runs in store "
                             f"{self.root}: {shown}{more}")
        return self.root / candidates[0]

    def record(self, summary: dict[str, Any]) -> None:
        """Write (or overwrite) the index row of one run from its `runs list` summary."""
        self.record_many([summary])

    def record_many(self, summaries: Iterable[dict[str, Any]]) -> None:
        """record() for many runs in one transaction (imports, tests, rebuilds). A summary
        without a group (the report's does not carry one) keeps the one meta.json holds."""
        summaries = [summary if "group" in summary else
                     {**summary, "group": self._recorded_group(summary.get("run_id"))}
                     for summary in summaries]
        self._ensure_root()
        self._indexed(lambda: self._index.upsert(summaries))

    def list(self, query: RunQuery | None = None, *, status: str | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:
        """Run summaries matching the query (newest first unless it sorts). A store that
        does not exist yet holds no runs (and is not created by looking)."""
        query = query or RunQuery()
        if status is not None:
            query.status = status
        if limit is not None:
            query.limit = limit
        if not self.root.is_dir():
            return []
        return self._indexed(lambda: self._index.select(query))

    def pin(self, run_id: str, pinned: bool = True) -> str:
        """Pin (or unpin) a run: gc never deletes a pinned run. Returns its full id."""
        path = self.run_dir(run_id)
        try:
            if pinned:
                (path / PIN_NAME).touch()
            else:
                (path / PIN_NAME).unlink(missing_ok=True)
        except OSError as error:
            raise self._write_error(error) from error
        return path.name

    def is_pinned(self, run_id: str) -> bool:
        return (self.root / run_id / PIN_NAME).exists()

    def gc_plan(self, keep: int, best: RunQuery | None = None) -> tuple[list[str], dict[str, str]]:
        """(runs to delete, {run kept: why}). Kept: the `keep` newest, every pinned run,
        every run still running, and the best run by `best` (a sorted query)."""
        kept: dict[str, str] = {}
        if best is not None and best.sort is not None:
            for row in self.list(RunQuery(sort=best.sort, descending=best.descending, limit=1)):
                kept[row["run_id"]] = f"best by {best.sort}"
        delete = []
        for position, row in enumerate(self.list()):
            run_id = row["run_id"]
            if run_id in kept:
                continue
            if position < keep:
                kept[run_id] = f"among the {keep} newest"
            elif self.is_pinned(run_id):
                kept[run_id] = "pinned"
            elif row["status"] == "running":
                kept[run_id] = "still running"
            else:
                delete.append(run_id)
        return delete, kept

    def delete(self, run_ids: Iterable[str]) -> None:
        """Delete runs: each directory is renamed away first (readers see the whole run
        or none of it), then removed, then its index row dropped."""
        deleted = []
        for run_id in run_ids:
            path = self.run_dir(run_id)
            trash = self.root / f"{_TRASH_PREFIX}{path.name}-{secrets.token_hex(2)}"
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                continue  # another gc was first
            except OSError as error:
                raise self._write_error(error) from error
            shutil.rmtree(trash, ignore_errors=True)
            deleted.append(path.name)
        self._indexed(lambda: self._index.delete(deleted))

    def load(self, run_id: str) -> dict[str, Any]:
        """The full record of a run: its summary keys, then meta.json, then report.json on
        top (the final word, when the run got that far)."""
        path = self.run_dir(run_id)
        meta, report = _read_record(path / META_NAME), _read_record(path / REPORT_NAME)
        summary = self._indexed(lambda: self._index.get(path.name))
        if summary is None:
            if meta is None and report is None:
                raise StoreError(f"run {path.name} in store {self.root} has no {META_NAME} "
                                 f"or {REPORT_NAME} yet")
            summary = _summary_from_records(path, meta, report)
        known = {key: value for key, value in summary.items() if value not in (None, {})}
        record = {**(meta or {}), **known, **(report or {})}
        for key in ROW_KEYS:
            record.setdefault(key, summary[key])
        return record

    def rebuild_index(self) -> int:
        """Bring the index in line with the run dirs; returns the number of runs indexed."""
        if not self.root.is_dir():
            return 0
        return self._indexed(self._sync_index)

    def _sync_index(self) -> int:
        """Index every run dir from its files. A run with a report.json gets its final
        summary; one with only meta.json gets a provisional row that never overwrites
        what the running invocation recorded since. Unreadable files count as absent."""
        names = self._run_dir_names()
        final, provisional = [], []
        for name in names:
            path = self.root / name
            meta, report = _read_record_leniently(path / META_NAME), \
                _read_record_leniently(path / REPORT_NAME)
            if meta is None and report is None:
                continue
            (provisional if report is None else final).append(
                _summary_from_records(path, meta, report))
        self._index.sync(final, provisional,
                         run_exists=lambda run_id: (self.root / run_id).is_dir())
        return len(final) + len(provisional)

    def _indexed(self, operation: Callable[[], T]) -> T:
        """Run an index operation; a missing index is first rebuilt from the run dirs, a
        corrupt one moved aside (index.sqlite.corrupt-<time>) and rebuilt."""
        if self._index.path.exists():
            try:
                return operation()
            except IndexCorrupt:
                self._index.move_aside()
        self._sync_index()
        return operation()

    def _recorded_group(self, run_id: Any) -> str | None:
        if not isinstance(run_id, str) or not run_id or "/" in run_id or run_id.startswith("."):
            return None
        meta = _read_record_leniently(self.root / run_id / META_NAME)
        group = (meta or {}).get("group")
        return group if isinstance(group, str) else None

    def _ensure_root(self) -> None:
        """Create the store (and missing parents) with DIR_MODE; a new store gets a
        .gitignore so that its runs never show up as untracked files of the project."""
        missing = []
        path = self.root
        while not path.exists() and path != path.parent:
            missing.append(path)
            path = path.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                continue  # a concurrent invocation made it
            except OSError as error:
                raise self._write_error(error) from error
        if missing:
            try:
                (self.root / ".gitignore").write_text(_GITIGNORE, encoding="utf-8")
            except OSError as error:
                raise self._write_error(error) from error

    def _run_dir_names(self) -> list[str]:
        try:
            with os.scandir(self.root) as entries:
                return [entry.name for entry in entries
                        if entry.is_dir() and not entry.name.startswith(".")]
        except FileNotFoundError:
            return []
        except OSError as error:
            raise StoreError(f"cannot read run store {self.root}: {error.strerror}") from error

    def _write_error(self, error: OSError) -> StoreError:
        return StoreError(f"cannot write run store {self.root}: {error.strerror or error}")

    def _not_found(self, run_id: str) -> RunNotFound:
        return RunNotFound(f"no run {run_id!r} in store {self.root} "
                           "(ptdiag runs list shows the ids)")


def _read_record(path: Path) -> dict[str, Any] | None:
    """A run's JSON file as a dict; None when absent; StoreError when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise StoreError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") \
            from error
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise StoreError(f"{path} is not valid JSON ({error}); the run's record is damaged") \
            from error
    if not isinstance(record, dict):
        raise StoreError(f"{path} holds a JSON {type(record).__name__}, not an object")
    return record


def _read_record_leniently(path: Path) -> dict[str, Any] | None:
    try:
        return _read_record(path)
    except StoreError:
        return None


def _summary_from_records(path: Path, meta: dict[str, Any] | None,
                          report: dict[str, Any] | None) -> dict[str, Any]:
    """The index row of a run dir, from its meta.json and report.json (report wins)."""
    record = {**(meta or {}), **(report or {})}
    summary = {key: record.get(key) for key in ROW_KEYS}
    summary.update(
        run_id=path.name,
        # Without a report the run is still going, or its ptdiag died before writing one.
        status=record.get("status") or ("running" if report is None else "unknown"),
        started=_started(record.get("started"), path),
        steps=record.get("steps", record.get("steps_observed")),
        params=record.get("params") or {},
        metrics=record.get("metrics") or {},
        tags=record.get("tags") or {},
    )
    return summary


def _started(recorded: Any, path: Path) -> float:
    """The recorded start time if it is one, else the time in the run id, else the dir's."""
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        return float(recorded)
    from_id = started_from_run_id(path.name)
    return from_id if from_id is not None else path.stat().st_mtime
