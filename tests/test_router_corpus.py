"""The real-report corpus (diagnostics/routing/real_reports.jsonl), its frozen
split, and the router's figures on the held-out side (issue 17).

The floors below are the figures the shipped model reached on the test split
when it was trained, rounded down: a change that makes routing of real reports
worse fails here. The test split's misses are never printed (so nobody tunes on
them); scripts/routing_confusion.py --real shows the figures and the table.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ptdiag.router import route

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "diagnostics/routing/real_reports.jsonl"
SPLIT = ROOT / "diagnostics/routing/real_split.json"
EXCLUDE = Path("/work/shared/routing_exclude.sha256")
SPECIALISTS = {"memory", "performance", "numerics", "distributed", "reproducibility", "tracking"}

# Figures of the shipped model on the frozen test split, rounded down. The issue's
# target is 93 % top-1 and 80 % two-label recall; docs/routing.md keeps the gap.
TEST_TOP1_FLOOR = 0.90
TEST_TWO_LABEL_FLOOR = 0.81
# The rule router alone on the same split (routing_confusion.py --real --baseline):
# the baseline the learned model must beat.
BASELINE_TOP1 = 0.826


def _confusion_script():
    if "routing_confusion" not in sys.modules:
        spec = importlib.util.spec_from_file_location("routing_confusion", ROOT / "scripts/routing_confusion.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["routing_confusion"]


def _rows() -> list[dict]:
    return [json.loads(line) for line in REAL.read_text(encoding="utf-8").splitlines() if line.strip()]


def _exclude_key(source: str) -> str:
    """What the exclude list hashes: 'owner/repo#N' as is; a web page's URL
    lowercased without scheme, 'www.' and trailing slash."""
    if "#" in source and "://" not in source:
        return source
    key = source.lower().split("://", 1)[-1]
    if key.startswith("www."):
        key = key[4:]
    return key.rstrip("/")


def test_corpus_is_large_and_well_formed():
    rows = _rows()
    assert len(rows) >= 1500
    sources = [row["source"] for row in rows]
    assert len(sources) == len(set(sources)), "one case per thread or page"
    for row in rows:
        assert row["text"].strip()
        assert row["expected"] and set(row["expected"]) <= SPECIALISTS
        assert len(row["expected"]) == len(set(row["expected"]))
        assert isinstance(row.get("vague", False), bool)
        assert row["group"]


def test_no_excluded_thread_is_in_the_corpus():
    if not EXCLUDE.exists():
        pytest.skip("the shared exclude list is not on this machine")
    excluded = {line.split()[0].lower() for line in EXCLUDE.read_text().splitlines() if line.strip()}
    hits = [row["source"] for row in _rows()
            if hashlib.sha256(_exclude_key(row["source"]).encode()).hexdigest() in excluded]
    assert not hits


def test_every_specialist_has_real_reports_on_both_sides():
    confusion = _confusion_script()
    for side in ("train", "test"):
        firsts = {row["expected"][0] for row in confusion.load_real(side)}
        assert firsts == SPECIALISTS, side


def test_split_is_by_source_and_matches_the_frozen_list():
    confusion = _confusion_script()
    frozen = json.loads(SPLIT.read_text())
    for group in frozen["test_groups"]:
        assert confusion.in_test_split(group)
    test = confusion.load_real("test")
    train = confusion.load_real("train")
    assert not {row["group"] for row in test} & {row["group"] for row in train}
    share = len(test) / (len(test) + len(train))
    assert 0.15 <= share <= 0.30


def test_learned_router_beats_the_floor_on_the_frozen_test_split():
    confusion = _confusion_script()
    figures = confusion.real_figures(confusion.evaluate_real(confusion.load_real("test")))
    assert figures["top1"] >= TEST_TOP1_FLOOR > BASELINE_TOP1
    assert figures["two_label_recall"] >= TEST_TWO_LABEL_FLOOR


def test_explanations_name_what_drove_a_learned_choice():
    plan = route("the charts on my dashboard stopped updating after I restarted the run")
    assert not plan.ambiguous and plan.specialists[0] == "tracking"
    first = plan.reasons[0]
    assert first["specialist"] == "tracking"
    assert "dashboard" in first["words"]  # top-weighted n-grams
    assert 0.0 < first["probability"] <= 1.0


def test_baseline_figure_is_what_the_rule_router_scores():
    confusion = _confusion_script()
    figures = confusion.real_figures(confusion.evaluate_real(confusion.load_real("test"), confusion.rule_router))
    assert abs(figures["top1"] - BASELINE_TOP1) < 0.01


def test_model_is_shipped_as_compact_data():
    model = ROOT / "src/ptdiag/router/model.json"
    assert model.exists()
    assert model.stat().st_size < 1_500_000
    data = json.loads(model.read_text())
    assert set(data["classes"]) == SPECIALISTS


def test_route_command_stays_fast_and_torch_free():
    code = ("import time, sys; t=time.process_time(); import ptdiag.router as r; "  # CPU time: load-proof
            "r.route('my dataloader is slow and GPU util is 30%'); "
            "assert 'torch' not in sys.modules; print(time.process_time()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) < 1.0  # generous: the 150 ms whole-process figure is measured in docs


def test_ptdiag_route_prints_the_words_and_probability(capsys):
    from ptdiag.entry import print_route

    print_route("the charts on my dashboard stopped updating after I restarted the run", as_json=False)
    out = capsys.readouterr().out
    assert out.startswith("plan: tracking")
    assert "words " in out and "dashboard" in out and "probability 0." in out
