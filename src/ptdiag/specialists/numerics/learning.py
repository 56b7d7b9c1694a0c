"""A loss that does not move: the finding, with the reason when the run measured one.

The reasons are checked in the order the cause comes in: a graph that makes the loss a
constant (a softmax over one class), then no trainable parameter, no gradient reaching
the parameters, gradients that are exactly zero, a learning rate of zero. When none
holds, the finding says what was measured and leaves the cause open.
"""

from __future__ import annotations

import math
from typing import Callable

from ptdiag.findings import Finding

SPECIALIST = "numerics"

ONE_CLASS_FIX = ("Give the classifier one output per class, nn.Linear(features, num_classes), with integer class "
                 "targets; for a single yes/no output use nn.BCEWithLogitsLoss, for real-valued targets "
                 "nn.MSELoss. Cross-entropy over one logit is log(1) = 0 whatever the model outputs.")


def _one_class(facts: dict) -> tuple[str, str, str] | None:
    nodes = facts["graph"].get("one_class") or []
    if not nodes:
        return None
    return ("cross-entropy over one logit", f"the loss takes a softmax over a dimension of size 1 ({nodes[0]}): cross-entropy over one "
            f"logit is exactly 0 and its gradient exactly 0, whatever the model outputs", ONE_CLASS_FIX)


def _frozen(facts: dict) -> tuple[str, str, str] | None:
    if facts["graph"].get("trainable") != 0:
        return None
    return ("every parameter frozen", "no parameter of the model requires a gradient (all frozen)",
            "Unfreeze the parameters to train (requires_grad_(True)), and build the optimizer over them.")


def _no_grad(facts: dict) -> tuple[str, str, str] | None:
    if facts["graph"].get("with_grad") != 0 or facts["graph"].get("trainable") == 0:
        return None
    return ("no parameter received a gradient", "no parameter received a gradient from backward(): the loss does not depend on the parameters "
            "being updated (a detached tensor, .item()/.numpy() in the loss, or an optimizer over other parameters)",
            "Compute the loss from the model's output without detaching it, and step an optimizer built over "
            "model.parameters().")


def _zero_grads(facts: dict) -> tuple[str, str, str] | None:
    norms = facts["norms"]
    if not norms or any(n != 0 for n in norms):
        return None
    return ("gradients exactly 0", f"the gradient norm was exactly 0 in all {len(norms)} backward passes measured",
            "Check what cuts the gradient between the loss and the parameters: a constant target, a "
            "saturated activation, a clamp or a comparison (argmax, >) in the loss.")


def _lr_zero(facts: dict) -> tuple[str, str, str] | None:
    lrs = facts["lrs"]
    if not lrs or any(lr != 0 for lr in lrs):
        return None
    return ("learning rate 0", "the learning rate was 0 at every step", "Set a non-zero learning rate (check the scheduler's warm-up).")


REASONS: tuple[Callable[[dict], tuple[str, str, str] | None], ...] = (_one_class, _frozen, _no_grad, _zero_grads, _lr_zero)


def _num(value: float) -> str:
    return f"{value:.4g}"


def loss_flat_finding(flat: dict, rank: int, graph: dict | None, norms: list, lrs: list) -> Finding:
    facts = {"graph": graph or {}, "norms": [n for n in norms if isinstance(n, (int, float)) and math.isfinite(n)],
             "lrs": lrs}
    reason = next((found for found in (check(facts) for check in REASONS) if found), None)
    span = f"steps {flat['first_step']}-{flat['last_step']}"
    if flat["kind"] == "constant":
        value = "exactly 0" if flat["max"] == 0 == flat["min"] else _num(flat["first"])
        title = f"The loss stayed at {value} in all {flat['steps']} steps measured: the model does not learn"
        if reason:
            title += f" ({reason[0]})"
        measured = f"The loss was {value} in every one of the {flat['steps']} steps measured ({span})."
        code = "numerics.loss_constant"
    else:
        title = f"The loss never went below its first value ({_num(flat['first'])}) in {flat['steps']} steps"
        measured = (f"Over {span} the loss ranged {_num(flat['min'])}-{_num(flat['max'])} and no step's loss was "
                    f"below the first one ({_num(flat['first'])}).")
        code = "numerics.loss_not_decreasing"
    median_norm = sorted(facts["norms"])[len(facts["norms"]) // 2] if facts["norms"] else None
    detail = measured + (f" Why: {reason[1]}." if reason else
                         " Gradients were non-zero" + (f" (median norm {_num(median_norm)})" if median_norm else "")
                         + " and the learning rate was not 0, so the updates are applied but do not reduce it.")
    return Finding(
        code=code, specialist=SPECIALIST, severity="warning", title=title, detail=detail,
        evidence={"step": flat["first_step"], "rank": rank, "module": None, "op": None, "location": None,
                  **{k: flat[k] for k in ("kind", "steps", "first", "min", "max")},
                  "reason": reason[1] if reason else None, "one_class": (graph or {}).get("one_class") or None,
                  "grad_norm_median": median_norm, "loss_ops": (graph or {}).get("loss_ops")},
        fix=reason[2] if reason else ("Check the learning rate against the loss's scale, the labels against the "
                                      "inputs, and that the optimizer holds the model's parameters."))
