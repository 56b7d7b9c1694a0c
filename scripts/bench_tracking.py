"""Tracking benchmarks: `ptdiag track` step overhead against the bare run, and
`ptdiag runs list` over a 10,000-run store.

1. resnet_healthy.py bare and under `ptdiag track`, interleaved (bare, track, track,
   bare, ...), one torch thread; each run times its own iterations (--step-times), so
   the ratio is of per-step medians, start-up excluded (start-up is reported apart).
2. A store of 10,000 synthetic runs (real SQLite index, written through RunStore), then
   `ptdiag runs list` as a user runs it: the whole CLI process, --json (all rows) and the
   table (filter + sort), wall time per call.

Timings on the shared 2-core box are noisy (shared/facts.md): read ratios with spreads.

    python scripts/bench_tracking.py [--repeats 5] [--steps 40] [--runs 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_models" / "resnet_healthy.py"
WARMUP_STEPS = 3
BATCH = 32


def one_run(tracked: bool, steps: int, workdir: Path) -> tuple[float, float]:
    """(median step time, wall time of the whole command)."""
    out = workdir / "times.json"
    sample = [sys.executable, str(SAMPLE), "--threads", "1", "--epochs", "1",
              "--samples", str(BATCH * (steps + WARMUP_STEPS)), "--batch-size", str(BATCH),
              "--step-times", str(out)]
    command = ([sys.executable, "-m", "ptdiag", "track", "--quiet", "--store", str(workdir / "runs"),
                "--"] + sample) if tracked else sample
    start = time.perf_counter()
    subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return statistics.median(json.loads(out.read_text())[WARMUP_STEPS:]), wall


def bench_overhead(repeats: int, steps: int) -> None:
    results = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for tracked in ((False, True) if i % 2 == 0 else (True, False)):
                results[tracked].append(one_run(tracked, steps, Path(tmp)))
                step, wall = results[tracked][-1]
                print(f"repeat {i + 1}/{repeats} {'track' if tracked else 'bare '}: "
                      f"median step {step * 1000:.1f} ms, wall {wall:.1f} s", file=sys.stderr)
    print("\n| run | median step (ms) | per-run medians (ms) | median wall (s) |")
    print("|---|---|---|---|")
    for tracked, label in ((False, "bare"), (True, "ptdiag track")):
        steps_ms = [s * 1000 for s, _ in results[tracked]]
        print(f"| {label} | {statistics.median(steps_ms):.1f} | {', '.join(f'{x:.1f}' for x in steps_ms)} | "
              f"{statistics.median(w for _, w in results[tracked]):.1f} |")
    bare = statistics.median(s for s, _ in results[False])
    tracked = statistics.median(s for s, _ in results[True])
    print(f"\nstep ratio (track / bare): {tracked / bare:.3f}  (ResNet-18, 32x32, batch {BATCH}, 1 thread, "
          f"{steps} steps after {WARMUP_STEPS} warm-up, {repeats} repeats)")


def bench_list(runs: int, repeats: int) -> None:
    from ptdiag.runs import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "runs")
        store.record_many({
            "run_id": f"20261122-{i:06d}-0000", "name": f"sweep {i}", "status": ("completed", "crashed")[i % 7 == 0],
            "started": 1_790_000_000.0 + i, "command": ["python", "train.py", "--lr", str(0.001 * (i % 10 + 1))],
            "symptom": None, "params": {"lr": 0.001 * (i % 10 + 1), "batch_size": 32 << (i % 3), "epochs": 10,
                                        "optimizer.name": "SGD", "model.class": "ResNet"},
            "metrics": {"loss": {"first": 2.3, "last": 1.0 / (i + 1), "min": 1.0 / (i + 2)}, "steps_per_s": 10.0},
            "tags": {"sweep": str(i // 100)}, "group": None} for i in range(runs))
        cases = {
            "runs list --json (all rows)": ["--json"],
            "runs list (table, newest 50)": [],
            "runs list --where lr=0.005 --status completed --sort loss.last (table)":
                ["--where", "lr=0.005", "--status", "completed", "--sort", "loss.last"],
            "runs list --where batch_size>=64 --sort loss.min --desc --json":
                ["--where", "batch_size>=64", "--sort", "loss.min", "--desc", "--json"],
        }
        start = time.perf_counter()
        store.list()
        print(f"\nin-process RunStore.list() of all {runs} rows: {time.perf_counter() - start:.3f} s")
        print(f"\n| command over {runs} runs (whole CLI process) | median wall (s) | walls (s) | median CPU (s) |")
        print("|---|---|---|---|")
        for label, args in cases.items():
            walls, cpus = [], []
            for _ in range(repeats):
                start, cpu = time.perf_counter(), _children_cpu()
                subprocess.run([sys.executable, "-m", "ptdiag", "runs", "list", "--store", str(store.root), *args],
                               check=True, stdout=subprocess.DEVNULL)
                walls.append(time.perf_counter() - start)
                cpus.append(_children_cpu() - cpu)
            print(f"| {label} | {statistics.median(walls):.3f} | {', '.join(f'{w:.3f}' for w in walls)} | "
                  f"{statistics.median(cpus):.3f} |")


def _children_cpu() -> float:
    """User + system CPU seconds of ended child processes: what a run cost the machine,
    unlike wall time, which the box's other load stretches."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--only", choices=("overhead", "list"))
    args = parser.parse_args()
    if args.only != "list":
        bench_overhead(args.repeats, args.steps)
    if args.only != "overhead":
        bench_list(args.runs, args.repeats)


if __name__ == "__main__":
    main()
