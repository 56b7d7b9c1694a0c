"""The HTML report: plots from plain series, pages from the Report alone (its series built
from real recorded runs), escaping."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import pytest

from browser.dom import PLOT_IDS, Elements
from browser.runs import ATTRIBUTE_PAYLOAD, DIR_PAYLOAD, SCRIPT_PAYLOAD, hostile_run, sample_run
from ptdiag.diagnose import analyse_run
from ptdiag.findings import Finding
from ptdiag.recorded import RecordedRun
from ptdiag.report import html_series, svg
from ptdiag.series import plot_series
from ptdiag.report.html import render_html, write_html
from ptdiag.report.html_series import memory_breakdown
from ptdiag.report.model import Report

SVG = "{http://www.w3.org/2000/svg}"


def parse_svg(text: str) -> ET.Element:
    return ET.fromstring(text)


# -- plots from plain data ------------------------------------------------------------------

def test_line_chart_breaks_at_nonfinite_values_and_marks_them():
    points = [(1, 2.0), (2, 3.0), (3, math.nan), (4, 1.0), (5, 1.5), (6, math.inf)]
    root = parse_svg(svg.line_chart("loss", "Loss", [svg.Series("loss", points)], x_label="step", y_label="loss",
                                    markers=[svg.Marker(3, "first non-finite loss: step 3")]))
    assert root.get("data-plot") == "loss"
    lines = root.findall(f"{SVG}polyline")
    assert [len(p.get("points").split()) for p in lines] == [2, 2]
    crosses = [t for t in root.iter(f"{SVG}text") if t.get("class") == "nonfinite"]
    assert len(crosses) == 2
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "marker-label"]
    assert labels == ["first non-finite loss: step 3"]


def test_line_chart_uses_log_scale_only_for_values_spanning_orders_of_magnitude():
    wide = svg.line_chart("g", "g", [svg.Series("n", [(1, 1.0), (2, 1e6)])], x_label="s", y_label="norm")
    narrow = svg.line_chart("g", "g", [svg.Series("n", [(1, 1.0), (2, 5.0)])], x_label="s", y_label="norm")
    assert "norm (log scale)" in wide and "log scale" not in narrow
    ticks = [t.text for t in parse_svg(wide).iter(f"{SVG}text") if t.get("class") == "tick" and t.get("text-anchor") == "end"]
    assert ticks[0] == "1" and ticks[-1] == "1e+06"


def test_long_series_are_thinned_but_keep_their_spike():
    points = [(i, 1.0) for i in range(10_000)]
    points[7_777] = (7_777, 500.0)
    root = parse_svg(svg.line_chart("l", "l", [svg.Series("loss", points)], x_label="s", y_label="l", log_y=False))
    drawn = [tuple(map(float, p.split(","))) for line in root.findall(f"{SVG}polyline") for p in line.get("points").split()]
    assert len(drawn) <= svg.MAX_POINTS + 2
    assert min(y for _, y in drawn) < svg.TOP + 5  # the spike reaches the top of the plot area


def test_stacked_bars_stack_parts_and_average_long_runs():
    root = parse_svg(svg.stacked_bars("t", "t", [1, 2, 3], {"data": [0.1, 0.0, 0.2], "rest": [0.3, 0.4, 0.2]},
                                      x_label="step", y_label="s"))
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]
    assert len(bars) == 5  # a zero part draws nothing
    heights = {r.find(f"{SVG}title").text: float(r.get("height")) for r in bars}
    assert heights["3: data 0.2"] == pytest.approx(heights["3: rest 0.2"], abs=0.2)
    many = parse_svg(svg.stacked_bars("t", "t", list(range(1000)), {"a": [1.0] * 1000}, x_label="s", y_label="s"))
    assert len([r for r in many.iter(f"{SVG}rect") if r.get("class") == "bar"]) <= svg.MAX_BARS


def test_plot_text_is_escaped():
    text = svg.line_chart("x", SCRIPT_PAYLOAD, [svg.Series(ATTRIBUTE_PAYLOAD, [(1, 1.0), (2, 2.0)])],
                          x_label="<b>", y_label="y")
    root = parse_svg(text)  # still well-formed XML: nothing broke out
    assert root.find(f"{SVG}title").text == SCRIPT_PAYLOAD
    assert not [e for e in root.iter() if e.tag.endswith(("script", "img"))]


def test_memory_peak_breakdown_is_read_from_the_finding():
    finding = Finding("memory.breakdown", "memory", "info", "peak", evidence={
        "parameter_bytes": 4e6, "gradient_bytes": 4e6, "optstate_bytes": 8e6, "activation_bytes": 2e7, "rank": 0})
    assert memory_breakdown([finding]) == [("parameters", 4e6), ("gradients", 4e6), ("optimizer state", 8e6),
                                           ("activations", 2e7)]
    report = Report(run_id="r1", symptom=None, command=None, route={}, status="completed", exit_code=0,
                    steps_observed=0, findings=[finding])
    page = Elements(render_html(report))
    assert [a["data-plot"] for a in page.of("svg")] == ["memory_peak"]


def test_a_verified_performance_fix_shows_both_step_breakdowns_side_by_side():
    """Each phase's bar before and after, in a pair; every word from the run escaped."""
    measured = {"before": {"step_ms_p50": 36.5, "data_wait_share": 0.8, "phases_ms": {"data": 23.8, "forward": 5.0}},
                "after": {"step_ms_p50": 6.2, "data_wait_share": 0.16, "phases_ms": {"data": 1.0, "forward": 5.1}}}
    finding = Finding("performance.dataloader_bound", "performance", "warning", "waits", evidence={})
    finding.verified = {"intervention": "dataloader_workers", "settings": {"num_workers": 2}, "helped": True,
                        "summary": f"with {SCRIPT_PAYLOAD} the step took 6.2 ms", "measured": measured,
                        "run_dir": DIR_PAYLOAD, "steps": 13}
    report = Report(run_id="r1", symptom=None, command=None, route={}, status="completed", exit_code=0,
                    steps_observed=13, findings=[finding])
    page = Elements(render_html(report))
    chart = next(a for a in page.of("svg") if a["data-plot"] == "verified-dataloader_workers-phases_ms")
    assert chart is not None and not page.of("script") and page.event_handlers() == []
    text = "".join(page.text)
    for row in ("data wait, before", "23.8 ms", "data wait, after", "1 ms", "forward, before", "forward, after"):
        assert row in text
    assert SCRIPT_PAYLOAD in text and DIR_PAYLOAD in text  # shown as the text it was
    assert "phases_ms" not in text  # drawn, not tabled


