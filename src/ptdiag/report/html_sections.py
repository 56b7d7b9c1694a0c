"""The text sections of the HTML report: verdict, findings, route, run metadata, artifacts.

Everything shown here can come from the user (symptom, command, paths, parameter names,
module names, exception messages), so every value goes through `text()` or `value()`,
which escape it; nothing is ever inserted raw.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from html import escape
from pathlib import Path
from urllib.parse import quote

from ptdiag.findings import SEVERITIES, Finding
from ptdiag.report.model import Report, verifications
from ptdiag.report.people import number
from ptdiag.report.html_series import PHASES
from ptdiag.report.svg import PALETTE, Marker, Series, horizontal_bars, line_chart

LONG_VALUE_CHARS = 300  # longer values fold into <details> (open when printed)
# artifact key -> (what it is, how to open it); {path} is the link's relative path
ARTIFACT_HELP = {
    "trace": ("Profiler trace (Chrome trace format)",
              'Open <a href="https://ui.perfetto.dev" rel="noopener noreferrer">ui.perfetto.dev</a>, choose '
              "“Open trace file” and pick this file: Perfetto reads it in your browser, nothing is uploaded."),
    "memory_snapshot": ("CUDA memory snapshot",
                        'Open <a href="https://pytorch.org/memory_viz" rel="noopener noreferrer">pytorch.org/memory_viz</a> '
                        "and drop this file on the page: it is read in your browser, nothing is uploaded."),
    "tensorboard": ("TensorBoard log dir", "Run <code>tensorboard --logdir {path}</code> and open the address it prints."),
    "events": ("Probe events, one JSON object per line per process", ""),
    "report": ("This report as JSON (the machine-readable contract)", ""),
    "stacks": ("Python stacks dumped at the time-out or a fatal signal", ""),
    "git_patch": ("Uncommitted changes at the start of the run", "<code>git apply</code> it on the recorded commit."),
    "html": ("This report", ""),
}


def text(value) -> str:
    return escape(str(value), quote=True)


def value(item) -> str:
    """Any evidence or config value: strings as they are, a number rounded for people (the
    JSON report keeps it whole), the rest as JSON; long ones fold."""
    shown = (item if isinstance(item, str) else number(item) if isinstance(item, float)
             else json.dumps(item, default=str, ensure_ascii=False))
    if len(shown) <= LONG_VALUE_CHARS:
        return f"<code>{text(shown)}</code>"
    return (f"<details><summary><code>{text(shown[:120])}…</code> ({len(shown)} characters)</summary>"
            f"<pre>{text(shown)}</pre></details>")


def table(rows: dict, css: str = "kv") -> str:
    cells = "".join(f"<tr><th>{text(k)}</th><td>{value(v)}</td></tr>" for k, v in rows.items()
                    if v not in (None, "", [], {}))
    return f'<table class="{css}">{cells}</table>' if cells else ""


def when(timestamp: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp)) if timestamp else None


def verdict_section(report: Report) -> str:
    counts = {s: sum(f.severity == s for f in report.findings) for s in SEVERITIES}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n) or "no findings"
    symptom = (f'<p class="symptom">You said: <q>{text(report.symptom)}</q></p>' if report.symptom else "")
    return (f'<header id="verdict" class="status-{text(report.status)}">'
            f'<p class="status">ptdiag ▸ <strong>{text(report.status)}</strong> ▸ run {text(report.run_id)}</p>'
            f"<h1>{text(report.headline())}</h1>{symptom}"
            f'<p class="counts">{text(summary)}'
            + (f"; {text(report.steps_observed)} training steps; exit code {text(report.exit_code)}"
               if report.ran_a_command else "") + "</p>"
            + "".join(f'<p class="announced">{text(sentence)}</p>' for sentence in report.announcements())
            + "</header>")


def _finding(f: Finding) -> str:
    evidence = {k: v for k, v in f.evidence.items() if v not in (None, [], {})}
    return (f'<article class="finding severity-{text(f.severity)}">'
            f'<h3><span class="badge">{text(f.severity)}</span> {text(f.title)}</h3>'
            f'<p class="code">{text(f.code)} · {text(f.specialist)}</p>'
            + (f'<p class="detail">{text(f.detail)}</p>' if f.detail else "")
            + (f'<div class="evidence"><h4>Evidence</h4>{table(evidence)}</div>' if evidence else "")
            + (f'<p class="fix"><strong>Fix:</strong> {text(f.fix)}</p>' if f.fix else "")
            + "".join(_verification(label, v) for label, v in verifications(f))
            + "</article>")


# measured curves drawn, not tabled: key -> (title, y label)
CURVES = {"losses": ("Loss: this run and with the fix", "loss")}


def _curves(name: str, before: dict, after: dict) -> str:
    """The two runs' curves in one chart, the main run's failure marked."""
    charts = []
    for key, (title, y_label) in CURVES.items():
        if before.get(key) and after.get(key):
            markers = [Marker(before["step"], f"this run: {before.get('value')}")] if before.get("step") else []
            charts.append(line_chart(f"verified-{name}-{key}", title,
                                     [Series("this run", [tuple(p) for p in before[key]]),
                                      Series("with the fix", [tuple(p) for p in after[key]])],
                                     x_label="optimizer step", y_label=y_label, markers=markers))
    return "".join(charts)


# measured breakdowns drawn as bars, each part's before and after in a pair: key -> title
BREAKDOWNS = {"phases_ms": "Step time p50 by phase (ms): this run (before) and with the fix (after)"}
PHASE_LABELS = dict(PHASES)


def _breakdowns(name: str, before: dict, after: dict) -> str:
    """Both runs' step-time phases, pair by pair: what the fix moved, and what it left."""
    charts = []
    for key, title in BREAKDOWNS.items():
        if not (isinstance(before.get(key), dict) and isinstance(after.get(key), dict)):
            continue
        items = [(f"{PHASE_LABELS.get(part, part)}, {side}", float(ms))
                 for part in dict.fromkeys([*before[key], *after[key]])
                 for side, ms in (("before", before[key].get(part) or 0.0), ("after", after[key].get(part) or 0.0))
                 if isinstance(ms, (int, float))]
        charts.append(horizontal_bars(f"verified-{name}-{key}", title, items, value_format=lambda v: f"{v:.3g} ms",
                                      colours=PALETTE[:2]))
    return "".join(charts)


