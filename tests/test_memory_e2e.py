"""End to end: ptdiag runs the resnet_oom sample with each bug and names it, with file:line."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import FAST_SAMPLE_ARGS, PROGRAMS, PYTHON, SAMPLES, load_report, run_ptdiag

pytestmark = pytest.mark.slow

SAMPLE = SAMPLES / "resnet_oom.py"
TINY = [*FAST_SAMPLE_ARGS, "--epochs", "1", "--batch-size", "8", "--samples", "48"]


def line_of(text: str) -> int:
    return next(i for i, line in enumerate(SAMPLE.read_text().splitlines(), 1) if line.strip() == text)


def diagnose(workdir, bug: str, *options: str, extra: tuple = ()) -> dict:
    proc = run_ptdiag("memory grows every step until OOM", "--only", "memory", *options, "--json", "r.json", "--",
                      PYTHON, str(SAMPLE), "--bug", bug, *TINY, *extra, cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert not list(workdir.glob("ptdiag-runs/*/probe-errors.log")), "the probe logged errors"
    return load_report(workdir / "r.json")


def by_code(report: dict, code: str) -> dict:
    return next(f for f in report["findings"] if f["code"] == code)


def test_loss_kept_with_its_graph_is_a_leak_at_the_accumulating_line(workdir):
    finding = by_code(diagnose(workdir, "loss_graph"), "memory.leak")
    assert finding["evidence"]["holder"] == "running_loss" and finding["evidence"]["kind"] == "graph_tensor"
    assert finding["evidence"]["location"].endswith(f"resnet_oom.py:{line_of('running_loss += loss')}")
    assert "loss.item()" in finding["fix"]


def test_outputs_kept_in_a_list_is_a_leak_at_the_append(workdir):
    finding = by_code(diagnose(workdir, "outputs_list"), "memory.leak")
    assert finding["evidence"]["holder"] == "seen" and finding["evidence"]["kind"] == "container"
    assert finding["evidence"]["location"].endswith(f"resnet_oom.py:{line_of('seen.append(outputs)')}")


def test_evaluation_without_no_grad_is_found_with_its_peak_difference(workdir):
    report = diagnose(workdir, "eval_no_grad")
    finding = by_code(report, "memory.eval_without_no_grad")
    eval_line = line_of("outputs = model(images.to(device))")  # the first of the two: the bug's branch
    assert finding["evidence"]["location"].endswith(f"resnet_oom.py:{eval_line}")
    assert finding["evidence"]["forwards"] == 6  # 48 samples / batch 8
    assert finding["evidence"]["saved_bytes_per_forward"] > 0
    assert "memory.leak" not in [f["code"] for f in report["findings"]]
    breakdown = by_code(report, "memory.breakdown")
    assert breakdown["evidence"]["parameter_bytes"] == 11_181_642 * 4  # ResNet-18, 10 classes, float32


def test_batch_too_big_for_the_target_says_so_and_names_a_batch_that_fits(workdir):
    # ResNet-18's parameters, gradients and SGD state take ~137 MiB at any batch; at 32x32 images
    # each sample adds ~0.4 MiB of activations, so batch 8 x 16 = 128 is over 150 MiB, batch ~30 is not
    report = diagnose(workdir, "too_big", "-o", "memory.target_memory=150MiB", "--max-steps", "1",
                      extra=("--samples", "128", "--image-size", "32"))
    finding = by_code(report, "memory.fit")
    evidence = finding["evidence"]
    assert finding["severity"] == "error" and evidence["batch_size"] == 8 * 16
    assert evidence["estimated_peak_bytes"] > evidence["budget_bytes"] == 150 * 2**20
    assert 0 < evidence["largest_batch"] < 128


def test_healthy_sample_has_no_leak_or_eval_finding(workdir):
    proc = run_ptdiag("out of memory?", "--only", "memory", "--json", "r.json", "--", PYTHON,
                      str(SAMPLES / "resnet_healthy.py"), *TINY, cwd=workdir)
    assert proc.returncode == 0
    report = load_report(workdir / "r.json")
    codes = [f["code"] for f in report["findings"]]
    assert "memory.leak" not in codes and "memory.eval_without_no_grad" not in codes
    assert "memory.breakdown" in codes


def test_a_model_called_again_inside_the_tracked_step_runs_as_bare_and_the_breakdown_says_it_was_switched_off(workdir):
    """minGPT's shape: the training loop evaluates by generating token by token, so the
    model runs many times inside one iteration, where torch's MemTracker raises from the
    model's forward pre-hook. The program must run as it does bare."""
    program = [PYTHON, str(PROGRAMS / "generate_in_loop.py")]
    bare = subprocess.run(program, cwd=workdir, capture_output=True, timeout=120)
    proc = run_ptdiag("memory keeps growing every step", "--json", "r.json", "--", *program, cwd=workdir)
    assert (proc.returncode, proc.stdout.decode()) == (bare.returncode, bare.stdout.decode())
    assert bare.returncode == 0 and bare.stdout.count(b"test score") == 3
    report = load_report(workdir / "r.json")
    assert "memory" in report["route"]["specialists"]
    assert report["status"] == "completed" and report["steps_observed"] == 12
    tracker = next(s for s in report["switched_off"] if s["what"] == "memory breakdown (MemTracker)")
    assert tracker["step"] == 1 and tracker["why"].startswith("NotImplementedError: MemTracker does not support")
    assert any("switched off its memory breakdown" in note for note in report["notes"])


