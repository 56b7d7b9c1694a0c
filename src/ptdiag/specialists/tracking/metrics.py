"""The numbers tracking adds to a run's metrics: what the script logged, peak memory, the
losses of optimizers other than the primary (a GAN's generator).

`runs list --sort logged.val_acc.max` and `--sort peak_rss_bytes` read these from the
index, so they are summaries (last/min/max), never whole curves.
"""

from __future__ import annotations

import math

from ptdiag.recorded import RecordedRun
from ptdiag.specialists.tracking import record


def tracked_metrics(run: RecordedRun) -> dict:
    found: dict = dict(record.peak_memory(run))
    logged = {}
    for tag, points in record.logged_scalars(run).items():
        finite = [value for _, value in points if math.isfinite(value)]
        logged[tag] = {"last": points[-1][1], "step": points[-1][0], "n": len(points),
                       "min": min(finite) if finite else None,
                       "max": max(finite) if finite else None}
    if logged:
        found["logged"] = logged
    others = {name: {"last": points[-1][1], "step": points[-1][0], "n": len(points)}
              for name, points in record.other_losses(run).items()}
    if others:
        found["other_losses"] = others
    return found
