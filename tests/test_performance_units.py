"""The performance specialist's parts on real torch: the step breakdown, the call scan,
the host-side trace measurements, telemetry, and the detectors' arithmetic."""

from __future__ import annotations

import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

from ptdiag.specialists.performance import detectors, trace_cpu
from ptdiag.probe.plugins.performance.breakdown import FLUSH_EVERY, StepBreakdown
from ptdiag.specialists.performance.measured import Measured, breakdown
from ptdiag.probe.instruments import ops_in_block
from ptdiag.probe.plugins.performance.scan import CallScan, per_call_overhead_us
from ptdiag.probe.plugins.performance.telemetry import Telemetry
from ptdiag.specialists.performance.trace_events import read_trace

TRACES = Path("/work/shared/fixtures/gpu_traces")


def _train(steps: int, timer: StepBreakdown | None = None, dtype=torch.float32, width: int = 64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 4)).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if timer is not None:
        model.register_forward_pre_hook(timer.forward_pre_hook)
        model.register_forward_hook(timer.forward_hook, with_kwargs=True)
    for step in range(1, steps + 1):
        x = torch.randn(32, width, dtype=dtype)
        if timer:
            waited = time.perf_counter()
            time.sleep(0.002)  # a real wait, as the DataLoader hook reports it
            timer.data_wait(time.perf_counter() - waited)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        if timer:
            timer.begin("backward")
        loss.backward()
        if timer:
            timer.end("backward")
            timer.begin("optimizer")
        optimizer.step()
        if timer:
            timer.end("optimizer")
            timer.step_end(step)
        yield step


def test_breakdown_times_each_phase_and_flushes_in_batches():
    emitted = []
    timer = StepBreakdown(lambda event, rows: emitted.append(rows))
    timer.instrumented.add(3)
    for _ in _train(FLUSH_EVERY + 5, timer):
        pass
    timer.flush()
    rows = [r for batch in emitted for r in batch]
    assert len(emitted) == 2 and len(emitted[0]) == FLUSH_EVERY
    assert [r["step"] for r in rows] == list(range(2, FLUSH_EVERY + 6))  # step 1 has no start
    for row in rows:
        assert row["forward"] > 0 and row["backward"] > 0 and row["optimizer"] > 0
        assert row["data"] >= 0.002
        parts = row["data"] + row["forward"] + row["backward"] + row["optimizer"] + row["other"]
        assert parts == pytest.approx(row["dt"], abs=1e-5)
    assert [r["step"] for r in rows if r.get("instrumented")] == [3]
    # only the instrumented step reads the kernel's run delay (a CPU wait, never negative)
    waits = [r for r in rows if "runq" in r]
    if sys.platform.startswith("linux"):
        assert [r["step"] for r in waits] == [3] and 0 <= waits[0]["runq"] <= waits[0]["dt"] + 1e-3
    summary = breakdown(rows, batch=32)
    assert summary["steps"] == len(rows) - 1 and 3 not in summary["steps_used"]
    used = [r for r in rows if r["step"] in summary["steps_used"]]
    median_dt = statistics.median(r["dt"] for r in used)
    # exact arithmetic on what was measured, whatever the box's load made the steps take
    assert summary["steps_per_s"] == pytest.approx(1 / median_dt, abs=0.0005)
    assert summary["samples_per_s"] == pytest.approx(32 / median_dt, abs=0.005)
    for phase, stats in summary["phases"].items():  # each share: the median of its per-step shares
        assert stats["share"] == pytest.approx(statistics.median(r.get(phase, 0.0) / r["dt"] for r in used), abs=5e-5)


def test_scan_counts_the_programs_syncs_at_their_lines_and_finds_loops():
    scan = CallScan(torch, device_is_cuda=False)
    x = torch.randn(8, 3)
    with ops_in_block(scan, functions=True):
        for _ in range(2):
            value = x.sum().item(); line_item = _line()  # noqa: E702
            text = f"{x.mean()}"; line_format = _line()  # noqa: E702
            rows = [x[i].abs().sum() for i in range(8)]; line_loop = _line()  # noqa: E702
            torch.nn.functional.softmax(x, dim=1)  # torch's own code inside: no sync counted
    summary = scan.summary(steps=2)
    here = Path(__file__).name
    syncs = {(s["call"], s["location"].split("/")[-1]): s["per_step"] for s in summary["syncs"]}
    assert syncs == {("item", f"{here}:{line_item}"): 1.0, ("__format__", f"{here}:{line_format}"): 1.0}
    loop = next(row for row in summary["top_lines"] if row["location"].endswith(f"{here}:{line_loop}"))
    assert loop["user"] and loop["calls_per_step"] == 8 * 3
    assert value and text and rows


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno


