"""Make each NCCL rank dump its Flight Recorder before ptdiag ends a run at --timeout.

NCCL's own dump comes when a collective times out in its watchdog (10 minutes by
default), which a `--timeout` ending the run sooner never lets happen. ProcessGroupNCCL
offers a trigger (torch's DumpPipe, ProcessGroupNCCL.hpp): with
TORCH_NCCL_DEBUG_INFO_PIPE_FILE=<stem> the default group of each rank makes a named pipe
`<stem><global rank>.pipe`, and its heartbeat monitor thread (not the stuck watchdog)
polls it every TORCH_NCCL_COORD_CHECK_MILSEC (1 s) and writes the dump to
TORCH_FR_DUMP_TEMP_FILE + rank when anything was written to it. The specialist's
CHILD_ENV points both into the run dir; the distributed analysis reads the dumps there
as `ptdiag inspect` does.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

from ptdiag.events import FLIGHT_RECORDER_DIR, FR_DUMP_STEM, FR_PIPE_STEM

DUMP_WAIT_S = 10.0  # the monitor polls each second; a dump of 2000 entries takes well under one
POLL_S = 0.25


def pipes(run_dir: Path) -> dict[int, Path]:
    """Rank -> the named pipe its process group made in the run dir."""
    folder = run_dir / FLIGHT_RECORDER_DIR
    found = {}
    for path in folder.glob(f"{FR_PIPE_STEM}*.pipe") if folder.is_dir() else []:
        rank = path.name[len(FR_PIPE_STEM):-len(".pipe")]
        if rank.isdigit() and stat.S_ISFIFO(path.lstat().st_mode):
            found[int(rank)] = path
    return found


def request_dumps(run_dir: Path) -> list[int]:
    """Write to every rank's pipe; the ranks asked (a pipe nobody reads any more is skipped)."""
    asked = []
    for rank, path in sorted(pipes(run_dir).items()):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):  # its process has ended
                continue
            raise
        try:
            os.write(fd, b"dump\n")
            asked.append(rank)
        except BlockingIOError:  # a pipe full of earlier requests has one pending already
            asked.append(rank)
        finally:
            os.close(fd)
    return asked


def wait_for_dumps(run_dir: Path, ranks: list[int], since: float, wait_s: float = DUMP_WAIT_S) -> list[int]:
    """Wait until each asked rank's dump was written after `since` and stopped growing;
    the ranks whose dump arrived."""
    folder = run_dir / FLIGHT_RECORDER_DIR
    sizes: dict[int, int] = {}
    done: set[int] = set()
    deadline = time.monotonic() + wait_s
    while len(done) < len(ranks) and time.monotonic() < deadline:
        time.sleep(POLL_S)
        for rank in ranks:
            try:
                info = (folder / f"{FR_DUMP_STEM}{rank}").stat()
            except FileNotFoundError:
                continue
            if info.st_mtime >= since and info.st_size > 0 and sizes.get(rank) == info.st_size:
                done.add(rank)
            sizes[rank] = info.st_size
    return sorted(done)


def dump_all(run_dir: Path) -> dict | None:
    """Ask every rank of the run for its Flight Recorder dump and wait for them:
    {"asked": ranks, "dumped": ranks}, or None when no rank has a pipe (no NCCL group)."""
    since = time.time() - 1  # file times are coarser than time.time() on some filesystems
    asked = request_dumps(run_dir)
    return {"asked": asked, "dumped": wait_for_dumps(run_dir, asked, since)} if asked else None


def remove_pipes(run_dir: Path) -> None:
    """torch leaves its pipes behind; a FIFO in the run dir would block whatever copies it."""
    for path in pipes(run_dir).values():
        try:
            path.unlink()
        except OSError:
            pass
