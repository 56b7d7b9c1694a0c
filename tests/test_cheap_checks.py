"""Evidence that can find what the words missed (issue 17, item 4): a triage runs the
cheap checks of reproducibility, distributed and tracking beside its plan, and a job
with several ranks always runs distributed's cheap checks, whatever the words said."""

from __future__ import annotations

import pytest

from ptdiag import diagnose
from ptdiag.cli import _with_specialist
from ptdiag.probe.core import Probe, cheap_checks, load_plugins
from ptdiag.router import Route, route, with_evidence
from ptdiag.router.table import default_table

TRIAGE_WORDS = "Fix my PyTorch training"


def test_a_triage_plans_the_cheap_checks_of_what_the_words_may_have_missed():
    plan = route(TRIAGE_WORDS)
    assert plan.ambiguous and plan.specialists == ["numerics", "memory", "performance"]
    assert plan.cheap_checks == ["reproducibility", "distributed", "tracking"]
    assert "cheap checks of reproducibility, distributed and tracking" in plan.notes[-1]


@pytest.mark.parametrize("text", ["loss is NaN after epoch 3", "CUDA out of memory", "training is slow"])
def test_words_that_name_a_symptom_add_no_cheap_checks(text):
    assert route(text).cheap_checks == []


def test_the_triages_cheap_checks_are_data_and_never_repeat_the_plan():
    table = default_table()
    assert not set(table.triage_cheap) & set(table.triage_plan)
    assert table.several_ranks.specialist == "distributed" and table.several_ranks.min_world_size == 2


def test_the_run_plan_carries_the_cheap_checks_to_the_probe(tmp_path):
    plan = diagnose.plan_for(route(TRIAGE_WORDS), diagnose.Options(), tmp_path)
    assert plan["specialists"] == ["numerics", "memory", "performance"]
    assert plan["cheap"] == ["reproducibility", "distributed", "tracking"]
    # the cheap ones have no parent part: no second run of the command is planned
    assert "reproducibility" not in plan["specialists"]


@pytest.mark.parametrize("plan, world_size, expected", [
    ({"specialists": ["numerics"]}, None, set()),
    ({"specialists": ["numerics"]}, 1, set()),
    ({"specialists": ["numerics"]}, 2, {"distributed"}),  # the example: planned numerics alone
    ({"specialists": ["distributed", "numerics"]}, 4, set()),  # planned in full already
    ({"specialists": ["numerics", "memory", "performance"], "cheap": ["reproducibility", "distributed", "tracking"]},
     1, {"reproducibility", "distributed", "tracking"}),
    ({"specialists": ["reproducibility"], "cheap": ["reproducibility", "tracking"]}, 1, {"tracking"}),
])
def test_the_probe_runs_cheap_checks_of_the_triage_and_of_several_ranks(plan, world_size, expected):
    assert cheap_checks(plan, world_size) == expected


def test_world_size_from_the_launchers_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun gives each worker
    probe = Probe(tmp_path, {"specialists": ["numerics"]}, 1)
    try:
        assert probe.cheap == {"distributed"}
        plugins = {p.name: p for p in load_plugins(probe, ["numerics"])}
        assert set(plugins) == {"tracking", "numerics", "distributed"}
        assert plugins["distributed"].cheap and not plugins["numerics"].cheap
    finally:
        probe.events.close()


def test_an_mp_spawn_rank_passes_its_world_size(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # mp.spawn sets none: the process group says
    probe = Probe(tmp_path, {"specialists": ["performance"]}, 0, world_size=2)
    try:
        assert probe.cheap == {"distributed"}
    finally:
        probe.events.close()


def test_after_the_run_several_ranks_add_distributed_cheap_checks_with_a_note():
    words = route("the loss plateaus at a higher value than expected")
    assert words.specialists == ["numerics"]
    after = with_evidence(words, "completed", 2)
    assert after.specialists == ["numerics"] and after.cheap_checks == ["distributed"]
    assert after.notes[-1].startswith("the run had 2 processes, so distributed's cheap checks")
    assert with_evidence(words, "completed", 1).cheap_checks == []


def test_a_hang_with_several_ranks_is_a_post_mortem_not_a_cheap_check():
    after = with_evidence(route(TRIAGE_WORDS), "hung", 2)
    assert after.specialists[-1] == "distributed" and "distributed" not in after.cheap_checks


def test_asking_for_a_specialist_in_full_takes_it_out_of_the_cheap_checks():
    after = _with_specialist(route(TRIAGE_WORDS), "reproducibility", "--repeat asks for it")
    assert after.specialists[-1] == "reproducibility"
    assert after.cheap_checks == ["distributed", "tracking"]
    assert isinstance(after, Route)