def test_per_call_overhead_is_a_few_microseconds():
    assert 0.1 < per_call_overhead_us(torch) < 1000


def _record_trace(tmp_path: Path, dtype) -> dict:
    from torch.profiler import profile, schedule

    path = tmp_path / "t.json"
    prof = profile(record_shapes=True, schedule=schedule(wait=0, warmup=1, active=2, repeat=1),
                   on_trace_ready=lambda p: p.export_chrome_trace(str(path)))
    prof.start()
    # ops of ~100 us or more: one preempted microsecond op (CI's 2 loaded cores) cannot
    # outweigh them in the time shares
    for _ in _train(4, dtype=dtype, width=512):
        prof.step()
    prof.stop()
    return json.loads(path.read_text())


@pytest.mark.parametrize("dtype, expect_double", [(torch.float64, True), (torch.float32, False)])
def test_host_metrics_of_a_recorded_trace(tmp_path, dtype, expect_double):
    host = trace_cpu.host_metrics(_record_trace(tmp_path, dtype))
    assert host["steps"] == 2 and host["top_level_ops_per_step"] > 5
    assert 0.0 <= host["outside_ops_share"] <= 1.0
    # which ops count is timing-free; how much time they take is not (0.74 quiet, 0.15 at
    # load 17 for the float64 run): a float32 run has none at all
    assert (host["float64_ops_share"] > 0) is expect_double
    assert (host["float64_ops_share"] == 0.0) is not expect_double
    assert host["syncs"]["per_step"] == 0.0  # no CUDA runtime on a CPU
    assert "matmul_conv" in host["op_time_shares"]


@pytest.mark.skipif(not TRACES.is_dir(), reason="shared GPU trace fixtures missing")
def test_host_metrics_on_real_gpu_traces_name_the_blocking_calls():
    qwen = trace_cpu.host_metrics(read_trace(next(TRACES.glob("tracelens__h100__Qwen*.json.gz"))))
    # cudaStreamSynchronize calls, found under the Python frames around them
    assert qwen["syncs"]["per_step"] > 0 and qwen["syncs"]["blocked_ms_per_step"] > 1.0
    assert any(loc["location"].startswith("transformers/") for loc in qwen["syncs"]["locations"])
    old = trace_cpu.host_metrics(read_trace(TRACES / "kineto__resnet50_v100_num_workers_0.pt.trace.json.gz"))
    assert old["top_level_ops_per_step"] > 100  # 2021 schema: ops are "Operator" events
    assert trace_cpu.host_metrics(read_trace(next(TRACES.glob("hta__cpu_only__*.json.gz")))) is not None


def test_telemetry_samples_this_process_and_claims_no_gpu():
    telemetry = Telemetry()
    telemetry.start(cuda_device=None)
    end = time.perf_counter() + 1.3
    while time.perf_counter() < end:
        sum(i * i for i in range(10000))
    summary = telemetry.stop()
    assert summary["samples"] >= 1 and summary["main_cpu_pct"]["max"] > 0
    assert summary["gpu"] is False and "gpu_util_pct" not in summary and "throttle_reasons" not in summary


def _measured(**overrides) -> Measured:
    rows = [{"step": s, "dt": 0.1, "data": 0.05, "forward": 0.02, "backward": 0.02, "optimizer": 0.005,
             "other": 0.005} for s in range(2, 10)]
    base = dict(breakdown=breakdown(rows, batch=8), loader={"batch_size": 8, "num_workers": 0,
                "pin_memory": False, "persistent_workers": False}, env={"cores": 4, "cuda": False},
                telemetry={"cores": 4})
    base.update(overrides)
    return Measured(**base)


