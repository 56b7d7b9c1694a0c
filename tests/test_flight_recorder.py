"""NCCL Flight Recorder analysis on real dumps of a 16-rank GPU job and on edits of them."""

from __future__ import annotations

import copy
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest

from ptdiag.specialists.distributed import flight_recorder as fr
from ptdiag.specialists.distributed.flight_recorder_dumps import FlightRecorderError, load_dumps

FIXTURES = Path("/work/shared/fixtures")
GPU_ERROR = FIXTURES / "fr_dumps" / "gpu_error_1st"
GZIP_TRACE = next((FIXTURES / "gpu_traces").glob("*.json.gz"), None)

pytestmark = pytest.mark.skipif(not GPU_ERROR.is_dir(), reason="Flight Recorder fixture not available")


def faulty_ranks_from_log() -> set[int]:
    """The injected faults, as the fault injector logged them ('Rank 12, fault_type: GPU_ERROR')."""
    log = (GPU_ERROR / "fault_injection.log").read_text()
    per_line = {int(r) for r in re.findall(r"^Rank (\d+), fault_type:", log, re.MULTILINE)}
    listed = {int(r) for r in re.findall(r"\d+", re.search(r"Fault ranks: \[([^\]]*)\]", log).group(1))}
    assert per_line == listed and per_line
    return per_line


@pytest.fixture(scope="module")
def fixture_dumps() -> dict[int, dict]:
    return load_dumps(GPU_ERROR)


@pytest.fixture
def all_completed(fixture_dumps) -> dict[int, dict]:
    """The fixture edited so that every rank completed every recorded op."""
    dumps = copy.deepcopy(fixture_dumps)
    for dump in dumps.values():
        for entry in dump["entries"]:
            entry["state"] = "completed"
            entry["time_discovered_completed_ns"] = entry["time_created_ns"] + 1000
        for status in dump["pg_status"].values():
            status["last_completed_collective"] = status["last_enqueued_collective"]
    return dumps


def the_finding(analysis, code: str):
    found = [f for f in analysis.findings if f.code == code]
    assert len(found) == 1, [f.code for f in analysis.findings]
    return found[0]


def add_pending_collective(dumps: dict[int, dict], group_desc: str, skipper: int, frames: list[dict]) -> list[int]:
    """Every member of the first group named `group_desc` that holds `skipper` issues one more
    all_reduce, except `skipper`: the code path that skipped a collective. Returns who waits."""
    config = dumps[skipper]["pg_config"]
    name = next(n for n, c in config.items() if c["desc"] == group_desc)
    members = [int(r) for r in re.findall(r"\d+", config[name]["ranks"])]
    waiting = [r for r in members if r != skipper]
    for rank in waiting:
        template = next(e for e in dumps[rank]["entries"] if e["process_group"][0] == name and not e["is_p2p"])
        seq = max(e["collective_seq_id"] for e in dumps[rank]["entries"] if e["process_group"][0] == name)
        dumps[rank]["entries"].append(dict(
            template, collective_seq_id=seq + 1, op_id=seq + 1, state="scheduled", profiling_name="nccl:all_reduce",
            record_id=max(e["record_id"] for e in dumps[rank]["entries"]) + 1, frames=frames,
            time_created_ns=template["time_created_ns"] + 10**9, time_discovered_completed_ns=None))
        dumps[rank]["pg_status"][str(template["pg_id"])]["last_enqueued_collective"] = seq + 1
    return waiting


def test_names_the_ranks_with_the_injected_gpu_error():
    analysis = fr.inspect(GPU_ERROR)
    finding = the_finding(analysis, "distributed.collective_mismatch")
    assert finding.severity == "error"
    assert set(finding.evidence["ranks"]) == faulty_ranks_from_log()
    assert analysis.metrics["flight_recorder"]["culprits"] == sorted(faulty_ranks_from_log())
    assert analysis.artifacts["input"] == str(GPU_ERROR)


def test_names_where_the_peers_wait_and_how_far_the_culprits_got():
    finding = the_finding(fr.inspect(GPU_ERROR), "distributed.collective_mismatch")
    culprits = set(finding.evidence["ranks"])
    ev = finding.evidence
    assert ev["collective"].startswith("nccl:") and ev["collective"] in finding.title
    assert ev["waiting_ranks"] and not culprits & set(ev["waiting_ranks"])
    assert set(ev["waiting_ranks"]) | culprits <= set(ev["process_group"]["ranks"])
    assert str(ev["seq"]) in finding.title
    # Every group involved: peers wait at a number the culprits never completed.
    assert len(ev["groups"]) >= 2
    for group in ev["groups"]:
        assert set(group["lagging"]) <= culprits
        for rank, lag in group["lagging"].items():
            assert lag["reason"] == "behind"
            assert lag["last_completed_seq"] < lag["stuck_seq"] < group["seq"]
            assert f"rank {rank} is stuck" in finding.detail
    # No frames in these dumps: no invented location.
    assert ev["locations"] == {}
    assert "TORCH_FR_BUFFER_SIZE" in finding.fix and "12, 14" in finding.fix


