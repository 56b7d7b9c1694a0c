"""Where a rank is, read from a Python stack: a faulthandler dump (ptdiag's --timeout)
or the traceback of the exception that ended it (a process-group time-out).

The innermost user frame says the line; the innermost torch.distributed frame says the
collective it waits in; torch frames of DDP's own communication (run from C++ or from
DDP's internals, invisible to the probe's collective hook) say which phase of DDP. What
ptdiag's own code (a plugin's hook inside the program's forward) runs is never presented
as the program's: the rank is then said to be inside ptdiag's instrumentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdiag import stackdump
from ptdiag.location import is_ptdiag_work, is_user_file
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
    in_ptdiag: bool = False  # inside ptdiag's own work (a plugin's hook) that the program's line ran into

    def describe(self) -> str:
        inside = self.collective or self.phase
        at = f"at {self.location}" if self.location else "outside user code"
        if self.in_ptdiag:
            return f"inside ptdiag's own instrumentation{f' within {inside}' if inside else ''}, called {at}"
        return f"in {inside} {at}" if inside else at

    def to_dict(self) -> dict:
        return {"location": self.location, "function": self.function, "collective": self.collective,
                "phase": self.phase, "in_ptdiag": self.in_ptdiag}


def where(text: str | None, cwd: str | None = None) -> Where | None:
    """The position of the thread that runs user code (the training), innermost first."""
    if not text:
        return None
    for frames in stackdump.threads_training_first(text):
        at = next((i for i, (f, _, _) in enumerate(frames) if is_user_file(f)), None)
        if at is None:
            continue
        user = frames[at]
        called = frames[:at]  # what the program's line is running, innermost first
        # a collective or DDP phase reached through ptdiag's own work is ptdiag's, not the program's
        own = max((i for i, (f, _, _) in enumerate(called) if is_ptdiag_work(f)), default=None)
        programs = called if own is None else called[own + 1:]
        collective = next((fn for f, _, fn in programs if f.endswith("distributed_c10d.py") and fn in COLLECTIVES),
                          None)
        phase = next((label for f, _, fn in programs for end, name, label in DDP_PHASES
                      if f.endswith(end) and fn == name), None)
        return Where(stackdump.location(user[0], user[1], cwd), user[2], collective, phase, own is not None)
    return None
