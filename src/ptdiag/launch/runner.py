"""Run the command as a child process with the probe injected, and supervise it.

The child inherits ptdiag's stdin, stdout and stderr, so its output streams live and
byte for byte as without ptdiag. A companion run (the command again, for a specialist:
`output_dir`) writes its streams to stdout.log and stderr.log there instead: the user's
terminal shows the program's output once, as without ptdiag. The child stays in
ptdiag's process group: a Ctrl-C typed in the terminal reaches it directly. Signals are taken with sigwaitinfo so that the sender
is known: a terminal's SIGINT (from the kernel) already reached the child, one sent to
ptdiag alone with kill(1) is forwarded. A second interrupt kills the child's process
tree at once. `--timeout` dumps every probed process's Python stacks and every NCCL
rank's Flight Recorder (flight_recorder.py), then ends the tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from ptdiag.launch import flight_recorder
from ptdiag.probe.core import STACK_DUMP_SIGNAL

INJECT_DIR = Path(__file__).parent / "inject"
OUTPUT_LOGS = ("stdout.log", "stderr.log")  # a companion run's streams, in its output_dir
PTDIAG_SRC = Path(__file__).resolve().parents[2]
SI_KERNEL = 0x80  # si_code of signals the kernel sends (the terminal's Ctrl-C)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def handled_signals() -> tuple[signal.Signals, ...]:
    """The signals ptdiag takes for the child: those not ignored. A command started in the
    background of a script (or under nohup) inherits SIGINT ignored, and so does the child:
    the program shrugs off a `kill -INT` there, so ptdiag must not count it as an interrupt
    (two would kill the run). Unblocked and ignored, the kernel drops it, as without ptdiag."""
    return tuple(s for s in HANDLED_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN)
TERMINATE_GRACE_S = 5.0
STACK_DUMP_WAIT_S = 1.0
POLL_S = 0.25


@dataclass
class ChildOutcome:
    returncode: int
    started: float
    ended: float
    interrupted_by: str | None = None  # "SIGINT" / "SIGTERM" sent to ptdiag
    timed_out_at: float | None = None
    signals_forwarded: list[str] = field(default_factory=list)
    flight_recorder: dict | None = None  # NCCL ranks asked for a dump at --timeout, and those that dumped

    @property
    def exit_code(self) -> int:
        """The shell's convention: a child killed by signal N gives 128 + N."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode

    def to_dict(self) -> dict:
        return {"returncode": self.returncode, "exit_code": self.exit_code,
                "started": self.started, "ended": self.ended,
                "interrupted_by": self.interrupted_by, "timed_out_at": self.timed_out_at,
                "signals_forwarded": self.signals_forwarded, "flight_recorder": self.flight_recorder}


