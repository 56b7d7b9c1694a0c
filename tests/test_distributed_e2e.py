"""End to end: real torchrun, 2 gloo ranks on CPU, each distributed bug diagnosed with its
per-rank evidence. The runs of one group start together (distinct ports) to keep the
wall time down on a 2-core machine; each test then reads its own report."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import FAST_SAMPLE_ARGS, PROGRAMS, PYTHON, SAMPLES, load_report, ptdiag_cmd

pytestmark = pytest.mark.slow

TORCHRUN = [PYTHON, "-m", "torch.distributed.run"]
SAMPLE = SAMPLES / "resnet_ddp.py"
SAMPLE_ARGS = [*FAST_SAMPLE_ARGS[:2], "--samples", "32", "--image-size", "16", "--batch-size", "8", "--epochs", "2"]


def _line_of(path: Path, text: str, nth: int = 1) -> str:
    lines = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return f"{path.name}:{lines[nth - 1]}"


def _start(workdir: Path, ptdiag_args: list[str], command: list[str]) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("PTDIAG_STORE", None)
    return subprocess.Popen(ptdiag_cmd(*ptdiag_args, "--json", "r.json", "--", *command), cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(procs: dict[str, subprocess.Popen], timeout: float = 240) -> dict[str, bytes]:
    return {name: proc.communicate(timeout=timeout)[1] for name, proc in procs.items()}


def _torchrun(port: int, script: Path, *args: str) -> list[str]:
    return [*TORCHRUN, "--nproc_per_node", "2", "--master_port", str(port), str(script), *args]


@pytest.fixture(scope="module")
def sample_runs(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("ddp_samples")
    bugs = {"no_sampler": [], "no_set_epoch": [], "unused_param": [],
            "skip_collective": ["--pg-timeout", "3"]}
    procs = {bug: _start(root / bug, ["ranks disagree with DDP"],
                         _torchrun(29701 + i, SAMPLE, "--bug", bug, *SAMPLE_ARGS, *extra))
             for i, (bug, extra) in enumerate(bugs.items())}
    errors = _finish(procs)
    return {bug: {"report": load_report(root / bug / "r.json"), "stderr": errors[bug]} for bug in bugs}


@pytest.fixture(scope="module")
def program_runs(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("ddp_programs")
    procs = {
        "hang": _start(root / "hang", ["training hangs with 2 GPUs", "--timeout", "60"],
                       _torchrun(29711, PROGRAMS / "ddp_skip_allreduce.py")),
        "uneven": _start(root / "uneven", ["ranks disagree"], _torchrun(29712, PROGRAMS / "ddp_uneven_ranks.py")),
        # ptdiag's old replica check waited 60 s, then raised into rank 1's forward; ptdiag has no
        # collective to wait on now (test_architecture.py forbids one), so the hang's time-out does
        # (the fixture lasts as long as its longest time-out: 90 s cost 30 s of the suite)
        "barrier": _start(root / "barrier", ["training hangs with DDP", "--timeout", "60"],
                          _torchrun(29714, PROGRAMS / "ddp_barrier_one_rank.py")),
    }
    for node in (0, 1):  # two nodes of one job, simulated: two torchrun invocations, one store
        procs[f"node{node}"] = _start(
            root / "two_node", ["two nodes see the same data"] + ["--name", f"node{node}"],
            [*TORCHRUN, "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
             "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:29713", "--rdzv_id", "job42",
             str(PROGRAMS / "ddp_two_node.py")])
    errors = _finish(procs)
    reports = {name: {"stderr": err} for name, err in errors.items()}
    for name in ("hang", "uneven", "barrier"):
        reports[name]["report"] = load_report(root / name / "r.json")
    reports["two_node"] = {"dir": root / "two_node"}
    return reports


TUTORIAL = Path(__file__).resolve().parents[1] / "diagnostics" / "distributed" / "snapshot_trainer.py"


@pytest.fixture(scope="module")
def tutorial_runs(tmp_path_factory) -> dict[str, dict]:
    """The DDP tutorial's shape (a batch-size peek each epoch, a snapshot with EPOCHS_RUN),
    as written (without its set_epoch call: tests/test_verification_distributed_e2e.py, whose
    run verifies that finding too)."""
    root = tmp_path_factory.mktemp("ddp_tutorial")
    variants = {"correct": []}
    procs = {name: _start(root / name, ["training with DDP"], _torchrun(29721 + i, TUTORIAL, "--epochs", "2", *args))
             for i, (name, args) in enumerate(variants.items())}
    errors = _finish(procs)
    return {name: {"report": load_report(root / name / "r.json"), "stderr": errors[name]} for name in variants}


def test_the_tutorial_as_written_gets_no_warning(tutorial_runs):
    report = tutorial_runs["correct"]["report"]
    assert report["status"] == "completed" and report["steps_observed"] == 8
    assert [(f["code"], f["title"]) for f in report["findings"] if f["severity"] != "info"] == []


def _finding(report: dict, code: str) -> dict:
    found = [f for f in report["findings"] if f["code"] == code]
    assert found, f"{code} not in {[f['code'] for f in report['findings']]}"
    return found[0]


def test_no_sampler_ranks_fed_identical_batches(sample_runs):
    report = sample_runs["no_sampler"]["report"]
    assert report["status"] == "completed"
    assert report["route"]["specialists"][0] == "distributed"
    finding = _finding(report, "distributed.no_distributed_sampler")
    assert finding["severity"] == "error"
    assert finding["evidence"]["ranks"] == [0, 1]
    assert finding["evidence"]["identical_batches"] == [[0, 1]]
    assert finding["evidence"]["sampler"] == "RandomSampler"
    bn = _finding(report, "distributed.batchnorm_not_synced")
    assert bn["evidence"]["per_rank_batch"] == 8 and bn["evidence"]["batchnorm_layers"] == 20
    assert not [f for f in report["findings"] if f["code"] == "distributed.rank_divergence"]


def test_sampler_without_set_epoch(sample_runs):
    report = sample_runs["no_set_epoch"]["report"]
    finding = _finding(report, "distributed.sampler_epoch_not_set")
    assert finding["evidence"]["ranks"] == [0, 1]
    assert finding["evidence"]["epochs"] == [0, 1]
    assert finding["evidence"]["sampler_epoch"] == 0
    assert finding["evidence"]["location"].endswith(_line_of(SAMPLE, "for images, labels in data:"))
    assert not [f for f in report["findings"] if f["code"] == "distributed.no_distributed_sampler"]


def test_unused_parameter_named(sample_runs):
    report = sample_runs["unused_param"]["report"]
    assert report["status"] == "crashed"
    finding = _finding(report, "distributed.unused_parameters")
    assert finding["severity"] == "error"
    assert finding["evidence"]["names"] == ["aux_head.bias", "aux_head.weight"]
    assert finding["evidence"]["find_unused_parameters"] is False
    assert finding["evidence"]["location"].endswith(_line_of(SAMPLE, "ddp(images)"))


def test_skipped_collective_names_the_rank_and_both_locations(sample_runs):
    report = sample_runs["skip_collective"]["report"]
    finding = _finding(report, "distributed.collective_mismatch")
    ev = finding["evidence"]
    assert finding["severity"] == "error"
    assert (ev["rank"], ev["ranks"], ev["waiting_ranks"]) == (1, [1], [0])
    assert ev["collective"] == "all_reduce"
    all_reduce_line = _line_of(SAMPLE, "dist.all_reduce(total)", 1)
    assert ev["location"].endswith(all_reduce_line)
    assert ev["calls"] == {"0": 1, "1": 0}
    assert ev["per_rank"]["0"]["location"].endswith(all_reduce_line)
    assert ev["per_rank"]["0"]["collective"] == "all_reduce"
    assert ev["per_rank"]["1"]["location"].endswith(_line_of(SAMPLE, "ddp(images)"))
    assert "buffer broadcast" in ev["per_rank"]["1"]["phase"]
    # the short process-group time-out fired on one rank; the other then lost its peer
    errors = {ev["per_rank"][r]["error"] for r in ("0", "1")}
    assert "timeout" in errors and errors <= {"timeout", "peer_gone"}


def test_hang_with_timeout_uses_each_ranks_stack(program_runs):
    report = program_runs["hang"]["report"]
    assert report["status"] == "hung"
    program = PROGRAMS / "ddp_skip_allreduce.py"
    finding = _finding(report, "distributed.collective_mismatch")
    ev = finding["evidence"]
    assert (ev["ranks"], ev["waiting_ranks"]) == ([1], [0])
    assert ev["per_rank"]["0"]["location"].endswith(_line_of(program, "dist.all_reduce("))
    assert ev["per_rank"]["1"]["location"].endswith(_line_of(program, "loss = model("))
    assert ev["per_rank"]["1"]["error"] is None  # nothing raised: the position came from the stack dump


def test_a_barrier_on_one_rank_stays_a_hang_named_at_the_programs_line(program_runs):
    """ptdiag compares the replicas without any collective of its own: nothing of ptdiag's
    waits for the stuck rank, so nothing raises into rank 1's forward and turns the hang
    into a crash, and no collective of ptdiag's is listed as the program's."""
    report = program_runs["barrier"]["report"]
    assert report["status"] == "hung"
    program = PROGRAMS / "ddp_barrier_one_rank.py"
    ev = _finding(report, "distributed.collective_mismatch")["evidence"]
    assert (ev["collective"], ev["ranks"], ev["waiting_ranks"]) == ("barrier", [1], [0])
    assert ev["location"].endswith(_line_of(program, "dist.barrier()"))
    assert ev["per_rank"]["1"]["location"].endswith(_line_of(program, "loss.backward()"))
    assert ev["per_rank"]["1"]["phase"] == "backward, where DDP all-reduces the gradients"
    assert [(p["collective"], p["error"]) for p in ev["per_rank"].values()] == [("barrier", None), (None, None)]


def test_rank_divergence_and_straggler(program_runs):
    report = program_runs["uneven"]["report"]
    assert report["status"] == "completed"
    divergence = _finding(report, "distributed.rank_divergence")
    assert divergence["evidence"]["step"] == 2  # the scheduler's first rank-0-only step shows after step 2
    assert divergence["evidence"]["identical_at_steps"] == [1]
    assert divergence["evidence"]["tensor"] == "0.weight"
    straggler = _finding(report, "distributed.straggler")
    assert straggler["evidence"]["rank"] == 1
    per_rank = straggler["evidence"]["per_rank"]
    assert per_rank["1"]["outside_s"] > per_rank["0"]["outside_s"] + 0.03  # the 50 ms sleep
    assert not [f for f in report["findings"] if f["code"] == "distributed.no_distributed_sampler"]


def test_two_node_job_is_diagnosed_as_one(program_runs):
    store = program_runs["two_node"]["dir"] / "ptdiag-runs"
    runs = sorted(p for p in store.iterdir() if p.is_dir())
    assert len(runs) == 2
    for run_dir in runs:
        report = json.loads((run_dir / "report.json").read_text())
        assert report["status"] == "completed"
        job = _finding(report, "distributed.job")
        assert sorted(job["evidence"]["runs"]) == sorted(p.name for p in runs)
        assert job["evidence"]["node_of_rank"] == {"0": 0, "1": 1}
        assert job["evidence"]["job"].startswith("job42@")
        sampler = _finding(report, "distributed.no_distributed_sampler")
        assert sampler["evidence"]["identical_batches"] == [[0, 1]]  # one rank per node: only merged runs show it


def test_ranks_started_by_mp_spawn_are_probed(tmp_path):
    """torch.multiprocessing.spawn's workers are multiprocessing children, like DataLoader
    workers: the ones that start a process group are ranks and get probed; rank 1's spawned
    DataLoader worker does not. The program's output is as without ptdiag (no deprecated
    Flight Recorder variable warning from the environment ptdiag sets)."""
    args = [str(PROGRAMS / "ddp_mp_spawn.py"), "5"]
    bare = subprocess.run([PYTHON, *args], cwd=tmp_path, capture_output=True, timeout=120)
    wrapped = subprocess.run(ptdiag_cmd("DDP is slow", "--json", "r.json", "--", PYTHON, *args), cwd=tmp_path,
                             capture_output=True, timeout=240, env={k: v for k, v in os.environ.items()
                                                                    if k != "PTDIAG_STORE"})
    assert wrapped.returncode == bare.returncode == 0, wrapped.stderr.decode()[-2000:]
    assert sorted(wrapped.stdout.splitlines()) == sorted(bare.stdout.splitlines())
    assert b"deprecated" not in wrapped.stderr
    report = load_report(tmp_path / "r.json")
    assert report["metrics"]["steps_per_rank"] == {"0": 5, "1": 5}
    finding = _finding(report, "distributed.no_distributed_sampler")  # the program has none: measured
    assert finding["evidence"]["ranks"] == [0, 1]
    # 5 steps end inside the profiler window (it starts after step 4): the trace's last step ran on
    # to the program's exit, is not a training step, and is not judged (it looked launch-bound)
    inits = [json.loads(line) for p in (tmp_path / "ptdiag-runs").glob("*/events/*.jsonl")
             for line in p.read_text().splitlines() if '"dist_env"' in line]
    assert sorted(e["rank"] for e in inits) == [0, 1]
    where = _line_of(PROGRAMS / "ddp_mp_spawn.py", "dist.init_process_group(")
    assert all(e["location"].endswith(where) for e in inits)
    assert not [f for f in report["findings"] if f["code"].startswith("performance.")]
    assert any("ended inside the profiler window" in note for note in report["metrics"]["notes"])
