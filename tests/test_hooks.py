"""Hooks are declared with their parameters (ptdiag.probe.plugin.HOOKS); a plugin method
named like a hook that is not one, or that takes other parameters, is found when the
Dispatcher is built: logged for the report in a user's run, a failure here in tests."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import ptdiag.probe.plugins
from ptdiag.probe.core import Probe
from ptdiag.probe.plugin import HOOKS, Dispatcher, Plugin, subscription_problems

PLUGINS = [m.name for m in pkgutil.iter_modules(ptdiag.probe.plugins.__path__)]


@pytest.mark.parametrize("name", PLUGINS)
def test_every_shipped_plugin_subscribes_only_to_declared_hooks_with_their_parameters(tmp_path, name):
    probe = Probe(tmp_path, {"specialists": []}, 0)
    plugin = importlib.import_module(f"ptdiag.probe.plugins.{name}").Plugin(probe)
    assert subscription_problems(plugin) == {}
    assert [n for n, _ in inspect.getmembers(type(plugin), inspect.isfunction) if n.startswith("on_")], name
    probe.events.close()


class Misspelled(Plugin):
    def __init__(self, probe) -> None:
        super().__init__(probe)
        self.calls = []

    def on_stpe(self, step, optimizer) -> None:  # a typo of on_step
        self.calls.append("on_stpe")

    def on_step_begin(self, step) -> None:  # the optimizer is missing
        self.calls.append("on_step_begin")

    def on_exit(self) -> None:
        self.calls.append("on_exit")


def test_a_misspelled_or_misshaped_hook_is_logged_and_left_out(tmp_path):
    probe = Probe(tmp_path, {"specialists": []}, 0)
    plugin = Misspelled(probe)
    problems = subscription_problems(plugin)
    assert set(problems) == {"on_stpe", "on_step_begin"}
    assert "is not a hook of the probe" in problems["on_stpe"]
    assert "on_step_begin(step) does not take the hook's parameters (step, optimizer)" in problems["on_step_begin"]
    dispatcher = Dispatcher([plugin], probe.log_error)
    assert not dispatcher.wants("on_step_begin") and dispatcher.wants("on_exit")
    dispatcher.call("on_step_begin", 1, object())  # not called with arguments it cannot take
    dispatcher.call("on_exit")
    assert plugin.calls == ["on_exit"]
    log = (tmp_path / "probe-errors.log").read_text()
    assert log.count("hook not subscribed") == 2 and "Misspelled.on_stpe" in log
    probe.events.close()


def test_the_declarations_are_what_the_probe_calls_with():
    """Each hook's declared parameters against the probe's calls of it (core.py, patches.py):
    every declared hook is called, with as many arguments as it declares, at every site."""
    import ast
    from pathlib import Path

    root = Path(ptdiag.probe.__file__).parent
    seen: dict[str, set[int]] = {}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "call" and node.args \
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("on_"):
                seen.setdefault(node.args[0].value, set()).add(len(node.args) - 1)
    assert set(seen) == set(HOOKS)
    assert {hook: counts for hook, counts in seen.items() if counts != {len(HOOKS[hook].params)}} == {}


class Counter(Plugin):
    def __init__(self, probe, name: str, calls: list, fail: bool = False) -> None:
        super().__init__(probe)
        self.name, self.calls, self.fail = name, calls, fail

    def on_batch(self, loader, wait_s) -> None:
        self.calls.append(self.name)
        if self.fail:
            raise RuntimeError("ptdiag's own bug")

    def on_step(self, step, optimizer) -> None:
        self.calls.append(f"{self.name} step")


def test_a_parked_hook_is_not_called_until_put_back_in_plugin_order(tmp_path):
    """A plugin whose per-step work is sampled parks its hooks between the steps it keeps;
    a subscriber that raised stays out when the others come back."""
    probe = Probe(tmp_path, {"specialists": []}, 0)
    calls: list = []
    dispatcher = Dispatcher([Counter(probe, "a", calls), Counter(probe, "b", calls), Counter(probe, "c", calls, True)],
                            probe.log_error)
    dispatcher.call("on_batch", None, 0.0)
    assert calls == ["a", "b", "c"]
    dispatcher.set_active("a", ("on_batch",), False)
    dispatcher.set_active("a", ("on_batch",), False)  # idempotent
    calls.clear()
    dispatcher.call("on_batch", None, 0.0)
    dispatcher.call("on_step", 1, None)
    assert calls == ["b", "a step", "b step", "c step"]  # c raised: left out since
    dispatcher.set_active("a", ("on_batch",), True)
    calls.clear()
    dispatcher.call("on_batch", None, 0.0)
    assert calls == ["a", "b"] and dispatcher.wants("on_batch")
    probe.events.close()