# -- pages from real recorded runs ------------------------------------------------------------

@pytest.mark.slow
def test_nan_run_page_has_verdict_first_then_findings_then_the_marked_loss_curve(tmp_path_factory):
    run_dir = sample_run("resnet_nan", tmp_path_factory.getbasetemp())
    report, run = analyse_run(run_dir), RecordedRun.load(run_dir)
    page = render_html(report)
    order = [page.index(marker) for marker in ('id="verdict"', 'id="findings"', 'id="plots"', 'id="route"',
                                                'id="metadata"', 'id="artifacts"')]
    assert order == sorted(order)
    parsed = Elements(page)
    assert parsed.of("h1") and report.findings[0].title in "".join(parsed.text)
    charts = [a["data-plot"] for a in parsed.of("svg")]
    # a verified finding's own chart (both runs' losses) stands in the findings, before the plots
    verified = [c for c in charts if c.startswith("verified-")]
    assert charts[:len(verified)] == verified
    plots = charts[len(verified):]
    assert plots[:1] == ["loss"] and "step_time" in plots and set(plots) <= PLOT_IDS
    # each plot is there exactly when its data was recorded; otherwise a line says so
    assert ("grad_norm" in plots) == bool(html_series.grad_norms(report.series)) != ("Gradient norm: not recorded" in page)
    assert ("memory" in plots) == bool(html_series.memory(report.series)) != ("Memory at step boundaries: not" in page)
    first = run.first_nonfinite_loss()
    assert page.count('class="marker-label"') == (first is not None)
    if first is not None:
        assert f"first non-finite loss: step {first['step']}" in page
    # the loss curve holds one dot per finite loss and one cross per non-finite one
    losses = run.losses()
    loss_svg = page[page.index('data-plot="loss"'):page.index("</svg>", page.index('data-plot="loss"'))]
    assert loss_svg.count('class="dot"') == sum(math.isfinite(v) for _, v in losses)
    assert loss_svg.count('class="nonfinite"') == sum(not math.isfinite(v) for _, v in losses)


@pytest.mark.slow
def test_written_page_links_artifacts_relative_to_itself(tmp_path_factory):
    run_dir = sample_run("resnet_healthy", tmp_path_factory.getbasetemp())
    report = analyse_run(run_dir)
    for page_path in (run_dir / "report.html", tmp_path_factory.mktemp("elsewhere") / "deep" / "r.html"):
        write_html(report, page_path)
        links = [a["href"] for a in Elements(page_path.read_text()).of("a") if not a["href"].startswith("https://")]
        assert links and all(not href.startswith("/") for href in links)
        assert all((page_path.parent / unquote(href)).exists() for href in links)


@pytest.mark.slow
def test_user_controlled_text_is_escaped_everywhere(tmp_path_factory):
    run_dir = hostile_run(tmp_path_factory.getbasetemp())
    report = analyse_run(run_dir)
    assert report.status == "crashed"
    page = render_html(report)
    parsed = Elements(page)
    assert not parsed.of("script") and not parsed.of("img")
    assert parsed.event_handlers() == []
    assert all(a.get("data-plot") in PLOT_IDS for a in parsed.of("svg"))  # only ours, no injected <svg>
    text = "".join(parsed.text)
    # each payload is shown to the reader as the text it was
    for payload in (SCRIPT_PAYLOAD, ATTRIBUTE_PAYLOAD, DIR_PAYLOAD):
        assert payload in text
    assert json.dumps(report.params["model.class"]) == json.dumps(ATTRIBUTE_PAYLOAD)


