"""Profiler-trace analysis on real Kineto traces recorded on GPUs (shared fixtures).

Ground truth: TraceLens' own GPU-timeline reports for the H100 traces, and the two
ResNet-50 V100 runs that differ only in DataLoader num_workers.
"""

from __future__ import annotations

import csv
import gzip
import json
import time
from pathlib import Path

import pytest

from ptdiag.specialists.performance.trace import KIND, TraceError, analyse_trace, inspect, sniff
from ptdiag.specialists.performance.trace_cpu import host_metrics
from ptdiag.specialists.performance.trace_events import read_trace
from ptdiag.specialists.performance.trace_intervals import CoverageIndex, length, subtract, union
from ptdiag.specialists.performance.trace_ranks import imbalance, rank_row
from trace_builders import kineto_event

TRACES = Path("/work/shared/fixtures/gpu_traces")
NUM_WORKERS_0 = TRACES / "kineto__resnet50_v100_num_workers_0.pt.trace.json.gz"
NUM_WORKERS_4 = TRACES / "kineto__resnet50_v100_num_workers_4.pt.trace.json.gz"
NCCL_TRACE = TRACES / "hta__df_index_resolver__df_index_resolver.json.gz"
CPU_ONLY = TRACES / "hta__cpu_only__rank-34.Jul_15_10_52_41.1074.pt.trace.json.gz"
TWO_RANKS = [TRACES / f"hta__trace_filter__sampled_rank-{rank}.json.gz" for rank in (0, 1)]
TRACELENS = sorted(TRACES.glob("tracelens__h100__*.json.gz"))
# Big traces must analyse quickly; measured ~1.5 s here for 216k events, so this bound
# only catches an accidental quadratic, not machine noise.
MAX_SECONDS = 20.0
AGREEMENT_OF_TOTAL = 0.02

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason="shared GPU trace fixtures missing")


@pytest.fixture(scope="module")
def analysed():
    """Each trace analysed once per module: {path: (Analysis, seconds)}."""
    cache = {}

    def get(path: Path):
        if path not in cache:
            start = time.process_time()  # CPU time: a loaded box's waits for a core are not the analysis'
            analysis = inspect(path)
            cache[path] = (analysis, time.process_time() - start)
        return cache[path]

    return get


def codes(analysis) -> list[str]:
    return [finding.code for finding in analysis.findings]


def finding(analysis, code: str):
    return next(f for f in analysis.findings if f.code == code)


# -- the data-loading verdict -----------------------------------------------------------

def test_num_workers_0_is_dataloader_bound(analysed):
    analysis, _ = analysed(NUM_WORKERS_0)
    verdict = finding(analysis, "performance.dataloader_bound")
    evidence = verdict.evidence
    assert 0.35 < evidence["data_wait_share"] < 0.45  # measured 39.6%
    assert evidence["steps"] == [5, 6, 7, 8, 9, 10]
    assert evidence["num_workers"] == 0
    assert evidence["data_wait_ms_per_step"] == pytest.approx(
        evidence["data_wait_share"] * evidence["step_ms"], rel=0.01)
    for knob in ("num_workers", "pin_memory", "persistent_workers"):
        assert knob in verdict.fix
    assert verdict.severity == "warning"


def test_num_workers_4_is_not_dataloader_bound(analysed):
    slow, _ = analysed(NUM_WORKERS_0)
    fixed, _ = analysed(NUM_WORKERS_4)
    assert "performance.dataloader_bound" not in codes(fixed)
    slow_share = slow.metrics["steps"]["data_wait_share"]
    fixed_share = fixed.metrics["steps"]["data_wait_share"]
    assert fixed_share < 0.05  # measured 1.0%
    assert fixed_share < slow_share / 10
    assert fixed.metrics["steps"]["step_ms"]["mean"] < slow.metrics["steps"]["step_ms"]["mean"]


