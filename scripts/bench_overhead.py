"""Overhead of ptdiag on training steps and peak memory, as ratios to the bare run.

Cases (--case):
  resnet             sample_models/resnet_healthy.py under `ptdiag --only tracking` (the
                     passive recorder every run has)
  pixel_loader       tests/programs/budget_pixel_loader.py under "training is slow": a
                     DataLoader that loops over pixels in Python (the profiler window's
                     memory budget)
  optimizer_rebuilt  tests/programs/budget_optimizer_rebuilt.py under the triage (the plan
                     of words that name no symptom): a new optimizer every step (one-off
                     measurements run once)
  plain              tests/programs/budget_plain.py under the triage: a small model of a
                     few ms per step (the per-step budget)
  recorder_sub_ms    tests/programs/budget_optimizer_rebuilt.py under `--only tracking`:
                     the passive recorder alone on a sub-millisecond step (its own lines
                     shed to 1 step in N)

Each case runs bare and under ptdiag, interleaved (bare, wrapped, wrapped, bare, ...) with
one torch thread, several repeats; each run times its own steps and reports its own peak
RSS. Prints per-run medians (steps after --skip) and the ratios of medians. Timings on the
2-core box are noisy (shared/facts.md): read the ratio together with the spread.

    python scripts/bench_overhead.py [--case resnet] [--repeats 5] [--steps 40] [--skip 3] [--cpu]

--cpu compares each step's CPU time instead of its wall time (the budget programs record
both): on a loaded box a process's waits for a core are not ptdiag's cost. ResNet's sample
records wall time only.

PTDIAG_SRC=/path/to/other/src measures another checkout of ptdiag (before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = REPO / "tests" / "programs"
TRIAGE = ["--only", "numerics,memory,performance", "--max-steps", "200"]  # router/symptoms.toml [triage]
RESNET_BATCH = 32

# case -> (ptdiag's arguments before `--`, the program's script)
CASES = {
    "resnet": (["benchmark", "--only", "tracking"], REPO / "sample_models" / "resnet_healthy.py"),
    "pixel_loader": (["training is slow"], PROGRAMS / "budget_pixel_loader.py"),
    "optimizer_rebuilt": (["triage", *TRIAGE], PROGRAMS / "budget_optimizer_rebuilt.py"),
    "plain": (["triage", *TRIAGE], PROGRAMS / "budget_plain.py"),
    "recorder_sub_ms": (["benchmark", "--only", "tracking", "--max-steps", "100000"],
                        PROGRAMS / "budget_optimizer_rebuilt.py"),
}


def program_command(case: str, steps: int, skip: int, out: Path) -> list[str]:
    script = CASES[case][1]
    if case == "resnet":  # the sample's own flags; it writes a list of step times
        return [sys.executable, str(script), "--threads", "1", "--epochs", "1",
                "--samples", str(RESNET_BATCH * (steps + skip)), "--batch-size", str(RESNET_BATCH),
                "--step-times", str(out)]
    return [sys.executable, str(script), "--steps", str(steps + skip), "--times", str(out)]


def one_run(case: str, wrapped: bool, steps: int, skip: int, workdir: Path,
            clock: str = "steps") -> tuple[float, int | None]:
    """(median step time after `skip` steps, peak RSS in bytes or None)."""
    out = workdir / "times.json"
    out.unlink(missing_ok=True)
    command = program_command(case, steps, skip, out)
    env = dict(os.environ)
    if wrapped:
        command = [sys.executable, "-m", "ptdiag", *CASES[case][0], "--quiet", "--store", str(workdir / "runs"),
                   "--", *command]
        if os.environ.get("PTDIAG_SRC"):
            env["PYTHONPATH"] = os.environ["PTDIAG_SRC"]
    subprocess.run(command, cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    measured = json.loads(out.read_text())
    if isinstance(measured, list):
        return statistics.median(measured[skip:]), None
    return statistics.median(measured[clock][skip:]), measured["peak_rss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="resnet")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=3, help="steps left out at the start (warm-up, one-off windows)")
    parser.add_argument("--cpu", action="store_true", help="compare CPU time per step, not wall time")
    args = parser.parse_args()
    if args.cpu and args.case == "resnet":
        parser.error("--cpu: the ResNet sample records wall time only")
    clock = "cpu" if args.cpu else "steps"
    runs: dict[bool, list[tuple[float, int | None]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for wrapped in ((False, True) if i % 2 == 0 else (True, False)):
                runs[wrapped].append(one_run(args.case, wrapped, args.steps, args.skip, Path(tmp), clock))
                print(f"repeat {i + 1}/{args.repeats} {'ptdiag' if wrapped else 'bare  '}: "
                      f"median step {runs[wrapped][-1][0] * 1000:.2f} ms", file=sys.stderr)
    step = {w: [s for s, _ in r] for w, r in runs.items()}
    peak = {w: [p for _, p in r if p is not None] for w, r in runs.items()}
    label = "ptdiag " + " ".join(CASES[args.case][0])
    print("\n| run | median step (ms) | runs (ms) | peak RSS (MB) |")
    print("|---|---|---|---|")
    for wrapped, name in ((False, "bare"), (True, label)):
        peaks = f"{statistics.median(peak[wrapped]) / 1e6:.0f}" if peak[wrapped] else "-"
        print(f"| {name} | {statistics.median(step[wrapped]) * 1000:.2f} | "
              f"{', '.join(f'{x * 1000:.2f}' for x in step[wrapped])} | {peaks} |")
    b, w = statistics.median(step[False]), statistics.median(step[True])
    pairs = sorted(x / y for x, y in zip(step[True], step[False]))
    print(f"\nstep: ratio of medians (ptdiag / bare) {w / b:.3f}; median of paired ratios "
          f"{statistics.median(pairs):.3f} (range {pairs[0]:.3f}-{pairs[-1]:.3f})")
    if peak[False] and peak[True]:
        print(f"peak RSS: ratio of medians {statistics.median(peak[True]) / statistics.median(peak[False]):.3f}")
    print(f"({args.case}, 1 thread, {args.steps} steps after {args.skip}, {args.repeats} repeats, {clock})")


if __name__ == "__main__":
    main()
