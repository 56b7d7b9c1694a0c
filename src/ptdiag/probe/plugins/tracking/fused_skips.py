"""Updates a GradScaler skipped on the device: fused optimizers.

With an optimizer whose `_step_supports_amp_scaling` is true (Adam, AdamW, SGD, Adagrad
with `fused=True`), `GradScaler.step` always calls `optimizer.step`: it sets
`optimizer.found_inf` (and `grad_scale`) for the step's duration and the fused kernel
leaves the parameters alone when `found_inf` is non-zero (torch/amp/grad_scaler.py,
torch/optim/adam.py reads `getattr(self, "found_inf", None)`). No host ever learns of the
skip, so the probe counts the step as an update. The flag is read here without a host
sync: a non-blocking copy and an event on the stream that computed it, read once the
event has completed, at the step boundaries where the loss is read too.
"""

from __future__ import annotations

from collections import deque


class FusedSkips:
    def __init__(self) -> None:
        self._pending: deque = deque()  # (step, host copy of found_inf, event)

    def push(self, step: int, found_inf) -> list[int]:
        """Step `step`'s `found_inf`; returns the steps now known to have been skipped."""
        ready = self.poll()
        if found_inf.device.type == "cpu":
            return ready + ([step] if float(found_inf) else [])
        import torch

        stream = torch.cuda.current_stream(found_inf.device)  # the step's, where found_inf was computed
        with torch.cuda.device(found_inf.device), torch.cuda.stream(stream):
            host = found_inf.detach().to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        self._pending.append((step, host, event))
        return ready

    def poll(self, wait: bool = False) -> list[int]:
        skipped = []
        while self._pending and (wait or self._pending[0][2].query()):
            step, host, event = self._pending.popleft()
            event.synchronize()
            if float(host):
                skipped.append(step)
        return skipped
