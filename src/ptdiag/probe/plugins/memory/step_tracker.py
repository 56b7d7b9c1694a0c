"""The full peak breakdown of one real training step, by torch's own MemTracker.

MemTracker attributes every storage to parameters, buffers, gradients, activations,
temporaries or optimizer state and keeps the peak of each; it costs about 1.3x on the
step it watches (shared/facts.md), so it watches one step only: entered at a step
boundary, left at the next one. The probe's instruments run it (guarded: a tracker that
faults inside the program's forward is switched off and the forward goes on).
"""

from __future__ import annotations

WHAT = "memory breakdown (MemTracker)"


class StepTracker:
    def __init__(self, instruments) -> None:
        self.instruments = instruments
        self._window = None

    @property
    def active(self) -> bool:
        return self._window is not None

    def start(self, model, optimizer) -> None:
        self._window = self.instruments.track_memory(WHAT, model, optimizer)

    def stop(self) -> dict | None:
        """Peak bytes per device and kind ('Parameter', 'Gradient', 'Activation', ...,
        'Total'); None when the tracker faulted (switched off). Between steps only."""
        window, self._window = self._window, None
        return window.close()