def test_per_rank_metrics_are_measured(fixture_dumps):
    per_rank = fr.analyse_dumps(fixture_dumps).metrics["flight_recorder"]["per_rank"]
    assert sorted(per_rank) == sorted(fixture_dumps)
    for rank, summary in per_rank.items():
        assert summary["entries"] == len(fixture_dumps[rank]["entries"])
        assert sum(summary["states"].values()) == summary["entries"]
        assert summary["last_issued_ns"] == max(e["time_created_ns"] for e in fixture_dumps[rank]["entries"])
        assert summary["oldest_unfinished_s_before_newest"] >= summary["last_issued_s_before_newest"] >= 0
    # Ranks 12 and 14 stopped completing the TP collectives their partners finished.
    assert per_rank[12]["last_completed_seq"]["TENSOR_MODEL_PARALLEL_GROUP[41]"] == 42805
    assert per_rank[13]["last_completed_seq"]["TENSOR_MODEL_PARALLEL_GROUP[41]"] == 42817


def test_sniff():
    assert fr.sniff(GPU_ERROR)
    assert fr.sniff(GPU_ERROR / "_dump_3")
    assert not fr.sniff(GPU_ERROR / "fault_injection.log")


def test_sniff_refuses_other_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not fr.sniff(empty)
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "blob_0").write_bytes(os.urandom(4096))
    (noise / "plain_1").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert not fr.sniff(noise) and not fr.sniff(noise / "blob_0")
    if GZIP_TRACE is not None:
        gz = tmp_path / "trace_0"
        shutil.copy(GZIP_TRACE, gz)
        assert not fr.sniff(GZIP_TRACE) and not fr.sniff(gz)


def test_directory_without_dumps_is_a_clear_error(tmp_path):
    (tmp_path / "fault_injection.log").write_text("Fault ranks: [1]\n")
    with pytest.raises(FlightRecorderError, match="no Flight Recorder dumps found"):
        fr.inspect(tmp_path)


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_dump_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = {"version": "2.9", "pg_config": {}, "entries": [_RunsShell(f"touch {marker}")]}
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "nccl_trace_rank_0").write_bytes(pickle.dumps(payload, protocol=2))
    assert fr.sniff(dumps)  # it looks like a dump: loading must be what refuses it
    with pytest.raises(FlightRecorderError, match=r"nccl_trace_rank_0: refused.*system"):
        fr.inspect(dumps)
    assert not marker.exists()


