"""Tracking's parts on real data: queries against a real SQLite store, curve and config
comparison, names, symptom look-ups, and TensorBoard event files read back by
TensorBoard's own reader."""

from __future__ import annotations

import importlib.util
import math
import time

import pytest

from ptdiag.runs import RunStore
from ptdiag.runs.errors import QueryError
from ptdiag.runs.query import RunQuery, parse_condition, parse_since
from ptdiag.specialists.tracking.compare import differing, first_difference
from ptdiag.specialists.tracking.lookup import conditions_in
from ptdiag.specialists.tracking.naming import informative_name
from ptdiag.tracking_export.tensorboard import crc32c

T0 = 1_790_000_000.0


def summary(run_id, i, **overrides):
    return {"run_id": run_id, "name": run_id, "status": "completed", "started": T0 + i,
            "command": ["python", "train.py"], "symptom": None,
            "params": {"lr": 0.01 * (i % 3 + 1), "batch_size": 32 * (i % 2 + 1), "optimizer.lr": 0.5},
            "metrics": {"loss": {"last": 1.0 / (i + 1)}}, "tags": {"k": str(i % 2)}} | overrides


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs")
    s.record_many(summary(f"r{i}", i) for i in range(9))
    return s


def ids(rows):
    return [r["run_id"] for r in rows]


def test_where_tag_since_and_operators(store):
    q = RunQuery(conditions=[parse_condition("lr=0.01"), parse_condition("batch_size=64")])
    assert ids(store.list(q)) == ["r3"]
    assert ids(store.list(RunQuery(conditions=[parse_condition("lr>=0.03")]))) == ["r8", "r5", "r2"]
    assert ids(store.list(RunQuery(conditions=[parse_condition("optimizer.lr=0.5"),
                                               parse_condition("k=1", "tags")]))) == ["r7", "r5", "r3", "r1"]
    assert ids(store.list(RunQuery(since=T0 + 7))) == ["r8", "r7"]
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    for bad in ("lr", "lr<abc", "l r=1", "=3"):
        with pytest.raises(QueryError):
            parse_condition(bad)


def test_sort_by_metric_with_nan_and_missing_last(store):
    store.record(summary("nan", 20, metrics={"loss": {"last": math.nan}}))
    store.record(summary("none", 21, metrics={}))
    ascending = ids(store.list(RunQuery(sort="loss.last")))
    descending = ids(store.list(RunQuery(sort="loss.last", descending=True)))
    assert ascending[:2] == ["r8", "r7"] and descending[:2] == ["r0", "r1"]
    assert set(ascending[-2:]) == set(descending[-2:]) == {"nan", "none"}
    # ties (batch size 64) newest first
    assert ids(store.list(RunQuery(sort="params.batch_size", descending=True, limit=2))) == ["none", "r7"]


def test_gc_never_deletes_pinned_running_or_best(tmp_path):
    store = RunStore(tmp_path / "runs")
    made = [store.create_run(started=T0 + i)[0] for i in range(6)]
    store.record_many(summary(run_id, i, metrics={"loss": {"min": 5.0 - (i == 1)}}) for i, run_id in enumerate(made))
    store.record(summary(made[2], 2, status="running"))
    store.pin(made[0])
    delete, kept = store.gc_plan(keep=1, best=RunQuery(sort="loss.min"))
    assert kept == {made[1]: "best by loss.min", made[5]: "among the 1 newest",
                    made[0]: "pinned", made[2]: "still running"}
    store.delete(delete)
    assert set(ids(store.list())) == set(kept) == {p.name for p in store.root.iterdir() if p.is_dir()}
    store.pin(made[0], False)
    assert not store.is_pinned(made[0])


