"""Shared helpers: run the real ptdiag CLI in a subprocess, on real programs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_models"
PROGRAMS = Path(__file__).parent / "programs"
FIXTURES = REPO.parent / "shared" / "fixtures"
PYTHON = sys.executable
# Small and stable on a 2-core box (facts.md): one thread, tiny images, few samples.
FAST_SAMPLE_ARGS = ["--threads", "1", "--samples", "64", "--image-size", "16"]
# The performance specialist's windows, shortened from the defaults (4 + 1 + 3 + 2 + 3 steps):
# the same profiler, call scan and tail, over fewer of the program's steps; it stops after step 8.
PERF_WINDOWS = ["-o", "performance.skip=2", "-o", "performance.profile_steps=2",
                "-o", "performance.scan_steps=1", "-o", "performance.tail_steps=2"]
# Verification runs (a companion run per verified finding) are on by default for users; in
# the suite only tests/test_verification_e2e.py and those that pass --verify run them: every
# other diagnosis would cost one more training run (CI's 15-minute budget on a loaded box).
# Processes the tests start inherit it (torchrun jobs started with Popen too).
os.environ["PTDIAG_VERIFY"] = "0"
DEFAULT_VERIFY = {"PTDIAG_VERIFY": ""}  # env= for a run that keeps ptdiag's own default


def ptdiag_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "ptdiag", *args]


def _process_tree(pid: int) -> list[int]:
    """pid and its descendants, read from /proc while they run."""
    tree, index = [pid], 0
    while index < len(tree):
        for task in Path(f"/proc/{tree[index]}/task").glob("*"):
            try:
                tree += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass  # ended meanwhile
        index += 1
    return tree


@contextlib.contextmanager
def running_ptdiag(*args: str, cwd: Path, sigint: signal.Handlers = signal.SIG_DFL):
    """`ptdiag ARGS` started with piped streams, for tests that signal it, with SIGINT's
    disposition given (a suite started in a script's background inherits it ignored, and
    so would ptdiag and the program). However the test ends, nothing of the run outlives
    it: a failed test must not leave a training loop running on the CI box's two cores."""
    proc = subprocess.Popen(ptdiag_cmd(*args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            for pid in reversed(_process_tree(proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.communicate()


def run_ptdiag(*args: str, cwd: Path, timeout: float = 240, env: dict | None = None,
               **kwargs) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("PTDIAG_STORE", None)
    return subprocess.run(ptdiag_cmd(*args), cwd=cwd, env=full_env, capture_output=True,
                          timeout=timeout, **kwargs)


def recorded_steps(switched_off: list[dict], steps: int) -> list[int]:
    """The steps whose lines the recorder wrote: every one, until ptdiag's budget shed them
    to 1 step in N (a `switched_off` entry, the report's or the event's: from the step after
    the one it names). A loaded box makes steps look costlier, so tests allow for it."""
    strides = [(s["step"], int(s["what"].rsplit(" ", 1)[-1])) for s in switched_off
               if s["what"].startswith("the recorder's per-step lines")]
    return [step for step in range(1, steps + 1)
            if step % max([n for after, n in strides if after < step], default=1) == 0]


def load_report(path: Path) -> dict:
    return json.loads(path.read_text())


def free_port() -> int:
    """A TCP port free right now, for a torchrun rendezvous (tests may run side by side)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PTDIAG_LINE = "ptdiag ▸ ".encode()
REPORT_HEADER = re.compile("ptdiag ▸ [a-z]+ ▸ ".encode())


def split_stderr(stderr: bytes) -> tuple[bytes, list[str]]:
    """The program's own stderr, and ptdiag's lines, out of a `ptdiag ... -- COMMAND` run's
    stderr. ptdiag writes one line before the program starts (none with --quiet), and after
    it ended its companion-run lines and the report (a blank line, then `ptdiag ▸ STATUS ▸`).
    The programs compared end their lines: ptdiag's blank line would end one that does not."""
    lines = stderr.splitlines(keepends=True)
    head = lines[:1] if lines and lines[0].startswith(PTDIAG_LINE) else []
    body = lines[len(head):]
    end = next((i for i, line in enumerate(body) if line.startswith(PTDIAG_LINE)), len(body))
    if 0 < end < len(body) and body[end - 1] == b"\n" and REPORT_HEADER.match(body[end]):
        end -= 1
    return b"".join(body[:end]), [line.decode().rstrip("\n") for line in head + body[end:]]


def assert_stop_announced(report: dict, stderr: bytes, by: str) -> dict:
    """An early stop is said in the report (`stopped_by`, the first note) and once on the
    terminal, in ptdiag's report after the program's own output."""
    from ptdiag.report.model import stop_sentence

    stop = report["stopped_by"]
    assert stop["by"] == by and stop["step"] == report["steps_observed"], stop
    sentence = stop_sentence(stop)
    assert report["notes"][0] == sentence
    if stop["keep_running"]:  # the advice is an option `-o` accepts
        from ptdiag.options import parse

        specialist, _, setting = stop["keep_running"].removeprefix("-o ").partition(".")
        parse(specialist, *setting.split("=", 1))
    assert stderr.decode().count(sentence) == 1
    report_start = stderr.rindex("\nptdiag ▸ ".encode())
    assert stderr.index(sentence.encode()) > report_start
    return stop


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh working directory: its run store is ./ptdiag-runs inside it."""
    return tmp_path