def _run_name(verified: dict) -> str:
    """The verification run's name, unique within the report (the LR's second rung is
    `lr_scale-rung2`): its folder's, else the intervention's."""
    folder = str(verified.get("run_dir") or "").rstrip("/").rsplit("/", 1)[-1]
    return folder.removeprefix("verify-") if folder.startswith("verify-") else str(verified.get("intervention", ""))


def _verification(label: str, verified: dict) -> str:
    """The fix tried in a verification run: its sentence, then what it measured before and
    after side by side, and where the run's output is."""
    measured = verified.get("measured") or {}
    before, after = measured.get("before") or {}, measured.get("after") or {}
    rows = "".join(f"<tr><th>{text(k)}</th><td>{value(before.get(k))}</td><td>{value(after.get(k))}</td></tr>"
                   for k in dict.fromkeys([*before, *after]) if k not in CURVES and k not in BREAKDOWNS)
    helped = {True: "helped", False: "not-helped"}.get(verified.get("helped"), "unknown")
    return (f'<div class="verified {helped}"><p><strong>{text(label.capitalize())}:</strong> '
            f'{text(verified.get("summary", ""))}</p>'
            + (f'<table class="before-after"><tr><th></th><th>this run</th><th>with the fix</th></tr>{rows}</table>'
               if rows else "")
            + _curves(_run_name(verified), before, after)
            + _breakdowns(_run_name(verified), before, after)
            + f'<p class="run-dir">{text(verified.get("intervention"))} {value(verified.get("settings"))} · '
              f'{text(verified.get("steps"))} steps · {text(verified.get("run_dir"))}</p></div>')


