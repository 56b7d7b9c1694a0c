"""Benchmark: what verification runs add to a diagnosis's wall time.

Each case runs `ptdiag SYMPTOM --no-verify -- COMMAND` and `ptdiag SYMPTOM -- COMMAND`
(verification on, its default) interleaved, and reads from the verified run dir how long
the main run and the verification runs took (verification.json) and which ran.

    .venv/bin/python scripts/bench_verification.py --repeats 2
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
PROGRAMS, SAMPLES = REPO / "tests" / "programs", REPO / "sample_models"
FAST = ["--threads", "1", "--samples", "64", "--image-size", "16"]
TORCHRUN = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]  # after sys.executable
CASES = {
    "nan_quick --lr 10 (the LR fix helps)": ("loss is NaN", [str(PROGRAMS / "nan_quick.py"), "--lr", "10"]),
    "nan_quick --lr 1000 (the LR x its measured growth helps)": ("loss is NaN", [str(PROGRAMS / "nan_quick.py"), "--lr",
                                                                                "1000"]),
    "tiny GPT --learning_rate=1000 (AdamW: the LR x its weights' RMS helps)": (
        "loss is NaN", [str(REPO / "diagnostics" / "numerics" / "tiny_gpt_configurator.py"), "--learning_rate=1000"]),
    "nan_causes --amp float16 --lr 3 (two causes: the LR's fix helps, float32's does not)": (
        "loss is NaN", [str(PROGRAMS / "nan_causes.py"), "--amp", "float16", "--lr", "3"]),
    "nan_causes --poison 21 (the poisoned batch skipped)": ("loss is NaN", [str(PROGRAMS / "nan_causes.py"), "--poison",
                                                                            "21"]),
    "sleepy_loader (workers help)": ("training is slow", [str(PROGRAMS / "sleepy_loader.py")]),
    "resnet_nan --bug lr": ("loss is NaN", [str(SAMPLES / "resnet_nan.py"), "--bug", "lr", "--epochs", "8", *FAST]),
    "resnet_slow --bug dataloader": ("training is slow", [str(SAMPLES / "resnet_slow.py"), "--bug", "dataloader", *FAST]),
    "threads_mlp --threads 1 (set_num_threads)": ("training is slow", [str(PROGRAMS / "threads_mlp.py")]),
    "resnet_oom --bug eval_no_grad (no_grad)": ("memory grows every step until OOM", [
        str(SAMPLES / "resnet_oom.py"), "--bug", "eval_no_grad", *FAST, "--epochs", "1", "--batch-size", "8",
        "--samples", "48"]),
    "ddp_sampler --bug no_sampler, 2 ranks (DistributedSampler)": ("training with DDP", [
        *TORCHRUN, "--master_port", "29791", str(PROGRAMS / "ddp_sampler.py"), "--bug", "no_sampler"]),
    "ddp_sampler --bug no_set_epoch, 2 ranks (set_epoch)": ("training with DDP", [
        *TORCHRUN, "--master_port", "29792", str(PROGRAMS / "ddp_sampler.py"), "--bug", "no_set_epoch"]),
}


def diagnose(symptom: str, command: list[str], verify: bool) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ptdiag", symptom, "--json", "r.json",
                        "--verify" if verify else "--no-verify", "--", sys.executable, *command],
                       cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        run_id = json.loads((Path(cwd) / "r.json").read_text())["run_id"]
        state = Path(cwd) / "ptdiag-runs" / run_id / "verification.json"
        return wall, json.loads(state.read_text()) if state.exists() else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--case", action="append", help="only these cases (a prefix of the name)")
    args = p.parse_args()
    print("| case | ptdiag without verification | with | verification runs | their wall | main run |")
    print("|---|---|---|---|---|---|")
    for name, (symptom, command) in CASES.items():
        if args.case and not any(name.startswith(c) for c in args.case):
            continue
        without, with_, record = [], [], {}
        for _ in range(args.repeats):
            without.append(diagnose(symptom, command, False)[0])
            wall, record = diagnose(symptom, command, True)
            with_.append(wall)
        ran = [r["verified"]["intervention"] + ("" if r["verified"]["helped"] else f" ({r['verified']['helped']})")
               for r in record.get("results", []) if "verified" in r]
        print(f"| {name} | {statistics.median(without):.1f} s | {statistics.median(with_):.1f} s | "
              f"{', '.join(ran) or 'none'} | {record.get('wall_s', 0):.1f} s | {record.get('bare_wall_s', 0):.1f} s |")


if __name__ == "__main__":
    main()
