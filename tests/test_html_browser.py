"""The HTML report in a real browser: headless Chromium (Debian package `chromium`).

Skipped, with the reason, where Chromium is not installed; CI installs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from browser import chromium
from browser.dom import PLOT_IDS, Elements
from browser.runs import SAMPLE_RUNS, hostile_run, sample_run
from ptdiag.diagnose import analyse_run
from ptdiag.report.html import CSP, write_html

pytestmark = pytest.mark.slow
BINARY = chromium.find()
needs_chromium = pytest.mark.skipif(BINARY is None, reason="headless Chromium not installed "
                                    "(apt-get install chromium); CI installs it")
MIN_SCREENSHOT_BYTES = 20_000  # a blank page of this size is ~6 KB; a rendered report is far more


def _page(run_dir: Path) -> Path:
    return write_html(analyse_run(run_dir), run_dir / "report.html")


@needs_chromium
def test_console_capture_sees_a_script_that_runs(tmp_path):
    """The 'no console messages' checks below mean something: a page that runs a script is caught."""
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><p>x</p><script>console.error("ptdiag-control")</script>')
    assert any("ptdiag-control" in line for line in chromium.dump_dom(BINARY, page).console)


@needs_chromium
@pytest.mark.parametrize("sample", sorted(SAMPLE_RUNS))
def test_sample_report_renders_without_console_errors(sample, tmp_path_factory, tmp_path):
    page = _page(sample_run(sample, tmp_path_factory.getbasetemp()))
    loaded = chromium.dump_dom(BINARY, page)
    assert loaded.console == []
    dom = loaded.stdout
    assert 'id="verdict"' in dom and 'id="findings"' in dom
    for plot in ("loss", "step_time"):
        assert f'<svg class="plot" data-plot="{plot}"' in dom
    assert dom.count("<polyline") >= 1 and dom.count('class="bar"') >= 3
    png = tmp_path / f"{sample}.png"
    shot = chromium.screenshot(BINARY, page, png)
    assert shot.console == []
    assert chromium.png_size(png) == chromium.WINDOW
    assert png.stat().st_size > MIN_SCREENSHOT_BYTES


@needs_chromium
@pytest.mark.parametrize("with_csp", [True, False], ids=["as-written", "csp-removed"])
def test_injected_markup_never_runs(with_csp, tmp_path_factory, tmp_path):
    """Escaping alone keeps the payloads inert: the same page with its CSP removed runs nothing."""
    page = _page(hostile_run(tmp_path_factory.getbasetemp()))
    if not with_csp:
        stripped = tmp_path / "no-csp.html"
        stripped.write_text(page.read_text().replace(CSP, "default-src * 'unsafe-inline'"))
        page = stripped
    loaded = chromium.dump_dom(BINARY, page)
    assert loaded.console == []  # a payload that ran would log "ptdiag-injected-..." (or a CSP refusal)
    dom = Elements(loaded.stdout)  # the DOM after load: nothing was added by a payload
    assert not dom.of("script") and not dom.of("img") and dom.event_handlers() == []
    assert dom.of("svg") and all(svg.get("data-plot") in PLOT_IDS for svg in dom.of("svg"))
    assert 'console.error("ptdiag-injected-script")' in "".join(dom.text)
