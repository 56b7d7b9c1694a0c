"""Every verification metric by name (ptdiag.interventions.METRICS says what each measures),
gathered from the modules that read them: measure (loss, loader wait, repeat runs),
measure_step (step time), measure_shards (what each rank's loader drew), measure_memory
(graphs recorded for no backward)."""

from __future__ import annotations

from ptdiag.verification import measure, measure_memory, measure_shards, measure_step

METRICS = {**measure.METRICS, **measure_step.METRICS, **measure_shards.METRICS, **measure_memory.METRICS}
