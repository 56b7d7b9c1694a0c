"""torch's saved-tensor hooks over one forward of the program's model: what the forward
saves for backward passes through ptdiag's `pack` (the memory specialist measures it).

The hooks live on a stack of torch's, like modes: pushed at the forward's start, popped
at its end, never popped from under hooks the program pushed inside its forward (then
ptdiag's stay there, passing tensors through unchanged, until they are on top again).
When the program disabled saved-tensor hooks (torch.func transforms do), none is pushed:
pushing would raise inside the program's forward.
"""

from __future__ import annotations

import torch

from ptdiag.probe import gpu


class SavedTensorsWindow:
    hooks_torch = False
    kind = "saved-tensor hooks"

    def __init__(self, instruments, what: str, pack) -> None:
        self.instruments, self.what, self._pack = instruments, what, pack
        self.closed = False

    def pack(self, tensor):
        """What autograd saves: the tensor itself, always (ptdiag only looks at it)."""
        if self._pack is not None and not gpu.capturing():
            try:
                self._pack(tensor)
            except Exception as exc:
                self._pack = None
                self.instruments.fault(self.what, exc)
        return tensor

    @staticmethod
    def unpack(saved):
        return saved

    def open(self) -> "SavedTensorsWindow | None":
        if not torch._C._autograd._saved_tensors_hooks_is_enabled():
            return None
        torch._C._autograd._push_saved_tensors_default_hooks(self.pack, self.unpack)
        self.instruments.pushed.append(self)
        return self

    def close(self) -> None:
        self._pack = None
        self.closed = True
        self.instruments.closed(self)

    def _ours_on_top(self) -> bool:
        top = torch._C._autograd._top_saved_tensors_default_hooks(False)
        return top is not None and top[0] == self.pack

    def on_top(self) -> bool:
        """Ours are on top, or the stack is empty (someone popped them)."""
        return self._ours_on_top() or torch._C._autograd._top_saved_tensors_default_hooks(False) is None

    def under_program(self) -> bool:
        return not self.on_top()

    def release(self) -> None:
        if self._ours_on_top():
            torch._C._autograd._pop_saved_tensors_default_hooks()
