"""Cost and accuracy of the memory specialist.

1. Leak watch overhead: sample_models/resnet_healthy.py bare vs under
   `ptdiag --only memory -o memory.breakdown_step=0` (boundary memory, graph-holder scan,
   forward hooks, sampled saved-tensor hooks), interleaved, one torch thread; ratio of
   median step times after warm-up.
2. Full breakdown: the same wrapped run with MemTracker watching step BREAKDOWN_STEP;
   that step's time over the median of the other wrapped steps.
3. Fit estimate: FakeTensorMode + MemTracker peak vs the real host peak of two training
   steps (tests/programs/mem_peak.py: VmHWM reset before the steps, MALLOC_MMAP_THRESHOLD_
   low so freed tensors leave RSS), for several batch sizes; and the wall time of a full
   estimate (user batch, a second batch, the checked search for the largest batch).

    python scripts/bench_memory.py [--repeats 5] [--steps 30]
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
SAMPLE = REPO / "sample_models" / "resnet_healthy.py"
PROGRAMS = REPO / "tests" / "programs"
WARMUP_STEPS = 3
BREAKDOWN_STEP = 6
BATCH = 32
FIT_BATCHES = (16, 64, 128, 256)
FIT_BUDGET = 200 * 2**20


def one_run(options: list[str] | None, steps: int, workdir: Path) -> list[float]:
    out = workdir / "times.json"
    sample = [sys.executable, str(SAMPLE), "--threads", "1", "--epochs", "1",
              "--samples", str(BATCH * (steps + WARMUP_STEPS)), "--batch-size", str(BATCH), "--step-times", str(out)]
    command = sample if options is None else [sys.executable, "-m", "ptdiag", "benchmark", "--only", "memory",
                                              *options, "--quiet", "--store", str(workdir / "runs"), "--", *sample]
    subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def overhead(repeats: int, steps: int) -> None:
    watch = ["-o", "memory.breakdown_step=0"]
    full = ["-o", f"memory.breakdown_step={BREAKDOWN_STEP}"]
    bare, wrapped, tracked = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            order = (None, watch) if i % 2 == 0 else (watch, None)
            for options in order:
                times = one_run(options, steps, Path(tmp))[WARMUP_STEPS:]
                (bare if options is None else wrapped).append(statistics.median(times))
            times = one_run(full, steps, Path(tmp))
            watched = times[BREAKDOWN_STEP - 1]
            others = times[WARMUP_STEPS:BREAKDOWN_STEP - 1] + times[BREAKDOWN_STEP:]
            tracked.append(watched / statistics.median(others))
            print(f"repeat {i + 1}/{repeats}: bare {bare[-1] * 1000:.1f} ms, leak watch {wrapped[-1] * 1000:.1f} ms, "
                  f"breakdown step x{tracked[-1]:.2f}", file=sys.stderr)
    b, w = statistics.median(bare), statistics.median(wrapped)
    print("\n| run | median step (ms) | runs (ms) |\n|---|---|---|")
    print(f"| bare | {b * 1000:.1f} | {', '.join(f'{x * 1000:.1f}' for x in bare)} |")
    print(f"| leak watch | {w * 1000:.1f} | {', '.join(f'{x * 1000:.1f}' for x in wrapped)} |")
    print(f"\nleak watch / bare: {w / b:.3f}; MemTracker-watched step / other steps: "
          f"{statistics.median(tracked):.2f} (runs: {', '.join(f'{x:.2f}' for x in tracked)})  "
          f"(ResNet-18, 32x32, batch {BATCH}, 1 thread, {steps} steps after {WARMUP_STEPS} warm-up, {repeats} repeats)")


def fit_accuracy() -> None:
    sys.path[:0] = [str(REPO / "src"), str(PROGRAMS)]
    import mem_model
    import torch

    from ptdiag.probe.plugins.memory.fit import FakeStep, estimate

    torch.set_num_threads(1)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(PROGRAMS))
    measured = subprocess.run([sys.executable, str(PROGRAMS / "mem_peak.py"), *map(str, FIT_BATCHES)], env=env,
                              check=True, capture_output=True, text=True).stdout.split()
    model, optimizer = mem_model.build()
    step = FakeStep(torch, model, optimizer, mem_model.batch(FIT_BATCHES[0])[:1])
    print("\n| batch | measured peak (MiB) | estimated (MiB) | error | estimate wall (s) |\n|---|---|---|---|---|")
    for batch, real in zip(FIT_BATCHES, map(int, measured)):
        start = time.perf_counter()
        est = step.peak(batch)[0]
        wall = time.perf_counter() - start
        print(f"| {batch} | {real / 2**20:.1f} | {est / 2**20:.1f} | {(est - real) / real:+.1%} | {wall:.2f} |")
    start = time.perf_counter()
    result = estimate(step, FIT_BUDGET)
    print(f"\nfull estimate for a {FIT_BUDGET / 2**20:.0f} MiB budget at batch {FIT_BATCHES[0]}: largest batch "
          f"{result.largest_batch}, {len(result.points)} fake steps, {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    if not args.skip_overhead:
        overhead(args.repeats, args.steps)
    fit_accuracy()


if __name__ == "__main__":
    main()
