"""Peak memory and wall time of `ptdiag inspect` on a large trace (results:
docs/benchmarks/performance.md). The trace is synthetic but made of real events: the
HTA NCCL fixture's events repeated with their times shifted, so its structure (kernels,
launches, NCCL, steps) is a real GPU run's at N times the length.

    .venv/bin/python scripts/bench_trace_memory.py [--copies 12] [--src SRC_DIR]

--src runs another checkout's ptdiag (e.g. main) on the same trace, for a before/after.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path("/work/shared/fixtures/gpu_traces/hta__df_index_resolver__df_index_resolver.json.gz")


def build(path: Path, copies: int) -> int:
    trace = json.load(gzip.open(FIXTURE))
    events = trace.pop("traceEvents")
    span = max(e.get("ts", 0) + e.get("dur", 0) for e in events) - min(e.get("ts", 0) for e in events if "ts" in e)
    with gzip.open(path, "wt", compresslevel=1) as out:
        out.write(json.dumps(trace)[:-1] + ', "traceEvents": [')
        for copy in range(copies):
            shift = copy * (span + 1000)
            for i, event in enumerate(events):
                if "ts" in event:
                    event = dict(event, ts=event["ts"] + shift)
                if isinstance(event.get("name"), str) and event["name"].startswith("ProfilerStep#"):
                    event = dict(event, name=f"ProfilerStep#{copy}{event['name'][13:]}")
                out.write(("," if copy or i else "") + json.dumps(event))
        out.write("]}")
    with gzip.open(path, "rb") as raw:
        return sum(len(chunk) for chunk in iter(lambda: raw.read(1 << 24), b""))


def measure(src: Path, trace: Path) -> dict:
    """Peak RSS (getrusage of the child) and wall time of one inspect."""
    code = ("import resource, sys, time, runpy; start = time.perf_counter(); sys.argv = ['ptdiag', 'inspect', sys.argv[1]]\n"
            "try:\n    runpy.run_module('ptdiag', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(trace)], env=dict(os.environ, PYTHONPATH=str(src)),
                          capture_output=True, text=True, timeout=1800)
    peak_kib, seconds = proc.stderr.strip().splitlines()[-1].split()
    return {"peak_rss_mib": round(int(peak_kib) / 1024, 1), "seconds": round(float(seconds), 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=12)
    parser.add_argument("--src", type=Path, action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "big.json.gz"
        size = build(trace, args.copies)
        print(f"trace: {size / 2**20:.0f} MiB of JSON ({trace.stat().st_size / 2**20:.0f} MiB gzip), "
              f"{args.copies} copies of {FIXTURE.name}")
        for src in [REPO / "src", *args.src]:
            print(f"{src}: {measure(src, trace)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
