"""The probe's own mechanics, in real subprocesses where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptdiag.launch.runner import child_environment
from ptdiag.events import read_events
from ptdiag.probe.event_log import EventWriter
from ptdiag.probe.plugin import Dispatcher, Plugin


def run_probed(code: str, tmp_path: Path, plan: dict | None = None, extra_pythonpath: str | None = None):
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    base = dict(os.environ)
    if extra_pythonpath:
        base["PYTHONPATH"] = extra_pythonpath
    env = child_environment(run_dir, plan or {"specialists": []}, base)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    events = [e for p in sorted((run_dir / "events").glob("*.jsonl")) for e in read_events(p)] \
        if (run_dir / "events").is_dir() else []
    return proc, events, run_dir


def test_existing_sitecustomize_still_runs(tmp_path):
    user = tmp_path / "user_site"
    user.mkdir()
    (user / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE_RAN'] = '1'\n")
    proc, events, _ = run_probed("import os, sys; print(os.environ.get('USER_SITECUSTOMIZE_RAN'), "
                                 "sys.modules['sitecustomize'].__file__)", tmp_path, extra_pythonpath=str(user))
    assert proc.returncode == 0 and proc.stderr == ""
    ran, module_file = proc.stdout.split()
    assert ran == "1" and module_file == str(user / "sitecustomize.py")
    assert events[0]["ev"] == "start"


def test_no_sitecustomize_anywhere_is_silent(tmp_path):
    proc, events, _ = run_probed("print('ok')", tmp_path)
    assert proc.stdout == "ok\n" and proc.stderr == ""
    kinds = [e["ev"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "exit" and "env" not in kinds
    # nothing imported torch on the program's behalf
    proc, _, _ = run_probed("import sys; print('torch' in sys.modules)", tmp_path)
    assert proc.stdout == "False\n"


def test_backward_both_spellings_and_steps(tmp_path):
    code = ("import torch\nm = torch.nn.Linear(2, 1)\no = torch.optim.SGD(m.parameters(), lr=0.1)\n"
            "for i in range(4):\n    l = m(torch.ones(3, 2)).sum()\n"
            "    (l.backward() if i % 2 else torch.autograd.backward(l))\n    o.step()\n")
    proc, events, _ = run_probed(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [e["step"] for e in events if e["ev"] == "loss"] == [1, 2, 3, 4]


def test_failing_plugin_is_disabled_and_logged(tmp_path):
    log: list[str] = []

    class Broken(Plugin):
        def on_step(self, step, optimizer):
            raise RuntimeError("bug in ptdiag")

    class Counting(Plugin):
        seen = 0

        def on_step(self, step, optimizer):
            Counting.seen += 1

    dispatcher = Dispatcher([Broken(None), Counting(None)], log.append)
    for step in range(3):
        dispatcher.call("on_step", step, None)
    assert Counting.seen == 3
    assert len(log) == 1 and "bug in ptdiag" in log[0]
    assert not dispatcher.wants("on_backward")


def test_event_reader_skips_a_line_cut_by_a_crash(tmp_path):
    writer = EventWriter(tmp_path / "e.jsonl")
    writer.write("step", step=1)
    writer.write("loss", step=1, value=float("nan"))
    writer.close()
    with open(tmp_path / "e.jsonl", "a") as fh:
        fh.write('{"ev":"step","st')
    events = read_events(tmp_path / "e.jsonl")
    assert [e["ev"] for e in events] == ["step", "loss"]
    assert events[1]["value"] == "nan"


def test_probe_in_forked_child_does_not_write(tmp_path):
    code = ("import os, torch\npid = os.fork()\n"
            "if pid == 0:\n    torch.manual_seed(1)\n    os._exit(0)\nos.waitpid(pid, 0)\n")
    proc, events, _ = run_probed(code, tmp_path)
    assert proc.returncode == 0
    assert not [e for e in events if e["ev"] == "seed"]


def test_max_steps_exits_zero_at_that_step(tmp_path):
    code = ("import torch\nm = torch.nn.Linear(2, 1)\no = torch.optim.SGD(m.parameters(), lr=0.1)\n"
            "for i in range(100):\n    m(torch.ones(3, 2)).sum().backward()\n    o.step()\nprint('never')\n")
    proc, events, _ = run_probed(code, tmp_path, {"specialists": [], "max_steps": 5})
    assert proc.returncode == 0 and "never" not in proc.stdout
    assert [e for e in events if e["ev"] == "stopped"][0]["step"] == 5
    assert json.dumps(events[-1]).startswith('{"ev": "exit"')


# Warns from torch's DataLoader at each epoch (shown once: the default action) and logs a
# loss that still requires grad to TensorBoard (the recorder reads it as a float).
WARNS_EACH_EPOCH = """
import tempfile, torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter
torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=8, pin_memory=True)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
writer = SummaryWriter(tempfile.mkdtemp())
for epoch in range(3):
    for (x,) in loader:
        loss = model(x).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    writer.add_scalar("loss", loss, epoch)
