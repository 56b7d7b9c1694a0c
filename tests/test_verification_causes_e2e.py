"""End to end: the numerics interventions decide between the causes a NaN allows. Each
candidate cause's fix is tried in its own verification run; the report says which removed
the NaN and ranks the causes by it (tests/programs/nan_causes.py: one flag per cause)."""

from __future__ import annotations

import pytest

from conftest import DEFAULT_VERIFY, PROGRAMS, PYTHON, load_report, run_ptdiag
from verified_top import problems

pytestmark = pytest.mark.slow

TINY_GPT = PROGRAMS.parents[1] / "diagnostics" / "numerics" / "tiny_gpt_configurator.py"


def diagnose(workdir, program, *args: str) -> dict:
    proc = run_ptdiag("loss is NaN", "--json", "r.json", "--verify", "--", PYTHON, str(program), *args,
                      cwd=workdir, env=DEFAULT_VERIFY)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    report = load_report(workdir / "r.json")
    assert problems(report) == []  # issue 18: every top finding with a fix verified, demoted or explained
    return report


def finding(report: dict, code: str) -> dict:
    return next(f for f in report["findings"] if f["code"] == code)


def test_adamw_at_a_huge_lr_is_verified_with_the_lr_its_weights_allow(workdir):
    """nanoGPT's shape at --learning_rate=1000: the LR x0.01 kept it finite but diverging;
    the factor from the weights' RMS removes the NaN and the loss does not grow."""
    report = diagnose(workdir, TINY_GPT, "--learning_rate=1000")
    explosion = report["findings"][0]
    assert explosion["code"] == "numerics.grad_explosion" and explosion["severity"] == "error"
    evidence, verified = explosion["evidence"], explosion["verified"]
    assert evidence["adaptive"] is True and 0 < evidence["weight_rms"] < 1
    assert verified["intervention"] == "lr_scale" and verified["helped"] is True
    factor = verified["settings"]["factor"]
    assert factor < 1e-3 and factor * evidence["lr_configured"] < evidence["weight_rms"]  # a step below the weights
    after = verified["measured"]["after"]
    assert after["step"] is None and after["steps"] > verified["before"]
    assert after["last_finite_loss"] <= after["first_loss"]
    assert "also" not in verified  # the first rung helped: one extra run


def test_skipping_the_poisoned_batch_removes_the_nan(workdir):
    report = diagnose(workdir, PROGRAMS / "nan_causes.py", "--poison", "21")
    top = report["findings"][0]
    assert top["code"] == "numerics.nonfinite_input" and top["evidence"]["indices"] == [21]
    verified = top["verified"]
    assert verified["intervention"] == "skip_batches" and verified["settings"]["skip"] == {"indices": [21]}
    assert verified["helped"] is True and verified["after"] is None
    assert verified["steps"] > verified["before"] and verified["applied"] >= 1


def test_between_the_lr_and_float16_the_fix_that_removed_the_nan_ranks_first(workdir):
    """float16 autocast with an LR that explodes: the op that overflowed is float16's, but
    in float32 the run still diverges, while the lower LR trains: the LR is the cause."""
    report = diagnose(workdir, PROGRAMS / "nan_causes.py", "--amp", "float16", "--lr", "3")
    codes = [f["code"] for f in report["findings"]]
    explosion, fp16 = finding(report, "numerics.grad_explosion"), finding(report, "numerics.fp16_overflow")
    assert codes.index("numerics.grad_explosion") < codes.index("numerics.fp16_overflow")
    assert explosion["severity"] == "error" and explosion["verified"]["helped"] is True
    assert explosion["verified"]["intervention"] == "lr_scale"
    assert fp16["verified"]["intervention"] == "autocast_float32" and fp16["verified"]["helped"] is False
    assert fp16["severity"] == "info"  # a warning (where the explosion surfaced), demoted once more
    fp32 = fp16["verified"]["measured"]["after"]
    assert fp32["step"] is not None or fp32["last_finite_loss"] > 10 * fp32["first_loss"]  # still NaN or diverging


def test_values_beyond_float16_are_verified_by_autocast_in_float32(workdir):
    report = diagnose(workdir, PROGRAMS / "nan_causes.py", "--amp", "float16", "--input-scale", "3e4", "--lr", "1e-9")
    top = report["findings"][0]
    assert top["code"] == "numerics.fp16_overflow" and top["severity"] == "error"
    verified = top["verified"]
    assert (verified["intervention"], verified["settings"], verified["helped"]) == (
        "autocast_float32", {"from_dtype": "float16"}, True)
    assert verified["before"] == 1 and verified["after"] is None


def test_a_grad_scaler_started_at_the_scale_it_fell_to_drops_no_update(workdir):
    report = diagnose(workdir, PROGRAMS / "amp_skips.py", "26")
    top = finding(report, "numerics.fp16_overflow")
    verified = top["verified"]
    assert verified["intervention"] == "grad_scaler_scale"
    assert verified["settings"]["init_scale"] == top["evidence"]["lowest_scale"] < top["evidence"]["first_scale"]
    before, after = verified["measured"]["before"], verified["measured"]["after"]
    assert before["skipped"] > 0 and after["skipped"] < before["skipped"] and verified["helped"] is True


def test_adamw_nan_in_the_attention_at_step_2_is_the_lr_and_lowering_it_removes_the_nan(workdir):
    """The real nanoGPT's shape at --learning_rate=1000 without warm-up: the attention's
    backward goes NaN at the second step, too soon for a gradient trajectory; updates of
    the LR's size against weights of 0.02 are the cause, and the LR fix removes the NaN."""
    report = diagnose(workdir, TINY_GPT, "--learning_rate=1000", "--gradient_accumulation_steps=1", "--n_embd=64",
                      "--block_size=64", "--warmup_iters=0")
    cause, op = report["findings"][0], finding(report, "numerics.nonfinite_backward")
    assert cause["code"] == "numerics.lr_too_high" and cause["severity"] == "error"
    assert cause["evidence"]["update_ratio"] > 1 and op["severity"] == "warning" and op["evidence"]["step"] == 2
    verified = cause["verified"]
    assert (verified["intervention"], verified["helped"], verified["after"]) == ("lr_scale", True, None)
    assert verified["measured"]["after"]["steps"] > verified["before"] == 2


def test_a_loss_that_diverged_without_nan_is_verified_by_the_lr_over_the_same_steps(workdir):
    """AdamW at 10 (warm-up to it): the loss grew x40 and stayed, never NaN (loss_diverged);
    the LR at 1 % of the weights' RMS per step keeps it where it began."""
    report = diagnose(workdir, TINY_GPT, "--learning_rate=10.0", "--gradient_accumulation_steps=1")
    top = report["findings"][0]
    assert top["code"] == "numerics.loss_diverged"
    verified = top["verified"]
    assert (verified["intervention"], verified["metric"], verified["helped"]) == ("lr_scale", "loss_growth", True)
    before, after = verified["measured"]["before"], verified["measured"]["after"]
    assert before["last_finite_loss"] > 10 * before["first_loss"]
    assert after["last_finite_loss"] < 10 * after["first_loss"] and after["steps"] == before["steps"]
