"""No input crashes the router or the command-line parser (hypothesis)."""

from __future__ import annotations

import contextlib
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptdiag import cli
from ptdiag.entry import split_argv
from ptdiag.router import SPECIALISTS, route

TOKENS = ["diagnose", "track", "route", "runs", "list", "show", "inspect", "env", "--json", "--store",
          "--only", "--max-steps", "--timeout", "--fail-on", "--tag", "--option", "-o", "--name", "--quiet",
          "--status", "--limit", "--help", "memory", "numerics,gpu", "0", "-1", "1e9", "k=v", "=", "x.y=z"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_router_never_crashes(text):
    plan = route(text)
    assert all(s in SPECIALISTS for s in plan.specialists) and plan.specialists
    assert 0.0 <= plan.confidence <= 1.0
    assert plan.to_dict()["ambiguous"] == plan.ambiguous


@given(st.lists(st.text(max_size=5)))
def test_split_argv(argv):
    head, command = split_argv(argv)
    if "--" in argv:
        assert head + ["--"] + command == argv
    else:
        assert head == argv and command is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)), max_size=6))
def test_cli_parser_never_crashes(tmp_path, monkeypatch, head):
    if "env" in head:  # imports torch: covered by test_cli_input
        return
    monkeypatch.chdir(tmp_path)
    cli.user_command = None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.run_app(head)
    assert isinstance(code, int)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