def test_num_workers_0_gpu_idle_points_at_data(analysed):
    analysis, _ = analysed(NUM_WORKERS_0)
    idle = finding(analysis, "performance.gpu_idle")
    assert idle.evidence["idle_share"] == pytest.approx(1 - idle.evidence["busy_share"], abs=1e-3)
    assert idle.evidence["idle_share"] >= 0.3
    assert "dataloader_bound" in idle.fix
    assert "performance.compute_bound" not in codes(analysis)


# -- GPU timeline against TraceLens ---------------------------------------------------

def tracelens_timeline(trace: Path) -> dict[str, float]:
    report = trace.with_name(trace.name.replace(".json.gz", "__gpu_timeline.csv"))
    with open(report, newline="") as stream:
        return {row["type"]: float(row["time ms"]) for row in csv.DictReader(stream)}


@pytest.mark.parametrize("trace", TRACELENS, ids=lambda p: p.name.split("__")[2])
def test_gpu_timeline_agrees_with_tracelens(analysed, trace):
    assert len(TRACELENS) == 3
    ours = analysed(trace)[0].metrics["gpu_timeline"]
    theirs = tracelens_timeline(trace)
    total = theirs["total_time"]
    for metric in ("total", "busy", "idle", "computation", "exposed_comm", "exposed_memcpy"):
        assert abs(ours[f"{metric}_ms"] - theirs[f"{metric}_time"]) <= AGREEMENT_OF_TOTAL * total, metric


def test_prelaunched_gpu_work_is_left_out_of_the_timeline(analysed):
    qwen = next(p for p in TRACELENS if "Qwen" in p.name)
    analysis, _ = analysed(qwen)
    assert analysis.metrics["trace"]["unlinked_gpu_events"] > 0
    assert any("before the trace began" in note for note in analysis.metrics["notes"])


def test_busy_gpu_gets_compute_bound_with_measured_advice(analysed):
    qwen = next(p for p in TRACELENS if "Qwen" in p.name)
    verdict = finding(analysed(qwen)[0], "performance.compute_bound")
    assert verdict.evidence["computation_share"] >= 0.75
    assert verdict.evidence["top_kernels"][0]["category"] == "GEMM"
    gains = {g["change"]: g for g in verdict.evidence["expected_gains"]}
    # bf16 GEMMs already: no AMP advice; elementwise-heavy: fusion advice with a number.
    assert "amp" not in gains
    assert 0 < gains["torch.compile"]["expected_gpu_time_saved_share"] < gains["torch.compile"]["gpu_time_share"]
    assert "torch.compile" in verdict.fix


# -- communication, size, CPU only --------------------------------------------------------

def test_nccl_trace_reports_exposed_communication_quickly(analysed):
    analysis, seconds = analysed(NCCL_TRACE)
    timeline = analysis.metrics["gpu_timeline"]
    assert timeline["rank"] == 1
    assert timeline["exposed_comm_ms"] > 0
    assert timeline["exposed_comm_ms"] <= timeline["communication_ms"]
    categories = {c["category"] for c in analysis.metrics["kernel_breakdown"]["categories"]}
    assert "communication" in categories
    assert analysis.metrics["steps"]["count"] == 5
    assert seconds < MAX_SECONDS


@pytest.mark.parametrize("path, exposed_ms, overlap, fix_words", [
    (TRACES / "hta__trace_diff__control__control.json.gz", 87.3, 0.47, "Part of the communication is hidden"),
    (NCCL_TRACE, 357.3, 0.0, "No collective overlaps computation"),
])
def test_exposed_communication_is_a_verdict_with_its_overlap(analysed, path, exposed_ms, overlap, fix_words):
    """The 8-GPU A100 rank (87 ms of NCCL exposed, 19 % of its timeline) and the V100 rank
    whose 357 ms of all-reduce nothing overlaps: each gets a communication verdict, whose
    fix fits how much was hidden (neither was told only to remove host syncs)."""
    analysis, _ = analysed(path)
    verdict = finding(analysis, "performance.exposed_communication")
    assert verdict.severity == "warning"
    assert verdict.evidence["exposed_comm_ms"] == pytest.approx(exposed_ms, abs=0.1)
    assert verdict.evidence["overlap_share"] == pytest.approx(overlap, abs=0.01)
    assert fix_words in verdict.fix