def test_dataloader_verdict_carries_the_measured_share_and_a_worker_count():
    finding, impact = detectors.dataloader_bound(_measured())
    assert finding.evidence["data_wait_share"] == pytest.approx(0.5) and impact == pytest.approx(0.5)
    # 50 ms to load a batch, 50 ms of the rest: one worker keeps up, and the step is the compute
    assert "num_workers=1" in finding.fix and "persistent_workers=True" in finding.fix
    assert finding.evidence["predicted_step_ms"] == pytest.approx(50.0)
    assert "pin_memory" not in finding.fix  # no GPU: pinning does not apply
    busy = _measured(loader={"batch_size": 8, "num_workers": 3, "persistent_workers": True}, env={"cores": 4},
                     telemetry={"cores": 4})
    assert "already have the 4 usable cores" in detectors.dataloader_bound(busy)[0].fix


@pytest.mark.parametrize("cores, advised, step_ms", [(2, 1, 67.8), (4, 3, 67.8 / 3), (32, 26, 2.7)])
def test_advised_workers_come_with_the_step_they_predict(cores, advised, step_ms):
    """A 70.5 ms step waiting 67.8 ms on a loader without workers: 25.1 batches' worth of
    loading per step of compute. One worker (all a 2-core box has room for) leaves the step
    at the load time, not 2.7 ms; on 32 cores 26 workers keep up and the compute remains."""
    plan = detectors.worker_plan(67.8, 70.5, 0, cores)
    assert plan["advised_num_workers"] == advised and plan["workers_wanted"] == 26
    assert plan["predicted_step_ms"] == pytest.approx(step_ms, rel=0.01)
    assert plan["limited_by_cores"] == (cores < 27)


def test_a_loop_in_a_compute_bound_step_is_not_a_finding():
    """256 torch calls per step from a Dataset's __getitem__, while matmuls fill the step:
    the Python around them costs nothing measurable, so no loop is claimed."""
    scan = {"top_lines": [{"location": "train.py:20", "user": True, "calls_per_step": 256.0}],
            "torch_calls_per_step": 300.0, "per_call_us": 2.0}
    host = {"outside_ops_share": 0.04, "tiny_ops_share": 0.02, "op_time_shares": {"matmul_conv": 0.9},
            "top_level_ops_per_step": 40}
    assert detectors.launch_bound(_measured(scan=scan, host=host)) is None
    slow = dict(host, outside_ops_share=0.7)
    finding, _ = detectors.launch_bound(_measured(scan=scan, host=slow))
    assert finding.evidence["location"] == "train.py:20"
    gpu_busy = {"steps": {"gpu_busy_share": 0.95, "collective_share": 0.0}}
    assert detectors.launch_bound(_measured(scan=scan, host=slow, trace=gpu_busy, env={"cuda": True})) is None
    # calls a Dataset makes inside the DataLoader are loading time, whatever the host's overhead
    loading = dict(scan, top_lines=[dict(scan["top_lines"][0], in_loader=True)])
    assert detectors.launch_bound(_measured(scan=loading, host=dict(host, outside_ops_share=0.3))) is None


class _Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((3,), float(i)) * 2; _line()  # noqa: E702


def test_scan_knows_the_lines_a_dataloader_runs():
    scan = CallScan(torch, device_is_cuda=False)
    with ops_in_block(scan, functions=True):
        for batch in torch.utils.data.DataLoader(_Rows(), batch_size=4):
            batch.sum(); line_step = _line()  # noqa: E702
    lines = {row["location"].split("/")[-1]: row for row in scan.summary(steps=2)["top_lines"]}
    getitem = f"{Path(__file__).name}:{_Rows.__getitem__.__code__.co_firstlineno + 1}"
    assert lines[getitem]["in_loader"] and lines[getitem]["calls_per_step"] == 8
    assert not lines[f"{Path(__file__).name}:{line_step}"]["in_loader"]


