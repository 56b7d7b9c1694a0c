"""The full peak breakdown of one real training step, by torch's own MemTracker.

MemTracker is a TorchDispatchMode that attributes every storage to parameters, buffers,
gradients, activations, temporaries or optimizer state and keeps the peak of each; it
costs about 1.3x on the step it watches (shared/facts.md), so it watches one step only:
entered at a step boundary, left at the next one.
"""

from __future__ import annotations


class StepTracker:
    def __init__(self, torch) -> None:
        self.torch = torch
        self._tracker = None

    @property
    def active(self) -> bool:
        return self._tracker is not None

    def start(self, model, optimizer) -> None:
        from torch.distributed._tools.mem_tracker import MemTracker

        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        tracker.__enter__()
        self._tracker = tracker

    def stop(self) -> dict:
        """Peak bytes per device and kind ('Parameter', 'Gradient', 'Activation', ..., 'Total')."""
        tracker, self._tracker = self._tracker, None
        tracker.__exit__(None, None, None)
        return peak_by_kind(tracker)


def peak_by_kind(tracker) -> dict:
    """A MemTracker's peak as plain data: {device: {kind: bytes, ..., "Total": bytes}}."""
    return {str(device): {getattr(k, "value", str(k)): int(v) for k, v in kinds.items()}
            for device, kinds in tracker.get_tracker_snapshot("peak").items()}
