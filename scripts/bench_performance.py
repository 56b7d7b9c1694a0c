"""Benchmark of the performance specialist itself (results: docs/benchmarks/performance.md).

1. Overhead of the per-step breakdown on steps outside the profiler/scan windows: the
   healthy sample's own per-iteration wall times (`--step-times`) in three arms run
   interleaved with one torch thread: bare; under `ptdiag --only tracking` (the always-on
   recorder alone); under `ptdiag --only performance -o performance.stop=no` (recorder +
   this specialist). performance/recorder is this specialist's own cost. The windows'
   steps (1-13) are left out of every arm (they are instrumented on purpose).
2. Total diagnosis wall time (`ptdiag "training is slow" -- ...`, default windows) per
   sample model and bug.

    .venv/bin/python scripts/bench_performance.py [--repeats 3] [--skip-overhead] [--skip-wall]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SAMPLE_ARGS = ["--threads", "1", "--samples", "640", "--image-size", "16", "--batch-size", "8", "--epochs", "1"]
# the windows cover steps 5..13 with the default options: leave them (and warm-up) out
WINDOW_STEPS = range(1, 14)
BUGS = [None, "dataloader", "sync", "python_loop", "float64", "optimizer_rebuilt", "batch1"]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PTDIAG_STORE", None)
    return env


ARMS = {"bare": [], "recorder": ["--only", "tracking"],
        "performance": ["--only", "performance", "-o", "performance.stop=no"]}


def step_times(arm: str, workdir: Path) -> list[float]:
    out = workdir / f"times-{time.monotonic_ns()}.json"
    program = [PY, str(REPO / "sample_models" / "resnet_healthy.py"), *SAMPLE_ARGS, "--step-times", str(out)]
    command = [PY, "-m", "ptdiag", "slow", *ARMS[arm], "--quiet", "--", *program] if ARMS[arm] else program
    subprocess.run(command, cwd=workdir, env=_env(), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    times = json.loads(out.read_text())
    return [t for i, t in enumerate(times, start=1) if i not in WINDOW_STEPS]


def overhead(repeats: int) -> None:
    print("| repeat | bare (ms) | recorder (ms) | performance (ms) | performance / recorder | performance / bare |")
    print("|---|---|---|---|---|---|")
    own, total = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            order = list(ARMS) if r % 2 == 0 else list(reversed(ARMS))
            med = {arm: statistics.median(step_times(arm, Path(tmp))) for arm in order}
            own.append(med["performance"] / med["recorder"])
            total.append(med["performance"] / med["bare"])
            print(f"| {r + 1} | {1000 * med['bare']:.2f} | {1000 * med['recorder']:.2f} | "
                  f"{1000 * med['performance']:.2f} | {own[-1]:.3f} | {total[-1]:.3f} |", flush=True)
    print(f"\nmedian performance/recorder {statistics.median(own):.3f} (goal <= 1.02), "
          f"performance/bare {statistics.median(total):.3f}\n")


def wall(repeats: int) -> None:
    print("| sample | bug | wall s (median) | top finding |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for bug in BUGS:
            walls, top = [], None
            for _ in range(repeats):
                report = Path(tmp) / "r.json"
                start = time.perf_counter()
                subprocess.run([PY, "-m", "ptdiag", "training is slow", "--quiet", "--json", str(report), "--", PY,
                                str(REPO / "sample_models" / ("resnet_slow.py" if bug else "resnet_healthy.py")),
                                *SAMPLE_ARGS, *(["--bug", bug] if bug else [])],
                               cwd=tmp, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                walls.append(time.perf_counter() - start)
                findings = json.loads(report.read_text())["findings"]
                top = findings[0]["code"] if findings else None
            print(f"| {'resnet_slow' if bug else 'resnet_healthy'} | {bug or '-'} | {statistics.median(walls):.1f} "
                  f"| {top} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-wall", action="store_true")
    args = parser.parse_args()
    if not args.skip_overhead:
        overhead(args.repeats)
    if not args.skip_wall:
        wall(max(1, args.repeats // 3))


if __name__ == "__main__":
    main()