def test_compute_bound_names_the_thread_limit_with_its_numbers():
    host = {"outside_ops_share": 0.05, "tiny_ops_share": 0.01, "op_time_shares": {"matmul_conv": 0.9}}
    env = {"cores": 2, "torch_threads": 1, "omp_num_threads": "1", "cuda": False}
    finding, _ = detectors.compute_bound(_measured(host=host, env=env), [])
    assert "on 1 torch thread(s) of the 2 cores" in finding.title
    assert "OMP_NUM_THREADS=1 limits torch to 1 thread(s)" in finding.detail and "OMP_NUM_THREADS=2" in finding.fix
    torchrun = dict(env, cores=4, local_processes=4)  # 4 ranks on 4 cores: one thread each is right
    assert "thread" not in detectors.compute_bound(_measured(host=host, env=torchrun), [])[0].title


def test_one_waiting_step_makes_no_data_bound_claim():
    """A 2-step-per-epoch run: a new epoch's first step waits on its iterator; one step of
    two is not a loader that holds the loop back (the median share of two is 20.5 %)."""
    rows = [{"step": 2, "dt": 0.35, "data": 0.01, "forward": 0.16, "backward": 0.1, "optimizer": 0.06, "other": 0.02},
            {"step": 3, "dt": 0.16, "data": 0.06, "forward": 0.02, "backward": 0.05, "optimizer": 0.02, "other": 0.01}]
    assert detectors.dataloader_bound(_measured(breakdown=breakdown(rows, batch=8))) is None
    assert detectors.dataloader_bound(_measured(breakdown=breakdown(rows + [dict(rows[1], step=4)], batch=8)))


def test_one_sync_per_step_is_quiet_three_warn():
    one = {"steps": 2, "syncs": [{"call": "item", "location": "t.py:1", "per_step": 1.0, "ms_per_step": 0.01,
                                  "what": ""}]}
    assert detectors.host_sync(_measured(scan=one)) is None
    three = dict(one, syncs=one["syncs"] * 3)
    on_gpu = _measured(scan=three)
    on_gpu.env = {"cuda": True}
    finding, _ = detectors.host_sync(on_gpu)
    assert finding.severity == "warning" and finding.evidence["per_step"] == 3.0


def test_syncs_on_the_cpu_warn_only_when_their_own_cost_counts():
    """On the CPU no device is waited for: DCGAN's five .item() a step cost 0.11 ms of a
    435 ms step. A note for the GPU, not a warning that hides the compute verdict."""
    calls = [{"call": "item", "location": "t.py:1", "per_step": 1.0, "ms_per_step": 0.02, "what": ""}] * 5
    cheap = _measured(scan={"steps": 2, "syncs": calls})  # steps of 100 ms
    finding, _ = detectors.host_sync(cheap)
    assert finding.severity == "info" and "CPU" in finding.detail and "do not slow this run" in finding.detail
    costly = _measured(scan={"steps": 2, "syncs": [dict(calls[0], call="tolist", ms_per_step=3.0)] * 5})
    assert detectors.host_sync(costly)[0].severity == "warning"  # 15 ms of a 100 ms step


def test_small_batch_speedup_follows_the_fixed_share():
    assert detectors._batch_speedup(0.0, 1, 32) == 1.0  # nothing fixed: nothing to amortise
    assert detectors._batch_speedup(0.5, 1, 32) == pytest.approx(1 / (0.5 / 32 + 0.5), rel=0.01)


def test_rebuilt_optimizer_needs_many_short_lived_objects():
    rebuilt = _measured(optimizers={"objects": 20, "steps": 20, "alive": 1},
                        new_optimizers=[{"cls": "SGD", "location": "train.py:9"}])
    assert detectors.optimizer_recreated(rebuilt)[0].evidence["location"] == "train.py:9"
    gan = _measured(optimizers={"objects": 2, "steps": 80, "alive": 2})
    assert detectors.optimizer_recreated(gan) is None


def test_saved_trace_is_gzip_level_one(tmp_path):
    from ptdiag.probe.plugins.performance import _gzip

    plain = tmp_path / "trace.json"
    plain.write_text(json.dumps({"traceEvents": [{"ph": "X"}] * 1000}))
    _gzip(plain, tmp_path / "trace.json.gz")
    assert not plain.exists()
    assert json.loads(gzip.open(tmp_path / "trace.json.gz").read())["traceEvents"][0] == {"ph": "X"}