def findings_section(report: Report) -> str:
    if not report.findings:
        return '<section id="findings"><h2>Findings</h2><p>None.</p></section>'
    # in the report's order, the cause first: grouping by severity would put a tracking
    # warning above the diagnosis the person asked for
    return (f'<section id="findings"><h2>Findings ({len(report.findings)})</h2>'
            f'{"".join(map(_finding, report.findings))}</section>')


def route_section(report: Report) -> str:
    route = report.route or {}
    plan = " → ".join(route.get("specialists", [])) or "none"
    kind = ("triage: the words name no symptom, so the plan measures instead" if route.get("ambiguous")
            else f"confidence {route.get('confidence', 0):.2f}")
    reasons = "".join(f"<li><strong>{text(r.get('specialist'))}</strong>: matched "
                      f"{', '.join(f'<q>{text(m)}</q>' for m in r.get('matched', []))}</li>"
                      for r in route.get("reasons", []) if r.get("matched"))
    notes = "".join(f"<li>{text(n)}</li>" for n in route.get("notes", []))
    return (f'<section id="route"><h2>Route</h2><p>Plan: <strong>{text(plan)}</strong> ({text(kind)})</p>'
            + (f"<ul>{reasons}</ul>" if reasons else "") + (f'<ul class="notes">{notes}</ul>' if notes else "")
            + "</section>")


def metadata_section(report: Report) -> str:
    env = dict(report.environment or {})
    git = env.pop("git", None) or {}
    host = env.pop("host", None) or {}
    details = env.pop("torch_details", None) or {}
    duration = report.ended - report.started if report.started and report.ended else None
    run = {"run id": report.run_id, "name": report.name,
           "command": shlex.join(report.command) if report.command else None,
           "started": when(report.started), "ended": when(report.ended),
           "duration": f"{duration:.1f} s" if duration is not None else None,
           "exit code": report.exit_code, "steps observed": report.steps_observed, **{
               f"tag {k}": v for k, v in (report.tags or {}).items()}}
    seeds = {kind: f"{s.get('value')} at {s.get('location')}" if isinstance(s, dict) else s
             for kind, s in (report.seeds or {}).items()}
    blocks = [("Run", table(run)), ("Metrics", table(report.metrics or {})),
              ("Parameters", table(report.params or {}) or "<p>No parameters were recorded.</p>"),
              ("Seeds", table(seeds) or "<p>The program set no seeds.</p>"),
              ("Git", table(git) or "<p>Not a git work tree.</p>"),
              ("Environment", table({**env, **details, **host}))]
    return ('<section id="metadata"><h2>Run metadata</h2>'
            + "".join(f"<h3>{title}</h3>{body}" for title, body in blocks if body) + "</section>")


def _href(path: str, base: Path | None) -> str:
    """A link relative to the report's own folder, so the run dir can be moved or shared."""
    target = Path(path)
    if base is not None and target.is_absolute():
        target = Path(os.path.relpath(target, base))
    return quote(target.as_posix())


def artifacts_section(report: Report, base: Path | None) -> str:
    if not report.artifacts:
        return ""
    rows = []
    for key, path in report.artifacts.items():
        what, how = ARTIFACT_HELP.get(key, (key, ""))
        href = _href(str(path), base)
        rows.append(f"<tr><th>{text(what)}</th><td><a href=\"{text(href)}\">{text(path)}</a>"
                    + (f'<div class="how">{how.format(path=text(href))}</div>' if how else "") + "</td></tr>")
    return f'<section id="artifacts"><h2>Artifacts</h2><table class="kv">{"".join(rows)}</table></section>'


def notes_section(report: Report) -> str:
    notes = [n for n in report.notes if n not in report.announcements()]  # the verdict says those
    if not notes:
        return ""
    return '<section id="notes"><h2>Notes</h2><ul>' + "".join(f"<li>{text(n)}</li>" for n in notes) + "</ul></section>"
