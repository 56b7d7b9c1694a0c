"""Options are declared once (ptdiag.options) and checked before a run starts."""

from __future__ import annotations

import importlib
import json

import pytest

from conftest import PYTHON, run_ptdiag
from ptdiag.options import OPTIONS, OptionError, parse, parse_all, settings
from ptdiag.router.plan import SPECIALISTS


def test_every_specialist_has_a_table_and_every_default_is_a_valid_value():
    assert list(OPTIONS) == list(SPECIALISTS)
    for specialist, declared in OPTIONS.items():
        assert len({o.name for o in declared}) == len(declared), specialist
        for option in declared:
            assert option.help and option.kind
            if option.default is not None:
                assert option.parse(option.default) == option.default, (specialist, option.name)


@pytest.mark.parametrize("specialist, key, text, value", [
    ("memory", "breakdown_step", "3", 3), ("memory", "breakdown_step", "0", 0),
    ("numerics", "stop", "no", False), ("numerics", "stop", "On", True), ("numerics", "stop", "0", False),
    ("performance", "stop", "YES", "yes"), ("memory", "target_memory", "16GiB", "16GiB"),
    ("memory", "target", "V100-16GB", "V100-16GB"), ("reproducibility", "resume_cmd", "python t.py --resume", "python t.py --resume"),
])
def test_values_are_typed_once(specialist, key, text, value):
    assert parse(specialist, key, text) == value
    assert parse(specialist, key, value) == value  # a typed value (the plan's) reads back the same


@pytest.mark.parametrize("specialist, key, text, says", [
    ("memory", "breakdown_step", "two", "breakdown_step (whole number >= 0, default 2)"),
    ("memory", "breakdown_step", "-1", "is not a whole number"),
    ("performance", "skip", "0", "less than 1"),
    ("numerics", "stop", "maybe", "not yes or no"),
    ("performance", "stop", "sometimes", "not one of auto, yes, no"),
    ("memory", "target_memory", "16Gx", "not a memory size"),
    ("memory", "target", "V100-17GB", "known: T4-16GB"),
    ("memory", "breakdwn_step", "2", "no such option; memory options: breakdown_step"),
    ("tracking", "x", "1", "tracking has no options"),
    ("nosuch", "x", "1", "the specialists are memory, performance, numerics"),
])
def test_a_wrong_key_or_value_is_one_line_naming_the_valid_ones(specialist, key, text, says):
    with pytest.raises(OptionError) as raised:
        parse(specialist, key, text)
    message = str(raised.value)
    assert says in message and "\n" not in message and message.startswith(f"-o {specialist}.{key}")


def test_settings_fill_the_declared_defaults():
    assert settings("performance", {"skip": "2"}) == {"skip": 2, "profile_steps": 3, "profile": True, "scan_steps": 2,
                                                      "tail_steps": 3, "stop": "auto", "telemetry": True,
                                                      "window_memory": None}
    assert settings("tracking", {}) == {}
    assert parse_all({"memory": {"target": "A100-80GB"}}) == {"memory": {"target": "A100-80GB"}}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_plugin_reads_only_declared_options(tmp_path, name):
    """A plugin that reads a key its table lacks fails here (KeyError), not in a user's run."""
    from ptdiag.probe.core import Probe

    module = f"ptdiag.probe.plugins.{name}"
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{name} has no in-process part")
    probe = Probe(tmp_path, {"specialists": [name], "options": {}}, 0)
    importlib.import_module(module).Plugin(probe)
    probe.events.close()


def test_a_plan_holding_a_bad_value_costs_the_specialist_its_options_never_the_run(tmp_path):
    from ptdiag.probe.core import Probe

    probe = Probe(tmp_path, {"specialists": [], "options": {"memory": {"breakdown_step": "two"}}}, 0)
    assert probe.settings("memory")["breakdown_step"] == 2
    assert "memory's options ignored" in (tmp_path / "probe-errors.log").read_text()
    probe.events.close()


def test_the_python_api_checks_options_as_the_cli_does():
    from ptdiag.api import session

    with pytest.raises(ValueError, match="breakdown_step=two: 'two' is not a whole number"):
        session("memory grows", options={"memory": {"breakdown_step": "two"}})
    assert session("memory grows", options={"memory": {"breakdown_step": 3}}).options.specialist_options == \
        {"memory": {"breakdown_step": 3}}


@pytest.mark.parametrize("args, says", [
    (["-o", "memory.breakdown_step=two"], "-o memory.breakdown_step=two: 'two' is not a whole number"),
    (["--target-memory", "16Gx"], "not a memory size: '16Gx'"),
    (["-o", "numerics.stopp=no"], "no such option; numerics options: stop (yes|no, default yes)"),
])
def test_the_cli_refuses_bad_options_before_any_run(workdir, args, says):
    proc = run_ptdiag("loss is nan", *args, "--", PYTHON, "-c", "print('ran')", cwd=workdir, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith("ptdiag: error: ") and says in err, err
    assert err.count("\n") == 1 and b"ran" not in proc.stdout
    assert not (workdir / "ptdiag-runs").exists()


def test_ptdiag_options_lists_every_option(workdir):
    text = run_ptdiag("options", cwd=workdir, timeout=60).stdout.decode()
    for specialist, declared in OPTIONS.items():
        assert all(f"-o {specialist}.{o.name} " in text for o in declared)
    listed = json.loads(run_ptdiag("options", "--json", cwd=workdir, timeout=60).stdout)
    assert listed["memory"][0] == {"name": "breakdown_step", "type": "int", "default": 2,
                                   "help": OPTIONS["memory"][0].help}
    assert "ptdiag options" in run_ptdiag("--help", cwd=workdir, timeout=60).stdout.decode()
    from ptdiag.interventions import INTERVENTIONS  # every fix verification can try, in both listings

    assert all(f"  {i.name} (" in text and ", ".join(i.verifies) in text for i in INTERVENTIONS)
    assert [i["name"] for i in listed["interventions"]] == [i.name for i in INTERVENTIONS]
