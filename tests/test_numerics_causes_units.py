"""Numerics reaches the cause, in process: trajectories before ops, no blame on uninitialised
memory, a loss that never moves and why, backward passes as the clock of hand-written
updates; findings ranked for the person who asked; evidence as people read it."""

from __future__ import annotations

import io
import json

import torch
import torch.nn.functional as F
from rich.console import Console

from ptdiag.findings import Finding, sort_findings
from ptdiag.probe.event_log import EventWriter
from ptdiag.probe.model_hooks import ModelHooks
from ptdiag.probe.plugins.numerics.localise import _downstream_only, born_here, replay
from ptdiag.probe.plugins.numerics.loss_graph import between
from ptdiag.recorded import RecordedRun
from ptdiag.report import terminal
from ptdiag.report.model import Report
from ptdiag.report.people import evidence_lines, number
from ptdiag.specialists.numerics import analyse, history


def recorded(tmp_path, events: list[tuple[str, dict]], args: dict | None = None) -> RecordedRun:
    (tmp_path / "meta.json").write_text(json.dumps({"run_id": "r", "plan": {}}))
    writer = EventWriter(tmp_path / "events" / "rank0.p100.jsonl")
    if args:
        writer.write("args", values=args)
    for kind, fields in events:
        writer.write(kind, **fields)
    writer.close()
    return RecordedRun.load(tmp_path)


def watch(backward: int, loss, norm, step: int = 1) -> tuple[str, dict]:
    return "numerics", {"step": step, "backward": backward, "loss": loss, "norm": norm, "norms": [norm],
                        "out_finite": True, "scale": None}


# -- trajectories ------------------------------------------------------------------------------
def test_a_blow_up_from_the_second_step_is_an_explosion_once_the_run_failed():
    norms = [(1, 1.1), (2, 118.0), (3, 262.0)]
    assert history.explosion(norms) is None  # three calm-less steps and no failure: too little to say
    found = history.explosion(norms + [(4, float("nan"))], before_step=4, failed=True)
    assert (found.baseline, found.onset_step, found.peak) == (1.1, 2, 262.0)
    grown = history.explosion(norms, losses=[(1, 4.2), (2, 1510.0), (3, 2947.0)])  # or the loss grew x10
    assert grown is not None and grown.peak_step == 3


def test_a_hand_written_update_that_blew_up_is_ranked_as_the_explosion_with_its_configured_lr(tmp_path):
    """No optimizer step was seen: every watch event says step 1, the backward count is the clock."""
    events = [watch(1, 3.9, 0.17), watch(2, 4.3, 2.6), watch(3, 20.1, 91.7), watch(4, 1.3e23, "inf"),
              ("numerics_culprit", {"step": 1, "backward": 4, "phase": "backward", "op": "aten::mm", "module": "rnn",
                                    "node": "MmBackward0", "output_inf": True, "grads_finite": False})]
    findings = analyse(recorded(tmp_path, events, args={"lr": 40.0, "clip": 1e9})).findings
    top = findings[0]
    assert top.code == "numerics.grad_explosion" and top.evidence["step"] == 2
    assert "with lr=40" in top.title and "overflow first in rnn (aten::mm) at step 4" in top.title
    assert "3.9 → 4.3 → 20.1" in top.detail
    op = next(f for f in findings if f.code == "numerics.nonfinite_backward")
    assert op.severity == "warning" and "explosion above" in op.fix


def test_uninitialised_memory_is_never_where_a_value_was_born():
    garbage = torch.full((3,), float("nan"))
    assert not born_here(torch.ops.aten.empty_like.default, [], [garbage])
    assert not born_here(torch.ops.aten.empty.memory_format, [], [garbage])
    assert born_here(torch.ops.aten.log.default, [torch.zeros(3)], [torch.log(torch.zeros(3))])


# -- a loss that does not move ---------------------------------------------------------------------
def test_flat_losses_constant_not_decreasing_or_learning():
    assert history.loss_flat([(s, 0.0) for s in range(1, 6)])["kind"] == "constant"
    assert history.loss_flat([(s, 0.0) for s in range(1, 5)]) is None  # too few steps to say
    stuck = [(1, 1.0)] + [(s, 1.0 + 0.01 * (s % 3)) for s in range(2, 25)]
    assert history.loss_flat(stuck)["kind"] == "not_decreasing"
    assert history.loss_flat([(s, 2.0 / s) for s in range(1, 30)]) is None
    gan_like = [(1, 1.0)] + [(s, 1.0 + 0.3 * (s % 4)) for s in range(2, 30)]  # rises and swings while it learns
    assert history.loss_flat(gan_like) is None


def test_cross_entropy_over_one_logit_is_read_from_the_graph_before_backward():
    logits = torch.randn(8, 1, requires_grad=True)
    loss = F.cross_entropy(logits * 2, torch.rand(8, 1))
    names, one_class = between(loss.grad_fn, set())
    assert one_class == ["LogSoftmaxBackward0"] and "LogSoftmaxBackward0" in names
    assert between(F.cross_entropy(logits.expand(8, 3) * 2, torch.zeros(8, dtype=torch.long)).grad_fn, set())[1] == []


