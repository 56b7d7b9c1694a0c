"""One offline check, on one GPU, of what ptdiag's CPU tests cannot show (issue #16).

    PYTHONPATH=src python scripts/gpu_check.py [--out DIR] [--only 1,4]

Runs from the checkout with torch alone (and nvidia-ml-py when installed, for NVML
telemetry): no network, no pip, no test extras. The programs it runs are in
scripts/gpu_check_programs/ and sample_models/. It prints one line per check, PASS or
FAIL with the numbers it measured, or SKIP with why, and exits 1 on any FAIL. A ptdiag run
whose probe-errors.log is not empty fails its check. On a machine without a CUDA device
every check is SKIP and the exit code is 0. It takes a few minutes on one GPU (each run
has its own time limit; together they stay under 8 minutes).

What each check proves:
1. ptdiag leaves the program alone on CUDA: CUDA_VISIBLE_DEVICES and
   PYTORCH_CUDA_ALLOC_CONF set after `import torch` still work, a forked child can use
   CUDA, and a whole step captured in torch.cuda.graph replays: same stdout and exit code
   bare and under ptdiag (probe/gpu.py: nothing touches CUDA before the program, nothing
   runs inside a capture).
2. Memory: an OOM in backward (memory fraction of 3 %, cudnn.benchmark on) gives status
   `oom`, a snapshot `ptdiag inspect` parses, and a `memory.oom` finding whose request is
   the failing allocation and whose location is the program's line; the fit estimate is
   within 25 % of a plain run's max_memory_allocated.
3. Performance: the healthy ResNet sample in fp32 and bf16 autocast: kernels in the
   trace, unlinked GPU time < 10 %, GEMM+conv > 50 % of GPU time, GPU phase rows, NVML
   telemetry, and the sample's `.item()` line found by the sync scan.
4. Numerics, AMP, tracking: the NaN sample on CUDA names its op and module; a fused-AdamW
   fp16 GradScaler program's skipped steps are counted exactly; recorded losses equal the
   program's `loss.item()` bit for bit, also when the current stream at the step's end is
   an idle side stream; a program using the new TF32 API has every step recorded.
5. Distributed: a stuck NCCL all_reduce (5 s NCCL timeout; then a 600 s one ended by
   `--timeout 30`) leaves a Flight Recorder dump that `ptdiag inspect` parses, naming the
   collective; two gloo ranks on cuda:0 give `distributed.device_mismatch`, one GPU UUID.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = REPO / "scripts" / "gpu_check_programs"
SAMPLES = REPO / "sample_models"
UNLINKED_MAX = 0.10
GEMM_CONV_MIN = 0.50
FIT_TOLERANCE = 0.25


class Skip(Exception):
    """The check cannot run here; the message says why."""


@dataclass
class Outcome:
    """What one check measured (`facts`) and which of its claims did not hold."""

    facts: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def fact(self, text: str) -> None:
        self.facts.append(text)

    def expect(self, holds: bool, claim: str) -> bool:
        if holds:
            self.facts.append(claim)
        else:
            self.failed.append(f"NOT {claim}")
        return holds


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    report: dict
    run_dir: Path

    def findings(self, code: str) -> list[dict]:
        return [f for f in self.report.get("findings", []) if f.get("code") == code]

    def events(self, kind: str) -> list[dict]:
        from ptdiag.events import read_events

        return [e for path in sorted((self.run_dir / "events").glob("*.jsonl")) for e in read_events(path)
                if e.get("ev") == kind]


class Context:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.store = out / "runs"
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.env.pop("PTDIAG_STORE", None)
        # verification runs (one more training run per verified finding) prove no GPU path:
        # off, so the checks stay within their minutes
        self.env["PTDIAG_VERIFY"] = "0"

    def run(self, command: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(command, env={**self.env, **(env or {})}, capture_output=True, text=True,
                                  timeout=timeout, cwd=self.out)
        except subprocess.TimeoutExpired as expired:
            raise AssertionError(f"{' '.join(command[:4])}... did not end within {timeout:.0f} s") from expired

    def bare(self, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return self.run([sys.executable, *args], timeout, env)

    def ptdiag(self, name: str, verb: list[str], command: list[str], timeout: float = 180,
               env: dict | None = None) -> Run:
        """`ptdiag VERB... -- COMMAND`; its JSON report, its run dir. AssertionError when it
        wrote no report or its probe logged errors (the check fails with that)."""
        report_path = self.out / f"{name}.json"
        proc = self.run([sys.executable, "-m", "ptdiag", *verb, "--json", str(report_path), "--store",
                         str(self.store), "--", *command], timeout, env)
        if not report_path.exists():
            raise AssertionError(f"{name}: ptdiag wrote no report (exit {proc.returncode}): {_tail(proc.stderr)}")
        report = json.loads(report_path.read_text())
        run_dir = Path(report["artifacts"]["events"]).parent
        errors = run_dir / "probe-errors.log"
        if errors.exists() and errors.read_text().strip():
            raise AssertionError(f"{name}: probe-errors.log not empty ({errors}): {_tail(errors.read_text())}")
        return Run(proc, report, run_dir)

    def inspect(self, name: str, path: Path, timeout: float = 120) -> dict | None:
        report_path = self.out / f"{name}.inspect.json"
        proc = self.run([sys.executable, "-m", "ptdiag", "inspect", str(path), "--json", str(report_path)], timeout)
        return json.loads(report_path.read_text()) if proc.returncode == 0 and report_path.exists() else None


def _tail(text: str, chars: int = 300) -> str:
    return " ".join(text.strip().splitlines()[-4:])[-chars:]


def _printed(pattern: str, proc: subprocess.CompletedProcess) -> tuple[str, ...]:
    """What the checked program printed (its numbers), or why the check cannot go on."""
    found = re.search(pattern, proc.stdout)
    if found is None:
        raise AssertionError(f"the program did not print {pattern!r} (exit {proc.returncode}): "
                             f"{_tail(proc.stdout + proc.stderr)}")
    return found.groups()


def _line_of(path: Path, marker: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if marker in line)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- 1. behaves as without ptdiag ---------------------------------------------------------------
BEHAVIOUR_MODES = ("visible", "alloc_conf", "fork", "graph")


def check_behaviour(ctx: Context, outcome: Outcome) -> None:
    program = str(PROGRAMS / "behaviour.py")
    bare = {}
    for mode in BEHAVIOUR_MODES:
        bare[mode] = ctx.bare(program, mode)
        probed = ctx.ptdiag(f"behaviour_{mode}", ["track", "--quiet"], [sys.executable, program, mode])
        same = (bare[mode].stdout, bare[mode].returncode) == (probed.proc.stdout, probed.proc.returncode)
        outcome.expect(same, f"{mode}: same stdout and exit {bare[mode].returncode}")
        if not same:
            outcome.fact(f"{mode} bare: {_tail(bare[mode].stdout + bare[mode].stderr)!r}; "
                         f"under ptdiag: {_tail(probed.proc.stdout + probed.proc.stderr)!r}")
    # what the bare runs saw: the check measures something only if the program's settings took
    outcome.expect("cuda available: False devices: 0" in bare["visible"].stdout, "visible: bare run sees no GPU")
    outcome.expect("expandable segments: True" in bare["alloc_conf"].stdout, "alloc_conf: bare run's segments expandable")
    outcome.expect("child exit 0" in bare["fork"].stdout, "fork: bare run's child used CUDA")
    outcome.expect(bare["graph"].stdout.count("replay") == 5, "graph: bare run replayed 5 times")
    # the capture again, with every specialist's hooks in the program
    probed = ctx.ptdiag("behaviour_graph_all", ["diagnose", "training is slow and loss is NaN", "--only",
                                                "memory,performance,numerics"],
                        [sys.executable, program, "graph"], timeout=240)
    outcome.expect((probed.proc.stdout, probed.proc.returncode) == (bare["graph"].stdout, 0),
                   "graph under every specialist: same replays, exit 0")


# -- 2. memory -----------------------------------------------------------------------------------
def check_memory(ctx: Context, outcome: Outcome) -> None:
    program = PROGRAMS / "oom_backward.py"
    run = ctx.ptdiag("memory_oom", ["diagnose", "CUDA out of memory in backward", "--only", "memory"],
                     [sys.executable, str(program)])
    request = int(_printed(r"REQUEST (\d+)", run.proc)[0])
    outcome.expect(run.report.get("status") == "oom", f"status {run.report.get('status')!r} is 'oom'")
    ooms = run.findings("memory.oom")
    evidence = ooms[0]["evidence"] if ooms else {}
    outcome.expect(evidence.get("requested_bytes") == request,
                   f"memory.oom request {evidence.get('requested_bytes')} == failing allocation {request}")
    line = f"{program.name}:{_line_of(program, 'OOM_LINE')}"
    outcome.expect(str(evidence.get("location") or "").endswith(line),
                   f"memory.oom location {evidence.get('location')!r} is {line}")
    caught = len(run.events("mem_cuda_oom"))
    outcome.fact(f"{caught} OOM(s) seen by the allocator's observer")
    snapshots = sorted((run.run_dir / "memory").glob("*.oom.pickle"))
    inspected = ctx.inspect("memory_oom_snapshot", snapshots[0]) if snapshots else None
    outcome.expect(inspected is not None, f"the OOM snapshot parses with inspect ({len(snapshots)} written)")

    fit = PROGRAMS / "fit_step.py"
    plain = ctx.bare(str(fit))
    peak = int(_printed(r"PEAK (\d+)", plain)[0])
    run = ctx.ptdiag("memory_fit", ["diagnose", "will it fit in 100 GiB", "--only", "memory", "-o",
                                    "memory.target_memory=100GiB"], [sys.executable, str(fit)])
    estimate = next((f["evidence"].get("estimated_peak_bytes") for f in run.findings("memory.fit")), None)
    error = abs(estimate - peak) / peak if estimate else None
    outcome.expect(error is not None and error <= FIT_TOLERANCE,
                   f"fit estimate {estimate} within {FIT_TOLERANCE:.0%} of max_memory_allocated {peak}"
                   + (f" ({error:+.1%})" if error is not None else ""))


# -- 3. performance ------------------------------------------------------------------------------
SAMPLE_ARGS = ["--device", "cuda", "--epochs", "1", "--samples", "2048", "--batch-size", "64", "--image-size", "64"]


def check_performance(ctx: Context, outcome: Outcome) -> None:
    sample = SAMPLES / "resnet_healthy.py"
    item_line = f"{sample.name}:{_line_of(sample, 'loss.item()')}"
    for label, extra in (("fp32", []), ("bf16", ["--autocast", "bf16"])):
        run = ctx.ptdiag(f"performance_{label}", ["diagnose", "training is slow", "--only", "performance"],
                         [sys.executable, str(sample), *SAMPLE_ARGS, *extra], timeout=240)
        metrics = run.report.get("metrics", {})
        trace = run.report.get("artifacts", {}).get("trace")
        inspected = ctx.inspect(f"performance_{label}_trace", Path(trace)) if trace else None
        facts = (inspected or {}).get("metrics", {})
        kernels = (facts.get("trace") or {}).get("gpu_events", 0)
        outcome.expect(kernels > 0, f"{label}: {kernels} GPU events in the trace")
        breakdown = facts.get("kernel_breakdown") or {}
        linked = breakdown.get("total_gpu_time_ms") or 0.0
        unlinked = (facts.get("trace") or {}).get("unlinked_gpu_ms") or 0.0
        share = unlinked / (linked + unlinked) if linked + unlinked else 1.0
        outcome.expect(share < UNLINKED_MAX, f"{label}: unlinked GPU time {share:.1%} < {UNLINKED_MAX:.0%}")
        heavy = sum(c["share"] for c in breakdown.get("categories", []) if re.search("gemm|conv", c["category"], re.I))
        outcome.expect(heavy > GEMM_CONV_MIN, f"{label}: GEMM+conv {heavy:.0%} of GPU time > {GEMM_CONV_MIN:.0%}")
        outcome.expect(bool(metrics.get("gpu_breakdown")), f"{label}: GPU phase rows")
        telemetry = metrics.get("telemetry") or {}
        if importlib.util.find_spec("pynvml") is None:
            outcome.fact(f"{label}: NVML telemetry not checked (nvidia-ml-py is not installed)")
        else:
            outcome.expect(bool(telemetry.get("gpu")) and "gpu_util_pct" in telemetry,
                           f"{label}: NVML telemetry (gpu_util_pct {telemetry.get('gpu_util_pct')})")
        syncs = (metrics.get("scan") or {}).get("syncs", [])
        outcome.expect(any(str(s.get("location", "")).endswith(item_line) and s.get("call") == "item" for s in syncs),
                       f"{label}: the sync scan found {item_line} .item() "
                       f"(found {[(s.get('call'), s.get('location')) for s in syncs][:3]})")


# -- 4. numerics, AMP, tracking -------------------------------------------------------------------
def check_numerics(ctx: Context, outcome: Outcome) -> None:
    run = ctx.ptdiag("numerics_nan", ["diagnose", "loss is NaN", "--only", "numerics"],
                     [sys.executable, str(SAMPLES / "resnet_nan.py"), "--device", "cuda", "--bug", "logzero",
                      "--epochs", "2"])
    top = next((f for f in run.report.get("findings", []) if f.get("code", "").startswith("numerics.nonfinite")), {})
    evidence = top.get("evidence", {})
    outcome.expect((evidence.get("module"), evidence.get("op")) == ("fc.1", "aten::log"),
                   f"NaN sample: {top.get('code')} names module {evidence.get('module')!r}, op {evidence.get('op')!r}")

    run = ctx.ptdiag("amp_fused", ["track", "--quiet"], [sys.executable, str(PROGRAMS / "amp_fused.py")])
    skipped, steps = map(int, _printed(r"SKIPPED (\d+) OF (\d+)", run.proc))
    recorded = len(run.events("step_skipped"))
    outcome.expect(recorded == skipped and skipped > 0, f"fused AdamW: {recorded} skipped steps recorded, "
                                                        f"the program counted {skipped} of {steps}")
    outcome.expect(run.report.get("steps_observed") == steps - skipped,
                   f"fused AdamW: {run.report.get('steps_observed')} steps observed == {steps - skipped} updates")

    for mode in ("default", "side"):
        run = ctx.ptdiag(f"losses_{mode}", ["track", "--quiet"], [sys.executable, str(PROGRAMS / "stream_losses.py"),
                                                                  mode])
        printed = {int(step): float(value) for step, value in re.findall(r"LOSS (\d+) (\S+)", run.proc.stdout)}
        recorded = {e["step"]: e["value"] for e in run.events("loss")}  # all, unless ptdiag's budget shed some
        exact = bool(recorded) and all(printed.get(step) == value for step, value in recorded.items())
        outcome.expect(exact, f"{mode} stream: {len(recorded)} recorded losses == the printed ones bit for bit "
                              f"({len(printed)} printed)"
                       + ("" if exact else f" (first differing: {_first_difference(printed, recorded)})"))

    run = ctx.ptdiag("tf32_api", ["diagnose", "results differ between runs", "--only", "reproducibility"],
                     [sys.executable, str(PROGRAMS / "tf32_api.py")], timeout=240)
    steps = int(_printed(r"STEPS (\d+)", run.proc)[0])
    recorded = sorted({e["step"] for e in run.events("repro_step")})
    outcome.expect(recorded == list(range(1, steps + 1)), f"TF32 API: repro steps {recorded} == 1..{steps}")


def _first_difference(printed: dict, recorded: dict) -> str:
    step = next((s for s in sorted(recorded) if printed.get(s) != recorded[s]), None)
    return f"step {step}: printed {printed.get(step)!r}, recorded {recorded.get(step)!r}"


# -- 5. distributed --------------------------------------------------------------------------------
def check_distributed(ctx: Context, outcome: Outcome) -> None:
    program = str(PROGRAMS / "nccl_stuck.py")
    for label, nccl_timeout, sleep, verb_extra in (("5 s NCCL timeout", "5", "60", []),
                                                  ("600 s NCCL timeout, --timeout 30", "600", "120",
                                                   ["--timeout", "30"])):
        started = time.perf_counter()
        run = ctx.ptdiag(f"nccl_{nccl_timeout}", ["diagnose", "training hangs in all_reduce", "--only", "distributed",
                                                  *verb_extra], [sys.executable, program, nccl_timeout, sleep],
                         timeout=150, env={"MASTER_PORT": str(_free_port())})
        dumps = run.run_dir / "flight_recorder"
        files = sorted(p for p in dumps.glob("*") if p.is_file()) if dumps.is_dir() else []
        inspected = ctx.inspect(f"nccl_{nccl_timeout}_fr", dumps) if files else None
        named = inspected is not None and "all_reduce" in json.dumps(inspected.get("findings", []))
        outcome.expect(bool(files) and named, f"{label}: {len(files)} Flight Recorder dump(s), inspect names "
                                              f"the stuck all_reduce ({time.perf_counter() - started:.0f} s)")

    run = ctx.ptdiag("gloo_shared_gpu", ["diagnose", "OOM on every GPU with DDP", "--only", "distributed"],
                     [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                      str(_free_port()), str(PROGRAMS / "gloo_shared_gpu.py")], timeout=240)
    models = run.events("dist_model")
    uuids = {(m.get("cuda") or {}).get("uuid") for m in models}
    outcome.expect(len(models) == 2 and len(uuids) == 1 and None not in uuids and "" not in uuids,
                   f"two gloo ranks report one GPU UUID ({sorted(map(str, uuids))})")
    outcome.expect(bool(run.findings("distributed.device_mismatch")), "distributed.device_mismatch is found")


# -- the checks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    id: str
    title: str
    run: Callable[[Context, Outcome], None]


CHECKS = (
    Check("1", "behaves as without ptdiag", check_behaviour),
    Check("2", "memory", check_memory),
    Check("3", "performance", check_performance),
    Check("4", "numerics/AMP/tracking", check_numerics),
    Check("5", "distributed", check_distributed),
)


def why_no_gpu() -> str | None:
    """None when a CUDA device is there to check on; else the reason (this process is not
    probed: asking CUDA here changes nothing for the programs checked)."""
    try:
        import torch
    except ImportError as error:
        return f"torch cannot be imported ({error})"
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}: " \
               "torch.cuda.is_available() is False)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where runs, reports and the summary go (default: a new temp dir)")
    parser.add_argument("--only", help="comma-separated check ids (default: all)")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else {c.id for c in CHECKS}
    out = (args.out or Path(tempfile.mkdtemp(prefix="gpu_check."))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    no_gpu = why_no_gpu()
    ctx = Context(out)
    failed = 0
    lines = []
    for check in CHECKS:
        if check.id not in wanted:
            continue
        started = time.perf_counter()
        outcome = Outcome()
        try:
            if no_gpu:
                raise Skip(no_gpu)
            check.run(ctx, outcome)
            verdict = "FAIL" if outcome.failed else "PASS"
            text = "; ".join(outcome.failed + outcome.facts)
        except Skip as skip:
            verdict, text = "SKIP", str(skip)
        except (AssertionError, AttributeError, KeyError, ValueError, TypeError, OSError) as error:
            verdict, text = "FAIL", "; ".join([f"{type(error).__name__}: {error}", *outcome.failed, *outcome.facts])
        failed += verdict == "FAIL"
        line = f"{verdict} {check.id} {check.title} ({time.perf_counter() - started:.0f} s): {text}"
        lines.append(line)
        print(line, flush=True)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print(f"gpu_check: {failed} failed of {len(lines)}; runs and reports in {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