def _write_events(run_dir: Path, rank: int, events: list[dict]) -> None:
    (run_dir / "events").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"t": 0.0, **e}) for e in events]
    (run_dir / "events" / f"rank{rank}.p{100 + rank}.jsonl").write_text("\n".join(lines) + "\n")


def test_specialists_events_feed_their_plots(tmp_path):
    """A recorded run dir in the shapes the specialists write (ptdiag.series names them)."""
    steps = range(1, 6)
    for rank in (0, 1):
        _write_events(tmp_path, rank, [
            {"ev": "start", "world_size": 2},
            *[{"ev": "step", "step": s, "dt": None if s == 1 else 0.1 * (1 + rank), "data_s": 0.01} for s in steps],
            *[{"ev": "loss", "step": s, "value": 1.0 / s, "finite": True} for s in steps],
            *[{"ev": "numerics", "step": s, "norm": 10.0 ** s, "norms": [10.0 ** s, 1.0]} for s in steps],
            *[{"ev": "mem_step", "step": s, "rss": 1e9 + s * 1e6} for s in steps],
            {"ev": "perf_steps", "rows": [{"step": s, "dt": 0.1, "data": 0.01, "forward": 0.03, "backward": 0.04,
                                           "optimizer": 0.01, "other": 0.01} for s in range(2, 6)]
             + [{"step": 2, "gpu": True, "dt": 9.0, "forward": 9.0}]},
        ])
    run = RecordedRun.load(tmp_path)
    report = Report(run_id="r", symptom=None, command=None, route={}, status="completed", exit_code=0,
                    steps_observed=5, series=plot_series(run))
    parsed = Elements(render_html(report))
    assert [a["data-plot"] for a in parsed.of("svg")] == ["loss", "grad_norm", "step_time", "memory",
                                                          "rank_step_time"]
    page = render_html(report)
    plot = lambda name: page[page.index(f'data-plot="{name}"'):page.index("</svg>", page.index(f'data-plot="{name}"'))]  # noqa: E731
    assert "gradient norm (log scale)" in plot("grad_norm") and plot("grad_norm").count("<polyline") == 3
    assert plot("step_time").count('class="bar"') == 4 * 5  # host rows only, five phases each
    assert "9 s" not in plot("step_time")  # the device-time row is not mixed in
    assert plot("rank_step_time").count("<polyline") == 2
    assert "performance specialist's phase clocks" in "".join(parsed.text)


def test_a_page_drawn_again_from_report_json_is_the_page_drawn_first(tmp_path):
    """`runs show` draws from the stored report.json: the series read back (non-finite
    values as "nan" strings) draw the same page as the Report built from the run dir."""
    from ptdiag.report.json_report import write_report

    _write_events(tmp_path, 0, [{"ev": "start", "world_size": 1},
                                *[{"ev": "step", "step": s, "dt": 0.1, "data_s": 0.01} for s in range(1, 5)],
                                *[{"ev": "loss", "step": s, "value": v, "finite": isinstance(v, float)}
                                  for s, v in ((1, 2.0), (2, 1.0), (3, "nan"), (4, "inf"))]])
    built = Report(run_id="r", symptom=None, command=None, route={}, status="diverged", exit_code=0,
                   steps_observed=4, series=plot_series(RecordedRun.load(tmp_path)))
    write_report(built, tmp_path / "report.json")
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["series"]["loss"]["points"][2] == [3, "nan"]
    fields = {k: stored[k] for k in Report.__dataclass_fields__ if k in stored}
    again = Report(**{**fields, "findings": []})
    assert render_html(again) == render_html(built)
    assert 'data-plot="loss"' in render_html(again) and "first non-finite loss: step 3" in render_html(again)


def test_a_long_run_carries_bounded_series(tmp_path):
    steps = 20_000
    _write_events(tmp_path, 0, [{"ev": "start", "world_size": 1},
                                *[{"ev": "step", "step": s, "dt": 0.1, "data_s": 0.01} for s in range(1, steps + 1)],
                                *[{"ev": "loss", "step": s, "value": 1.0 + (s == 12_345) * 99, "finite": True}
                                  for s in range(1, steps + 1)]])
    series = plot_series(RecordedRun.load(tmp_path))
    assert len(series["loss"]["points"]) <= svg.MAX_POINTS + 2
    assert [12_345, 100.0] in series["loss"]["points"]  # the spike is kept
    assert len(series["step_time"]["steps"]) <= svg.MAX_BARS
    assert len(json.dumps(series)) < 200_000
