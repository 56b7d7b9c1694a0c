"""The distributed analysis on recorded run dirs: the CUDA-only checks (shared GPUs,
backend vs device) from events as a GPU run writes them, stack and error parsing on the
formats faulthandler and torch produce, Flight Recorder dumps found in a run dir."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

import ptdiag
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.distributed import analyse
from ptdiag.probe.plugins.distributed.consistency import is_check_step
from ptdiag.specialists.distributed.errors import classify, unused_from_message
from ptdiag.specialists.distributed.stacks import where

STDLIB = sysconfig.get_paths()["stdlib"]  # a real dump names this interpreter's threading.py
FR_DUMPS = Path("/work/shared/fixtures/fr_dumps/gpu_error_1st")

# as faulthandler wrote it for a rank of tests/programs/ddp_skip_allreduce.py under --timeout
FAULTHANDLER_DUMP = f"""\
Thread 0x00007f3a1d7fe640 (most recent call first):
  File "{STDLIB}/threading.py", line 331 in wait
  File "/work/main/src/ptdiag/specialists/distributed/live.py", line 60 in _watch
  File "{STDLIB}/threading.py", line 982 in run
  File "{STDLIB}/threading.py", line 1045 in _bootstrap_inner
  File "{STDLIB}/threading.py", line 1002 in _bootstrap

Current thread 0x00007f3a2f1b5b80 (most recent call first):
  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 2364 in _distributed_broadcast_coalesced
  File "/venv/lib/python3.11/site-packages/torch/nn/parallel/distributed.py", line 2426 in _sync_buffers
  File "/venv/lib/python3.11/site-packages/torch/nn/parallel/distributed.py", line 1783 in _pre_forward
  File "/venv/lib/python3.11/site-packages/torch/nn/parallel/distributed.py", line 1887 in forward
  File "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1794 in _call_impl
  File "/home/u/train.py", line 13 in <module>
"""
TRACEBACK = """\
Traceback (most recent call last):
  File "/home/u/train.py", line 95, in <module>
    main()
  File "/home/u/train.py", line 85, in main
    dist.all_reduce(total)
  File "/venv/lib/python3.11/site-packages/torch/distributed/c10d_logger.py", line 83, in wrapper
    return func(*args, **kwargs)
  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 3913, in all_reduce
    work.wait()
RuntimeError: Connection closed by peer
"""
DDP_UNUSED_ERROR = (
    "Expected to have finished reduction in the prior iteration before starting a new one. This error "
    "indicates that your module has parameters that were not used in producing loss. ... "
    "Parameter indices which did not receive grad for rank 1: 62 63\n In addition, you can set the "
    "environment variable TORCH_DISTRIBUTED_DEBUG to either INFO or DETAIL")


def test_stack_dump_names_ddp_phase_and_user_line():
    found = where(FAULTHANDLER_DUMP, cwd="/home/u")
    assert found.location == "train.py:13"
    assert found.phase == "DDP's buffer broadcast at the start of forward"
    assert found.collective is None  # _broadcast_coalesced is DDP's, not a program collective


def test_traceback_names_the_collective():
    found = where(TRACEBACK, cwd="/elsewhere")
    assert (found.location, found.function, found.collective) == ("/home/u/train.py:85", "main", "all_reduce")
    assert classify(TRACEBACK) == "peer_gone"


def test_ddp_error_indices_map_to_names():
    names = [f"p{i}" for i in range(62)] + ["aux_head.weight", "aux_head.bias"]
    assert classify(DDP_UNUSED_ERROR) == "unused_parameters"
    assert unused_from_message(DDP_UNUSED_ERROR, names) == ["aux_head.weight", "aux_head.bias"]
    named = "Parameters which did not receive grad for rank 0: aux.bias, aux.weight"
    assert unused_from_message(named, []) == ["aux.bias", "aux.weight"]


def test_check_schedule_is_logarithmic():
    assert [s for s in range(1, 70) if is_check_step(s)] == [1, 2, 4, 8, 16, 32, 64]


PTDIAG = Path(ptdiag.__file__).parent  # ptdiag's own frames, as this installation names them
# a rank stuck in a collective that ptdiag's own hook ran inside the program's forward
STUCK_IN_PTDIAG = f"""\
Current thread 0x00007f3a2f1b5b80 (most recent call first):
  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 4210 in all_gather
  File "{PTDIAG}/probe/plugins/distributed/consistency.py", line 45 in run
  File "{PTDIAG}/probe/plugins/distributed/__init__.py", line 172 in _model_forward
  File "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1826 in inner
  File "/venv/lib/python3.11/site-packages/torch/nn/parallel/distributed.py", line 1887 in forward
  File "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1794 in _call_impl
  File "/home/u/train.py", line 14 in <module>
