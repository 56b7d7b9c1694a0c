"""Numerics watch mode: step-time overhead, and time to a localised diagnosis.

1. Overhead: sample_models/resnet_healthy.py run bare, under `ptdiag --only tracking`
   (the always-on recorder), under `ptdiag --only numerics` (watch mode + recorder), and
   bare with `torch.autograd.set_detect_anomaly(True)`, interleaved in rotating order
   with one torch thread, several repeats; each run times its own iterations. Ratios of
   medians to the bare run.
2. In one process (`--parts`): ResNet-18 steps alternating between bare and each part of
   watch mode (gradient norms; + per-module output sums; + the loss-computation watch),
   rotating order, so the machine's drift between runs does not enter the ratios.
3. Time to diagnosis: wall time of `ptdiag "loss is NaN" -- resnet_nan.py --bug B` (it
   stops once the failure is localised and writes the report) divided by the bare
   script's wall time to the end of the epoch holding its first NaN.

    python scripts/bench_numerics.py [--repeats 3] [--steps 30] [--parts 80]
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
HEALTHY = REPO / "sample_models" / "resnet_healthy.py"
NAN = REPO / "sample_models" / "resnet_nan.py"
WARMUP_STEPS = 3
BATCH = 32
ANOMALY = ("import os, runpy, sys, torch; torch.autograd.set_detect_anomaly(True); sys.argv = sys.argv[1:]; "
           "sys.path.insert(0, os.path.dirname(sys.argv[0])); runpy.run_path(sys.argv[0], run_name='__main__')")
MODES = ("bare", "tracking", "numerics", "anomaly")
# bug -> (sample args, epochs the bare run needs to reach its first NaN)
DIAGNOSIS_CASES = {"lr": (["--epochs", "8"], 7), "zerostd": (["--epochs", "3"], 1), "poison": (["--epochs", "3"], 1)}
FAST = ["--threads", "1", "--samples", "64", "--image-size", "16"]


def ptdiag(*args: str, store: Path) -> list[str]:
    return [sys.executable, "-m", "ptdiag", *args, "--quiet", "--store", str(store), "--"]


def step_time(mode: str, steps: int, workdir: Path) -> float:
    out = workdir / "times.json"
    sample = [str(HEALTHY), "--threads", "1", "--epochs", "1", "--samples", str(BATCH * (steps + WARMUP_STEPS)),
              "--batch-size", str(BATCH), "--step-times", str(out)]
    prefix = {"bare": [sys.executable],
              "tracking": ptdiag("benchmark", "--only", "tracking", store=workdir / "runs") + [sys.executable],
              "numerics": ptdiag("benchmark", "--only", "numerics", store=workdir / "runs") + [sys.executable],
              "anomaly": [sys.executable, "-c", ANOMALY]}[mode]
    subprocess.run(prefix + sample, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return statistics.median(json.loads(out.read_text())[WARMUP_STEPS:])


def wall(command: list[str], workdir: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def overhead(repeats: int, steps: int, workdir: Path) -> None:
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(repeats):
        for mode in MODES[i % len(MODES):] + MODES[:i % len(MODES)]:
            times[mode].append(step_time(mode, steps, workdir))
            print(f"repeat {i + 1}/{repeats} {mode:9s} median step {times[mode][-1] * 1000:.1f} ms", file=sys.stderr)
    base = statistics.median(times["bare"])
    print("\n| run | median step (ms) | ratio to bare | runs (ms) |\n|---|---|---|---|")
    for mode in MODES:
        m = statistics.median(times[mode])
        print(f"| {mode} | {m * 1000:.1f} | {m / base:.3f} | {', '.join(f'{x * 1000:.1f}' for x in times[mode])} |")
    print(f"\nResNet-18, 32x32, batch {BATCH}, 1 thread, {steps} steps after {WARMUP_STEPS} warm-up, {repeats} repeats")


def diagnosis(repeats: int, workdir: Path) -> None:
    print("\n| bug | bare to NaN (s) | ptdiag to report (s) | ratio |\n|---|---|---|---|")
    for bug, (args, bare_epochs) in DIAGNOSIS_CASES.items():
        bare, wrapped = [], []
        for _ in range(repeats):
            bare.append(wall([sys.executable, str(NAN), "--bug", bug, "--epochs", str(bare_epochs), *FAST], workdir))
            wrapped.append(wall(ptdiag("loss is NaN", store=workdir / "runs")
                                + [sys.executable, str(NAN), "--bug", bug, *args, *FAST], workdir))
        b, w = statistics.median(bare), statistics.median(wrapped)
        print(f"| {bug} | {b:.2f} | {w:.2f} | {w / b:.2f} |")


def parts(steps: int) -> None:
    """Watch mode's parts, timed against bare steps in the same process."""
    import torch
    import torch.nn.functional as F
    import torchvision

    sys.path.insert(0, str(REPO / "src"))
    from ptdiag.probe.instruments import Instruments
    from ptdiag.probe.model_hooks import ModelHooks
    from ptdiag.probe.plugins.numerics import watch
    from ptdiag.probe.plugins.numerics.loss_region import LossRegion

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    instruments = Instruments(lambda what, why: None, lambda message: None)
    hooks = ModelHooks(lambda what, why: None, lambda message: None)
    region, groups = LossRegion(instruments), [list(model.parameters())]
    arms = ("bare", "norms", "norms+module sums", "norms+module sums+loss ops")

    def step(arm: str) -> float:
        # the module watch subscribes for its arms only: the others are bare module calls
        outputs = watch.ModuleOutputs(model, hooks) if arm in arms[2:] else None
        start = time.perf_counter()
        out = model(x)
        if arm == arms[3]:
            region.enter()
        loss = F.cross_entropy(out, y)
        region.leave()
        optimizer.zero_grad()
        loss.backward()
        if arm == "bare":
            float(loss.detach())
        else:
            watch.read(loss, outputs, region, groups, None)
        optimizer.step()
        elapsed = time.perf_counter() - start
        hooks.close()
        return elapsed

    for arm in arms * 2:
        step(arm)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for i in range(steps):
        for arm in arms[i % len(arms):] + arms[:i % len(arms)]:
            times[arm].append(step(arm))
    base = statistics.median(times["bare"])
    print(f"\n| in one process, {steps} steps each | median step (ms) | ratio to bare |\n|---|---|---|")
    for arm in arms:
        print(f"| {arm} | {statistics.median(times[arm]) * 1000:.1f} | {statistics.median(times[arm]) / base:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--parts", type=int, default=80, help="steps per arm of the in-process measure (0: skip)")
    args = parser.parse_args()
    if args.parts:
        parts(args.parts)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_overhead:
            overhead(args.repeats, args.steps, Path(tmp))
        diagnosis(args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
