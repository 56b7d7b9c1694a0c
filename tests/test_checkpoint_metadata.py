"""Checkpoints as real programs write them: progress under the program's own key names
(EPOCHS_RUN, iter_num, nested), files opened by the program, the whole module pickled,
and an LR the program computes from the iteration it saves (no scheduler to save)."""

from __future__ import annotations

import io

import pytest
import torch

from conftest import PROGRAMS, PYTHON, load_report, run_ptdiag
from ptdiag.checkpoint_contents import categories, describe, file_label, file_path


@pytest.mark.parametrize("saved", [
    {"MODEL_STATE": {"w": torch.ones(2)}, "EPOCHS_RUN": 3},
    {"model": {"w": torch.ones(2)}, "iter_num": 2000},
    {"state": {"model": {"w": torch.ones(2)}, "progress": {"global_step": 7}}},
    {"model": {"w": torch.ones(2)}, "hparams": {"lr": 0.1}},
])
def test_progress_or_config_is_found_under_any_key(saved):
    held = categories(describe(saved))
    assert {"counter", "metadata"} & set(held)


def test_a_config_holding_epochs_is_no_counter():
    assert "counter" not in categories(describe({"model": {"w": torch.ones(2)}, "config": {"epochs": 90}}))


def test_files_are_named_by_their_path(tmp_path):
    with open(tmp_path / "model.pt", "wb") as f:
        assert file_path(f) == str(tmp_path / "model.pt") == file_label(f)
    assert file_path(tmp_path / "x.pt") == str(tmp_path / "x.pt")
    assert file_path(io.BytesIO()) is None and file_label(io.BytesIO()) == "an in-memory BytesIO"


@pytest.mark.slow
def test_gpt_style_checkpoints_are_judged_by_what_they_hold(tmp_path):
    run_ptdiag("resuming from the checkpoint does not continue the run", "--quiet", "--json", "r.json", "--",
               PYTHON, str(PROGRAMS / "iter_lr_checkpoint.py"), str(tmp_path), cwd=tmp_path)
    report = load_report(tmp_path / "r.json")
    found = {f["code"]: f for f in report["findings"]}
    # the LR changed every iteration, set by the program from iter_num: the saved counter is what it needs
    for finding in [f for f in report["findings"] if f["code"] == "reproducibility.ckpt_incomplete"]:
        assert "scheduler" not in {m["state"] for m in finding["evidence"]["missing"]}
    bare = found["tracking.ckpt_no_metadata"]
    assert bare["evidence"]["paths"] == [str(tmp_path / "model.pt")]  # the open file, by its path
    assert "whole Sequential module" in bare["detail"] and "keys" not in bare["detail"]
    recorded = found["tracking.run_recorded"]["detail"]
    assert "None" not in recorded and "data (no DataLoader, inputs " in recorded


@pytest.mark.parametrize("saved, severity", [
    ({"w": torch.ones(2)}, "info"),  # model.state_dict(): weights for inference, PyTorch's recipe
    ({"model": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": []}}, "warning"),  # a resume without progress
])
def test_weights_alone_are_an_export_noted_a_checkpoint_without_progress_is_warned(tmp_path, saved, severity):
    import json

    from ptdiag.probe.event_log import EventWriter
    from ptdiag.recorded import RecordedRun
    from ptdiag.specialists.tracking import analyse

    (tmp_path / "meta.json").write_text(json.dumps({"run_id": "r", "plan": {}}))
    writer = EventWriter(tmp_path / "events" / "rank0.p100.jsonl")
    writer.write("save", path="model.pt", keys=sorted(saved), type="dict", holds=categories(describe(saved)),
                 location="train.py:9", step=3)
    writer.close()
    found = [f for f in analyse(RecordedRun.load(tmp_path)).findings if f.code == "tracking.ckpt_no_metadata"]
    assert [f.severity for f in found] == [severity]
