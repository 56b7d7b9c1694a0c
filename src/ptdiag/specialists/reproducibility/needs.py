"""What an exact resume from a checkpoint taken at step s needs, measured on the run.

Only state the run showed it uses is required: optimizer state when the optimizer held
some at the save, the scheduler when the learning rate changed during the run and an LR
scheduler object drove it (an LR the program computes from its step needs the step), a
generator's state when the training drew from it, the position in the epoch when the
save fell in the middle of one. Weights and the epoch/step counter are always needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdiag.checkpoint_contents import CATEGORIES
from ptdiag.specialists.reproducibility.trace import Trace, rng_label


@dataclass
class Need:
    state: str  # a category of checkpoint_contents, or "data" for generator/position
    why: str

    def to_dict(self) -> dict:
        return {"state": self.state, "what": CATEGORIES.get(self.state, self.state), "why": self.why}


def needs(trace: Trace, ckpt: dict) -> list[Need]:
    step = ckpt["step"]
    found = [Need("model", "the weights themselves"),
             Need("counter", "a resumed run must know its epoch and step to continue the schedule and data")]
    optimizer = trace.run.main.first("optimizer") if trace.run.main else None
    if ckpt.get("opt_entries"):
        name = optimizer["cls"] if optimizer else "the optimizer"
        found.append(Need("optimizer", f"{name} held state for {ckpt['opt_entries']} parameters at step {step} "
                                       "(momentum buffers or moment estimates)"))
    change = _lr_change(trace)
    if change and ckpt.get("lr_scheduler") is False:
        found[1] = Need("counter", f"{found[1].why}; the learning rate changed during the run ({change}) with no "
                                   "LR scheduler object: the program computes it, from the step it resumes at")
    elif change:
        found.append(Need("scheduler", f"the learning rate changed during the run ({change})"))
    for kind, first in sorted(trace.consumed().items()):
        why = f"the training draws from it (its state moved between steps {first - 1} and {first})"
        found.append(Need("data" if kind.startswith("loader") else f"rng.{kind}",
                          why if not kind.startswith("loader") else f"{rng_label(kind)} decides the shuffle; {why}"))
    epoch, following = trace.steps.get(step), trace.steps.get(step + 1)
    if epoch and following and epoch.epoch is not None and epoch.epoch == following.epoch:
        found.append(Need("data", f"saved in the middle of epoch {epoch.epoch} (step {step + 1} continues it): "
                                  "the position within the epoch"))
    return _unique(found)


def missing(trace: Trace, ckpts: list[dict]) -> list[Need]:
    """Needs that none of the files saved at that step meets."""
    held = {item["category"] for c in ckpts for item in c.get("items", [])}
    return [n for n in needs(trace, ckpts[0]) if n.state not in held]


def _lr_change(trace: Trace) -> str | None:
    previous = None
    for step, state in trace.steps.items():
        if state.lr is None:
            continue
        if previous is not None and state.lr != previous[1]:
            return f"{_lr(previous[1])} at step {previous[0]}, {_lr(state.lr)} at step {step}"
        previous = (step, state.lr)
    return None


def _lr(values: list) -> str:
    return ", ".join(f"{v:.4g}" if isinstance(v, (int, float)) else str(v) for v in values)


def _unique(found: list[Need]) -> list[Need]:
    seen, kept = set(), []
    for need in found:
        if need.state not in seen:
            seen.add(need.state)
            kept.append(need)
    return kept
