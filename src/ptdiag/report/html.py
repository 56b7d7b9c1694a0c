"""The HTML renderer: one self-contained file to look at, print or attach to a ticket.

No script, no network: inline CSS, plots as inline SVG (`svg.py`), links to the run's
artifacts as relative paths. A Content-Security-Policy forbids scripts and every fetch,
so even a value that escaped escaping could not run or call out; the escaping itself
is done in `html_sections` and `svg` (and tested with injected markup).
"""

from __future__ import annotations

import os
from pathlib import Path

from ptdiag.report.html_plots import plots_section
from ptdiag.report.html_sections import (artifacts_section, findings_section, metadata_section, notes_section,
                                         route_section, text, verdict_section)
from ptdiag.report.model import Report

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #dadce0; --error: #c5221f; --warning: #b06000; --info: #1a73e8; --ok: #188038; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 1.6em; line-height: 1.25; margin: .2em 0 .3em; }
h2 { font-size: 1.25em; border-bottom: 1px solid var(--line); padding-bottom: .2em; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin: .4em 0; }
h4 { font-size: .9em; margin: .6em 0 .2em; color: var(--muted); }
code, pre { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; overflow-wrap: anywhere; white-space: pre-wrap; }
pre { background: #f6f8fa; padding: 8px; max-height: 30em; overflow: auto; }
a { color: var(--info); overflow-wrap: anywhere; }
#verdict { border-left: 6px solid var(--muted); padding: 4px 0 4px 16px; }
#verdict .status { margin: 0; color: var(--muted); }
#verdict.status-completed { border-color: var(--ok); }
#verdict.status-timeout, #verdict.status-interrupted { border-color: var(--warning); }
#verdict.status-diverged, #verdict.status-crashed, #verdict.status-oom, #verdict.status-hung, #verdict.status-killed { border-color: var(--error); }
.symptom q, .counts { color: var(--muted); }
.finding { border: 1px solid var(--line); border-left: 5px solid var(--muted); border-radius: 4px; padding: 8px 14px; margin: 10px 0; }
.finding.severity-error { border-left-color: var(--error); }
.finding.severity-warning { border-left-color: var(--warning); }
.finding.severity-info { border-left-color: var(--info); }
.badge { font-size: .75em; text-transform: uppercase; letter-spacing: .04em; padding: 1px 6px; border-radius: 3px; color: #fff; background: var(--muted); vertical-align: middle; }
.severity-error .badge { background: var(--error); } .severity-warning .badge { background: var(--warning); } .severity-info .badge { background: var(--info); }
.finding .code { margin: 0; color: var(--muted); font-size: .85em; }
.fix { background: #e6f4ea; padding: 6px 10px; border-radius: 3px; }
.verified { border-left: 3px solid #999; padding: 2px 10px; margin: 6px 0; }
.verified.helped { border-color: #188038; } .verified.not-helped { border-color: #e37400; }
.before-after td, .before-after th { padding: 1px 8px; text-align: left; }
table.kv { border-collapse: collapse; width: 100%; margin: 4px 0; }
table.kv th { text-align: left; font-weight: 600; width: 28%; vertical-align: top; padding: 3px 10px 3px 0; color: var(--muted); }
table.kv td { padding: 3px 0; vertical-align: top; }
table.kv tr { border-bottom: 1px solid #f1f3f4; }
.how { color: var(--muted); font-size: .9em; }
figure.plot-figure { margin: 14px 0 22px; }
svg.plot { width: 100%; height: auto; display: block; font-family: system-ui, sans-serif; }
svg.plot .plot-area { fill: #fff; stroke: var(--line); }
svg.plot .grid { stroke: #eceff1; }
svg.plot .tick, svg.plot .legend { font-size: 11px; fill: #3c4043; }
svg.plot .axis-label { font-size: 12px; fill: var(--muted); }
svg.plot .marker-label { font-size: 11px; }
svg.plot .nonfinite { font-size: 14px; font-weight: bold; }
figcaption { color: var(--muted); font-size: .9em; }
.not-plotted { color: var(--muted); font-size: .9em; }
footer { color: var(--muted); font-size: .85em; margin-top: 2em; }
@media print {
  body { font-size: 11pt; } main { max-width: none; padding: 0; }
  .finding, figure.plot-figure, table.kv tr { break-inside: avoid; }
  h2 { break-after: avoid; } a { color: inherit; }
  pre { max-height: none; overflow: visible; }
}
"""

def render_html(report: Report, base: Path | None = None) -> str:
    """The whole page, from the Report alone. `base` is the folder the page will live in
    (the artifacts' links are relative to it)."""
    body = "".join((verdict_section(report), findings_section(report), plots_section(report),
                    route_section(report), metadata_section(report), artifacts_section(report, base),
                    notes_section(report)))
    title = f"ptdiag {report.status}: {report.run_id}"
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>{text(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}<footer>Written by ptdiag. Run <code>ptdiag runs show {text(report.run_id)}</code> "
            "to see it again in the terminal.</footer></main></body></html>\n")


def write_html(report: Report, path: Path) -> Path:
    """Write the page atomically (a half-written report is never opened) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(report, base=path.parent.resolve())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
