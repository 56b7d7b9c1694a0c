"""The plots section of the HTML report: every plot the Report's series can feed, and for
each one they cannot, a line saying what was not measured (never an empty axis)."""

from __future__ import annotations

from html import escape

from ptdiag.report import html_series as series
from ptdiag.report.model import Report
from ptdiag.report.svg import Marker, horizontal_bars, line_chart, number, stacked_bars


def byte_size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.4g} {unit}"
        value /= 1024
    return f"{value:.4g} TiB"


def seconds(value: float) -> str:
    return f"{number(value)} s"


def _figure(title: str, svg: str, caption: str) -> str:
    return (f'<figure class="plot-figure"><h3>{escape(title)}</h3>{svg}'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _loss(report: Report) -> tuple[str, str]:
    loss = series.loss(report.series)
    if loss is None:
        return "", "Loss: no loss was seen (the recorder reads the tensor passed to backward())."
    first = series.first_nonfinite_loss(report.series)
    markers = [Marker(first["step"], f"first non-finite loss: step {first['step']}")] if first else []
    caption = (f"Loss per optimizer step (rank 0); it became {first['value']} at step {first['step']}"
               + (f" (epoch {first['epoch']})" if first.get("epoch") is not None else "") + "."
               if first else "Loss per optimizer step (rank 0); every value was finite.")
    svg = line_chart("loss", "Loss", [loss], x_label="optimizer step", y_label="loss", markers=markers)
    return _figure("Loss", svg, caption), ""


def _grad_norms(report: Report) -> tuple[str, str]:
    norms = series.grad_norms(report.series)
    if not norms:
        return "", "Gradient norm: not recorded in this run (the numerics specialist records it)."
    svg = line_chart("grad_norm", "Gradient norm", norms, x_label="optimizer step", y_label="gradient norm")
    return _figure("Gradient norm", svg, "Gradient norm per optimizer step: total and per parameter group."), ""


def _step_breakdown(report: Report) -> tuple[str, str]:
    breakdown = series.step_breakdown(report.series)
    if breakdown is None:
        return "", "Step time: fewer than two optimizer steps, so no step could be timed."
    svg = stacked_bars("step_time", "Step time breakdown", breakdown.steps, breakdown.parts,
                       x_label="optimizer step", y_label="seconds", y_format=seconds)
    caption = ("Time per optimizer step (rank 0), from one step's end to the next, split by the "
               + ("performance specialist's phase clocks." if breakdown.phases_measured else
                  "recorder into data wait and the rest; forward, backward and optimizer were not timed "
                  "in this run (the performance specialist times them)."))
    return _figure("Step time breakdown", svg, caption), ""


def _memory(report: Report) -> tuple[str, str]:
    lines = series.memory(report.series)
    if not lines:
        return "", "Memory at step boundaries: not recorded in this run (the memory specialist records it)."
    svg = line_chart("memory", "Memory at step boundaries", lines, x_label="optimizer step", y_label="memory",
                     log_y=False, y_format=byte_size)
    return _figure("Memory at step boundaries", svg, "Memory held at the end of each optimizer step (rank 0)."), ""


def _memory_peak(report: Report) -> tuple[str, str]:
    items = series.memory_breakdown(report.findings)
    if not items:
        return "", ""
    svg = horizontal_bars("memory_peak", "Memory peak breakdown", items, value_format=byte_size)
    return _figure("Memory peak breakdown", svg, "What the memory peak was made of (from the memory specialist's breakdown)."), ""


def _ranks(report: Report) -> tuple[str, str]:
    lines = series.rank_step_times(report.series)
    if not lines:
        return "", ""
    svg = line_chart("rank_step_time", "Step time per rank", lines, x_label="optimizer step",
                     y_label="seconds", y_format=seconds)
    return _figure("Step time per rank", svg, "Step time of each rank: a rank slower than the others holds every rank back."), ""


def plots_section(report: Report) -> str:
    results = [_loss(report), _grad_norms(report), _step_breakdown(report), _memory(report), _memory_peak(report),
               _ranks(report)]
    figures = [figure for figure, _ in results if figure]
    notes = "".join(f"<li>{escape(reason)}</li>" for _, reason in results if reason)
    return ('<section id="plots"><h2>Plots</h2>' + "".join(figures)
            + (f'<ul class="not-plotted">{notes}</ul>' if notes else "") + "</section>")