# -- every rank's trace -------------------------------------------------------------------

def _gloo_rank_trace(rank: int, step_ms: float, collective_ms, steps: int = 3) -> dict:
    """A rank's profiled steps shaped like a real gloo DDP trace (torch 2.14): work on the
    main thread, `c10d::allreduce_` called there, `gloo:all_reduce` open on the backend's
    thread until every rank contributed (`collective_ms`: one for every step, or a list with
    one per step), the step ending right after."""
    def event(cat, name, start_ms, dur_ms, tid=1):
        return {"ph": "X", "cat": cat, "name": name, "ts": 1e3 * start_ms, "dur": 1e3 * dur_ms, "pid": 100 + rank,
                "tid": tid, "args": {}}
    per_step = list(collective_ms) if isinstance(collective_ms, (list, tuple)) else [collective_ms] * steps
    events = []
    for i, collective_ms in enumerate(per_step):
        start, work = i * step_ms, step_ms - collective_ms
        events += [event("user_annotation", f"ProfilerStep#{i + 3}", start, step_ms),
                   event("cpu_op", "aten::addmm", start + 0.01, work - 0.02),
                   event("cpu_op", "c10d::allreduce_", start + work - 0.01, 0.005),
                   event("user_annotation", "gloo:all_reduce", start + work, collective_ms, tid=2)]
    return {"schemaVersion": 1, "distributedInfo": {"rank": rank}, "traceEvents": events}


def _ddp_run_dir(tmp_path: Path, traces: dict, plan=("performance",)) -> Path:
    """A run dir as the probe writes it for a job of len(traces) ranks: per rank a start
    event, and a perf_trace event with its gzipped trace unless the trace is None; bytes
    are written as the trace file as they are (a damaged file)."""
    (tmp_path / "events").mkdir()
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "meta.json").write_text(json.dumps({"plan": {"specialists": list(plan)}}))
    for rank, trace in traces.items():
        name = "trace.json.gz" if rank == 0 else f"trace.rank{rank}.json.gz"
        events = [{"ev": "start", "t": 0.0, "rank": rank, "world_size": len(traces)}]
        if trace is not None:
            data = trace if isinstance(trace, bytes) else gzip.compress(json.dumps(trace).encode())
            (tmp_path / "artifacts" / name).write_bytes(data)
            events.append({"ev": "perf_trace", "t": 1.0, "path": f"artifacts/{name}", "first_step": 3})
        (tmp_path / "events" / f"rank{rank}.p{100 + rank}.jsonl").write_text(
            "".join(json.dumps(e) + "\n" for e in events))
    return tmp_path


def _analyse(run_dir: Path):
    from ptdiag.recorded import RecordedRun
    from ptdiag.specialists.performance import analyse

    return analyse(RecordedRun.load(run_dir))


def test_every_ranks_trace_is_compared_and_the_rank_waited_for_is_named(tmp_path):
    # rank 1 works 50 ms per step; rank 0 works 5 ms and waits 50 ms in gloo:all_reduce
    analysis = _analyse(_ddp_run_dir(tmp_path, {0: _gloo_rank_trace(0, 56.0, 51.0),
                                                1: _gloo_rank_trace(1, 56.0, 6.0)}))
    rows = analysis.metrics["trace_per_rank"]
    assert rows["0"]["trace"] == "artifacts/trace.json.gz" and rows["1"]["trace"] == "artifacts/trace.rank1.json.gz"
    for rank, collective in (("0", 51.0), ("1", 6.0)):
        assert rows[rank]["steps"] == 3
        assert rows[rank]["step_ms_p50"] == pytest.approx(56.0)
        assert rows[rank]["collective_ms_p50"] == pytest.approx(collective, abs=0.02)
        assert rows[rank]["work_ms_p50"] == pytest.approx(56.0 - collective, abs=0.02)
        assert rows[rank]["top_op"]["name"] == "aten::addmm"
        assert "gpu_shares" not in rows[rank]  # a CPU trace: no GPU numbers made up
    found = [f for f in analysis.findings if f.code == "performance.rank_imbalance"]
    assert len(found) == 1 and found[0].severity == "warning"
    evidence = found[0].evidence
    assert evidence["rank"] == 1 and evidence["others_wait_ms"] == pytest.approx(45.0, abs=0.05)
    assert evidence["others_wait_share"] == pytest.approx(45.0 / 56.0, abs=0.01)
    assert set(evidence["per_rank"]) == {"0", "1"}
    # rank 0, the main rank, still drives everything else
    assert analysis.metrics["profiled_steps"]["collective_share"] == pytest.approx(51.0 / 56.0, abs=0.01)
    assert analysis.artifacts["trace"].endswith("trace.json.gz")


