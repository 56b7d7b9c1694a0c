"""Where a rank is, read from a Python stack: a faulthandler dump (ptdiag's --timeout)
or the traceback of the exception that ended it (a process-group time-out).

The innermost user frame says the line; the innermost torch.distributed frame says the
collective it waits in; torch frames of DDP's own communication (run from C++ or from
DDP's internals, invisible to the probe's collective hook) say which phase of DDP.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdiag import stackdump
from ptdiag.location import is_user_file
from ptdiag.events import COLLECTIVES


# (file ending, function, what the rank is doing there): DDP's communication phases
DDP_PHASES = (
    ("distributed.py", "_sync_buffers", "DDP's buffer broadcast at the start of forward"),
    ("distributed.py", "_sync_module_states", "DDP's constructor, broadcasting rank 0's weights"),
    ("distributed.py", "_verify_param_shape_across_processes", "DDP's constructor, comparing parameter shapes"),
    ("distributed.py", "_check_global_requires_backward_grad_sync", "DDP's forward set-up"),
    ("autograd/graph.py", "_engine_run_backward", "backward, where DDP all-reduces the gradients"),
)


@dataclass
class Where:
    location: str | None  # innermost user frame, file:line
    function: str | None
    collective: str | None  # torch.distributed function it is inside
    phase: str | None  # DDP's communication phase, when inside one

    def describe(self) -> str:
        inside = self.collective or self.phase
        at = f"at {self.location}" if self.location else "outside user code"
        return f"in {inside} {at}" if inside else at

    def to_dict(self) -> dict:
        return {"location": self.location, "function": self.function, "collective": self.collective,
                "phase": self.phase}


def where(text: str | None, cwd: str | None = None) -> Where | None:
    """The position of the thread that runs user code (the training), innermost first."""
    if not text:
        return None
    for frames in stackdump.threads_training_first(text):
        user = next(((f, l, fn) for f, l, fn in frames if is_user_file(f)), None)
        if user is None:
            continue
        collective = next((fn for f, _, fn in frames if f.endswith("distributed_c10d.py") and fn in COLLECTIVES), None)
        phase = next((label for f, _, fn in frames for end, name, label in DDP_PHASES
                      if f.endswith(end) and fn == name), None)
        return Where(stackdump.location(user[0], user[1], cwd), user[2], collective, phase)
    return None