"""
# a rank in DDP's gradient all-reduce, its backward call passing through ptdiag's wrapper
BACKWARD_THROUGH_PTDIAG = f"""\
Current thread 0x00007f3a2f1b5b80 (most recent call first):
  File "/venv/lib/python3.11/site-packages/torch/autograd/graph.py", line 829 in _engine_run_backward
  File "/venv/lib/python3.11/site-packages/torch/autograd/__init__.py", line 364 in backward
  File "{PTDIAG}/probe/patches.py", line 56 in backward
  File "/venv/lib/python3.11/site-packages/torch/_tensor.py", line 625 in backward
  File "/home/u/train.py", line 16 in <module>
"""


def test_ptdiags_own_collective_is_never_presented_as_the_programs():
    found = where(STUCK_IN_PTDIAG, cwd="/home/u")
    assert (found.location, found.collective, found.phase, found.in_ptdiag) == ("train.py:14", None, None, True)
    assert found.describe() == "inside ptdiag's own instrumentation, called at train.py:14"


def test_a_program_call_passing_through_ptdiags_wrapper_is_still_the_programs():
    found = where(BACKWARD_THROUGH_PTDIAG, cwd="/home/u")
    assert (found.location, found.in_ptdiag) == ("train.py:16", False)
    assert found.phase == "backward, where DDP all-reduces the gradients"


def _checksums(step: int, sums: list[float], first: bool = False) -> dict:
    names = [["param", "0.weight"], ["param", "0.bias"], ["buffer", "1.running_mean"]]
    return {"ev": "dist_checksums", "step": step, "sums": sums, "norms": [abs(v) for v in sums],
            "tensors": names if first else None}


def test_replicas_are_compared_from_each_ranks_own_checksums(tmp_path):
    ranks = {0: [_gpu_rank(0, "gloo", 0, "GPU-0")[1], _checksums(1, [1.0, 2.0, 3.0], True),
                 _checksums(2, [1.5, 2.0, 3.0]), _checksums(4, [1.7, 2.0, 3.0])],
             1: [_gpu_rank(1, "gloo", 1, "GPU-1")[1], _checksums(1, [1.0, 2.0, 3.0], True),
                 _checksums(2, [1.5 + 1e-12, 2.0, 3.0])]}  # rank 1 never reached step 4 (it hung)
    run = _write_run(tmp_path / "run", ranks)
    assert not [f for f in analyse(run).findings if f.code == "distributed.rank_divergence"]
    assert analyse(run).metrics["distributed"]["consistency_checked_steps"] == [1, 2]
    ranks[1].append(_checksums(4, [1.6, 2.0, 3.5]))
    found = [f for f in analyse(_write_run(tmp_path / "run2", ranks)).findings if f.code == "distributed.rank_divergence"]
    assert len(found) == 1 and found[0].severity == "error"
    assert {k: found[0].evidence[k] for k in ("step", "tensor", "n_differing", "ranks", "identical_at_steps")} == {
        "step": 4, "tensor": "0.weight", "n_differing": 2, "ranks": [1], "identical_at_steps": [1, 2]}


def _write_run(run_dir: Path, ranks: dict[int, list[dict]], meta: dict | None = None) -> RecordedRun:
    (run_dir / "events").mkdir(parents=True)
    (run_dir / "meta.json").write_text(json.dumps(meta or {"run_id": run_dir.name, "started": 1.0}))
    (run_dir / "outcome.json").write_text(json.dumps({"returncode": 0, "exit_code": 0}))
    for rank, events in ranks.items():
        lines = [{"ev": "start", "t": 1.0, "rank": rank, "world_size": 2, "cwd": "/home/u"}, *events]
        (run_dir / "events" / f"rank{rank}.p{100 + rank}.jsonl").write_text(
            "".join(json.dumps({"t": 1.0, **e}, separators=(",", ":")) + "\n" for e in lines))  # as EventWriter
    return RecordedRun.load(run_dir)


def _gpu_rank(rank: int, backend: str, index: int, uuid: str) -> list[dict]:
    """The events a CUDA rank writes (dist_env, dist_model), as recorded on a GPU host."""
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none"}
    cuda = {"index": index, "name": "NVIDIA H100 80GB HBM3", "uuid": uuid}
    return [{"ev": "dist_env", "backend": backend, "rank": rank, "world_size": 2, "env": env, "host": "gpu1",
             "cuda": cuda, "job": "none@127.0.0.1:29500/2", "location": "train.py:20"},
            {"ev": "dist_model", "wrapper": "DistributedDataParallel", "param_device": f"cuda:{index}",
             "cuda": cuda, "ddp": {"device_ids": [index]}, "n_batchnorm": 0, "batchnorm": [],
             "reducer_params": ["w"]}]


def test_ranks_sharing_one_gpu_are_named(tmp_path):
    run = _write_run(tmp_path / "run", {0: _gpu_rank(0, "nccl", 0, "GPU-aaa"), 1: _gpu_rank(1, "nccl", 0, "GPU-aaa")})
    findings = [f for f in analyse(run).findings if f.code == "distributed.device_mismatch"]
    assert len(findings) == 1
    assert findings[0].severity == "error"
    assert findings[0].evidence["ranks"] == [0, 1] and findings[0].evidence["device"] == "cuda:0"
    assert findings[0].evidence["local_rank"] == {"0": "0", "1": "1"}


def test_own_gpu_per_rank_is_fine(tmp_path):
    run = _write_run(tmp_path / "run", {0: _gpu_rank(0, "nccl", 0, "GPU-aaa"), 1: _gpu_rank(1, "nccl", 1, "GPU-bbb")})
    assert not [f for f in analyse(run).findings if f.code.startswith("distributed.device")]


def test_nccl_with_a_cpu_model_is_an_error(tmp_path):
    ranks = {r: _gpu_rank(r, "nccl", r, f"GPU-{r}") for r in (0, 1)}
    for events in ranks.values():
        events[1].update(param_device="cpu", cuda=None)
    found = [f for f in analyse(_write_run(tmp_path / "run", ranks)).findings if f.code == "distributed.device_mismatch"]
    assert [(f.severity, f.evidence["backend"], f.evidence["ranks"]) for f in found] == [("error", "nccl", [0, 1])]


def test_inconsistent_launch_env_is_named(tmp_path):
    ranks = {r: _gpu_rank(r, "nccl", r, f"GPU-{r}") for r in (0, 1)}
    ranks[1][0]["env"]["MASTER_PORT"] = "29999"
    found = [f for f in analyse(_write_run(tmp_path / "run", ranks)).findings if f.code == "distributed.launch_env"]
    assert found and found[0].evidence["ranks"] == [1]
    assert "MASTER_PORT differs" in found[0].detail


def test_flight_recorder_dumps_in_the_run_dir_are_analysed(tmp_path):
    if not FR_DUMPS.is_dir():
        pytest.skip("shared Flight Recorder fixtures not present")
    run = _write_run(tmp_path / "run", {0: _gpu_rank(0, "nccl", 0, "GPU-0"), 1: _gpu_rank(1, "nccl", 1, "GPU-1")})
    shutil.copytree(FR_DUMPS, tmp_path / "run" / "flight_recorder")
    codes = [f.code for f in analyse(run).findings]
    assert "distributed.collective_mismatch" in codes


def test_companion_runs_are_not_merged_as_nodes(tmp_path):
    one = _write_run(tmp_path / "a", {0: _gpu_rank(0, "nccl", 0, "GPU-0")}, {"run_id": "a", "started": 1.0})
    _write_run(tmp_path / "b", {1: _gpu_rank(1, "nccl", 1, "GPU-1")}, {"run_id": "b", "started": 2.0})
    _write_run(tmp_path / "c", {1: _gpu_rank(1, "nccl", 1, "GPU-1")}, {"run_id": "c", "started": 2.0, "companion_of": "b"})
    job = [f for f in analyse(one).findings if f.code == "distributed.job"]
    assert job and job[0].evidence["runs"] == ["a", "b"]


def test_the_same_command_run_again_is_not_another_node(tmp_path):
    """torchrun's default rendezvous id, address and port are the same from one run of a
    command to the next: a run with the same ranks is an earlier run, not a node."""
    both = {r: _gpu_rank(r, "nccl", r, f"GPU-{r}") for r in (0, 1)}
    _write_run(tmp_path / "a", both, {"run_id": "a", "started": 1.0})
    again = _write_run(tmp_path / "b", both, {"run_id": "b", "started": 600.0})
    job = [f for f in analyse(again).findings if f.code == "distributed.job"]
    assert not job or job[0].evidence["runs"] == ["b"]


def _sampler_passes(sampler_epochs: list[int], trained: list[bool]) -> list[dict]:
    """A rank's events over one sharded loader: a pass per entry, steps only on trained passes."""
    events = [{"ev": "dist_loader", "loader": 0, "sampler": "DistributedSampler", "sharded": True,
               "num_replicas": 2, "shuffle": True, "batch_size": 4, "location": "train.py:30"}]
    step = 0
    for epoch, (sampler_epoch, steps) in enumerate(zip(sampler_epochs, trained)):
        events.append({"ev": "dist_epoch", "loader": 0, "epoch": epoch, "sampler_epoch": sampler_epoch,
                       "location": "train.py:40"})
        for _ in range(3 if steps else 0):
            step += 1
            events.append({"ev": "step", "step": step, "loader": 0, "epoch": epoch})
    return events


def test_a_peek_at_the_loader_is_not_an_epoch(tmp_path):
    # one epoch preceded by `next(iter(loader))`: two passes at sampler epoch 0, one of them trained
    peeked = {r: _sampler_passes([0, 0], [False, True]) for r in (0, 1)}
    run = _write_run(tmp_path / "peek", peeked)
    assert not [f for f in analyse(run).findings if f.code == "distributed.sampler_epoch_not_set"]
    # two epochs, each after a peek, set_epoch never called: the two trained passes are the evidence
    stale = {r: _sampler_passes([0, 0, 0, 0], [False, True, False, True]) for r in (0, 1)}
    found = [f for f in analyse(_write_run(tmp_path / "stale", stale)).findings
             if f.code == "distributed.sampler_epoch_not_set"]
    assert len(found) == 1 and found[0].evidence["epochs"] == [1, 3]
    assert "2 epochs" in found[0].title
