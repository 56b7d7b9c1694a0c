"""The run store on real directories and a real SQLite index."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptdiag.runs import RunNotFound, RunStore, StoreError
from ptdiag.runs.ids import RUN_ID_PATTERN, started_from_run_id
from ptdiag.runs.index import OPTIONAL_KEYS, SUMMARY_KEYS

SRC = Path(__file__).resolve().parents[1] / "src"
T0 = 1_790_000_000.0


def summary(run_id: str, started: float, **overrides) -> dict:
    base = {"run_id": run_id, "name": f"run {run_id}", "status": "completed",
            "started": started, "command": ["python", "train.py", "--lr", "0.1"],
            "symptom": "loss is NaN", "params": {"lr": 0.1, "optimizer.name": "SGD"},
            "metrics": {"step_time_s": {"p50": 0.2}}, "tags": {"team": "vision"}}
    return base | overrides


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "ptdiag-runs")


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


# --- ids and where the store is ----------------------------------------------------------

def test_run_ids_are_unique_and_sort_by_start_time(store):
    ids = [store.create_run(started=T0 + 7 * i)[0] for i in range(30)]
    assert sorted(ids) == ids
    assert all(RUN_ID_PATTERN.match(run_id) for run_id in ids)
    assert started_from_run_id(ids[3]) == T0 + 21


def test_run_ids_started_in_the_same_second_do_not_collide(store):
    created = [store.create_run(started=T0) for _ in range(200)]
    assert len({run_id for run_id, _ in created}) == 200
    assert all(path.is_dir() for _, path in created)
    assert len(store.list()) == 200


def test_resolve_prefers_option_then_environment_then_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("PTDIAG_STORE", raising=False)
    assert RunStore.resolve(None, cwd=tmp_path).root == tmp_path / "ptdiag-runs"
    monkeypatch.setenv("PTDIAG_STORE", str(tmp_path / "from-env"))
    assert RunStore.resolve(None, cwd=tmp_path).root == tmp_path / "from-env"
    assert RunStore.resolve("opt", cwd=tmp_path).root == tmp_path / "opt"
    assert RunStore.resolve("/abs/store", cwd=tmp_path).root == Path("/abs/store")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PTDIAG_STORE")
    assert RunStore.resolve(None).root == tmp_path / "ptdiag-runs"


# --- round trip --------------------------------------------------------------------------

def test_create_record_list_load_round_trip(store):
    run_id, path = store.create_run(started=T0)
    assert path == store.root / run_id and path.is_dir()
    [row] = store.list()
    assert row["status"] == "running" and row["started"] == T0
    assert set(row) == set(SUMMARY_KEYS) | set(OPTIONAL_KEYS)

    write_json(path / "meta.json", {"command": ["python", "train.py"], "symptom": "slow",
                                    "environment": {"python": "3.11.7"}})
    running = store.load(run_id)
    assert running["status"] == "running"
    assert running["command"] == ["python", "train.py"]  # from meta.json: the row has none
    assert running["environment"] == {"python": "3.11.7"}

    store.record(summary(run_id, T0, ended=T0 + 60, exit_code=0, group="sweep-1", steps=412))
    [row] = store.list()
    assert row == summary(run_id, T0, ended=T0 + 60, exit_code=0, group="sweep-1", steps=412)

    write_json(path / "report.json", {"schema": "ptdiag.report/1", "run_id": run_id,
                                      "status": "diverged", "findings": [{"code": "x"}]})
    record = store.load(run_id)
    assert record["status"] == "diverged"  # the report is the final word
    assert record["findings"] == [{"code": "x"}]
    assert record["params"] == {"lr": 0.1, "optimizer.name": "SGD"}  # from the index
    assert record["environment"] == {"python": "3.11.7"}  # from meta.json


def test_list_is_newest_first_and_filters(store):
    store.record_many(summary(f"r{i}", T0 + i, status="crashed" if i % 3 == 0 else "completed")
                      for i in range(10))
    assert [row["run_id"] for row in store.list()] == [f"r{i}" for i in reversed(range(10))]
    assert [row["run_id"] for row in store.list(status="crashed")] == ["r9", "r6", "r3", "r0"]
    assert [row["run_id"] for row in store.list(limit=2)] == ["r9", "r8"]


def test_record_rejects_an_incomplete_summary(store):
    with pytest.raises(StoreError, match="lacks.*params"):
        store.record({k: v for k, v in summary("r1", T0).items() if k != "params"})
    with pytest.raises(StoreError, match="started"):
        store.record(summary("r1", "yesterday"))


def test_listing_a_store_that_does_not_exist_creates_nothing(store):
    assert store.list() == []
    assert not store.root.exists()


# --- finding runs ------------------------------------------------------------------------

def test_run_dir_resolves_unique_prefixes(store):
    first, path = store.create_run(started=T0)
    second, _ = store.create_run(started=T0 + 86_400)
    assert store.run_dir(first) == path
    assert store.run_dir(first[:8]) == path  # the date alone is unique here
    assert store.load(first[:8])["run_id"] == first
    assert store.run_dir(second) == store.root / second


def test_ambiguous_prefix_lists_the_candidates(store):
    ids = sorted(store.create_run(started=T0)[0] for _ in range(3))
    with pytest.raises(StoreError, match="several runs") as error:
        store.run_dir(ids[0][:10])
    assert not isinstance(error.value, RunNotFound)
    assert all(run_id in str(error.value) for run_id in ids)


@pytest.mark.parametrize("run_id", ["nope", "", "..", ".gitignore", "../etc"])
def test_unknown_run_says_how_to_find_ids(store, run_id):
    store.create_run(started=T0)
    with pytest.raises(RunNotFound) as error:
        store.load(run_id)
    assert str(error.value) == (f"no run {run_id!r} in store {store.root} "
                                "(ptdiag runs list shows the ids)")


def test_load_names_a_corrupt_report(store):
    run_id, path = store.create_run(started=T0)
    (path / "report.json").write_text('{"status": "compl', encoding="utf-8")
    with pytest.raises(StoreError, match=r"report\.json is not valid JSON"):
        store.load(run_id)


# --- failures of the file system ---------------------------------------------------------

def test_store_under_a_regular_file_cannot_be_written(tmp_path):
    (tmp_path / "somefile").write_text("not a directory")
    store = RunStore(tmp_path / "somefile" / "runs")
    with pytest.raises(StoreError, match=r"cannot write run store .*runs: Not a directory"):
        store.create_run()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through read-only permissions")
def test_read_only_store_cannot_be_written_but_can_be_read(store):
    run_id, _ = store.create_run(started=T0)
    store.root.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="Permission denied"):
            store.create_run()
        assert [row["run_id"] for row in store.list()] == [run_id]
        assert store.load(run_id)["status"] == "running"
    finally:
        store.root.chmod(0o755)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o755), (0o002, 0o775), (0o077, 0o700),
                                            (0o000, 0o775)])
def test_created_directories_follow_umask_but_never_world_writable(tmp_path, umask, mask,
                                                                    expected):
    umask(mask)
    store = RunStore(tmp_path / "deep" / "store")
    _, path = store.create_run()
    for directory in (path, store.root, store.root.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == expected
    assert not (store.root / "index.sqlite").stat().st_mode & stat.S_IWOTH


def test_new_store_keeps_its_runs_out_of_git(store):
    store.create_run()
    assert (store.root / ".gitignore").read_text().splitlines()[-1] == "*"


# --- the index is a cache of the run dirs ------------------------------------------------

def _runs_with_files(store: RunStore, count: int) -> list[str]:
    """Runs as the CLI leaves them: finished ones with report.json, the last still going."""
    ids = []
    for i in range(count):
        run_id, path = store.create_run(started=T0 + i)
        write_json(path / "meta.json", {"started": T0 + i, "command": ["python", f"t{i}.py"],
                                        "symptom": "slow", "params": {"lr": i}})
        if i < count - 1:
            write_json(path / "report.json", {"run_id": run_id, "status": "completed",
                                              "steps_observed": 10 * i, "metrics": {"i": i}})
        ids.append(run_id)
    return ids


def test_garbage_index_is_moved_aside_and_rebuilt(store):
    ids = _runs_with_files(store, 4)
    (store.root / "index.sqlite").write_bytes(b"this is not sqlite" * 200)
    after = store.list()
    assert [row["run_id"] for row in after] == list(reversed(ids))
    assert [row["status"] for row in after] == ["running", "completed", "completed", "completed"]
    assert after[1]["steps"] == 20 and after[1]["metrics"] == {"i": 2}
    assert after[3]["command"] == ["python", "t0.py"] and after[3]["params"] == {"lr": 0}
    [aside] = store.root.glob("index.sqlite.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not sqlite")


def test_truncated_index_is_detected(store):
    _runs_with_files(store, 3)
    index = store.root / "index.sqlite"
    with sqlite3.connect(index) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    index.write_bytes(index.read_bytes()[:100] + b"\xff" * 3000)
    assert len(store.list()) == 3


def test_rebuild_index_follows_the_run_dirs(store):
    ids = _runs_with_files(store, 5)
    (store.root / "index.sqlite").unlink()
    for side in store.root.glob("index.sqlite-*"):
        side.unlink()
    assert len(store.list()) == 5  # a missing index is rebuilt on first use
    for leftover in (store.root / ids[0]).iterdir():
        leftover.unlink()
    (store.root / ids[0]).rmdir()
    (store.root / ids[1] / "report.json").write_text("{broken", encoding="utf-8")
    assert store.rebuild_index() == 4
    rows = {row["run_id"]: row for row in store.list()}
    assert set(rows) == set(ids[1:])
    assert rows[ids[1]]["status"] == "completed"  # the row from before the damage stays


def test_newer_index_schema_is_refused(store):
    store.create_run()
    with sqlite3.connect(store.root / "index.sqlite") as connection:
        connection.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99.*upgrade ptdiag"):
        store.list()


# --- many processes, many runs -----------------------------------------------------------

_WORKER = """
import json, sys, time
from pathlib import Path
from ptdiag.runs import RunStore
root, worker, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
while not go.exists():
    time.sleep(0.002)
