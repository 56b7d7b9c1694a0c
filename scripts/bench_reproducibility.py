"""Benchmark: wall time of ptdiag's determinism check ÷ the bare run of the same steps.

The check is the whole `ptdiag ... --only reproducibility` invocation: the main run with
the probe (per-step checksums and generator fingerprints), the repeated run, and the
analysis. The goal is <= 2.1x (two runs plus analysis). Bare and checked runs are
interleaved, one torch thread each (facts.md), and the medians compared. The check is
also split into its parts (read from the run dir): the main run with the probe, the
repeated run, and everything else (ptdiag's start, analysis, report).

    .venv/bin/python scripts/bench_reproducibility.py --repeats 3 --samples 640
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_models" / "resnet_healthy.py"


def timed(command: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=640, help="FakeData size: samples / 32 steps")
    p.add_argument("--image-size", type=int, default=32)
    args = p.parse_args()
    program = [sys.executable, str(SAMPLE), "--epochs", "1", "--threads", "1", "--samples", str(args.samples),
               "--image-size", str(args.image_size)]
    steps = args.samples // 32
    bare, checked, mains, repeats = [], [], [], []
    with tempfile.TemporaryDirectory() as cwd:
        for i in range(args.repeats):
            bare.append(timed(program, cwd))
            store = Path(cwd) / f"store{i}"
            checked.append(timed([sys.executable, "-m", "ptdiag", "runs differ between identical runs", "--only",
                                  "reproducibility", "--quiet", "--store", str(store), "--", *program], cwd))
            run_dir = next(d for d in store.iterdir() if (d / "outcome.json").exists())
            mains.append(_child_s(run_dir))
            repeats.append(_child_s(run_dir / "companions" / "repeat"))
            print(f"repeat {i + 1}: bare {bare[-1]:.2f} s, checked {checked[-1]:.2f} s (main {mains[-1]:.2f}, "
                  f"repeat {repeats[-1]:.2f}, rest {checked[-1] - mains[-1] - repeats[-1]:.2f}), "
                  f"ratio {checked[-1] / bare[-1]:.2f}x", flush=True)
    b, c, m, r = (statistics.median(x) for x in (bare, checked, mains, repeats))
    print(f"\n| steps | bare (s) | check (s) | main run (s) | repeat run (s) | ratio check/bare |\n"
          f"|---|---|---|---|---|---|\n| {steps} | {b:.2f} | {c:.2f} | {m:.2f} | {r:.2f} | {c / b:.2f}x |")


def _child_s(run_dir: Path) -> float:
    outcome = json.loads((run_dir / "outcome.json").read_text())
    return outcome["ended"] - outcome["started"]


if __name__ == "__main__":
    main()
