"""Overhead of ptdiag's passive tracking probe on training steps, as a ratio to the bare run.

Runs sample_models/resnet_healthy.py bare and under `ptdiag --only tracking`, interleaved
(bare, wrapped, wrapped, bare, ...) with one torch thread, several repeats; each run
times its own iterations (data + forward + backward + step, probe hooks included).
Prints the per-run medians and the ratio of medians. Timings on the 2-core box are
noisy (shared/facts.md): read the ratio together with the spread.

    python scripts/bench_overhead.py [--repeats 5] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_models" / "resnet_healthy.py"
WARMUP_STEPS = 3


def one_run(wrapped: bool, steps: int, workdir: Path) -> float:
    out = workdir / "times.json"
    batch = 32
    sample = [sys.executable, str(SAMPLE), "--threads", "1", "--epochs", "1",
              "--samples", str(batch * (steps + WARMUP_STEPS)), "--batch-size", str(batch),
              "--step-times", str(out)]
    command = ([sys.executable, "-m", "ptdiag", "benchmark", "--only", "tracking", "--quiet",
                "--store", str(workdir / "runs"), "--"] + sample) if wrapped else sample
    subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = json.loads(out.read_text())[WARMUP_STEPS:]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    bare, wrapped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            order = (False, True) if i % 2 == 0 else (True, False)
            for w in order:
                (wrapped if w else bare).append(one_run(w, args.steps, Path(tmp)))
                print(f"repeat {i + 1}/{args.repeats} {'ptdiag' if w else 'bare  '}: "
                      f"median step {(wrapped if w else bare)[-1] * 1000:.1f} ms", file=sys.stderr)
    b, w = statistics.median(bare), statistics.median(wrapped)
    pairs = sorted(x / y for x, y in zip(wrapped, bare))
    print("\n| run | median step (ms) | runs (ms) |")
    print("|---|---|---|")
    print(f"| bare | {b * 1000:.1f} | {', '.join(f'{x * 1000:.1f}' for x in bare)} |")
    print(f"| ptdiag --only tracking | {w * 1000:.1f} | {', '.join(f'{x * 1000:.1f}' for x in wrapped)} |")
    print(f"\nratio of medians (ptdiag / bare): {w / b:.3f}; median of paired ratios {statistics.median(pairs):.3f} "
          f"(range {pairs[0]:.3f}-{pairs[-1]:.3f})  (ResNet-18, 32x32, batch 32, 1 thread, "
          f"{args.steps} steps after {WARMUP_STEPS} warm-up, {args.repeats} repeats)")


if __name__ == "__main__":
    main()
