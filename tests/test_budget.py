"""ptdiag's own budget inside the program (probe/budget.py): per-step cost measured and
shed when over, one-off windows once per run and bounded in memory.

The units run on a clock the test moves; the end-to-end cases are the three programs of
issue 14 (tests/programs/budget_*.py), each run bare and under ptdiag in the same test:
their assertions count work (windows, MemTracker steps, profiler events, optimizer steps)
and compare peak memory, never timings of a loaded box.
"""

from __future__ import annotations

import pytest

from ptdiag.probe import budget as budget_module
from ptdiag.probe.budget import CHECK_STEPS, STEP_SHARE, WARMUP_STEPS, Budget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def steps(budget: Budget, clock: Clock, count: int, program_s: float, charges: dict[str, float]) -> None:
    """`count` steps of `program_s` of the program's own time plus `charges` of ptdiag's."""
    for _ in range(count):
        for owner, seconds in charges.items():
            budget.charge(owner, seconds)
        clock.now += program_s + sum(charges.values())
        budget.step_ended()


def make() -> tuple[Budget, Clock, list, list]:
    clock, events, offs = Clock(), [], []
    budget = Budget(lambda kind, **fields: events.append((kind, fields)), lambda what, why: offs.append((what, why)),
                    clock=clock)
    return budget, clock, events, offs


def test_over_budget_the_costliest_owner_sheds_one_step_per_look():
    budget, clock, events, offs = make()
    shed: list[str] = []
    budget.sheddable(("memory",), [("memory a", lambda: shed.append("memory a"))])
    budget.sheddable(("numerics",), [("numerics a", lambda: shed.append("numerics a")),
                                     ("numerics b", lambda: shed.append("numerics b"))])
    # numerics costs 30% of a 1 ms step (its module watch, charged by instrument name), memory 10%
    charges = {"numerics": 0.0001, "numerics module watch": 0.0002, "memory": 0.0001, "tracking": 0.00001}
    steps(budget, clock, WARMUP_STEPS + CHECK_STEPS, 0.001, charges)
    assert shed == ["numerics a"]
    assert offs[0][0] == "numerics a" and "budget 5%" in offs[0][1] and "numerics 300 µs" in offs[0][1]
    steps(budget, clock, CHECK_STEPS, 0.001, charges)
    assert shed == ["numerics a", "numerics b"]
    steps(budget, clock, 2 * CHECK_STEPS, 0.001, charges)  # numerics has nothing left: memory next, then none
    assert shed == ["numerics a", "numerics b", "memory a"]
    budget.close()
    kind, cost = events[-1]
    assert kind == "probe_cost" and cost["steps"] == 4 * CHECK_STEPS
    assert cost["shed"] == shed and cost["by_owner_us"]["numerics module watch"] == pytest.approx(200.0)
    assert cost["share"] == pytest.approx(0.41, abs=0.001)


def test_within_budget_nothing_is_shed():
    budget, clock, events, offs = make()
    budget.sheddable(("numerics",), [("numerics a", lambda: pytest.fail("shed within budget"))])
    steps(budget, clock, WARMUP_STEPS + 4 * CHECK_STEPS, 0.001, {"numerics": 0.001 * STEP_SHARE * 0.8})
    assert offs == []


def test_one_slow_step_does_not_shed():
    """The median share decides: a step where ptdiag's hook was preempted is one step."""
    budget, clock, _, offs = make()
    budget.sheddable(("numerics",), [("numerics a", lambda: None)])
    steps(budget, clock, WARMUP_STEPS + CHECK_STEPS - 1, 0.001, {"numerics": 0.00001})
    steps(budget, clock, 1, 0.001, {"numerics": 0.1})
    assert offs == []


def test_a_window_runs_once_and_its_steps_are_not_charged():
    budget, clock, events, offs = make()
    budget.sheddable(("performance",), [("performance a", lambda: pytest.fail("a window's cost was charged"))])
    steps(budget, clock, WARMUP_STEPS, 0.001, {})
    window = budget.window("performance windows")
    assert window is not None and budget.window("performance windows") is None
    steps(budget, clock, 2 * CHECK_STEPS, 0.001, {"performance": 0.01})  # a profiler costs 10x the step
    window.close()
    assert budget.window("performance windows") is None  # once per run, also after it closed
    steps(budget, clock, 1, 0.001, {"performance": 0.01})  # the step the window closed in: still not charged
    steps(budget, clock, CHECK_STEPS - 1, 0.001, {})
    kinds = [kind for kind, _ in events]
    assert kinds == ["window"] and events[0][1]["steps"] == 2 * CHECK_STEPS and events[0][1]["abandoned"] is None
    assert offs == []


def test_an_abandoned_window_is_said(monkeypatch):
    budget, _, events, offs = make()
    sizes = iter([1000, 1400, 1400])  # when it opens, when asked, when it closes
    monkeypatch.setattr(budget_module, "rss", lambda: next(sizes))
    window = budget.window("memory breakdown")
    assert window.allowance == int(1000 * budget_module.WINDOW_GROWTH)
    assert window.over(expansion=10, excluding=0) is True
    window.close(abandoned="it would grow the process too much")
    assert offs == [("memory breakdown", "it would grow the process too much")]
    assert events[0][1]["grew"] == 400 and events[0][1]["abandoned"]


def test_window_growth_beyond_the_programs_own():
    budget, _, _, _ = make()
    window = budget.window("performance windows")
    window.allowance = 100
    window.rss_before -= 1000  # the process grew 1000 bytes since the window opened
    assert window.over(excluding=950) is False  # 950 of them the program's own pace
    assert window.over(excluding=950, expansion=3) is True
