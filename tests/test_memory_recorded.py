"""The memory analysis of recorded run dirs: the CUDA OOM path from a saved snapshot (no
GPU needed) and a host OOM without one. Run dirs are written with the probe's own writer."""

from __future__ import annotations

import json

from snapshot_builders import GiB, forward_oom_allocator, write_snapshot

from ptdiag.probe.event_log import EventWriter
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.memory import analyse

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 16 GiB"


def recorded_run(tmp_path, events, snapshot=None, name="rank0.oom.pickle") -> RecordedRun:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "meta.json").write_text(json.dumps({"run_id": "r", "cwd": "/home/user/proj"}))
    writer = EventWriter(tmp_path / "events" / "rank0.p1.jsonl")
    for kind, fields in events:
        writer.write(kind, **fields)
    writer.close()
    if snapshot is not None:
        (tmp_path / "memory").mkdir()
        write_snapshot(tmp_path / "memory" / name, snapshot)
    return RecordedRun.load(tmp_path)


def test_cuda_oom_from_the_probes_snapshot_names_site_phase_step_and_rank(tmp_path):
    run = recorded_run(tmp_path, [
        ("step", {"step": 1, "dt": None}),
        ("mem_cuda_oom", {"device": 0, "requested": 2 * GiB, "device_limit": 16 * GiB,
                          "device_free": GiB // 2, "count": 1}),
        ("mem_snapshot", {"reason": "oom", "path": "memory/rank0.oom.pickle"}),
        ("exception", {"type": "OutOfMemoryError", "message": OOM_MESSAGE, "location": "train.py:57", "step": 1}),
    ], forward_oom_allocator().snapshot(newer=True))
    analysis = analyse(run)
    oom = next(f for f in analysis.findings if f.code == "memory.oom")
    assert oom.severity == "error"
    assert oom.evidence["step"] == 2 and oom.evidence["rank"] == 0
    assert oom.evidence["phase"] == "forward" and oom.evidence["requested_bytes"] == 2 * GiB
    assert oom.evidence["top_sites"][0]["location"].endswith("model.py:30")
    assert oom.evidence["snapshot"] == "memory/rank0.oom.pickle"
    assert analysis.artifacts["memory_snapshot"].endswith("rank0.oom.pickle")


def test_oom_that_did_not_end_the_run_is_still_reported(tmp_path):
    run = recorded_run(tmp_path, [
        ("step", {"step": 3, "dt": 0.1}),
        ("mem_cuda_oom", {"step": 4, "device": 0, "requested": 2 * GiB, "device_limit": 16 * GiB,
                          "device_free": GiB // 2, "count": 1}),
        ("mem_snapshot", {"reason": "oom_caught", "path": "memory/rank0.oom_caught.pickle", "oom": 1}),
    ], forward_oom_allocator().snapshot(newer=False), name="rank0.oom_caught.pickle")
    oom = next(f for f in analyse(run).findings if f.code == "memory.oom")
    assert oom.severity == "info" and "did not end the run" in oom.title and oom.evidence["step"] == 4


def test_host_oom_without_snapshot_reports_the_last_measured_boundary(tmp_path):
    run = recorded_run(tmp_path, [
        ("mem_step", {"step": 4, "rss": 30 * GiB, "peak_rss": 31 * GiB, "holders": []}),
        ("exception", {"type": "RuntimeError", "location": "train.py:40", "step": 4,
                       "message": "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"}),
    ])
    oom = next(f for f in analyse(run).findings if f.code == "memory.oom")
    assert oom.evidence["step"] == 5 and oom.evidence["location"] == "train.py:40"
    assert oom.evidence["last_boundary"]["rss"] == 30 * GiB
    assert "No CUDA snapshot" in oom.detail


def _remedies(tmp_path, autocast):
    run = recorded_run(tmp_path, [
        ("mem_model", {"params_bytes": 8 * 2**20, "buffers_bytes": 0, "device": "cuda:0", "dtype": "torch.float32"}),
        ("mem_saved", {"step": 1, "training": True, "location": "train.py:20", "autocast": autocast,
                       "bytes": 64 * 2**20, "tensors": 12}),
    ])
    breakdown = next(f for f in analyse(run).findings if f.code == "memory.breakdown")
    return [r["action"] for r in breakdown.evidence["remedies"]]


def test_bf16_autocast_is_advised_only_to_a_program_whose_forward_runs_in_float32(tmp_path):
    assert "autocast_bf16" in _remedies(tmp_path / "fp32", None)
    # float32 parameters, but the forward ran under autocast: its activations are 16-bit already
    assert "autocast_bf16" not in _remedies(tmp_path / "bf16", "bfloat16")
    assert "autocast_bf16" not in _remedies(tmp_path / "fp16", "float16")
