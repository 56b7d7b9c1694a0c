"""Real recorded runs for the HTML report tests, made once per test session.

Each is a real `ptdiag ... -- python ...` run (subprocess, real torch); the cache keeps
a run made for one test module for the others.
"""

from __future__ import annotations

from pathlib import Path

from conftest import FAST_SAMPLE_ARGS, PYTHON, SAMPLES, run_ptdiag

# injected wherever a user's text reaches the report: symptom, directory, class name,
# exception message, argparse value. Each would print to the console if it ever ran.
SCRIPT_PAYLOAD = '<script>console.error("ptdiag-injected-script");alert(1)</script>'
ATTRIBUTE_PAYLOAD = '"><img src=x onerror="console.error(\'ptdiag-injected-img\');alert(2)">'
DIR_PAYLOAD = '"><svg onload=alert(3)>'  # no "/" allowed in a directory name

HOSTILE_PROGRAM = '''
import argparse
import torch

p = argparse.ArgumentParser()
p.add_argument("--note", default="")
args = p.parse_args()
torch.set_num_threads(1)
Net = type(%(class_name)r, (torch.nn.Module,), {})
model = Net()
model.lin = torch.nn.Linear(4, 1)
model.forward = lambda x: model.lin(x)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
raise RuntimeError(%(message)r)
'''

SAMPLE_RUNS = {
    "resnet_nan": ("loss is NaN after epoch 3", [str(SAMPLES / "resnet_nan.py"), "--bug", "lr", "--epochs", "8"]),
    "resnet_healthy": ("training seems fine, just checking", [str(SAMPLES / "resnet_healthy.py"), "--epochs", "2"]),
}

_made: dict[str, Path] = {}


def _only_run_dir(workdir: Path) -> Path:
    (run_dir,) = [p for p in (workdir / "ptdiag-runs").iterdir() if p.is_dir()]
    return run_dir


def sample_run(name: str, tmp_root: Path) -> Path:
    """The run dir of a sample model's diagnosis."""
    if name not in _made:
        symptom, args = SAMPLE_RUNS[name]
        workdir = tmp_root / name
        workdir.mkdir()
        proc = run_ptdiag(symptom, "--quiet", "--", PYTHON, *args, *FAST_SAMPLE_ARGS, cwd=workdir)
        assert proc.returncode == 0, proc.stderr.decode()
        _made[name] = _only_run_dir(workdir)
    return _made[name]


def hostile_run(tmp_root: Path) -> Path:
    """A run whose symptom, script directory, model class name, argument and exception
    message all hold markup."""
    if "hostile" not in _made:
        workdir = tmp_root / "hostile"
        script_dir = workdir / DIR_PAYLOAD
        script_dir.mkdir(parents=True)
        script = script_dir / "train.py"
        script.write_text(HOSTILE_PROGRAM % {"class_name": ATTRIBUTE_PAYLOAD, "message": SCRIPT_PAYLOAD + ATTRIBUTE_PAYLOAD})
        proc = run_ptdiag(SCRIPT_PAYLOAD + " loss is NaN " + ATTRIBUTE_PAYLOAD, "--quiet", "--tag",
                          f"who={ATTRIBUTE_PAYLOAD}", "--", PYTHON, str(script), "--note", SCRIPT_PAYLOAD, cwd=workdir)
        assert proc.returncode == 1, proc.stderr.decode()
        _made["hostile"] = _only_run_dir(workdir)
    return _made["hostile"]
