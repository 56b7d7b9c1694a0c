"""The seam between the two sides of the process line: what the probe (inside the user's
processes) writes into the run dir and the analysis reads back. Both sides import this
module; it imports neither, nor torch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# -- run dir layout ------------------------------------------------------------------------
# where a diagnosed run's ranks dump their NCCL Flight Recorder buffers
# (TORCH_FR_DUMP_TEMP_FILE, see specialists.distributed.CHILD_ENV)
FLIGHT_RECORDER_DIR = "flight_recorder"
# each rank's live collective state (probe.plugins.distributed.live), read after a hang
LIVE_STATE_DIR = "distributed"

# -- names shared by writer and reader -------------------------------------------------------
# torch.distributed's module-level collectives the probe wraps; a stack frame in one of
# these is a rank waiting in a collective
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
               "broadcast", "broadcast_object_list", "reduce", "gather", "scatter", "barrier",
               "monitored_barrier", "send", "recv")
# the phases of a step the performance breakdown times between the probe's boundaries
STEP_PHASES = ("forward", "backward", "optimizer")
# which companion run a child process is (reproducibility's repeat/audit/resume runs)
REPRO_ROLE_ENV = "PTDIAG_REPRO_ROLE"


# -- the event log's encoding ------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """Strict JSON of user values (argparse results, config, NaN losses): non-finite
    floats as the strings "nan"/"inf", anything else JSON cannot say as its repr."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan", "inf": valid JSON, still readable
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def read_events(path: Path) -> list[dict]:
    """All complete events of one file; a line cut short by a crash is skipped."""
    events = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events