writer.close()
"""


@pytest.fixture(scope="module")
def warns_bare() -> subprocess.CompletedProcess:
    """WARNS_EACH_EPOCH's bare run, once for both plans compared with it."""
    return subprocess.run([sys.executable, "-c", WARNS_EACH_EPOCH], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("specialists", [[], pytest.param(["memory", "performance", "numerics", "reproducibility",
                                                            "distributed"], marks=pytest.mark.slow)])
def test_program_warnings_are_shown_as_often_as_without_the_probe(tmp_path, specialists, warns_bare):
    """The probe silenced torch.compile's hook warning with filterwarnings, and MemTracker's
    warnings with catch_warnings: each bumps the filters' version, which clears every
    warning registry, so the pin_memory warning came back at the next epoch. And float()
    of the logged loss raised torch's requires_grad warning."""
    bare = warns_bare
    proc, events, _ = run_probed(WARNS_EACH_EPOCH, tmp_path, {"specialists": specialists})
    assert bare.returncode == proc.returncode == 0
    assert bare.stderr.count("pin_memory") == 1
    assert proc.stderr == bare.stderr
    assert [e["tag"] for e in events if e["ev"] == "scalar"] == ["loss"] * 3


def test_silencing_a_warning_leaves_the_registries_alone():
    import warnings

    from ptdiag.probe import quiet_warnings

    def warn():
        warnings.warn("once per location", UserWarning)

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        warn()
        with quiet_warnings.ignored("compile"):
            warnings.warn("compile this", UserWarning)
            warn()
        warn()
    assert [str(w.message) for w in shown] == ["once per location"]


def test_rebuilt_optimizer_steps_still_count(tmp_path):
    code = ("import torch\nm = torch.nn.Linear(2, 1)\nfor i in range(5):\n"
            "    o = torch.optim.SGD(m.parameters(), lr=0.1)\n    m(torch.ones(3, 2)).sum().backward()\n    o.step()\n")
    proc, events, _ = run_probed(code, tmp_path)
    assert proc.returncode == 0
    assert [e["step"] for e in events if e["ev"] == "step"] == [1, 2, 3, 4, 5]


def test_rebuilt_optimizer_that_stays_alive_still_takes_steps(tmp_path):
    """The old optimizers are kept (a list here; a reference cycle or a plugin's reference
    does the same): each new one over the model's parameters takes the step; a second
    optimizer over other parameters (a GAN's critic) does not. The recorder describes the
    optimizer once: the new ones have the same class and hyperparameters."""
    code = ("import torch\ng, c = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)\n"
            "critic = torch.optim.SGD(c.parameters(), lr=0.1)\nkept = []\n"
            "for i in range(4):\n    o = torch.optim.SGD(g.parameters(), lr=0.1)\n    kept.append(o)\n"
            "    (g(torch.ones(3, 2)).sum() + c(torch.ones(3, 2)).sum()).backward()\n"
            "    o.step()\n    critic.step()\n")
    proc, events, _ = run_probed(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [e["step"] for e in events if e["ev"] == "step"] == [1, 2, 3, 4]
    assert len([e for e in events if e["ev"] == "optimizer"]) == 1


def test_exception_from_a_signal_handler_inside_a_hook_reaches_the_program():
    """torch raises a dead DataLoader worker's error from its SIGCHLD handler, wherever the
    main process is, possibly inside a probe hook: it must not be taken for a probe bug."""
    import os
    import signal as sig

    log: list[str] = []

    class Slow(Plugin):
        def on_step(self, step, optimizer):
            os.kill(os.getpid(), sig.SIGUSR1)  # the handler runs inside this hook

    def handler(signum, frame):
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Killed.")

    previous = sig.signal(sig.SIGUSR1, handler)
    try:
        dispatcher = Dispatcher([Slow(None)], log.append)
        try:
            dispatcher.call("on_step", 1, None)
            raised = None
        except RuntimeError as exc:
            raised = exc
    finally:
        sig.signal(sig.SIGUSR1, previous)
    assert raised is not None and "DataLoader worker" in str(raised)
    assert log == [] and dispatcher.wants("on_step")


@pytest.mark.parametrize("argv, role", [
    (["python", "train.py"], "main"),
    (["python", "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py"], "launcher"),
    (["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
      "--multiprocessing-fork"], "spawned"),
    (["python", "-B", "-c", "from multiprocessing.resource_tracker import main;main(3)"], "helper"),
])
def test_process_roles(monkeypatch, argv, role):
    import ptdiag.probe as probe

    monkeypatch.setattr(sys, "orig_argv", argv)
    monkeypatch.setattr(sys, "argv", argv[1:] if argv[1] != "-m" else argv[2:])
    assert probe.process_role() == role