def test_a_constant_loss_finding_names_the_one_class_reason(tmp_path):
    events = [("numerics_graph", {"step": 1, "backward": 1, "loss_ops": ["NllLossBackward0", "LogSoftmaxBackward0"],
                                  "one_class": ["LogSoftmaxBackward0"], "trainable": 2, "with_grad": 2})]
    for step in range(1, 9):
        events += [watch(step, 0.0, 0.0, step=step), ("step", {"step": step, "lr": [0.001]}),
                   ("loss", {"step": step, "value": 0.0, "finite": True})]
    (top,) = analyse(recorded(tmp_path, events)).findings
    assert top.code == "numerics.loss_constant" and top.severity == "warning"
    assert "exactly 0 in all 8 steps measured" in top.title and "cross-entropy over one logit" in top.title
    assert "num_classes" in top.fix


def test_a_constant_loss_with_zero_gradients_and_no_graph_says_so(tmp_path):
    events = []
    for step in range(1, 7):
        events += [watch(step, 0.5, 0.0, step=step), ("step", {"step": step, "lr": [0.1]}),
                   ("loss", {"step": step, "value": 0.5, "finite": True})]
    (top,) = analyse(recorded(tmp_path, events)).findings
    assert top.evidence["reason"].startswith("the gradient norm was exactly 0 in all 6")


# -- ranking and rendering -----------------------------------------------------------------------
def _finding(code: str, specialist: str, severity: str) -> Finding:
    return Finding(code=code, specialist=specialist, severity=severity, title=code)


def test_the_planned_diagnosis_comes_before_tracking_notes_whatever_their_severity():
    found = [_finding("tracking.dirty_tree", "tracking", "warning"), _finding("memory.breakdown", "memory", "info"),
             _finding("numerics.grad_explosion", "numerics", "error"), _finding("ptdiag.crashed", "ptdiag", "error"),
             _finding("numerics.nonfinite_loss", "numerics", "error")]
    ranked = [f.code for f in sort_findings(found, ["numerics", "memory"])]
    assert ranked == ["numerics.grad_explosion", "ptdiag.crashed", "numerics.nonfinite_loss", "memory.breakdown",
                      "tracking.dirty_tree"]
    assert [f.code for f in sort_findings(found)][-1] == "memory.breakdown"  # no plan: severity only


def test_numbers_are_rounded_for_people_and_evidence_is_short_lines():
    assert [number(v) for v in (3.523414373397827, 261195.54, 8.29e18, 1.5e-5, 7)] == \
        ["3.523", "2.612e+5", "8.29e+18", "1.5e-5", "7"]
    lines = evidence_lines({"step": 2, "loss": 3.523414373397827, "none": None,
                            "norm_history": [[s, 0.1 * s] for s in range(1, 20)], "location": "x.py:3"})
    assert lines[0].startswith("step 2 · loss 3.523")
    assert "(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), … (19 in all)" in " ".join(lines)
    assert all(len(line) <= 100 for line in lines) and "none" not in " ".join(lines)


def test_the_terminal_shows_evidence_as_lines_not_json():
    finding = Finding(code="numerics.loss_constant", specialist="numerics", severity="warning", title="t",
                      evidence={"first": 3.523414373397827, "steps": 24})
    report = Report(run_id="r", symptom="s", command=["python"], route={}, status="completed", exit_code=0,
                    steps_observed=24, findings=[finding])
    out = io.StringIO()
    terminal.render(report, Console(file=out, width=300, highlight=False, soft_wrap=True))
    assert "evidence: first 3.523 · steps 24" in out.getvalue() and "3.5234143" not in out.getvalue()


def test_a_model_returning_its_logits_and_their_loss_replays_its_backward_once():
    """The gradient caught on the logits already holds what flowed in from the loss: the
    replay's backward starts from the loss only, so its gradients are the program's."""
    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x, y):
            logits = self.linear(x)
            return logits, F.cross_entropy(logits, y)

    model = WithLoss()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    logits, loss = model(x, y)
    caught = []
    logits.register_hook(caught.append)
    loss.backward()
    kept, grads = _downstream_only([logits, loss], [caught[0], torch.ones(())])
    assert kept == [loss] and len(grads) == 1
    owner = ModelHooks(lambda what, why: None, lambda message: None)
    try:
        assert replay(model, (x, y), {}, None, [caught[0], torch.ones(())], list(model.parameters()),
                      owner)["phase"] is None
    finally:
        owner.close()


