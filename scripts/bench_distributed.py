"""Benchmark of the distributed specialist (2 gloo ranks on CPU, one torch thread each).

1. Per-step overhead: the same DDP ResNet-18 training run bare under torchrun, under
   ptdiag with only the always-on tracking probe, and under ptdiag with the distributed
   specialist; runs interleaved, several repeats, median step time of each run (the
   program times its own steps, so start-up is excluded). Goal: distributed <= 1.05x bare.
2. Hang to report: a rank skips an all_reduce (tests/programs/ddp_skip_allreduce.py);
   from the moment rank 0 entered the collective nobody else joins (its live state's
   `since`) to ptdiag's exit with the report, under `--timeout T`; and the sample's
   process-group time-out path (resnet_ddp.py --bug skip_collective --pg-timeout P).

    .venv/bin/python scripts/bench_distributed.py --repeats 3 --steps 30
"""

import gc
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
PYTHON = sys.executable
TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2"]

PROGRAM = '''
import json, os, sys, time
import torch, torch.distributed as dist, torch.nn.functional as F, torchvision
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
torch.set_num_threads(1)
steps, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo")
torch.manual_seed(0)
data = torchvision.datasets.FakeData(size=16 * steps, image_size=(3, 16, 16), num_classes=10,
                                     transform=torchvision.transforms.ToTensor())
sampler = DistributedSampler(data)
loader = DataLoader(data, batch_size=8, sampler=sampler)
model = DDP(torchvision.models.resnet18(num_classes=10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
times, last = [], time.perf_counter()
for images, labels in loader:
    loss = F.cross_entropy(model(images), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    now = time.perf_counter(); times.append(now - last); last = now
if dist.get_rank() == 0:
    json.dump(times, open(out, "w"))
gc.collect()  # garbage holding gloo work, freed after the group is gone, aborts the process now and then
dist.destroy_process_group()
'''


def _run(mode: str, workdir: Path, port: int, steps: int) -> float:
    program = workdir / "bench_ddp.py"
    out = workdir / f"times-{mode}-{port}.json"
    command = [*TORCHRUN, "--master_port", str(port), str(program), str(steps), str(out)]
    if mode != "bare":
        only = "tracking" if mode == "tracking" else "distributed"
        command = [PYTHON, "-m", "ptdiag", "ranks disagree", "--only", only, "--quiet", "--", *command]
    env = dict(os.environ, PTDIAG_STORE=str(workdir / "store"))
    subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True, timeout=600)
    times = json.loads(out.read_text())[3:]  # warm-up steps excluded
    return statistics.median(times)


def overhead(repeats: int, steps: int) -> None:
    modes = ("bare", "tracking", "distributed")
    results: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "bench_ddp.py").write_text(PROGRAM)
        port = 29800
        for _ in range(repeats):
            for mode in modes:
                port += 1
                results[mode].append(_run(mode, workdir, port, steps))
    bare = statistics.median(results["bare"])
    print(f"\nper-step time, 2 gloo ranks, ResNet-18 16x16 batch 8/rank, {steps} steps, {repeats} repeats (median of medians)")
    print(f"{'mode':<12} {'step ms':>8} {'ratio':>6}   runs (ms)")
    for mode in modes:
        med = statistics.median(results[mode])
        print(f"{mode:<12} {med * 1e3:8.2f} {med / bare:6.3f}   " + ", ".join(f"{t * 1e3:.1f}" for t in results[mode]))


def hook_cost(steps: int = 2000) -> None:
    """The distributed plugin's own Python work per training step, timed directly: the
    hooks a step triggers (forward pre-hook, backward begin/end, step begin/end)
    called on a real probe and model, single process. Robust where a loaded machine makes
    whole-run ratios noisy."""
    import torch

    from ptdiag.probe.core import Probe
    from ptdiag.probe.plugins.distributed import Plugin

    with tempfile.TemporaryDirectory() as tmp:
        probe = Probe(Path(tmp), {"specialists": []}, 0)
        plugin = Plugin(probe)
        model = torch.nn.Linear(4, 1)
        plugin.on_model(model)
        loss, batch = torch.zeros(()), (torch.zeros(8, 4),)
        for step in range(1, 50):  # past the fingerprinted forwards and the no-grad checks
            plugin._model_forward(model, batch)
            plugin.on_step_begin(step, None)
            plugin.on_step(step, None)
        start = time.perf_counter()
        for step in range(50, 50 + steps):
            plugin._model_forward(model, batch)
            plugin.on_backward(loss)
            plugin.on_backward_end(loss)
            plugin.on_step_begin(step, None)
            plugin.on_step(step, None)
        per_step = (time.perf_counter() - start) / steps
        probe.events.close()
    print(f"\ndistributed plugin hooks: {per_step * 1e6:.1f} us per step (single process, {steps} steps)")


def _hang_run(workdir: Path, command: list[str], timeout: int | None) -> dict:
    args = [PYTHON, "-m", "ptdiag", "training hangs with 2 GPUs", "--quiet", "--json", "r.json"]
    if timeout:
        args += ["--timeout", str(timeout)]
    env = dict(os.environ, PTDIAG_STORE=str(workdir / "store"))
    start = time.time()
    subprocess.run([*args, "--", *command], cwd=workdir, env=env, capture_output=True, timeout=900)
    ended = time.time()
    report = json.loads((workdir / "r.json").read_text())
    run_dir = next((workdir / "store").glob("2*"))
    states = [json.loads(p.read_text()) for p in (run_dir / "distributed").glob("*.json")]
    since = min(s["in_flight"]["since"] for s in states if s.get("in_flight"))
    named = [f for f in report["findings"] if f["code"] == "distributed.collective_mismatch"]
    return {"hang_to_report_s": ended - since, "total_s": ended - start, "status": report["status"],
            "named": named[0]["evidence"]["ranks"] if named else None}


def hang(timeout: int, pg_timeout: int) -> None:
    cases = {
        f"ptdiag --timeout {timeout}": ([*TORCHRUN, "--master_port", "29890",
                                         str(REPO / "tests" / "programs" / "ddp_skip_allreduce.py")], timeout),
        f"process-group time-out {pg_timeout} s": (
            [*TORCHRUN, "--master_port", "29891", str(REPO / "sample_models" / "resnet_ddp.py"),
             "--bug", "skip_collective", "--threads", "1", "--samples", "32", "--image-size", "16",
             "--batch-size", "8", "--pg-timeout", str(pg_timeout)], None),
    }
    print("\nhang to report (a rank skipped an all_reduce)")
    print(f"{'case':<28} {'hang->report s':>14} {'total s':>8} {'status':>9}  ranks named")
    for name, (command, limit) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            r = _hang_run(Path(tmp), command, limit)
        print(f"{name:<28} {r['hang_to_report_s']:14.1f} {r['total_s']:8.1f} {r['status']:>9}  {r['named']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--timeout", type=int, default=45)
    parser.add_argument("--pg-timeout", type=int, default=5)
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    hook_cost()
    if not args.skip_overhead:
        overhead(args.repeats, args.steps)
    hang(args.timeout, args.pg_timeout)


if __name__ == "__main__":
    main()
