"""ptdiag's CUDA paths, checked on a CPU: what a CPU can show of them (probe/gpu.py).

- The probe never touches CUDA before the program does: a recorder (tests/programs/
  cuda_call_recorder) wraps every torch call that initialises CUDA or asks the driver,
  from before `import torch` returns, and a CPU training under every specialist makes
  exactly the calls it makes bare: none. The probe's CUDA work is queued for CUDA's
  initialisation instead (torch.cuda._lazy_call), and a queued call can never raise
  into the program's first CUDA use.
- Inside a CUDA graph capture the probe is inert: the capture predicate, faked true for
  one step of a CPU training, silences every hook of every specialist for that step,
  and the report says what was turned off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptdiag.launch.runner import child_environment
from ptdiag.events import read_events
from ptdiag.probe import gpu

PROGRAMS = Path(__file__).parent / "programs"
ALL_SPECIALISTS = ["memory", "performance", "numerics", "reproducibility", "distributed"]

CPU_TRAINING = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
torch.set_num_threads(1)
data = TensorDataset(torch.randn(96, 8), torch.randn(96, 1))
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for x, y in DataLoader(data, batch_size=8):
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("done")
"""


def _recorded(log: Path) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [line for line in lines if "call" in line], next(line for line in lines if "queued" in line)


def _run(code: str, tmp_path: Path, name: str, plan: dict | None, extra_env: dict | None = None):
    log = tmp_path / f"{name}.jsonl"
    base = dict(os.environ, CUDA_CALLS_LOG=str(log), **(extra_env or {}))
    base["PYTHONPATH"] = os.pathsep.join([str(PROGRAMS / "cuda_call_recorder"), base.get("PYTHONPATH", "")])
    run_dir = tmp_path / name
    run_dir.mkdir()
    env = child_environment(run_dir, plan, base) if plan is not None else base
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    events = [e for p in sorted((run_dir / "events").glob("*.jsonl")) for e in read_events(p)] \
        if (run_dir / "events").is_dir() else []
    return proc, _recorded(log), events, run_dir


@pytest.mark.slow
def test_the_probe_makes_no_cuda_call_before_the_program_does(tmp_path):
    bare, (bare_calls, bare_end), _, _ = _run(CPU_TRAINING, tmp_path, "bare", None)
    probed, (calls, end), events, run_dir = _run(CPU_TRAINING, tmp_path, "probed", {"specialists": ALL_SPECIALISTS})
    assert bare.returncode == probed.returncode == 0, probed.stderr
    assert bare.stdout == probed.stdout == "done\n"
    assert bare_calls == [], bare_calls  # torch's import itself asks nothing of CUDA
    assert calls == [], calls  # nor does the probe: not at import, not per step, not at exit
    assert bare_end["initialized"] is end["initialized"] is False
    # the probe's CUDA work waits in torch's queue for the program's CUDA initialisation: the
    # environment's GPU facts and the allocator's history
    assert end["queued"] == bare_end["queued"] + 2
    env = next(e for e in events if e["ev"] == "env")["torch"]
    assert env["cuda_available"] in (None, False) and env["gpus"] == []
    assert not [e for e in events if e["ev"] == "env_cuda"]
    assert not (run_dir / "probe-errors.log").exists()


def test_work_queued_for_cuda_initialisation_never_raises_into_the_program():
    """torch runs queued calls inside the program's first CUDA use; one that raises becomes
    its DeferredCudaCallError. Faked at torch's `_lazy_call` boundary."""
    queued, logged = [], []

    class Cuda:
        _lazy_call = staticmethod(queued.append)

    class Torch:
        cuda = Cuda

    def broken():
        raise RuntimeError("no device")

    gpu.after_cuda_init(Torch, broken, logged.append)
    assert len(queued) == 1
    queued[0]()  # what torch's _lazy_init does with it: nothing may come out
    assert len(logged) == 1 and "broken" in logged[0] and "no device" in logged[0]


def test_work_queued_in_the_probed_process_does_not_run_in_a_forked_child():
    """A forked child inherits torch's queue; the probe's work there would record the
    child's CUDA as the probed process's."""
    queued, ran = [], []

    class Cuda:
        _lazy_call = staticmethod(queued.append)

    class Torch:
        cuda = Cuda

    gpu.after_cuda_init(Torch, lambda: ran.append(os.getpid()), print)
    pid = os.fork()
    if pid == 0:
        queued[0]()
        os._exit(3 if ran else 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    queued[0]()
    assert ran == [os.getpid()]


CAPTURED_STEP = """
from types import SimpleNamespace
import torch
from torch import nn
from ptdiag.probe import gpu
capture = [False]
# torch.cuda as the capture predicate asks it, answering as in a step captured on a GPU
gpu._torch_cuda[:] = [SimpleNamespace(_initialized=True, is_initialized=lambda: True,
                                      is_current_stream_capturing=lambda: capture[0])]
torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(1, 7):
    capture[0] = step == 4
    x, y = torch.randn(8, 8), torch.randn(8, 1)
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("done")
"""


@pytest.mark.slow
def test_every_hook_is_inert_while_a_cuda_graph_is_captured(tmp_path):
    proc, _, events, run_dir = _run(CAPTURED_STEP, tmp_path, "captured",
                                    {"specialists": ALL_SPECIALISTS, "options": {"performance": {"stop": "no"}}})
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    losses = sorted(e["step"] for e in events if e["ev"] == "loss")
    assert 4 not in losses and {1, 2, 3, 5} <= set(losses), losses
    assert 4 not in [e["step"] for e in events if e["ev"] == "numerics"]
    assert 4 not in [e["step"] for e in events if e["ev"] == "step"]
    said = [e for e in events if e["ev"] == "switched_off" and e["what"] == gpu.CAPTURE]
    assert len(said) == 1 and said[0]["step"] == 3  # said once, as the capture began in step 4
    assert not (run_dir / "probe-errors.log").exists()


def test_gpu_facts_recorded_at_cuda_initialisation_update_the_imports(tmp_path):
    """`env` (at import: torch's build, NVML's view) then `env_cuda` (once the program
    initialised CUDA): the run record holds the latter's devices."""
    from ptdiag.recorded import RecordedRun
    from ptdiag.specialists.tracking.record import torch_environment

    (tmp_path / "events").mkdir()
    events = [{"ev": "start", "t": 1.0, "rank": 0},
              {"ev": "env", "t": 1.0, "torch": {"torch": "2.14.1", "cuda": "13.0", "cuda_available": None, "gpus": []}},
              {"ev": "env_cuda", "t": 2.0, "torch": {"cuda_available": True, "cudnn": 91900,
                                                    "gpus": [{"index": 0, "name": "NVIDIA H200", "uuid": "GPU-1"}]}}]
    (tmp_path / "events" / "rank0.p1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    env = torch_environment(RecordedRun.load(tmp_path))
    assert env == {"torch": "2.14.1", "cuda": "13.0", "cuda_available": True, "cudnn": 91900,
                   "gpus": [{"index": 0, "name": "NVIDIA H200", "uuid": "GPU-1"}]}
