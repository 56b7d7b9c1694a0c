"""What ptdiag itself costs inside the program, measured, and kept within a budget.

Per step. The probe times its own work: two clock reads around each plugin hook the
Dispatcher calls and each model-hook callback (`charge`, by owner: a plugin's name, or an
instrument's, which begins with its plugin's: "numerics module watch"). At each primary
optimizer step it sets that against the program's own time for the step (the step's
wall time less ptdiag's). Every CHECK_STEPS steps outside one-off windows it takes ptdiag's
share of those steps, each step's cost capped at the period's second largest (`_capped_sum`:
one step where a hook was preempted does not shed; work done on sampled steps only, 1 step
in 4, still counts at its mean), over the program's median step (the steps a loaded box
preempted are not the program's pace); above STEP_SHARE, the costliest owner that can shed work sheds
some (a check sampled, fewer modules watched, a check switched off), and
`probe.switch_off` says what and why. Work nothing can shed (the recorder's lines of each
step) still counts, until the recorder itself sheds: on steps far shorter than its few
tens of microseconds it keeps 1 step in `stride` (`records(step)`: step time, loss, LR,
phase times), which the report says. At exit the run's figures are written (`probe_cost`).

One-off windows (the profiler, MemTracker's step, the numerics replay). `window(what)`
opens one once per run (None the second time, whatever the loop or the optimizer does);
the steps it spans are left out of the per-step accounting; and it may grow the process
by at most WINDOW_GROWTH of the size the process had when it opened (ptdiag's target: a
peak at most 1.2x the program's own). The window's owner asks `over()` at its safe
points and closes it early, abandoned, when it is; what it cost is recorded (`window`).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Callable

STEP_SHARE = 0.05  # ptdiag's time per step, at most this share of the program's own
CHECK_STEPS = 8  # steps measured between two looks at the share
WARMUP_STEPS = 2  # the first steps build caches, ptdiag's and torch's: not measured
WINDOW_GROWTH = 0.15  # a one-off window may grow the process by this share of its size
RECORDER_STRIDES = (4, 16)  # the recorder's per-step lines, kept for 1 step in this many when shed
RECORDER_OWNERS = ("tracking", "performance", "probe")  # whose per-step cost the stride lowers
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


def rss() -> int:
    """The process's resident memory now, in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """The process's lifetime peak of resident memory, in bytes (never reset)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_UNIT


def _capped_sum(costs: list[float]) -> float:
    """A period's costs, step by step, each counted at most as the period's second largest:
    a median would miss work done on 1 step in 4 (the recorder's lines once shed: ~100 µs on
    a 0.6 ms step, 5% of the run and 0% of the median step), a plain sum would count one
    step whose hook was preempted on a loaded box (1 ms for the recorder's lines)."""
    cap = sorted(costs)[-2] if len(costs) > 1 else costs[0]
    return sum(min(cost, cap) for cost in costs)


class Sheddable:
    """An owner's ways to cost less, in order: (what it gives up, as the report's "switched
    off" line names it; the action that gives it up)."""

    def __init__(self, owners: tuple[str, ...], steps: list[tuple[str, Callable[[], None]]]) -> None:
        self.owners, self._steps = owners, list(steps)

    def shed(self) -> str | None:
        """Give up the next piece of per-step work and name it; None when nothing is left."""
        if not self._steps:
            return None
        what, action = self._steps.pop(0)
        action()
        return what


class Window:
    """One one-off measurement, open until `close()`."""

    def __init__(self, budget: "Budget", what: str, allowance: int | None = None) -> None:
        self.budget, self.what = budget, what
        self.rss_before = rss()
        self.peak_before = max(peak_rss(), self.rss_before)
        self.allowance = int(self.rss_before * WINDOW_GROWTH) if allowance is None else allowance
        self.step_before = budget.steps
        self._started = time.perf_counter()
        self.closed = False

    def grown(self) -> int:
        return rss() - self.rss_before

    def over(self, expansion: float = 1.0, excluding: int = 0) -> bool:
        """Whether the window's growth so far, less `excluding` bytes (the program's own
        growth meanwhile), times `expansion` (what the instrument still adds when it
        closes, per byte grown now), exceeds the allowance."""
        return (self.grown() - excluding) * expansion > self.allowance

    def close(self, abandoned: str | None = None) -> None:
        """Record what the window cost; `abandoned` says why it was cut short."""
        if self.closed:
            return
        self.closed = True
        self.budget._closed(self)
        self.budget.emit("window", what=self.what, steps=self.budget.steps - self.step_before,
                         seconds=round(time.perf_counter() - self._started, 4), grew=self.grown(),
                         peak_grew=max(0, peak_rss() - self.peak_before), allowance=self.allowance,
                         abandoned=abandoned)
        if abandoned:
            self.budget.switch_off(self.what, abandoned)