def child_environment(run_dir: Path, plan: dict, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    for name, value in plan.get("env", {}).items():
        env.setdefault(name, value)  # what the user set wins
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(INJECT_DIR) + (os.pathsep + existing if existing else "")
    env["PTDIAG_RUN_DIR"] = str(run_dir)
    env["PTDIAG_PLAN"] = json.dumps(plan)
    env["PTDIAG_SRC"] = str(PTDIAG_SRC)
    return env


class Supervisor:
    def __init__(self, command: list[str], program: str, run_dir: Path, plan: dict,
                 timeout_s: float | None = None,
                 on_tick: Callable[[float], None] | None = None,
                 env: dict[str, str] | None = None, output_dir: Path | None = None) -> None:
        self.command = command
        self.program = program
        self.run_dir = run_dir
        self.plan = plan
        self.timeout_s = timeout_s
        self.on_tick = on_tick
        self.extra_env = env or {}
        self.output_dir = output_dir
        self._interrupts = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._outcome_signals: list[str] = []
        self._interrupted_by: str | None = None
        self._done = threading.Event()
        self._signal_thread: threading.Thread | None = None
        self._handled: tuple[signal.Signals, ...] = HANDLED_SIGNALS
        self._flight_recorder: dict | None = None

    def run(self) -> ChildOutcome:
        self._handled = handled_signals()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._handled)
        started = time.time()
        streams = self._output_streams()
        try:
            self._proc = subprocess.Popen(
                self.command, executable=self.program,  # argv[0] as typed, like a shell
                env={**child_environment(self.run_dir, self.plan), **self.extra_env},
                stdout=streams[0], stderr=streams[1],
                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, old_mask))
            self._signal_thread = threading.Thread(target=self._signal_loop, daemon=True)
            self._signal_thread.start()
            timed_out_at = self._wait(started)
        finally:
            flight_recorder.remove_pipes(self.run_dir)
            for stream in streams:
                if stream is not None:
                    stream.close()
            self._stop_signal_loop()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return ChildOutcome(returncode=self._proc.returncode, started=started, ended=time.time(),
                            interrupted_by=self._interrupted_by, timed_out_at=timed_out_at,
                            signals_forwarded=self._outcome_signals, flight_recorder=self._flight_recorder)

    def _output_streams(self) -> tuple:
        """The child's stdout and stderr: ptdiag's own (None: inherited), or a companion
        run's log files."""
        if self.output_dir is None:
            return None, None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return tuple(open(self.output_dir / name, "wb") for name in OUTPUT_LOGS)

    # -- waiting -----------------------------------------------------------------------------
    def _wait(self, started: float) -> float | None:
        timed_out_at = None
        while True:
            try:
                self._proc.wait(timeout=POLL_S)
                return timed_out_at
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.time() - started
            if self.on_tick is not None:
                try:
                    self.on_tick(elapsed)
                except Exception:
                    pass  # a display problem must not stop the supervision
            if self.timeout_s is not None and timed_out_at is None and elapsed > self.timeout_s:
                timed_out_at = time.time()
                self.dump_stacks()
                self._flight_recorder = flight_recorder.dump_all(self.run_dir)
                self.end_tree()

    def dump_stacks(self) -> None:
        """Ask every probed process of this run for its Python stacks (faulthandler)."""
        tree = {p.pid for p in self._tree()}
        procs = self.run_dir / "procs"
        for entry in procs.iterdir() if procs.is_dir() else []:
            if entry.name.isdigit() and int(entry.name) in tree:
                try:
                    os.kill(int(entry.name), STACK_DUMP_SIGNAL)
                except ProcessLookupError:
                    pass
        time.sleep(STACK_DUMP_WAIT_S)

    def end_tree(self, grace_s: float = TERMINATE_GRACE_S) -> None:
        """SIGTERM the child and its descendants, SIGKILL what is left after the grace.

        The child itself is waited for through Popen only: psutil would reap it and
        Popen would then report exit code 0 for a killed process."""
        tree = self._tree()
        for p in tree:
            _send(p, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        try:
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        descendants = [p for p in tree if p.pid != self._proc.pid]
        _, alive = psutil.wait_procs(descendants, timeout=max(0.0, deadline - time.monotonic()))
        if self._proc.poll() is None:
            self._proc.kill()
        for p in alive:
            _send(p, signal.SIGKILL)

    def kill_tree(self) -> None:
        """The second interrupt: no more grace."""
        for p in self._tree():
            _send(p, signal.SIGKILL)

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self._proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    # -- signals -----------------------------------------------------------------------------
    def _signal_loop(self) -> None:
        while not self._done.is_set():
            info = signal.sigtimedwait(self._handled, POLL_S)
            if info is not None:
                self._on_signal(signal.Signals(info.si_signo), from_terminal=info.si_code == SI_KERNEL)

    def _on_signal(self, sig: signal.Signals, from_terminal: bool) -> None:
        with self._lock:
            self._interrupts += 1
            self._interrupted_by = self._interrupted_by or sig.name
            if self._interrupts >= 2:
                self.kill_tree()
                self._outcome_signals.append("SIGKILL")
            elif not from_terminal and self._proc.poll() is None:
                self._proc.send_signal(sig)
                self._outcome_signals.append(sig.name)

    def _stop_signal_loop(self) -> None:
        self._done.set()
        if self._signal_thread is not None:
            self._signal_thread.join()
        while (info := signal.sigtimedwait(self._handled, 0)) is not None:
            self._interrupted_by = self._interrupted_by or signal.Signals(info.si_signo).name


def _send(process: psutil.Process, sig: signal.Signals) -> None:
    try:
        process.send_signal(sig)
    except psutil.NoSuchProcess:
        pass
