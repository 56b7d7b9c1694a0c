"""train_forever's loop, where a Ctrl-C lands inside torch.profiler's start (which takes over
a second, several on a loaded box: a real Ctrl-C sent as the profiler window opens lands
there): the start is wrapped to raise KeyboardInterrupt once the profiler recorded.
Prints PROFILER STOPPED when something stops that profiler."""
import runpy
from pathlib import Path

import torch
import torch.profiler

start, stop = torch.profiler.profile.start, torch.profiler.profile.stop


def interrupted_start(self):
    start(self)
    raise KeyboardInterrupt


def stop_said(self):
    stop(self)
    print("PROFILER STOPPED", flush=True)  # stdout: ptdiag points fd 2 at its kineto log around the stop


torch.profiler.profile.start, torch.profiler.profile.stop = interrupted_start, stop_said
runpy.run_path(str(Path(__file__).with_name("train_forever.py")), run_name="__main__")
