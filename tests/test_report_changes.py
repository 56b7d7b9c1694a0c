"""What ptdiag changed about a run (an early stop, an instrument switched off) is said in the
report: its own fields, the first notes, the terminal and the HTML, from recorded events."""

from __future__ import annotations

import html
import io
import json

from rich.console import Console

from ptdiag.probe.event_log import EventWriter
from ptdiag.recorded import RecordedRun
from ptdiag.report import terminal
from ptdiag.report.html_sections import notes_section, verdict_section
from ptdiag.report.model import Report, announcements
from ptdiag.verdict import stopped_by, switched_off


def recorded(tmp_path, per_rank: dict[int, list[tuple[str, dict]]], max_steps: int | None = None) -> RecordedRun:
    (tmp_path / "meta.json").write_text(json.dumps({"run_id": "r", "plan": {"max_steps": max_steps}}))
    for rank, events in per_rank.items():
        writer = EventWriter(tmp_path / "events" / f"rank{rank}.p{100 + rank}.jsonl")
        for kind, fields in events:
            writer.write(kind, **fields)
        writer.close()
    return RecordedRun.load(tmp_path)


def report_of(run: RecordedRun) -> Report:
    stop, removed = stopped_by(run), switched_off(run)
    return Report(run_id="r", symptom="slow", command=["python", "train.py"], route={}, status="completed",
                  exit_code=0, steps_observed=run.steps_observed, notes=[*announcements(stop, removed), "other"],
                  stopped_by=stop, switched_off=removed)


def rendered(report: Report) -> str:
    out = io.StringIO()
    terminal.render(report, Console(file=out, width=400, highlight=False, soft_wrap=True))
    return out.getvalue()


PERFORMANCE_STOP = {"by": "performance", "reason": "both profiling windows are recorded",
                    "keep_running": "-o performance.stop=no", "wall": 1.0}


def test_a_stop_before_the_given_max_steps_says_so_and_how_to_keep_running(tmp_path):
    steps = [("step", {"step": s}) for s in range(1, 14)]
    run = recorded(tmp_path, {0: [*steps, ("stopped", dict(PERFORMANCE_STOP, step=13))],
                              1: [*steps, ("stopped", dict(PERFORMANCE_STOP, step=13, wall=2.0))]}, max_steps=30)
    report = report_of(run)
    assert report.to_dict()["stopped_by"] == {"by": "performance", "step": 13, "reason": PERFORMANCE_STOP["reason"],
                                              "keep_running": "-o performance.stop=no", "max_steps": 30}
    sentence = report.notes[0]
    assert sentence == ("ptdiag's performance specialist stopped the training after step 13, before the --max-steps 30 "
                        "it was given: both profiling windows are recorded. -o performance.stop=no keeps it running.")
    text = rendered(report)
    assert text.count(sentence) == 1 and "note: other" in text  # said once, under the run line
    assert text.index(sentence) < text.index("Findings")
    in_html = html.escape(sentence, quote=True)
    assert in_html in verdict_section(report) and in_html not in notes_section(report)


def test_max_steps_reached_is_said_without_a_limit_not_reached(tmp_path):
    run = recorded(tmp_path, {0: [("step", {"step": 1}), ("step", {"step": 2}),
                                  ("stopped", {"by": "max_steps", "reason": "--max-steps 2 was reached",
                                               "step": 2, "keep_running": None})]}, max_steps=2)
    assert report_of(run).notes[0] == "ptdiag stopped the training after step 2: --max-steps 2 was reached."


def test_an_instrument_switched_off_on_two_ranks_is_listed_once(tmp_path):
    off = {"what": "memory breakdown", "why": "MemTracker raised NotImplementedError inside forward."}
    run = recorded(tmp_path, {0: [("step", {"step": 1}), ("switched_off", dict(off, step=3))],
                              1: [("switched_off", dict(off, step=2))]})
    report = report_of(run)
    assert report.to_dict()["switched_off"] == [dict(off, step=2)]
    assert "stopped_by" not in report.to_dict()
    assert report.notes[0] == ("ptdiag switched off its memory breakdown at step 2: MemTracker raised "
                               "NotImplementedError inside forward. The training went on without it.")
    assert rendered(report).count(report.notes[0]) == 1


def test_a_switched_off_item_named_with_its_article_keeps_it():
    from ptdiag.report.model import switched_off_sentence

    sentence = switched_off_sentence({"what": "the recorder's per-step lines: now 1 step in 4", "step": 26,
                                      "why": "ptdiag's per-step work took 12% of the step"})
    assert sentence.startswith("ptdiag switched off the recorder's per-step lines: now 1 step in 4 at step 26: ")


def test_a_run_ptdiag_left_alone_has_neither_field(tmp_path):
    report = report_of(recorded(tmp_path, {0: [("step", {"step": 1})]}))
    data = report.to_dict()
    assert "stopped_by" not in data and "switched_off" not in data and data["notes"] == ["other"]


def test_the_stored_report_renders_the_same_again(tmp_path):
    """`ptdiag runs show` builds the Report back from report.json's fields."""
    run = recorded(tmp_path, {0: [("step", {"step": 1}), ("stopped", dict(PERFORMANCE_STOP, step=1)),
                                  ("switched_off", {"what": "profiler", "why": "too many events", "step": 1})]})
    report = report_of(run)
    stored = json.loads(json.dumps(report.to_dict()))
    again = Report(**{k: stored[k] for k in Report.__dataclass_fields__ if k in stored})
    assert again.to_dict() == report.to_dict()
    assert rendered(again) == rendered(report)


def test_the_budgets_samplings_are_one_terminal_line_and_each_in_the_report(tmp_path):
    """pytorch/examples' regression (0.14 ms steps): five samplings by the per-step budget
    took five long lines before the findings. The terminal says them once; a fault is still
    its own line; the notes and the JSON keep every entry."""
    sampled = [("switched_off", {"what": f"instrument {k}", "why": "over budget", "step": 10 + 8 * k, "budget": True})
               for k in range(3)]
    fault = ("switched_off", {"what": "memory tracker", "why": "NotImplementedError: x", "step": 4})
    run = recorded(tmp_path, {0: [("step", {"step": 1}), fault, *sampled]})
    report = report_of(run)
    assert [e.get("budget", False) for e in report.switched_off] == [False, True, True, True]
    out = rendered(report)
    assert out.count("sampled down or switched off its per-step instruments 3 times (steps 10-26)") == 1
    assert "ptdiag switched off its memory tracker at step 4" in out
    assert "instrument 1" not in out  # only in the notes and the JSON
    assert sum("instrument" in note for note in report.notes) == 3
    assert json.loads(json.dumps(report.to_dict()))["switched_off"][1]["budget"] is True