def test_differing_and_first_difference():
    assert differing([{"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}]) == {"b": [2, 3], "c": [None, 0]}
    a = [(1, 2.0), (2, 1.5), (3, 1.2)]
    assert first_difference(a, [(1, 2.0), (2, 1.5), (3, 1.2)], 1e-6) is None
    assert first_difference(a, [(1, 2.0), (2, 1.5 + 1e-3), (3, 9.0)], 1e-6)["step"] == 2
    assert first_difference(a, [(2, 1.5), (3, math.nan)], 1e-6)["step"] == 3


def test_names_say_what_changed_since_the_previous_run():
    params = {"lr": 0.01, "batch_size": 64, "epochs": 3, "dropout": 0.1, "model.class": "ResNet",
              "dataloader.dataset": "FakeData"}
    started = time.mktime((2026, 11, 22, 9, 5, 0, 0, 0, -1))
    assert informative_name(params, None, started, ["python", "t.py"]) == \
        "ResNet·FakeData lr=0.01 batch_size=64 epochs=3 · 09:05"
    previous = dict(params, lr=0.1, dropout=0.2)
    assert informative_name(params, previous, started, ["python", "t.py"]) == \
        "ResNet·FakeData lr=0.01 dropout=0.1 · 09:05"
    assert informative_name({}, None, started, ["python", "dir/train.py"]) == "train · 09:05"


def test_symptom_words_become_conditions():
    found = conditions_in("can't find the one with lr 0.01 and batch size of 128", {"lr", "batch_size"})
    assert [(c.key, c.value) for c in found] == [("lr", 0.01), ("batch_size", 128)]
    assert conditions_in("loss is NaN after epoch 3", {"lr"}) == []


def test_crc32c_matches_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_event_file_reads_back_with_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ptdiag.tracking_export import tensorboard

    run_dir = tmp_path / "run"
    (run_dir / "events").mkdir(parents=True)
    lines = [{"ev": "step", "t": 0, "step": s, "dt": 0.1 * s, "data_s": 0.0, "lr": [0.01]} for s in (1, 2, 3)]
    lines += [{"ev": "loss", "t": 0, "step": s, "value": v, "finite": True} for s, v in ((1, 2.5), (2, 1.25))]
    lines += [{"ev": "loss", "t": 0, "step": 3, "value": "nan", "finite": False},
              {"ev": "scalar", "t": 0, "source": "tensorboard", "tag": "val/acc", "value": 0.75,
               "logged_step": 0, "step": 3}]
    import json

    (run_dir / "events" / "rank0.p1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    path = tensorboard.export_run({"run_id": "r1", "name": "lr 0.01/x", "started": T0}, run_dir, tmp_path / "tb")
    assert path.parent.name == "lr_0.01_x_r1"
    accumulator = EventAccumulator(str(path.parent))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("ptdiag/loss")] == [(1, 2.5), (2, 1.25)]
    assert [(e.step, round(e.value, 6)) for e in accumulator.Scalars("val/acc")] == [(3, 0.75)]
    assert [e.step for e in accumulator.Scalars("ptdiag/step_time_s")] == [1, 2, 3]


def _recorded_run(store: RunStore, symptom: str, params: dict, monkeypatch, tmp_path):
    """A run as the CLI records one: meta.json from start_run, then the probe's events of
    a script that parsed `params` and took one step, and its outcome."""
    import json

    from ptdiag import diagnose
    from ptdiag.router import fixed_route

    monkeypatch.chdir(tmp_path)
    run_id, run_dir, _ = diagnose.start_run(store, symptom, ["python", "train.py"], fixed_route(["tracking"], "test"),
                                            diagnose.Options())
    events = [{"ev": "start", "t": 1.0, "rank": 0, "world_size": 1}, {"ev": "args", "t": 1.0, "values": params},
              {"ev": "step", "t": 2.0, "step": 1, "dt": None}, {"ev": "exit", "t": 3.0, "steps": 1}]
    (run_dir / "events").mkdir()
    (run_dir / "events" / "rank0.p1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "outcome.json").write_text(json.dumps({"exit_code": 0, "started": 1.0, "ended": 3.0}))
    return run_id, run_dir


def test_reanalysing_a_run_keeps_its_name_and_its_answer_though_newer_runs_were_recorded(tmp_path, monkeypatch):
    from ptdiag.diagnose import finish

    store = RunStore(tmp_path / "runs")
    first_id, first_dir = _recorded_run(store, "which run had lr 0.01", {"lr": 0.01, "depth": 3}, monkeypatch, tmp_path)
    first = finish(store, first_dir, None)
    assert first.name.startswith("train lr=0.01 ·")  # no earlier run: the key hyperparameters
    assert next(f for f in first.findings if f.code == "tracking.runs_matching").evidence["runs"] == []
    _, newer_dir = _recorded_run(store, None, {"lr": 0.01, "depth": 5}, monkeypatch, tmp_path)
    assert finish(store, newer_dir, None).name.startswith("train depth=5 ·")  # what changed since the first
    again = finish(store, first_dir, None)  # ptdiag runs show FIRST --reanalyse
    assert again.name == first.name  # not "train depth=3": the newer run is not its previous one
    assert next(f for f in again.findings if f.code == "tracking.runs_matching").evidence["runs"] == []
    assert store.load(first_id)["name"] == first.name
