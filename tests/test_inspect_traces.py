"""`ptdiag inspect` on profiler traces as users bring them: a folder with every rank's
trace, its report on stderr like every report, and the same verdicts a recorded run's
report draws from the same trace."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import load_report, run_ptdiag
from ptdiag.specialists.performance.trace import inspect, sniff

TRACES = Path("/work/shared/fixtures/gpu_traces")
RANKS = [TRACES / f"hta__trace_filter__sampled_rank-{rank}.json.gz" for rank in (0, 1)]

pytestmark = pytest.mark.skipif(not TRACES.is_dir(), reason="shared GPU trace fixtures missing")


@pytest.fixture
def rank_folder(tmp_path) -> Path:
    folder = tmp_path / "traces"
    folder.mkdir()
    for path in RANKS:
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not a trace")
    return folder


def test_a_folder_of_rank_traces_is_judged_rank_by_rank(rank_folder):
    assert sniff(rank_folder) and not sniff(rank_folder.parent)
    analysis = inspect(rank_folder)
    rows = analysis.metrics["trace_per_rank"]
    assert set(rows) == {"0", "1"} and {row["trace"] for row in rows.values()} == {p.name for p in RANKS}
    for row in rows.values():
        assert 0.2 < row["gpu_shares"]["exposed_comm"] < 0.3
    comm = next(f for f in analysis.findings if f.code == "performance.exposed_communication")
    assert comm.evidence["ranks"] == [0, 1] and "every rank" in comm.title
    assert len([f for f in analysis.findings if f.code == "performance.exposed_communication"]) == 1
    assert "performance.rank_imbalance" not in [f.code for f in analysis.findings]  # balanced, ~5% apart


def test_inspect_writes_its_report_to_stderr(rank_folder, tmp_path):
    proc = run_ptdiag("inspect", str(rank_folder), "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == b""
    assert b"performance.exposed_communication" in proc.stderr
    # an artifact was read, no program ran: no "exit code None, 0 training steps" line
    assert b"exit code" not in proc.stderr and b"training steps" not in proc.stderr
    assert load_report(tmp_path / "r.json")["metrics"]["ranks"] == [0, 1]
