"""A real sweep through `ptdiag track`: six runs of a sample model with different lr and
batch size, one crashing mid-run and one diverging; then the store must answer."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import FAST_SAMPLE_ARGS, PYTHON, SAMPLES, ptdiag_cmd, run_ptdiag

pytestmark = pytest.mark.slow

SAMPLE = str(SAMPLES / "resnet_nan.py")
# (label, sample args): 64 samples, batch 32 -> 2 steps an epoch
SWEEP = (
    ("a", ["--lr", "0.01", "--batch-size", "32"]),
    ("b", ["--lr", "0.05", "--batch-size", "32"]),
    ("c", ["--lr", "0.01", "--batch-size", "16"]),
    ("d", ["--lr", "0.05", "--batch-size", "16"]),
    # 65 samples: the third batch holds one sample and BatchNorm raises on it (step 2)
    ("crash", ["--lr", "0.01", "--batch-size", "32", "--samples", "65"]),
    # the lr grows 10x an epoch from 100: NaN by the fourth epoch
    ("diverge", ["--lr", "100", "--batch-size", "32", "--bug", "lr", "--epochs", "4"]),
)


def ptdiag_ok(*args, cwd) -> str:
    proc = run_ptdiag(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def ptdiag_json(*args, cwd):
    return json.loads(ptdiag_ok(*args, "--json", cwd=cwd))


def ids_of(rows):
    return [row["run_id"] for row in rows]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The six runs, three at a time (they share one store, as a sweep script's would)."""
    workdir = tmp_path_factory.mktemp("sweep")
    env = dict(os.environ)
    env.pop("PTDIAG_STORE", None)
    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = dict(zip([label for label, _ in SWEEP], pool.map(lambda item: subprocess.run(
            ptdiag_cmd("track", "--quiet", "--tag", f"label={item[0]}", "--tag", "sweep=s1", "--",
                       PYTHON, SAMPLE, *FAST_SAMPLE_ARGS, "--epochs", "1", *item[1]),
            cwd=workdir, env=env, capture_output=True, timeout=300), SWEEP)))
    ids = {}
    for label, proc in procs.items():
        rows = ptdiag_json("runs", "list", "--tag", f"label={label}", cwd=workdir)
        assert len(rows) == 1, proc.stderr.decode()
        ids[label] = rows[0]["run_id"]
    return workdir, ids


def test_statuses_and_filters(sweep):
    workdir, ids = sweep
    rows = ptdiag_json("runs", "list", cwd=workdir)
    assert {r["run_id"]: r["status"] for r in rows} == {
        ids["a"]: "completed", ids["b"]: "completed", ids["c"]: "completed",
        ids["d"]: "completed", ids["crash"]: "crashed", ids["diverge"]: "diverged"}
    assert set(rows[0]) >= {"run_id", "name", "status", "started", "command", "symptom",
                            "params", "metrics", "tags"}
    assert ids_of(ptdiag_json("runs", "list", "--where", "lr=0.01", "--where", "batch_size=16",
                              cwd=workdir)) == [ids["c"]]
    assert set(ids_of(ptdiag_json("runs", "list", "--where", "lr=0.01", cwd=workdir))) == \
        {ids["a"], ids["c"], ids["crash"]}
    assert set(ids_of(ptdiag_json("runs", "list", "--where", "batch_size<32", cwd=workdir))) == \
        {ids["c"], ids["d"]}
    assert ids_of(ptdiag_json("runs", "list", "--status", "crashed", cwd=workdir)) == [ids["crash"]]
    assert len(ptdiag_json("runs", "list", "--since", "1h", "--tag", "sweep=s1", cwd=workdir)) == 6
    assert ptdiag_json("runs", "list", "--since", "2000-01-01", "--tag", "sweep=other", cwd=workdir) == []


def test_sort_by_metric_puts_runs_without_a_number_last(sweep):
    workdir, ids = sweep
    ascending = ptdiag_json("runs", "list", "--sort", "loss.last", cwd=workdir)
    descending = ptdiag_json("runs", "list", "--sort", "loss.last", "--desc", cwd=workdir)
    finite = [r["metrics"]["loss"]["last"] for r in ascending[:-1]]
    assert finite == sorted(finite)
    assert ascending[-1]["run_id"] == descending[-1]["run_id"] == ids["diverge"]
    assert [r["metrics"]["loss"]["last"] for r in descending[:-1]] == sorted(finite, reverse=True)


