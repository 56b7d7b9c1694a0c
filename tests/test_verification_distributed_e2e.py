"""End to end, real torchrun (2 gloo ranks on CPU): the distributed data findings verified by
their fix, applied inside every rank without a code change, judged from the sample indices
each rank drew (shards disjoint, a new order at the second epoch): never from times."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import PROGRAMS, PYTHON, load_report, ptdiag_cmd
from verified_top import problems

pytestmark = pytest.mark.slow

TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
TUTORIAL = Path(__file__).resolve().parents[1] / "diagnostics" / "distributed" / "snapshot_trainer.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Both runs start together (distinct ports), verification on as by default."""
    root = tmp_path_factory.mktemp("verify_ddp")
    commands = {
        "no_sampler": [*TORCHRUN, "--master_port", "29731", str(PROGRAMS / "ddp_sampler.py"), "--bug", "no_sampler"],
        # the DDP tutorial's shape (a batch-size peek before each epoch) without its set_epoch call
        "no_set_epoch": [*TORCHRUN, "--master_port", "29732", str(TUTORIAL), "--epochs", "2", "--forget-set-epoch"],
    }
    env = {**os.environ, "PTDIAG_VERIFY": ""}
    env.pop("PTDIAG_STORE", None)
    procs = {}
    for name, command in commands.items():
        (root / name).mkdir()
        # the budget a hang guard only: by default (3x the run, at least 60 s) a loaded box's
        # verification run, torchrun and two ranks starting, can be cut before it trained
        procs[name] = subprocess.Popen(ptdiag_cmd("training with DDP", "--verify-budget", "240", "--json", "r.json",
                                                  "--", *command),
                                       cwd=root / name, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    found = {}
    for name, proc in procs.items():
        stderr = proc.communicate(timeout=300)[1].decode()
        assert proc.returncode == 0, stderr[-3000:]
        report = load_report(root / name / "r.json")
        found[name] = {"report": report, "stderr": stderr, "dir": root / name / "ptdiag-runs" / report["run_id"]}
    return found


def _finding(report: dict, code: str) -> dict:
    return next(f for f in report["findings"] if f["code"] == code)


def test_the_tutorial_without_set_epoch_is_told_so_counting_two_epochs(runs):
    finding = _finding(runs["no_set_epoch"]["report"], "distributed.sampler_epoch_not_set")
    assert finding["evidence"]["ranks"] == [0, 1]
    assert finding["evidence"]["epochs"] == [1, 3]  # the loader's 2nd and 4th passes: the peeks are not epochs
    assert "2 epochs" in finding["title"]


def test_a_distributed_sampler_gives_each_rank_its_own_shard(runs):
    run = runs["no_sampler"]
    finding = _finding(run["report"], "distributed.no_distributed_sampler")
    verified = finding["verified"]
    assert (verified["intervention"], verified["settings"], verified["helped"]) == (
        "distributed_sampler", {"sampler": "RandomSampler"}, True), verified["summary"]
    before, after = verified["measured"]["before"], verified["measured"]["after"]
    assert before["shared_share"] == 1.0 and before["drawn"] == 32  # the same shuffled 32 samples on both ranks
    assert after["shared_indices"] == 0 and after["drawn"] == 16 and after["ranks"] == 2  # each rank half, disjoint
    # bounded by the main run's steps; each rank's epoch is half as long now, so its 2 epochs took half
    assert verified["steps"] == run["report"]["steps_observed"] // 2
    assert finding["severity"] == "error"
    assert "verify-distributed_sampler run: the command again with a DistributedSampler in place of the " \
           "RandomSampler" in run["stderr"]
    events = run["dir"] / "companions" / "verify-distributed_sampler" / "events"
    assert len(list(events.glob("rank*.jsonl"))) == 2  # both ranks ran with it


def test_set_epoch_gives_a_new_order_at_the_second_epoch(runs):
    run = runs["no_set_epoch"]
    finding = _finding(run["report"], "distributed.sampler_epoch_not_set")
    verified = finding["verified"]
    assert (verified["intervention"], verified["helped"]) == ("sampler_set_epoch", True)
    before, after = verified["measured"]["before"], verified["measured"]["after"]
    assert before["ranks_repeating"] == before["ranks_compared"] == 2  # both ranks replayed epoch 0's order
    assert after["ranks_repeating"] == 0 and after["ranks_compared"] == 2
    assert before["passes"] == [1, 3]  # the training passes, not the batch-size peeks
    record = json.loads((run["dir"] / "verification.json").read_text())
    assert [r["verified"]["intervention"] for r in record["results"]] == ["sampler_set_epoch"]  # one extra run
    page = (run["dir"] / "report.html").read_text()
    assert "with the fix" in page and "ranks_repeating" in page


def test_every_top_finding_with_a_fix_is_verified_demoted_or_explained(runs):
    """Issue 18's sweep on the distributed runs (tests/verified_top.py): shards disjoint, a
    new order at the second epoch, or the report says why not."""
    assert {name: problems(run["report"]) for name, run in runs.items()} == {"no_sampler": [], "no_set_epoch": []}
