"""End to end: ptdiag runs real programs twice / resumes them and compares step by step."""

from __future__ import annotations

import json

import pytest

from conftest import PROGRAMS, PYTHON, SAMPLES, load_report, run_ptdiag

pytestmark = pytest.mark.slow

TRAIN = str(PROGRAMS / "repro_train.py")
RESNET = str(SAMPLES / "resnet_ckpt.py")
# two steps per epoch, tiny images, two epochs: each run is a few seconds
RESNET_ARGS = ["--threads", "1", "--samples", "32", "--batch-size", "16", "--image-size", "16", "--epochs", "2"]


def diagnose(workdir, *options, command):
    proc = run_ptdiag("results differ and resume is not exact", "--only", "reproducibility", "--json", "r.json",
                      *options, "--", *command, cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return {f["code"]: f for f in load_report(workdir / "r.json")["findings"]}


def test_seeded_run_repeats_and_its_full_checkpoint_resumes_exactly(workdir):
    """Weights and training state in two files saved together count as one checkpoint."""
    found = diagnose(workdir, "-o", f"reproducibility.resume_cmd={PYTHON} {TRAIN} --resume ckpt.pt --split",
                     "-o", "reproducibility.resume_step=5", command=[PYTHON, TRAIN, "--split"])
    assert found["reproducibility.deterministic"]["evidence"]["steps_compared"] == 12
    exact = found["reproducibility.resume_exact"]["evidence"]
    assert exact["step"] == 8 and exact["steps_compared"] == 4  # the first save at or after step 5
    assert not {"reproducibility.nondeterministic", "reproducibility.ckpt_incomplete",
                "reproducibility.resume_divergence", "reproducibility.unseeded"} & set(found)
    # the files the main run left (epoch 3) are back after the companion runs
    import torch
    assert torch.load(workdir / "ckpt.pt.optim", weights_only=True)["epoch"] == 3


def test_seed_from_the_clock_is_named_with_both_values_and_the_line(workdir):
    found = diagnose(workdir, "-o", "reproducibility.steps=3", "-o", "reproducibility.op_audit=yes",
                     command=[PYTHON, TRAIN, "--seed", "time", "--save", "none"])
    nd = found["reproducibility.nondeterministic"]
    assert nd["evidence"]["stage"] == "weights" and nd["evidence"]["first_tensor"] == "0.weight"
    seed_cause = next(c for c in nd["evidence"]["causes"] if c["kind"] == "seed_value")
    assert seed_cause["rng"] == "torch" and seed_cause["location"].endswith("repro_train.py:27")
    assert found["reproducibility.unseeded"]["evidence"]["rngs"] == ["python"]
    # the audit run (asked for) ran under use_deterministic_algorithms; no CPU op of this program warns
    audit = [json.loads(line) for path in workdir.glob("ptdiag-runs/*/companions/audit/events/*.jsonl")
             for line in path.read_text().splitlines()]
    assert any(e["ev"] == "repro_env" and e["deterministic_algorithms"] for e in audit)
    assert not any(e["ev"] == "nondeterministic_op" for e in audit)


def test_checkpoint_without_rng_state_diverges_after_resume_and_says_why(workdir):
    found = diagnose(workdir, "-o", "reproducibility.repeat=no",
                     "-o", f"reproducibility.resume_cmd={PYTHON} {TRAIN} --resume ckpt.pt --save no_rng",
                     command=[PYTHON, TRAIN, "--save", "no_rng"])
    div = found["reproducibility.resume_divergence"]["evidence"]
    assert div["step"] == 5 and div["checkpoint_step"] == 4
    assert div["loss_uninterrupted"] != div["loss_resumed"]
    assert {"torch", "python"} <= set(next(c for c in div["causes"] if c["kind"] == "rng")["rngs"])
    assert {m["state"] for m in div["missing"]} == {"rng.torch", "rng.python"}
    assert {m["state"] for m in found["reproducibility.ckpt_incomplete"]["evidence"]["missing"]} == {"rng.torch", "rng.python"}


def test_resnet_full_state_checkpoint_resumes_bit_exactly(workdir):
    found = diagnose(workdir, "-o", "reproducibility.repeat=no",
                     "-o", f"reproducibility.resume_cmd={PYTHON} {RESNET} {' '.join(RESNET_ARGS)} --resume ckpt.pt",
                     command=[PYTHON, RESNET, *RESNET_ARGS])
    exact = found["reproducibility.resume_exact"]["evidence"]
    assert exact["step"] == 2 and exact["steps_compared"] == 2
    assert "reproducibility.ckpt_incomplete" not in found


def test_resnet_model_only_checkpoint_restarts_optimizer_and_schedule(workdir):
    found = diagnose(workdir, "-o", "reproducibility.repeat=no",
                     "-o", f"reproducibility.resume_cmd={PYTHON} {RESNET} {' '.join(RESNET_ARGS)} --bug model_only "
                           "--resume ckpt.pt --start-epoch 1",
                     command=[PYTHON, RESNET, *RESNET_ARGS, "--bug", "model_only"])
    div = found["reproducibility.resume_divergence"]["evidence"]
    assert div["step"] == 3
    kinds = {c["kind"] for c in div["causes"]}
    assert {"optimizer", "lr"} <= kinds
    assert div["lr_uninterrupted"] == [0.025] and div["lr_resumed"] == [0.05]
    missing = {m["state"] for m in found["reproducibility.ckpt_incomplete"]["evidence"]["missing"]}
    assert {"optimizer", "scheduler", "counter", "rng.python", "rng.numpy", "data"} <= missing
    assert found["reproducibility.ckpt_overwrite"]["evidence"]["steps"] == [2, 4]


def test_a_program_on_the_new_tf32_api_is_recorded_at_every_step(workdir):
    """Reading the legacy TF32 flag raises once a program used torch's fp32_precision API:
    the plugin recorded step 1 only and the probe logged the error."""
    found = diagnose(workdir, command=[PYTHON, str(PROGRAMS / "tf32_api.py")])
    assert found["reproducibility.deterministic"]["evidence"]["steps_compared"] == 4
    assert not list(workdir.glob("ptdiag-runs/*/probe-errors.log")), "the probe logged errors"
    events = [json.loads(line) for path in workdir.glob("ptdiag-runs/*/events/*.jsonl")
              for line in path.read_text().splitlines()]
    assert [e["step"] for e in events if e["ev"] == "repro_step"] == [0, 1, 2, 3, 4]
    env = next(e for e in events if e["ev"] == "repro_env")
    assert (env["tf32_matmul"], env["tf32_cudnn"]) == (True, True)  # as the program set them
