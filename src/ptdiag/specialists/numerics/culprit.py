"""The finding for the place a non-finite value was born, from the probe's replay record."""

from __future__ import annotations

from ptdiag.findings import Finding
from ptdiag.specialists.numerics import rules

SPECIALIST = "numerics"


def _what(event: dict) -> str:
    kinds = [k for k, flag in (("NaN", event.get("output_nan")), ("Inf", event.get("output_inf"))) if flag]
    return "/".join(kinds) or "a non-finite value"


def _module(event: dict) -> str:
    module = event.get("module")
    return "the model's top level" if module == "" else (module or "code outside the model")


def location(event: dict) -> str | None:
    """The user's line: inside the op's own code first (a custom backward), then the forward
    line that created the failing node, then where the program called the model."""
    return event.get("user_line") or event.get("forward_user_line") or event.get("call_line")


def _evidence(event: dict, rank: int, **extra) -> dict:
    return {"step": event["step"], "module": event.get("module"), "op": event.get("op"),
            "location": location(event), "rank": rank, "replay_random_draws": event.get("rng"), **extra}


REPLAY_DRAWS = {
    "the step's": " Its random draws (dropout) were the step's own: the RNG was set to its state when the "
                  "step's forward began.",
    "other": " Its random draws (dropout) were not the step's: the RNG's state when the step's forward began "
             "was not captured (the run's first forward, or a step after one not watched), so its values are "
             "not exactly the step's.",
}


def _draws(event: dict) -> str:
    """What the replay's random draws (dropout) were, when it made any."""
    return REPLAY_DRAWS.get(event.get("rng"), "")


def is_fp16_overflow(event: dict) -> bool:
    return event.get("dtype") == "float16" and bool(event.get("output_inf"))


def forward_finding(event: dict, rank: int, severity: str = "error") -> Finding:
    op, module = event["op"], _module(event)
    where = f" ({event['library_line']})" if event.get("library_line") and event["library_line"] != location(event) else ""
    return Finding(
        code="numerics.nonfinite_forward", specialist=SPECIALIST, severity=severity,
        title=f"First non-finite value produced by {module} ({op}) at step {event['step']}",
        detail=(f"Replaying step {event['step']} op by op: {op} returned {_what(event)} from inputs without it "
                f"(largest finite |input| {_num(event.get('input_abs_max'))}) in {module}{where}. "
                f"Every op before it was finite." + _draws(event)),
        evidence=_evidence(event, rank, dtype=event.get("dtype"), input_abs_max=event.get("input_abs_max"),
                           library_line=event.get("library_line"), call_line=event.get("call_line")),
        fix=rules.FORWARD_FIXES.get(op, rules.FORWARD_DEFAULT_FIX))


def backward_finding(event: dict, rank: int) -> Finding:
    node, op, module = event.get("node") or "?", event["op"], _module(event)
    params = event.get("params") or []
    custom = event.get("user_line") is not None
    fix = rules.BACKWARD_CUSTOM_FIX if custom else rules.BACKWARD_FIXES.get(node, rules.BACKWARD_DEFAULT_FIX)
    shown = ", ".join(params[:rules.PARAMS_SHOWN]) + (f" and {len(params) - rules.PARAMS_SHOWN} more"
                                                       if len(params) > rules.PARAMS_SHOWN else "")
    return Finding(
        code="numerics.nonfinite_backward", specialist=SPECIALIST, severity="error",
        title=f"Gradients went non-finite in {node} ({op}) of {module} at step {event['step']}; the forward was finite",
        detail=(f"The loss and the model's outputs were finite at step {event['step']}, the gradients were not. "
                f"Replaying the backward op by op: {op} inside {node} returned {_what(event)} from finite inputs; "
                f"the forward op it differentiates was called at {event.get('forward_user_line') or event.get('forward_library_line') or 'an unknown line'}. "
                f"Parameters with non-finite gradients (nearest the failure first): {shown or 'none recorded'}."
                + _draws(event)),
        evidence=_evidence(event, rank, node=node, params=params[:rules.PARAMS_SHOWN], params_count=len(params),
                           forward_location=event.get("forward_user_line"), custom_function=custom),
        fix=fix)


def input_finding(event: dict, rank: int) -> Finding:
    rows, indices = event.get("rows") or [], event.get("indices")
    kinds = "/".join(k for k, flag in (("NaN", event.get("nan")), ("Inf", event.get("inf"))) if flag)
    source = (f"dataset indices {indices} of {event.get('dataset')}" if indices
              else "dataset indices not knowable from this DataLoader's sampler")
    where = (f" (epoch {event['epoch']}, batch {event['batch']} of the epoch)" if event.get("epoch") is not None else "")
    return Finding(
        code="numerics.nonfinite_input", specialist=SPECIALIST, severity="error",
        title=f"The batch at step {event['step']} already held {kinds} before the model saw it"
              + (f" (dataset indices {indices})" if indices else ""),
        detail=(f"Rows {rows} of the model's input (shape {event.get('shape')}){where} hold {kinds}; {source}. "
                "The model and the loss are not at fault."),
        evidence=_evidence(event, rank, rows=rows, indices=indices, epoch=event.get("epoch"),
                           batch=event.get("batch"), dataset=event.get("dataset")),
        fix=("Find out why these samples are corrupt (a broken file, a division in the transform) and fix or drop "
             "them; a guard in the Dataset's __getitem__, `assert torch.isfinite(x).all(), index`, catches more."))