def test_a_warm_up_value_that_blew_up_is_named_with_the_configured_rate_and_adam_is_not_told_to_clip(tmp_path):
    events = [("optimizer", {"cls": "AdamW", "groups": [{"lr": 166.7}], "params": 10})]
    for step, (loss, norm, lr) in enumerate([(4.2, 1.1, 166.7), (1510.0, 118.0, 333.3), (2947.0, 262.0, 500.0)], 1):
        events += [watch(step, loss, norm, step=step), ("step", {"step": step, "lr": [lr]}),
                   ("loss", {"step": step, "value": loss, "finite": True})]
    events += [watch(4, 37218.0, "nan", step=4), ("loss", {"step": 4, "value": "nan", "finite": False})]
    top = analyse(recorded(tmp_path, events, args={"learning_rate": 1000.0})).findings[0]
    assert top.code == "numerics.grad_explosion"
    assert "at learning rate 167 (configured learning_rate=1000)" in top.title
    assert "AdamW" in top.fix and "clip_grad_norm_" not in top.fix


def test_a_loss_that_grew_tenfold_and_stayed_is_diverged_with_its_lr_where_the_norm_did_not_explode(tmp_path):
    """nanoGPT (1 layer, 32 wide) at --learning_rate=1000 on the CPU: AdamW kept the gradient
    norm within x22 while the loss went 2.9 -> ~130 and stayed, never NaN (measured)."""
    events = [("optimizer", {"cls": "AdamW", "groups": [{"lr": 0.5}], "params": 10})]
    trajectory = [(2.9, 1.1), (4.2, 3.2), (6.7, 4.4), (18.8, 9.5), (57.7, 13.3), (56.8, 19.9), (35.0, 9.4),
                  (114.7, 19.9), (98.5, 17.2), (104.7, 19.0)]
    for step, (loss, norm) in enumerate(trajectory, 1):
        events += [watch(step, loss, norm, step=step), ("step", {"step": step, "lr": [0.5 * step]}),
                   ("loss", {"step": step, "value": loss, "finite": True})]
    findings = analyse(recorded(tmp_path, events, args={"learning_rate": 1000.0})).findings
    top = findings[0]
    assert top.code == "numerics.loss_diverged" and top.severity == "error"
    assert top.evidence["onset_step"] == 5 and top.evidence["growth"] > 10
    assert "configured learning_rate=1000" in top.title and "AdamW" in top.fix
    assert "numerics.grad_explosion" not in {f.code for f in findings}


def test_a_loss_that_spiked_and_came_back_or_went_down_is_not_diverged():
    spiked = [(s, v) for s, v in enumerate([2.0, 2.1, 40.0, 2.0, 1.9, 1.8, 1.8, 1.7, 1.7, 1.6], 1)]
    learning = [(s, 3.0 / s) for s in range(1, 12)]
    assert history.loss_divergence(spiked) is None and history.loss_divergence(learning) is None
    assert history.loss_divergence(spiked[:3]) is None  # too few steps to say


def _adam_run(tmp_path, lr: float):
    """AdamW whose second step's backward went NaN in the attention: too soon for a trajectory."""
    events = [("optimizer", {"cls": "AdamW", "groups": [{"lr": lr}]}),
              ("numerics_graph", {"step": 1, "backward": 1, "loss_ops": [], "one_class": [], "trainable": 4,
                                  "with_grad": 4, "weight_rms": 0.02}),
              watch(1, 4.2, 0.5, step=1), ("step", {"step": 1, "lr": [lr]}), ("loss", {"step": 1, "value": 4.2}),
              watch(2, 4.0e5, "nan", step=2),
              ("numerics_culprit", {"step": 2, "backward": 2, "phase": "backward", "module": "h.1.attn", "node": "SdpaBackward0",
                                    "op": "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "output_nan": True,
                                    "grads_finite": False, "loss_finite": True})]
    return analyse(recorded(tmp_path, events, args={"learning_rate": 1000.0})).findings


def test_adam_updates_larger_than_the_weights_are_the_cause_of_a_nan_too_soon_for_a_trajectory(tmp_path):
    findings = _adam_run(tmp_path, 166.7)
    cause, op = findings[0], next(f for f in findings if f.code == "numerics.nonfinite_backward")
    assert cause.code == "numerics.lr_too_high" and cause.severity == "error"
    assert cause.evidence["update_ratio"] == 166.7 / 0.02 and cause.evidence["lr_configured"] == 1000.0
    assert "0.0002" in cause.fix and "configured learning_rate=1000" in cause.fix
    assert op.severity == "warning" and op.fix.startswith("Lower the learning rate above")  # where it surfaced
    # the LR fix verifies it, at 1 % of the weights' RMS from the highest LR asked for
    from ptdiag import interventions
    assert interventions.BY_NAME["lr_scale"].settings_for(cause.evidence) == {"factor": 2e-07}


def test_adam_at_an_lr_below_the_weights_leaves_the_op_as_the_cause(tmp_path):
    findings = _adam_run(tmp_path, 1e-3)
    assert findings[0].code == "numerics.nonfinite_backward" and findings[0].severity == "error"
    assert not [f for f in findings if f.code == "numerics.lr_too_high"]