class Budget:
    def __init__(self, emit: Callable, switch_off: Callable[..., None], clock: Callable[[], float] = time.perf_counter) -> None:
        self.emit, self.switch_off, self._clock = emit, switch_off, clock
        self.steps = 0
        self._step: dict[str, float] = {}  # owner -> seconds, this step
        self._last_end: float | None = None
        self._window_in_step = False
        self._open: list[Window] = []
        self._ran: set[str] = set()
        self._period: list[tuple[float, dict]] = []  # (program's seconds, ptdiag's by owner) per step
        self._run_spent: dict[str, float] = {}
        self._run_program = 0.0
        self._run_steps = 0
        self._sheddable: list[Sheddable] = []
        self.shed: list[str] = []
        self.stride = 1  # the recorder keeps the steps that are multiples of this
        self.sheddable(RECORDER_OWNERS, [(f"the recorder's per-step lines (step time, loss, learning rate, phase "
                                          f"times): now 1 step in {n}", lambda n=n: self._keep_one_in(n))
                                         for n in RECORDER_STRIDES])

    # -- per step ----------------------------------------------------------------------------
    def charge(self, owner: str, seconds: float) -> None:
        """Hot path: once per plugin hook call and per model-hook callback."""
        step = self._step
        step[owner] = step.get(owner, 0.0) + seconds

    def waited(self, owner: str, seconds: float) -> None:
        """`owner`'s hook spent `seconds` of the time charged to it waiting for the device
        to finish the program's own queued work (the numerics watch's one read per
        backward, on a GPU): the program's time, not ptdiag's. Charged, a GPU's backward
        would count as ptdiag's cost and the watch be shed on every GPU run."""
        self.charge(owner, -seconds)

    def sheddable(self, owners: tuple[str, ...], steps: list[tuple[str, Callable[[], None]]]) -> None:
        """`steps` lower the cost charged to `owners` (a plugin's name, its instruments'),
        one at a time, first first, while ptdiag is over its budget."""
        self._sheddable.append(Sheddable(owners, steps))

    def records(self, step: int) -> bool:
        """Whether the recorder writes step `step`'s lines (hot path: once per hook that records)."""
        return step % self.stride == 0

    def _keep_one_in(self, stride: int) -> None:
        self.stride = stride

    def step_ended(self) -> None:
        now = self._clock()
        self.steps += 1
        spent, self._step = self._step, {}
        measured = (self._last_end is not None and not self._window_in_step and self.steps > WARMUP_STEPS)
        wall = now - self._last_end if self._last_end is not None else 0.0
        self._last_end = now
        self._window_in_step = bool(self._open)  # a window still open spans the next step too
        if not measured:
            return
        ours = sum(spent.values())
        program = max(wall - ours, 1e-9)
        self._period.append((program, spent))
        self._run_program += program
        self._run_steps += 1
        for owner, seconds in spent.items():
            self._run_spent[owner] = self._run_spent.get(owner, 0.0) + seconds
        if len(self._period) >= CHECK_STEPS:
            self._check()

    def _check(self) -> None:
        period, self._period = self._period, []
        program_s = statistics.median(program for program, _ in period)
        # over the program's typical step: a sum would count the steps a loaded box preempted
        # (one 15 ms wait in 8 steps of 0.6 ms hid a recorder at 13% of every step)
        share = _capped_sum([sum(spent.values()) for _, spent in period]) / (program_s * len(period))
        if share <= STEP_SHARE:
            return
        by_step: dict[str, list[float]] = {}  # plugin -> its seconds in each step of the period
        for i, (_, spent) in enumerate(period):
            for owner, seconds in spent.items():
                by_step.setdefault(owner.split(" ", 1)[0], [0.0] * len(period))[i] += seconds
        cost = {plugin: _capped_sum(seconds) / len(period) for plugin, seconds in by_step.items()}  # per step
        candidates = sorted(self._sheddable, key=lambda s: -sum(cost.get(o, 0.0) for o in s.owners))
        step_ms = program_s * 1000
        for candidate in candidates:
            what = candidate.shed()
            if what is None:
                self._sheddable.remove(candidate)
                continue
            owned = sum(cost.get(o, 0.0) for o in candidate.owners)
            self.shed.append(what)
            self.switch_off(what, f"ptdiag's per-step work took {share:.1%} of the program's {step_ms:.2f} ms step "
                                  f"(budget {STEP_SHARE:.0%}); {candidate.owners[0]} {owned * 1e6:.0f} µs of it",
                            budget=True)
            return

    # -- one-off windows -----------------------------------------------------------------------
    def window(self, what: str, allowance: int | None = None) -> Window | None:
        """Open the one-off window `what`, or None when it already ran in this process.
        `allowance`: the bytes it may grow the process by, when the user set them."""
        if what in self._ran:
            return None
        self._ran.add(what)
        window = Window(self, what, allowance)
        self._open.append(window)
        self._window_in_step = True
        return window

    def _closed(self, window: Window) -> None:
        if window in self._open:
            self._open.remove(window)

    # -- the run's figures -----------------------------------------------------------------------
    def close(self) -> None:
        """At exit: what ptdiag's per-step work cost over the steps it measured."""
        for window in list(self._open):
            window.close()
        if not self._run_steps:
            return
        ours = sum(self._run_spent.values())
        self.emit("probe_cost", steps=self._run_steps, share=round(ours / self._run_program, 4),
                  program_step_s=round(self._run_program / self._run_steps, 6),
                  by_owner_us={o: round(s / self._run_steps * 1e6, 1) for o, s in sorted(self._run_spent.items())},
                  shed=self.shed)