def fp16_finding(event: dict, rank: int, amp: dict | None) -> Finding:
    bf16 = (amp or {}).get("bf16_supported")
    real = event.get("fp32_abs_max")
    beyond = (f"the same op in float32 gives |x| up to {_num(real)}" if real and real > rules.FP16_MAX
              else f"its finite inputs reach |x| = {_num(event.get('input_abs_max'))}")
    advice = ("Use bfloat16, which has float32's range: torch.autocast(device_type, dtype=torch.bfloat16) "
              "(supported on this device), no GradScaler needed. " if bf16 else
              "bfloat16 is not supported on this device; ")
    return Finding(
        code="numerics.fp16_overflow", specialist=SPECIALIST, severity="error",
        title=f"float16 overflow under autocast in {_module(event)} ({event['op']}) at step {event['step']}",
        detail=(f"{event['op']} returned Inf in float16 (largest finite value 65504); {beyond}. "
                f"Phase: {event.get('phase')}."),
        evidence=_evidence(event, rank, dtype="float16", fp32_abs_max=real, input_abs_max=event.get("input_abs_max"),
                           library_line=event.get("library_line"), bf16_supported=bf16),
        fix=advice + "Or keep the values in range: normalise the inputs, scale the activations "
                     "(e.g. attention logits by 1/sqrt(d)), or run this op in float32 "
                     "(torch.autocast(..., enabled=False) around it).")


def outside_model_finding(event: dict, rank: int) -> Finding:
    """Born after the model's output: in the loss computation (its op watched op by op,
    see loss_region) or in the loss's backward."""
    ops, op, step = event.get("loss_ops") or [], event.get("op"), event["step"]
    nodes = f"The autograd nodes between the loss and the model's output: {', '.join(ops) or 'none recorded'}."
    if event.get("phase") == "gradient_in":
        title = f"The model's output was finite at step {step}; the gradient reaching it from the loss was not"
        detail = "Replaying the model's forward and backward stayed finite. " + nodes
    elif op:
        title = (f"The loss computation made the first non-finite value: {op} at "
                 f"{event.get('user_line') or 'an unknown line'}, step {step}")
        detail = (f"The model's output was finite and its replay stayed finite; watching the ops between the model's "
                  f"output and backward, {op} was the first to return {_what(event)}. " + nodes)
    else:
        title = f"The model's output was finite at step {step}; the non-finite value was born in the loss computation"
        detail = "Replaying the model's forward and backward stayed finite. " + nodes
    return Finding(
        code="numerics.nonfinite_backward" if event.get("phase") == "gradient_in" else "numerics.nonfinite_forward",
        specialist=SPECIALIST, severity="error", title=title, detail=detail,
        evidence=_evidence(event, rank, module=None, loss_ops=ops),
        fix=rules.FORWARD_FIXES.get(op, rules.LOSS_DEFAULT_FIX))


def watched_finding(event: dict, rank: int) -> Finding:
    """The replay stayed finite but watch mode had flagged module outputs in the failing
    step: the innermost flagged module is the place, without an op (it did not happen again)."""
    modules = event["nonfinite_modules"]
    return Finding(
        code="numerics.nonfinite_forward", specialist=SPECIALIST, severity="error",
        title=f"First non-finite output seen in {modules[0] or 'the model top level'} at step {event['step']}",
        detail=(f"Watch mode flagged these module outputs as non-finite in step {event['step']}, innermost first: "
                f"{', '.join(m or '(top level)' for m in modules[:rules.PARAMS_SHOWN])}. Replaying the step did not "
                f"reproduce it, so no op is named: "
                + ("its random draws (dropout) were not the step's (the RNG's state when the step's forward began "
                   "was not captured)." if event.get("rng") == "other" else
                   "the model's forward is not repeatable from its inputs (a non-deterministic op, state changed "
                   "by the first forward, or data-dependent control flow).")),
        evidence=_evidence(event, rank, module=modules[0], nonfinite_modules=modules[:rules.PARAMS_SHOWN]),
        fix="Run that module's forward on the step's inputs with torch.autograd.detect_anomaly or print its "
            "input ranges; look for log, division, sqrt or exp in it.")


def _num(value) -> str:
    return "?" if value is None else f"{float(value):.4g}"


def finding_for(event: dict, rank: int, amp: dict | None) -> Finding:
    phase = event.get("phase")
    if phase == "input":
        return input_finding(event, rank)
    if phase in ("forward", "backward") and is_fp16_overflow(event):
        return fp16_finding(event, rank, amp)
    if phase == "forward":
        return forward_finding(event, rank)
    if phase == "backward":
        return backward_finding(event, rank)
    if phase in (None, "gradient_in") and event.get("nonfinite_modules") and event.get("outputs_finite") is False:
        return watched_finding(event, rank)  # the model's own output was non-finite, but not in the replay
    return outside_model_finding(event, rank)
