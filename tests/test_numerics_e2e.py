"""End to end: each bug of sample_models/resnet_nan.py is localised to its step, module, op and line."""

from __future__ import annotations

import json

import pytest

from conftest import FAST_SAMPLE_ARGS, PROGRAMS, PYTHON, SAMPLES, assert_stop_announced, load_report, run_ptdiag

pytestmark = pytest.mark.slow

SAMPLE = SAMPLES / "resnet_nan.py"


def line_of(text: str) -> str:
    """`resnet_nan.py:N` of the sample line holding `text` (no line numbers hard-coded)."""
    (number,) = [i for i, line in enumerate(SAMPLE.read_text().splitlines(), 1) if text in line]
    return f"resnet_nan.py:{number}"


def diagnose(workdir, bug: str, *extra: str) -> tuple[dict, list[dict]]:
    proc = run_ptdiag("loss is NaN", "--json", "r.json", "--", PYTHON, str(SAMPLE), "--bug", bug,
                      *extra, *FAST_SAMPLE_ARGS, cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    events = [json.loads(line) for p in (workdir / "ptdiag-runs").glob("*/events/*.jsonl")
              for line in p.read_text().splitlines()]
    return load_report(workdir / "r.json"), events


def first_bad_watch_step(events: list[dict]) -> int:
    """The first backward pass whose loss, outputs or gradients were non-finite, as watched."""
    bad = [e["step"] for e in events if e["ev"] == "numerics"
           and ("nan" in json.dumps([e["loss"], e["norm"]]) or "inf" in json.dumps([e["loss"], e["norm"]])
                or e["out_finite"] is False)]
    return min(bad)


def test_log_of_zero_is_the_log_in_the_head(workdir):
    report, events = diagnose(workdir, "logzero", "--epochs", "1")
    top = report["findings"][0]
    assert top["code"] == "numerics.nonfinite_forward"
    ev = top["evidence"]
    assert (ev["step"], ev["module"], ev["op"]) == (first_bad_watch_step(events), "fc.1", "aten::log")
    assert ev["location"].endswith(line_of("torch.log(torch.softmax"))
    assert "log_softmax" in top["fix"]


def test_zero_std_is_the_division(workdir):
    report, events = diagnose(workdir, "zerostd", "--epochs", "1")
    top = report["findings"][0]
    assert top["code"] == "numerics.nonfinite_forward"
    ev = top["evidence"]
    assert (ev["step"], ev["module"], ev["op"]) == (first_bad_watch_step(events), "layer4.2", "aten::div")
    assert ev["location"].endswith(line_of("/ (torch.sqrt(var)"))
    # stopped right after the failing step instead of training on NaN
    assert report["steps_observed"] == ev["step"]


def test_sqrt_at_zero_fails_in_backward_only(workdir):
    report, events = diagnose(workdir, "sqrt", "--epochs", "1")
    top = report["findings"][0]
    assert top["code"] == "numerics.nonfinite_backward"
    ev = top["evidence"]
    assert (ev["step"], ev["module"], ev["node"]) == (first_bad_watch_step(events), "layer4.2", "SqrtBackward0")
    assert ev["op"] == "aten::div"
    assert ev["location"].endswith(line_of("/ (torch.sqrt(var)"))
    assert ev["params"][0].startswith("layer4.1.")  # nearest the failure first
    watched = next(e for e in events if e["ev"] == "numerics" and e["step"] == ev["step"])
    assert isinstance(watched["loss"], float)  # the forward was finite


@pytest.mark.parametrize("workers", ["0", "2"])
def test_poisoned_sample_is_named_by_dataset_index(workdir, workers):
    report, events = diagnose(workdir, "poison", "--epochs", "1", "--workers", workers)
    top = report["findings"][0]
    assert top["code"] == "numerics.nonfinite_input"
    ev = top["evidence"]
    assert ev["indices"] == [37]
    assert ev["step"] == first_bad_watch_step(events)
    assert (ev["module"], ev["op"]) == ("", None)
    assert ev["location"].endswith(line_of("loss = criterion(model(images)"))


def test_fp16_overflow_under_autocast(workdir):
    report, events = diagnose(workdir, "fp16", "--epochs", "1")
    top = report["findings"][0]
    assert top["code"] == "numerics.fp16_overflow"
    ev = top["evidence"]
    assert (ev["step"], ev["module"]) == (first_bad_watch_step(events), "conv1")
    assert ev["op"] == "aten::_to_copy"  # the input cast to float16: 65535 > 65504
    assert ev["location"].endswith(line_of("loss = criterion(model(images)"))
    assert ev["bf16_supported"] is True and "bfloat16" in top["fix"]
    assert any(e["ev"] == "numerics" and e["scale"] == 65536.0 for e in events)  # GradScaler seen


def test_lr_blow_up_is_an_explosion_with_numbers(workdir):
    report, events = diagnose(workdir, "lr", "--epochs", "8")
    codes = [f["code"] for f in report["findings"]]
    explosion, loss = report["findings"][:2]  # the cause, then its consequence
    assert explosion["code"] == "numerics.grad_explosion"
    assert explosion["evidence"]["peak_norm"] > 100 * explosion["evidence"]["baseline_norm"]
    assert explosion["evidence"]["lr_before_onset"] >= 10 * explosion["evidence"]["lr_start"]
    assert "clip_grad_norm_" in explosion["fix"]
    assert "as the learning rate rose x" in explosion["title"]
    assert loss["code"] == "numerics.nonfinite_loss"
    assert loss["evidence"]["step"] == first_bad_watch_step(events)
    assert loss["evidence"]["location"].endswith(line_of("loss = criterion(model(images)"))
    assert loss["evidence"]["op"] and loss["evidence"]["module"]
    assert f"({loss['evidence']['op']})" in explosion["title"]  # where it overflowed, named after the cause
    assert "numerics.loss_spike" in codes


def test_the_stop_at_the_first_nonfinite_value_is_announced(workdir):
    proc = run_ptdiag("loss is NaN", "--max-steps", "30", "--json", "r.json", "--", PYTHON,
                      str(PROGRAMS / "nan_quick.py"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    report = load_report(workdir / "r.json")
    assert report["status"] == "diverged"
    stop = assert_stop_announced(report, proc.stderr, "numerics")
    assert stop["step"] < 30 and stop["max_steps"] == 30 and stop["keep_running"] == "-o numerics.stop=no"


def test_a_step_the_replay_cannot_repeat_is_placed_by_the_watch_flags(workdir):
    proc = run_ptdiag("loss is NaN", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "nan_once.py"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    top = load_report(workdir / "r.json")["findings"][0]
    assert top["code"] == "numerics.nonfinite_forward" and top["evidence"]["step"] == 3
    assert top["evidence"]["module"] == "1"  # Flaky itself, the innermost module flagged (not linear inside it)
    assert top["evidence"]["nonfinite_modules"][:2] == ["1", "2"] and top["evidence"]["op"] is None


def test_a_compiled_model_is_localised_with_the_users_module_names(workdir):
    proc = run_ptdiag("loss is NaN", "--json", "r.json", "--", PYTHON, str(PROGRAMS / "compiled_model.py"), "nan",
                      cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    top = load_report(workdir / "r.json")["findings"][0]
    ev = top["evidence"]
    assert (top["code"], ev["step"], ev["module"], ev["op"]) == ("numerics.nonfinite_forward", 1, "3", "aten::log")
    assert ev["location"].endswith("compiled_model.py:12")