def test_table_shows_the_columns_that_differ(sweep):
    workdir, _ = sweep
    header = ptdiag_ok("runs", "list", cwd=workdir).splitlines()[0].split()
    assert {"lr", "batch_size", "samples", "bug"} <= set(header)
    assert "arch" not in header and "momentum" not in header


def test_crashed_run_is_readable_with_its_exception(sweep):
    workdir, ids = sweep
    record = ptdiag_json("runs", "show", ids["crash"], cwd=workdir)
    assert record["status"] == "crashed" and record["steps_observed"] == 2
    recorded = next(f for f in record["findings"] if f["code"] == "tracking.run_recorded")
    failure = recorded["evidence"]["failure"]
    assert failure["type"] == "ValueError" and failure["step"] == 2
    path, _, line = failure["location"].rpartition(":")
    assert path == SAMPLE and "model(" in open(path).read().splitlines()[int(line) - 1]
    assert recorded["evidence"]["data"]["dataset"] == "FakeData"
    assert recorded["evidence"]["data"]["length"] == 65
    assert record["packages"]["torch"].startswith("2.")
    shown = ptdiag_ok("runs", "show", ids["crash"][:-1], cwd=workdir)  # a prefix is enough
    assert "seeds: python=0 numpy=0 torch=0" in shown


def test_compare_finds_the_first_step_where_losses_part(sweep):
    workdir, ids = sweep
    result = ptdiag_json("runs", "compare", ids["a"], ids["b"], ids["c"], cwd=workdir)
    assert result["config"]["lr"] == [0.01, 0.05, 0.01]
    assert result["config"]["batch_size"] == [32, 32, 16]
    assert "arch" not in result["config"] and result["seeds"] == {}
    # the same first batch and weights: the lr only shows once the first step has been taken
    lr_only, batch = result["curves"]["loss"]["first_difference"]
    assert lr_only["step"] == 2
    assert batch["step"] == 1
    assert result["data"]["batch_size"] == [32, 32, 16]
    assert result["packages"] == {}
    crashed = ptdiag_json("runs", "compare", ids["a"], ids["crash"], cwd=workdir)
    assert crashed["config"]["samples"] == [64, 65]
    assert crashed["data"]["length"] == [64, 65]  # another dataset: another shuffle from step 1
    assert crashed["curves"]["loss"]["first_difference"][0]["step"] == 1
    assert crashed["status"] == ["completed", "crashed"]
    text = ptdiag_ok("runs", "compare", ids["a"], ids["b"], cwd=workdir)
    assert f"loss: {ids['a']} vs {ids['b']}: first differs at step 2" in text


def test_gc_keeps_newest_pinned_and_best(sweep, tmp_path):
    workdir, ids = sweep
    shutil.copytree(workdir / "ptdiag-runs", tmp_path / "ptdiag-runs")
    ptdiag_ok("runs", "pin", ids["crash"], cwd=tmp_path)
    best = ptdiag_json("runs", "list", "--sort", "loss.min", "--limit", "1", cwd=tmp_path)[0]["run_id"]
    newest = ptdiag_json("runs", "list", "--limit", "1", cwd=tmp_path)[0]["run_id"]
    out = ptdiag_ok("runs", "gc", "--keep", "1", "--best", "loss.min", cwd=tmp_path)
    left = set(ids_of(ptdiag_json("runs", "list", cwd=tmp_path)))
    assert left == {newest, ids["crash"], best} and len(left) >= 2, out
    assert {p.name for p in (tmp_path / "ptdiag-runs").iterdir() if p.is_dir()} == left


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_export_to_tensorboard_reads_back_with_tensorboards_reader(sweep, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, ids = sweep
    ptdiag_ok("runs", "export", ids["c"], ids["diverge"], "--tensorboard", str(tmp_path / "tb"), cwd=workdir)
    loss = {}
    for run_id in (ids["c"], ids["diverge"]):
        [folder] = [p for p in (tmp_path / "tb").iterdir() if p.name.endswith(run_id)]
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        assert {"ptdiag/loss", "ptdiag/lr", "ptdiag/step_time_s"} <= set(accumulator.Tags()["scalars"])
        loss[run_id] = [(e.step, e.value) for e in accumulator.Scalars("ptdiag/loss")]
    record = ptdiag_json("runs", "show", ids["c"], cwd=workdir)
    assert [s for s, _ in loss[ids["c"]]] == [1, 2, 3, 4]
    assert loss[ids["c"]][-1][1] == pytest.approx(record["metrics"]["loss"]["last"], rel=1e-6)
    assert all(step < 8 for step, _ in loss[ids["diverge"]])  # the NaN steps are left out
