"""The per-rank device check on recorded events: which cuda index each rank should use."""

from __future__ import annotations

import pytest

from ptdiag.specialists.distributed import analyse
from test_distributed_analysis import _gpu_rank, _write_run


def device_findings(tmp_path, visible: dict[int, str | None], index: dict[int, int]):
    """Two ranks on one host, LOCAL_RANK 0 and 1, with these CUDA_VISIBLE_DEVICES and
    device indices (each its own physical GPU)."""
    ranks = {}
    for rank in (0, 1):
        events = _gpu_rank(rank, "nccl", index[rank], f"GPU-{rank}")
        if visible[rank] is not None:
            events[0]["env"]["CUDA_VISIBLE_DEVICES"] = visible[rank]
        ranks[rank] = events
    return [f for f in analyse(_write_run(tmp_path / "run", ranks)).findings
            if f.code == "distributed.device_mismatch"]


def test_one_visible_gpu_per_rank_on_cuda0_is_right(tmp_path):
    """torchrun-less launchers (SLURM, a script per GPU) give rank k CUDA_VISIBLE_DEVICES=k:
    its one GPU is cuda:0 in the process, and LOCAL_RANK 1 on cuda:0 is no mismatch."""
    assert device_findings(tmp_path, {0: "0", 1: "1"}, {0: 0, 1: 0}) == []


@pytest.mark.parametrize("visible", [None, "0,1", "4,5"])
def test_several_visible_gpus_and_the_wrong_index_are_named(tmp_path, visible):
    found = device_findings(tmp_path, {0: visible, 1: visible}, {0: 0, 1: 0} if visible is None else {0: 1, 1: 0})
    assert [f.severity for f in found] == ["warning"] * len(found) and found
    assert all(f.evidence["expected_device"] == f"cuda:{f.evidence['local_rank']}" for f in found)


def test_one_visible_gpu_but_a_second_device_index_is_named(tmp_path):
    """With one visible GPU cuda:1 cannot even exist: a recorded index 1 is still wrong."""
    found = device_findings(tmp_path, {0: "0", 1: "1"}, {0: 0, 1: 1})
    assert [(f.evidence["rank"], f.evidence["expected_device"]) for f in found] == [(1, "cuda:0")]