store = RunStore(root)
for i in range(20):
    run_id, path = store.create_run()
    (path / "meta.json").write_text(json.dumps({"command": ["w", str(worker)]}))
    store.record({"run_id": run_id, "name": None, "status": "completed",
                  "started": time.time(), "command": ["w", str(worker)], "symptom": None,
                  "params": {"worker": worker, "i": i}, "metrics": {}, "tags": {}})
    store.list(limit=5)
"""


def test_ten_processes_write_one_store_at_once(tmp_path, store):
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(store.root), str(w), str(go)],
                                env=env, stderr=subprocess.PIPE, text=True)
               for w in range(10)]
    go.touch()
    seen = []
    while any(worker.poll() is None for worker in workers):
        seen.append(len(store.list()))  # reading while they write
    errors = [worker.stderr.read() for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 10, errors
    rows = store.list()
    assert len(rows) == 200
    assert sorted((r["params"]["worker"], r["params"]["i"]) for r in rows) == \
        [(w, i) for w in range(10) for i in range(20)]
    assert all(r["status"] == "completed" for r in rows)
    assert seen == sorted(seen)  # readers never saw runs disappear
    with sqlite3.connect(store.root / "index.sqlite") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert store.rebuild_index() == 200


def test_listing_ten_thousand_runs_is_fast(store):
    """Listing is one indexed query, never a walk over run dirs. Timed in this process's
    CPU time (a loaded CI box stretches wall time, not the work done) and checked to grow
    with the number of runs, not faster."""
    def cpu_seconds_to_list() -> float:
        timings = []
        for _ in range(3):
            start = time.process_time()
            rows = store.list()
            timings.append(time.process_time() - start)
        return min(timings), rows

    store.record_many(summary(f"{i:05d}", T0 + i, tags={"i": i}) for i in range(1_000))
    small, _ = cpu_seconds_to_list()
    store.record_many(summary(f"{i:05d}", T0 + i, tags={"i": i}) for i in range(1_000, 10_000))
    large, rows = cpu_seconds_to_list()
    assert len(rows) == 10_000 and rows[0]["run_id"] == "09999"
    assert large < 1.0, large
    assert large < 30 * max(small, 1e-3), (small, large)  # linear in the rows (10x), with room
