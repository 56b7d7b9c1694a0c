"""Every verification metric by name (ptdiag.interventions.METRICS says what each measures),
gathered from the modules that read them: measure (loss, loader wait, repeat runs),
measure_step (step time), measure_shards (what each rank's loader drew)."""

from __future__ import annotations

from ptdiag.verification import measure, measure_shards, measure_step

METRICS = {**measure.METRICS, **measure_step.METRICS, **measure_shards.METRICS}