@pytest.mark.parametrize("ranks, why", [
    ({0: (56.0, 20.0), 1: (56.0, 18.0)}, "balanced: equal work"),
    ({0: (8.0, 4.0), 1: (8.0, 1.0)}, "3 ms more work is under the 5 ms bar"),
])
def test_ranks_that_do_not_differ_measurably_get_no_finding(tmp_path, ranks, why):
    analysis = _analyse(_ddp_run_dir(tmp_path, {r: _gloo_rank_trace(r, *v) for r, v in ranks.items()}))
    assert set(analysis.metrics["trace_per_rank"]) == {"0", "1"}
    assert "performance.rank_imbalance" not in [f.code for f in analysis.findings], why


def test_a_rank_slower_in_one_profiled_step_only_is_not_called_imbalanced(tmp_path):
    """A loaded box preempts one rank for one step: its median work crosses the bars (two of
    three steps slow would too), but the gap does not hold step after step."""
    ranks = {0: (56.0, [51.0, 20.0, 51.0]), 1: (56.0, [6.0, 18.0, 6.0])}  # rank 1 slow in steps 3 and 5, not 4
    analysis = _analyse(_ddp_run_dir(tmp_path, {r: _gloo_rank_trace(r, *v) for r, v in ranks.items()}))
    rows = analysis.metrics["trace_per_rank"]
    assert rows["1"]["work_ms_p50"] > 1.3 * rows["0"]["work_ms_p50"] + 5  # the medians alone would say imbalance
    assert rows["1"]["work_ms_per_step"] == pytest.approx({"3": 50.0, "4": 38.0, "5": 50.0}, abs=0.05)
    assert "performance.rank_imbalance" not in [f.code for f in analysis.findings]


def test_imbalance_is_left_to_distributed_straggler_when_distributed_ran(tmp_path):
    run_dir = _ddp_run_dir(tmp_path, {0: _gloo_rank_trace(0, 56.0, 51.0), 1: _gloo_rank_trace(1, 56.0, 6.0)},
                           plan=("distributed", "performance"))
    analysis = _analyse(run_dir)
    assert "performance.rank_imbalance" not in [f.code for f in analysis.findings]
    assert analysis.metrics["trace_per_rank"]["1"]["work_ms_p50"] == pytest.approx(50.0, abs=0.02)
    assert any("rank 1" in n and "distributed.straggler" in n for n in analysis.metrics["notes"])


def test_a_missing_or_unreadable_rank_trace_is_a_note_naming_the_rank(tmp_path):
    analysis = _analyse(_ddp_run_dir(tmp_path, {0: _gloo_rank_trace(0, 56.0, 51.0), 1: b"\x1f\x8b not gzip",
                                                2: None}))
    notes = analysis.metrics["notes"]
    assert any(n.startswith("rank 1's profiler trace could not be read") for n in notes), notes
    assert any("by rank 2" in n for n in notes), notes
    assert set(analysis.metrics["trace_per_rank"]) == {"0"}
    assert "performance.rank_imbalance" not in [f.code for f in analysis.findings]


def test_a_single_process_run_has_no_per_rank_table(tmp_path):
    analysis = _analyse(_ddp_run_dir(tmp_path, {0: _gloo_rank_trace(0, 56.0, 0.0)}))
    assert "trace_per_rank" not in analysis.metrics and analysis.metrics["profiled_steps"]["count"] == 3


# -- the windows in the user's steps --------------------------------------------------------

def _performance_plugin(tmp_path, **plan):
    from ptdiag.probe.core import Probe
    from ptdiag.probe.plugins.performance import Plugin

    probe = Probe(tmp_path, {"specialists": ["performance"], **plan}, 0)
    return probe, Plugin(probe)


