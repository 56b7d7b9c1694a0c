"""The label review of the real corpus (issue 17): scripts/routing_label_audit.py and the
record of every label changed after checking its thread (label_fixes.txt)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXES = ROOT / "diagnostics/routing/label_fixes.txt"
BLIND = ROOT / "diagnostics/routing/label_audit_blind.txt"


def _audit():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("routing_label_audit", ROOT / "scripts/routing_label_audit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _corpus(tmp_path: Path) -> Path:
    lines = [
        {"text": "OOM on 4 GPUs", "expected": ["distributed", "memory"], "vague": False, "source": "a/b#1", "group": "a/b"},
        {"text": "训练很慢", "expected": ["performance"], "vague": False, "source": "c/d#2", "group": "c/d"},
    ]
    path = tmp_path / "real_reports.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def test_relabel_changes_only_the_listed_reports(tmp_path, monkeypatch, capsys):
    audit = _audit()
    corpus = _corpus(tmp_path)
    monkeypatch.setattr(audit, "CORPUS", corpus)
    before = corpus.read_text(encoding="utf-8").splitlines()
    fixes = tmp_path / "fixes.txt"
    fixes.write_text("# comment\na/b#1 | mem\n", encoding="utf-8")
    audit.relabel(fixes)
    after = corpus.read_text(encoding="utf-8").splitlines()
    assert json.loads(after[0])["expected"] == ["memory"]
    assert after[1] == before[1]  # untouched lines stay byte for byte (CJK kept, not escaped)
    assert "a/b#1: distributed,memory -> memory" in capsys.readouterr().out


def test_relabel_refuses_a_source_not_in_the_corpus(tmp_path, monkeypatch):
    audit = _audit()
    corpus = _corpus(tmp_path)
    monkeypatch.setattr(audit, "CORPUS", corpus)
    before = corpus.read_text(encoding="utf-8")
    fixes = tmp_path / "fixes.txt"
    fixes.write_text("x/y#9 | perf\n", encoding="utf-8")
    try:
        audit.relabel(fixes)
    except SystemExit as stop:
        assert "x/y#9" in str(stop)
    else:
        raise AssertionError("relabel accepted a source that is not in the corpus")
    assert corpus.read_text(encoding="utf-8") == before


def test_compare_counts_agreement_and_kinds(tmp_path, monkeypatch, capsys):
    audit = _audit()
    monkeypatch.setattr(audit, "CORPUS", _corpus(tmp_path))
    blind = tmp_path / "blind.txt"
    blind.write_text("a/b#1 | mem\nc/d#2 | perf?\n", encoding="utf-8")
    audit.compare(blind)
    out = capsys.readouterr().out
    assert "first label agrees 1/2 = 50.0 %" in out
    assert "first distributed -> memory" in out
    assert "vague flag differs" in out


def test_the_recorded_fixes_are_in_the_corpus():
    """Every label change decided from a thread is what the corpus holds now."""
    audit = _audit()
    corpus = {report["source"]: report for report in audit.load()}
    for line in FIXES.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            source, field = (part.strip() for part in line.split("|")[:2])
            labels, vague = audit.parse_labels(field)
            assert corpus[source]["expected"] == labels, source
            assert corpus[source]["vague"] == vague, source


def test_the_blind_sample_is_in_the_corpus():
    """label_audit_blind.txt relabels 200 distinct reports of the corpus (drawn by
    `sample --seed 17` when the corpus held 1739; a grown corpus draws others)."""
    audit = _audit()
    sources = {report["source"] for report in audit.load()}
    relabelled = [line.split("|")[0].strip() for line in BLIND.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(set(relabelled)) == len(relabelled) == 200
    assert set(relabelled) <= sources