def test_truncated_dump_names_the_file(tmp_path):
    for rank in (0, 1):
        shutil.copy(GPU_ERROR / f"_dump_{rank}", tmp_path / f"_dump_{rank}")
    data = (GPU_ERROR / "_dump_1").read_bytes()
    (tmp_path / "_dump_1").write_bytes(data[: len(data) // 2])
    with pytest.raises(FlightRecorderError, match=r"_dump_1: corrupt or truncated"):
        fr.inspect(tmp_path)


def test_all_completed_dumps_name_no_culprit(all_completed):
    analysis = fr.analyse_dumps(all_completed)
    assert not [f for f in analysis.findings if f.code == "distributed.collective_mismatch"]
    finding = the_finding(analysis, "distributed.fr_consistent")
    assert finding.severity == "info"
    assert finding.evidence["in_flight"] == 0
    assert finding.evidence["entries"] == sum(len(d["entries"]) for d in all_completed.values())
    assert analysis.metrics["flight_recorder"]["culprits"] == []


def test_ranks_all_waiting_in_the_same_collectives_name_no_culprit(fixture_dumps):
    """Ranks 0-3 alone: collectives in flight, every group's members at the same one; the
    twelve ranks without a dump are most of the job, so their silence blames no one."""
    analysis = fr.analyse_dumps({r: fixture_dumps[r] for r in range(4)})
    finding = the_finding(analysis, "distributed.fr_consistent")
    assert finding.evidence["in_flight"] == sum(len(fixture_dumps[r]["entries"]) for r in range(4))
    assert analysis.metrics["flight_recorder"]["ranks_without_dump"] == list(range(4, 16))


def test_rank_that_skipped_a_collective_is_named_with_locations(all_completed):
    frames = [{"name": "all_reduce", "filename": "/venv/lib/python3.11/site-packages/torch/distributed/c10d.py",
               "line": 2800},
              {"name": "train_step", "filename": "/home/me/train.py", "line": 57}]
    waiting = add_pending_collective(all_completed, "EXPERT_TENSOR_AND_MODEL_PARALLEL_GROUP", 6, frames)
    finding = the_finding(fr.analyse_dumps(all_completed), "distributed.collective_mismatch")
    ev = finding.evidence
    assert ev["ranks"] == [6]
    assert ev["waiting_ranks"] == waiting and ev["collective"] == "nccl:all_reduce"
    assert ev["groups"][0]["lagging"][6]["reason"] == "never_reached"
    assert ev["groups"][0]["lagging"][6]["last_enqueued_seq"] == ev["seq"] - 1
    assert {r: ev["locations"][r] for r in waiting} == {r: "/home/me/train.py:57" for r in waiting}
    assert "never issued" in finding.fix


def test_rank_without_a_dump_is_blamed_when_the_others_wait_for_it(all_completed):
    waiting = add_pending_collective(all_completed, "TENSOR_MODEL_PARALLEL_GROUP", 9, frames=[])
    del all_completed[9]
    finding = the_finding(fr.analyse_dumps(all_completed), "distributed.collective_mismatch")
    assert finding.evidence["ranks"] == [9] and finding.evidence["waiting_ranks"] == waiting
    assert finding.evidence["groups"][0]["lagging"][9]["reason"] == "no_dump"


def test_ranks_disagreeing_on_the_collective_are_named(all_completed):
    waiting = add_pending_collective(all_completed, "EXPERT_MODEL_PARALLEL_GROUP", 0, frames=[])
    # Rank 0 reaches the same number, but with another collective than its three peers.
    name = next(n for n, c in all_completed[1]["pg_config"].items() if c["desc"] == "EXPERT_MODEL_PARALLEL_GROUP")
    peer_entry = next(e for e in reversed(all_completed[1]["entries"]) if e["process_group"][0] == name)
    all_completed[0]["entries"].append(dict(peer_entry, profiling_name="nccl:broadcast",
                                            record_id=10**9, pg_id=all_completed[0]["entries"][0]["pg_id"]))
    finding = the_finding(fr.analyse_dumps(all_completed), "distributed.collective_mismatch")
    assert finding.evidence["ranks"] == [0]
    assert finding.evidence["waiting_ranks"] == waiting
    group = finding.evidence["groups"][0]
    assert group["lagging"][0]["reason"] == "different_op"
    assert group["ops_at_seq"][0] == "nccl:broadcast" and group["ops_at_seq"][waiting[0]] == "nccl:all_reduce"


def test_rank_waiting_on_a_waiting_rank_is_not_blamed(all_completed):
    """Rank 6 skips a collective its expert group waits in; rank 4, waiting there, never
    reaches the next tensor-parallel collective, so rank 5 waits on rank 4 in turn."""
    first = add_pending_collective(all_completed, "EXPERT_TENSOR_AND_MODEL_PARALLEL_GROUP", 6, frames=[])
    second = add_pending_collective(all_completed, "TENSOR_MODEL_PARALLEL_GROUP", 4, frames=[])
    assert 4 in first and 5 in second
    analysis = fr.analyse_dumps(all_completed)
    finding = the_finding(analysis, "distributed.collective_mismatch")
    assert finding.evidence["ranks"] == [6]
    assert [g["process_group"]["desc"] for g in finding.evidence["groups"]] == ["EXPERT_TENSOR_AND_MODEL_PARALLEL_GROUP"]
    assert finding.evidence["blocked_groups"] == [g for g in analysis.metrics["flight_recorder"]["stalled_groups"]
                                                  if g.startswith("TENSOR_MODEL_PARALLEL_GROUP")]
    assert len(finding.evidence["blocked_groups"]) == 1


def test_single_dump_file_is_analysed_alone():
    """One rank alone cannot be compared with its peers: facts, no culprit."""
    analysis = fr.inspect(GPU_ERROR / "_dump_12")
    finding = the_finding(analysis, "distributed.fr_consistent")
    assert finding.evidence["ranks"] == [12] and finding.evidence["in_flight"] == 27
    assert 13 in finding.evidence["ranks_without_dump"]


def test_dicts_that_are_not_dumps_are_refused():
    with pytest.raises(FlightRecorderError, match="rank 3: not a Flight Recorder dump"):
        fr.analyse_dumps({3: {"entries": []}})
    with pytest.raises(FlightRecorderError, match="rank 0: entry 0 lacks"):
        fr.analyse_dumps({0: {"version": "2.9", "entries": [{"state": "scheduled"}]}})
    with pytest.raises(FlightRecorderError, match="no Flight Recorder dumps"):
        fr.analyse_dumps({})
