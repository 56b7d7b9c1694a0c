"""--timeout makes every NCCL rank dump its Flight Recorder before ptdiag ends the run.

No NCCL here: the ranks' side is what ProcessGroupNCCL's heartbeat monitor does with
TORCH_NCCL_DEBUG_INFO_PIPE_FILE (a named pipe per rank, read non-blocking; a write makes
the rank dump), played with the recorded dumps of a 16-rank NCCL job whose ranks 12 and
14 had a GPU error (fixtures/fr_dumps)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from conftest import PROGRAMS, PYTHON, load_report, run_ptdiag
from ptdiag.events import FLIGHT_RECORDER_DIR
from ptdiag.launch import flight_recorder
from ptdiag.specialists.distributed import flight_recorder as fr

RECORDED = Path("/work/shared/fixtures") / "fr_dumps" / "gpu_error_1st"  # as test_flight_recorder.py


class PipeReaders:
    """Each rank's DumpPipe: its fifo opened O_RDONLY|O_NONBLOCK, polled until stopped."""

    def __init__(self, folder, ranks) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.fds, self.stop = folder, {}, threading.Event()
        for rank in ranks:
            path = folder / f"pipe_{rank}.pipe"
            os.mkfifo(path)
            self.fds[rank] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(0.2):
            for rank, fd in self.fds.items():
                try:
                    written = os.read(fd, 128)
                except BlockingIOError:
                    written = b""
                if written:
                    shutil.copyfile(RECORDED / f"_dump_{rank}", self.folder / f"rank_{rank}")

    def close(self, rank=None) -> None:
        for r in [rank] if rank is not None else list(self.fds):
            os.close(self.fds.pop(r))
        if rank is None:
            self.stop.set()
            self.thread.join()


def test_every_rank_with_a_pipe_is_asked_and_its_dump_waited_for(tmp_path):
    readers = PipeReaders(tmp_path / FLIGHT_RECORDER_DIR, range(16))
    readers.close(rank=3)  # its process ended: nobody reads its pipe any more
    try:
        result = flight_recorder.dump_all(tmp_path)
    finally:
        readers.close()
    everyone_else = [r for r in range(16) if r != 3]
    assert result == {"asked": everyone_else, "dumped": everyone_else}
    (tmp_path / FLIGHT_RECORDER_DIR / "rank_3").write_bytes((RECORDED / "_dump_3").read_bytes())
    analysis = fr.inspect(tmp_path / FLIGHT_RECORDER_DIR)  # the pipes beside the dumps are not read
    assert analysis.metrics["flight_recorder"]["culprits"] == [12, 14]
    flight_recorder.remove_pipes(tmp_path)
    assert not list((tmp_path / FLIGHT_RECORDER_DIR).glob("*.pipe"))


def test_no_pipes_no_request(tmp_path):
    assert flight_recorder.dump_all(tmp_path) is None


@pytest.mark.slow
def test_timeout_of_a_hung_nccl_job_reports_its_flight_recorder(workdir):
    proc = run_ptdiag("training hangs with NCCL", "--timeout", "12", "--json", "r.json", "--",
                      PYTHON, str(PROGRAMS / "fr_pipe_hang.py"), str(RECORDED), cwd=workdir, timeout=180)
    assert proc.stdout.decode() == "WAITING\n", proc.stderr.decode()[-2000:]
    report = load_report(workdir / "r.json")
    assert report["status"] in ("hung", "timeout")
    asked = report["metrics"]["distributed"]["flight_recorder_at_timeout"]
    assert asked == {"asked": list(range(16)), "dumped": list(range(16))}
    finding = next(f for f in report["findings"] if f["code"] == "distributed.collective_mismatch"
                   and f["evidence"].get("collective", "").startswith("nccl:"))
    assert sorted(finding["evidence"]["ranks"]) == [12, 14]
    # ended by --timeout before its first step: not "the command failed before training"
    assert not [f for f in report["findings"] if f["code"] == "ptdiag.command_failed"]
    run_dir = next((workdir / "ptdiag-runs").glob("2*"))
    assert not list((run_dir / FLIGHT_RECORDER_DIR).glob("*.pipe"))
