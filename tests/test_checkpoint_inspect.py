"""Checkpoint contents and `inspect`: real torch.save files, loaded with weights_only only."""

from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch

from ptdiag.specialists.reproducibility import checkpoint
from ptdiag.checkpoint_contents import categories, describe


def _training_state():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_describe_recognises_each_part_by_structure_not_by_key_name():
    model, opt, sched = _training_state()
    scaler = torch.amp.GradScaler("cpu")
    obj = {"a": model.state_dict(), "b": opt.state_dict(), "c": sched.state_dict(), "d": scaler.state_dict(),
           "epoch": 3, "global_step": 12,
           "states": {"x": random.getstate(), "y": np.random.get_state(), "z": torch.get_rng_state()},
           "train_sampler": {"epoch": 2, "index": 40}, "config": {"lr": 0.1, "epochs": 10}, "best_acc": 0.9}
    held = categories(describe(obj))
    assert held == {"model": ["a"], "optimizer": ["b"], "scheduler": ["c"], "scaler": ["d"],
                    "counter": ["epoch", "global_step"], "rng.python": ["states/x"], "rng.numpy": ["states/y"],
                    "rng.torch": ["states/z"], "data": ["train_sampler"], "metadata": ["config"],
                    "metric": ["best_acc"]}


def test_a_bare_state_dict_is_model_weights_only():
    model, _, _ = _training_state()
    assert categories(describe(model.state_dict())) == {"model": ["(whole object)"]}


def test_full_checkpoint_is_inspected_without_incompleteness(tmp_path):
    model, opt, sched = _training_state()
    path = tmp_path / "full.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}, path)
    assert checkpoint.sniff(path)
    analysis = checkpoint.inspect(path)
    assert [f.code for f in analysis.findings] == ["reproducibility.ckpt_contents"]
    assert {"model", "optimizer", "counter", "rng.torch", "rng.numpy"} <= set(analysis.metrics["checkpoint"]["categories"])


def test_weights_only_checkpoint_is_incomplete_with_what_resume_loses(tmp_path):
    model, _, _ = _training_state()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    incomplete = [f for f in checkpoint.inspect(path).findings if f.code == "reproducibility.ckpt_incomplete"]
    assert len(incomplete) == 1
    assert incomplete[0].evidence["missing"] == ["optimizer", "counter", "rng.torch"]
    assert "scheduler" in incomplete[0].evidence["missing_if_used"]


@pytest.mark.parametrize("obj, named", [
    (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
    ({"args": argparse.Namespace(lr=0.1)}, "argparse.Namespace"),
])
def test_a_file_needing_arbitrary_unpickling_is_refused_with_the_globals(tmp_path, obj, named):
    path = tmp_path / "unsafe.pt"
    torch.save(obj, path)
    with pytest.raises(ValueError, match=f"refused: loading it needs arbitrary unpickling of {named}"):
        checkpoint.inspect(path)


def test_truncated_and_junk_files_get_a_clear_error(tmp_path):
    model, _, _ = _training_state()
    whole = tmp_path / "whole.pt"
    torch.save(model.state_dict(), whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    for path in (cut, junk):
        with pytest.raises(ValueError, match="not a readable torch checkpoint"):
            checkpoint.inspect(path)


def test_sniff_takes_torch_zip_files_by_content_and_leaves_other_files(tmp_path):
    model, _, _ = _training_state()
    odd_name = tmp_path / "weights.bin"
    torch.save(model.state_dict(), odd_name)
    trace = tmp_path / "trace.json"
    trace.write_text("{}")
    assert checkpoint.sniff(odd_name)
    assert not checkpoint.sniff(trace)