def test_single_gpu_traces_have_no_communication_verdict(analysed):
    for path in TRACELENS + [NUM_WORKERS_0]:
        assert "performance.exposed_communication" not in codes(analysed(path)[0])


def test_cpu_only_trace_has_no_gpu_numbers(analysed):
    analysis, _ = analysed(CPU_ONLY)
    assert "gpu_timeline" not in analysis.metrics
    assert "kernel_breakdown" not in analysis.metrics
    assert any("no GPU activity" in note for note in analysis.metrics["notes"])
    assert analysis.metrics["trace"]["rank"] == 34
    steps = analysis.metrics["steps"]
    assert steps["count"] == 1 and steps["step_ms"]["mean"] > 0
    assert "gpu_busy_share" not in steps and "gpu_busy_ms" not in steps["per_step"][0]
    # record_function annotations (gloo:all_reduce here) are not ranked as ops.
    assert [op["name"] for op in analysis.metrics["top_cpu_ops"]] == ["aten::empty"]
    assert not [code for code in codes(analysis) if code in ("performance.gpu_idle",
                                                              "performance.compute_bound")]


def test_two_real_nccl_ranks_side_by_side_are_balanced():
    """HTA's sampled two-rank job: each rank ~25% of its step in exposed NCCL communication,
    ~450 ms of its own work per step; the ranks differ by ~5%, far from an imbalance."""
    rows = {}
    for rank, path in enumerate(TWO_RANKS):
        trace = read_trace(path)
        rows[rank] = rank_row(analyse_trace(trace).metrics, host_metrics(trace))
    for row in rows.values():
        assert row["steps"] == 2
        assert 0.2 < row["collective_share"] < 0.3
        assert row["gpu_shares"]["exposed_comm"] == pytest.approx(row["collective_share"], abs=0.01)
        assert row["gpu_shares"]["busy"] + row["gpu_shares"]["idle"] == pytest.approx(1.0, abs=1e-3)
        assert row["work_ms_p50"] == pytest.approx(row["step_ms_p50"] - row["collective_ms_p50"], rel=0.05)
    assert imbalance(rows) is None


# -- bad input and sniffing ---------------------------------------------------------------

def test_truncated_gzip_is_rejected(tmp_path):
    data = NUM_WORKERS_4.read_bytes()
    truncated = tmp_path / "cut.pt.trace.json.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError):
        inspect(truncated)


@pytest.mark.parametrize("content", ['{"foo": 1}', "[1, 2, 3]", "not json at all",
                                     '{"traceEvents": [1, 2]}'])
def test_non_trace_json_is_rejected(tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content)
    assert not sniff(path)
    with pytest.raises(TraceError):
        inspect(path)


def test_sniff_recognises_every_fixture_trace():
    traces = sorted(TRACES.glob("*.json.gz"))
    assert len(traces) >= 14
    assert all(sniff(path) for path in traces)
    assert KIND == "profiler_trace"


def test_sniff_reads_plain_json_traces(tmp_path):
    plain = tmp_path / "trace.json"
    plain.write_bytes(gzip.decompress(CPU_ONLY.read_bytes()))
    assert sniff(plain)
    assert "gpu_timeline" not in inspect(plain).metrics


def test_sniff_rejects_other_files(tmp_path):
    browser_trace = tmp_path / "chrome.json"
    browser_trace.write_text(json.dumps({"traceEvents": [{"name": "Paint", "ph": "X", "ts": 0, "dur": 1}]}))
    csv_report = next(TRACES.glob("*__gpu_timeline.csv"))
    other_gzip = tmp_path / "x.json.gz"
    other_gzip.write_bytes(gzip.compress(b'{"weights": [1, 2, 3]}'))
    for path in (browser_trace, csv_report, other_gzip, tmp_path / "missing.json"):
        assert not sniff(path), path


# -- the arithmetic on a trace built by hand ----------------------------------------------

