"""The curves of a recorded run, named as they are exported: ptdiag's own per-step
measurements under `ptdiag/`, and what the script logged under its own tags."""

from __future__ import annotations

import math
from pathlib import Path

from ptdiag.recorded import RecordedRun
from ptdiag.specialists.tracking import record


def run_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} with only finite values (exporters cannot carry NaN;
    the run's status and findings say where it went non-finite)."""
    run = RecordedRun.load(run_dir)
    series: dict[str, list[tuple[int, float]]] = {"ptdiag/loss": run.losses()}
    main = run.main
    steps = main.of("step") if main else []
    series["ptdiag/lr"] = [(e["step"], float(e["lr"][0])) for e in steps
                           if e.get("lr") and isinstance(e["lr"][0], (int, float))]
    series["ptdiag/step_time_s"] = [(e["step"], e["dt"]) for e in steps if e.get("dt") is not None]
    series["ptdiag/data_wait_s"] = [(e["step"], e["data_s"]) for e in steps if e.get("data_s") is not None]
    series.update(record.logged_scalars(run))
    return {tag: [(step, value) for step, value in points if math.isfinite(value)]
            for tag, points in series.items() if points}