@pytest.mark.parametrize("max_steps", [5, 6, 9])
def test_windows_end_by_a_short_max_steps(tmp_path, max_steps):
    """A --max-steps shorter than the windows shortens them, so the profiler records whole
    steps before the stop (imagenet's ResNet-18 with --max-steps 6 got 'No problem found')."""
    probe, plugin = _performance_plugin(tmp_path, max_steps=max_steps)
    try:
        assert plugin.stop_at <= max_steps and plugin.profile_end <= max_steps
        assert plugin.skip >= 2 and plugin.profile_steps >= 1
    finally:
        probe.events.close()


def test_windows_keep_their_options_when_max_steps_leaves_room(tmp_path):
    probe, plugin = _performance_plugin(tmp_path, max_steps=100)
    try:
        assert (plugin.skip, plugin.profile_steps, plugin.scan_steps, plugin.tail_steps) == (4, 3, 2, 3)
    finally:
        probe.events.close()


class _Window:
    closed, allowance = False, 1 << 20

    def grown(self):
        return 1 << 30  # far beyond the allowance

    def close(self, abandoned=None):
        self.closed = True


class _Profiler:
    open = True

    def close(self):
        self.open = False


def test_the_first_recorded_step_is_not_cut_when_its_calls_fit(tmp_path):
    """The budget's growth check waits for the first recorded step to end when the counted
    step's calls said it fits: cut inside it, the trace holds no step to analyse."""
    probe, plugin = _performance_plugin(tmp_path)
    try:
        plugin._window, plugin._profiler, plugin._grown_before_recording = _Window(), _Profiler(), 0
        plugin._first_step_fits = True
        probe.step = plugin.skip + 1  # inside step skip+2, the first recorded one
        plugin._keep_profile_in_budget()
        assert plugin._profiler is not None
        probe.step = plugin.skip + 2  # it ended: the check applies
        plugin._keep_profile_in_budget()
        assert plugin._profiler is None
        assert "performance profiler window" in probe._switched_off
    finally:
        probe.events.close()


def _optimizer_heavy(**first) -> Measured:
    """Steps of 10 ms whose optimizer step takes 6 ms (the 96-tensor Adam of
    tests/programs/optimizer_loop.py measured 6.65 of 9.3 ms)."""
    rows = [{"step": s, "dt": 0.01, "data": 0.0, "forward": 0.001, "backward": 0.002, "optimizer": 0.006,
             "other": 0.001} for s in range(2, 10)]
    optimizer = {"cls": "Adam", "nth": 1, "tensors": 96, "foreach": None, "fused": None, "location": "train.py:24",
                 **first}
    return _measured(breakdown=breakdown(rows, batch=2), new_optimizers=[optimizer])


def test_an_optimizer_looping_over_its_tensors_is_claimed_where_its_step_is_a_large_share():
    finding, impact = detectors.optimizer_loop(_optimizer_heavy())
    assert finding.code == "performance.optimizer_loop" and finding.severity == "info"
    assert finding.evidence["optimizer_share"] == pytest.approx(0.6) and impact == pytest.approx(0.6)
    assert (finding.evidence["tensors"], finding.evidence["optimizer_ms_p50"]) == (96, 6.0)
    assert "foreach=True" in finding.fix and "96 tensors" in finding.fix
    assert detectors.optimizer_loop(_optimizer_heavy(foreach=False, **{})) is not None  # asked for the loop
    # torch already runs it over all tensors at once, or there is little to loop over
    assert detectors.optimizer_loop(_optimizer_heavy(foreach=True)) is None
    assert detectors.optimizer_loop(_optimizer_heavy(fused=True)) is None
    assert detectors.optimizer_loop(_optimizer_heavy(tensors=4)) is None
    cuda = _optimizer_heavy()
    cuda.env = {"cores": 4, "cuda": True}  # foreach is torch's default there
    assert detectors.optimizer_loop(cuda) is None
    assert detectors.optimizer_loop(_measured(new_optimizers=_optimizer_heavy().new_optimizers)) is None  # 5 %