def test_hand_built_trace_timeline_and_data_wait():
    launches = [kineto_event("cuda_runtime", "cudaLaunchKernel", 0, 1, c, pid=100) for c in (1, 2, 3)]
    trace = {"schemaVersion": 1, "distributedInfo": {"rank": 3}, "traceEvents": launches + [
        kineto_event("kernel", "gemm_kernel", 0, 10, 1),
        kineto_event("kernel", "ncclKernel_AllReduce", 5, 15, 2),  # 5..20
        kineto_event("gpu_memcpy", "Memcpy HtoD", 18, 7, 3),  # 18..25
        kineto_event("kernel", "stale_kernel", -50, 10, 99),  # launched before the trace
        kineto_event("user_annotation", "ProfilerStep#7", 0, 40, pid=100),
        kineto_event("user_annotation", "enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__",
                     1, 12, pid=100),
    ]}
    metrics = analyse_trace(trace).metrics
    timeline = metrics["gpu_timeline"]
    assert timeline["rank"] == 3
    assert timeline["total_ms"] == pytest.approx(0.025)
    assert timeline["busy_ms"] == pytest.approx(0.025)
    assert timeline["computation_ms"] == pytest.approx(0.010)
    assert timeline["exposed_comm_ms"] == pytest.approx(0.010)  # 10..20
    assert timeline["exposed_memcpy_ms"] == pytest.approx(0.005)  # 20..25
    assert timeline["idle_ms"] == pytest.approx(0.0)
    assert metrics["trace"]["unlinked_gpu_events"] == 1
    steps = metrics["steps"]
    assert steps["per_step"][0]["step"] == 7
    assert steps["data_wait_share"] == pytest.approx(12 / 40)


def test_interval_arithmetic():
    merged = union([(5, 7), (0, 2), (1, 3), (7, 8)])
    assert merged == [(0, 3), (5, 8)]
    assert subtract(merged, [(2, 6)]) == [(0, 2), (6, 8)]
    assert length(subtract(merged, [(-1, 10)])) == 0
    coverage = CoverageIndex(merged)
    assert coverage.covered(1, 6) == pytest.approx(3.0)
    assert coverage.covered(-5, 100) == pytest.approx(6.0)
    assert coverage.covered(3.5, 4.5) == 0.0


def _ddp_rank_metrics(work_ms: list[float], collective_ms: list[float]) -> dict:
    """A CPU rank's trace metrics: its steps' wall time = own work + time in collectives."""
    per_step = [{"step": k + 1, "ms": w + c, "data_wait_ms": 0.0, "collective_ms": c}
                for k, (w, c) in enumerate(zip(work_ms, collective_ms))]
    return {"steps": {"per_step": per_step, "data_wait_share": 0.0, "collective_share": 0.5}}


def test_a_rank_held_off_the_cpu_is_not_a_straggler():
    """Rank 1's steps take 12 ms longer outside its collectives and rank 0 waits for it, step
    after step: a straggler by wall time. When the probe measured that rank 1's thread waited
    those 12 ms for a CPU (a loaded 2-core box), its own work is rank 0's and nobody is blamed."""
    fast = _ddp_rank_metrics([2.0, 2.0, 2.0], [14.0, 14.0, 14.0])
    slow = _ddp_rank_metrics([14.0, 14.0, 14.0], [2.0, 2.0, 2.0])
    by_wall = {0: rank_row(fast, None), 1: rank_row(slow, None)}
    assert imbalance(by_wall)["rank"] == 1
    held_off = {0: rank_row(fast, None, {1: 0.1, 2: 0.0, 3: 0.2}),
                1: rank_row(slow, None, {1: 12.0, 2: 12.5, 3: 11.8})}
    assert held_off[1]["cpu_wait_ms_p50"] == 12.0 and held_off[1]["work_ms_p50"] == pytest.approx(2.0, abs=0.3)
    assert imbalance(held_off) is None
    # a short wait for a CPU does not hide real extra work
    working = {0: rank_row(fast, None, {1: 0.1, 2: 0.0, 3: 0.2}), 1: rank_row(slow, None, {1: 1.0, 2: 0.5, 3: 1.5})}
    assert imbalance(working)["rank"] == 1 and imbalance(working)["work_ms"] == pytest.approx(13.0, abs=0.1)