def test_target_memory_under_ddp_estimates_on_each_rank_and_both_ranks_run_as_bare(workdir):
    """The fake step runs the module inside DDP: the wrapper's reducer would issue
    collectives from one rank's fake backward (gloo rejected its hook result on both)."""
    command = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29641",
               str(PROGRAMS / "ddp_tiny.py"), "--steps", "3"]
    bare = subprocess.run(command, cwd=workdir, capture_output=True, timeout=120)
    proc = run_ptdiag("will it fit", "--only", "memory", "--target-memory", "1GiB", "--json", "r.json", "--",
                      *command, cwd=workdir)
    assert (proc.returncode, proc.stdout) == (bare.returncode, bare.stdout) and bare.returncode == 0
    assert not list(workdir.glob("ptdiag-runs/*/probe-errors.log")), "the probe logged errors"
    report = load_report(workdir / "r.json")
    fits = {f["evidence"]["rank"]: f["evidence"] for f in report["findings"] if f["code"] == "memory.fit"}
    assert sorted(fits) == [0, 1] and all("error" not in e for e in fits.values()), fits
    # Linear(4, 1) at batch 8: 20 bytes of parameters, the 8x4 float input saved for backward
    assert all(e["batch_size"] == 8 and e["by_kind"]["cpu"]["Parameter"] == 20 for e in fits.values())


def test_target_memory_of_a_bf16_autocast_program_estimates_its_16_bit_forward(workdir):
    command = [PYTHON, str(PROGRAMS / "amp_bf16_mlp.py"), "--steps", "2"]
    proc = run_ptdiag("will it fit", "--only", "memory", "--target-memory", "64MiB", "--json", "r.json", "--",
                      *command, cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    report = load_report(workdir / "r.json")
    fit = by_code(report, "memory.fit")
    assert fit["evidence"]["autocast"] == "bfloat16" and "under bfloat16 autocast" in fit["detail"]
    assert fit["severity"] == "info" and fit["evidence"]["largest_batch"] > 256
    remedies = [r["action"] for r in by_code(report, "memory.breakdown")["evidence"]["remedies"]]
    assert "smaller_batch" in remedies and "autocast_bf16" not in remedies  # it already runs bf16 autocast


CORPUS = SAMPLES.parent / "diagnostics" / "memory"


@pytest.mark.parametrize("case", json.loads((CORPUS / "expected.json").read_text()), ids=lambda c: c["script"])
def test_diagnostics_corpus(workdir, case):
    script = CORPUS / case["script"]
    proc = run_ptdiag(case["symptom"], "--json", "r.json", "--", PYTHON, str(script), cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    report = load_report(workdir / "r.json")
    assert "memory" in report["route"]["specialists"]
    finding = by_code(report, case["code"])
    line = next(i for i, text in enumerate(script.read_text().splitlines(), 1) if text.strip() == case["line"])
    assert finding["evidence"]["location"].endswith(f"{case['script']}:{line}")
