"""The Python API: `with session(...)` around training that runs in this process.

Each test runs a real program (real torch) in a subprocess: the probe patches torch in
the process that uses the API, and the test process must stay unpatched.
"""

from __future__ import annotations

import json
import math
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import PYTHON, load_report, recorded_steps, run_ptdiag

pytestmark = pytest.mark.slow

TRAIN = '''
import sys
import torch
from ptdiag.api import session

torch.set_num_threads(1)

def train(lr, steps=12):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    done = 0
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
    return done
'''


def run_program(body: str, workdir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    script = workdir / "prog.py"
    script.write_text(TRAIN + textwrap.dedent(body))
    return subprocess.run([PYTHON, str(script), *args], cwd=workdir, capture_output=True, text=True,
                          timeout=180, **kwargs)


def run_dirs(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "ptdiag-runs").iterdir() if p.is_dir())


def test_session_records_the_same_run_and_report_as_the_cli(workdir):
    """The same training, once under the CLI and once in a session: same diagnosis, same files."""
    cli_dir, api_dir = workdir / "cli", workdir / "api"
    cli_dir.mkdir(), api_dir.mkdir()
    (cli_dir / "prog.py").write_text(TRAIN + "\ntrain(5.0)\n")
    cli = run_ptdiag("loss is NaN", "--quiet", "--json", "r.json", "--", PYTHON, "prog.py", cwd=cli_dir)
    assert cli.returncode == 0, cli.stderr.decode()
    api = run_program('''
        import json
        with session("loss is NaN", json_path="r.json", quiet=True) as s:
            train(5.0)
        print(json.dumps({"run_dir": str(s.run_dir), "status": s.report.status, "html": str(s.html_path)}))
    ''', api_dir)
    assert api.returncode == 0, api.stderr
    out = json.loads(api.stdout.splitlines()[-1])
    cli_report, api_report = load_report(cli_dir / "r.json"), load_report(api_dir / "r.json")
    assert set(api_report) == set(cli_report)
    for key in ("schema", "symptom", "status", "steps_observed", "exit_code"):
        assert api_report[key] == cli_report[key], key
    assert api_report["status"] == out["status"]
    assert [f["code"] for f in api_report["findings"]] == [f["code"] for f in cli_report["findings"]]
    assert api_report["findings"][0]["code"].startswith("numerics.")
    assert api_report["findings"][0]["evidence"].get("step") == cli_report["findings"][0]["evidence"].get("step")
    assert api_report["route"]["specialists"] == cli_report["route"]["specialists"]
    (cli_run,), (api_run,) = run_dirs(cli_dir), run_dirs(api_dir)
    assert Path(out["run_dir"]) == api_run
    assert {"meta.json", "outcome.json", "report.json", "events"} <= {p.name for p in api_run.iterdir()}
    assert {p.name for p in cli_run.iterdir()} - {"report.html"} <= {p.name for p in api_run.iterdir()}
    assert Path(out["html"]) == api_run / "report.html" and 'data-plot="loss"' in Path(out["html"]).read_text()
    listed = run_ptdiag("runs", "list", "--json", cwd=api_dir)
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [api_run.name]


def test_max_steps_ends_the_block_not_the_program_and_the_probe_is_off_after_it(workdir):
    proc = run_program('''
        import sys
        with session(None, ["tracking"], max_steps=3, config={"lr": 0.01, "note": "api"}, quiet=True) as s:
            train(0.01)
        print("after the block", s.report.status, s.report.steps_observed, s.report.params["lr"])
        print("stopped by", s.report.stopped_by["by"], s.report.stopped_by["step"])
        print("trained after the session:", train(0.01, steps=20))
        print("excepthook restored:", sys.excepthook is sys.__excepthook__)
        with session(None, ["tracking"], quiet=True) as again:
            train(5.0, steps=6)
        print("second session", again.report.status, again.report.steps_observed)
    ''', workdir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "after the block completed 3 0.01" in lines
    assert "stopped by max_steps 3" in lines  # the probe knows it stopped the block, and the report says so
    assert "trained after the session: 20" in lines  # max_steps=3 no longer applies
    assert "excepthook restored: True" in lines
    assert "second session diverged 6" in lines
    first, second = run_dirs(workdir)
    events = [json.loads(l) for p in (first / "events").glob("*.jsonl") for l in p.read_text().splitlines()]
    assert max(e["step"] for e in events if e["ev"] == "step") == 3  # nothing recorded after the block
    assert events[-1]["ev"] == "exit"


def test_an_exception_in_the_block_is_recorded_and_raised_again(workdir):
    proc = run_program('''
        with session("it crashes", ["tracking"], quiet=True) as s:
            train(0.01, steps=2)
            raise ValueError("broken batch <b>")
    ''', workdir)
    assert proc.returncode == 1 and "ValueError: broken batch <b>" in proc.stderr
    (run_dir,) = run_dirs(workdir)
    report = load_report(run_dir / "report.json")
    assert report["status"] == "crashed" and report["exit_code"] == 1 and report["steps_observed"] == 2
    exceptions = [json.loads(l) for p in (run_dir / "events").glob("*.jsonl") for l in p.read_text().splitlines()
                  if '"ev":"exception"' in l]
    assert [e["message"] for e in exceptions] == ["broken batch <b>"]
    assert "broken batch &lt;b&gt;" in (run_dir / "report.html").read_text()


def test_a_session_inside_a_ptdiag_command_leaves_the_diagnosis_to_it(workdir):
    (workdir / "prog.py").write_text(TRAIN + textwrap.dedent('''
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with session(None, ["tracking"]) as s:
                train(0.01, steps=4)
        print("inner report:", s.report, [str(w.message)[:60] for w in caught])
    '''))
    proc = run_ptdiag("slow", "--only", "tracking", "--quiet", "--json", "r.json", "--", PYTHON, "prog.py", cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "inner report: None ['ptdiag is already diagnosing this process" in proc.stdout.decode()
    assert len(run_dirs(workdir)) == 1 and load_report(workdir / "r.json")["steps_observed"] == 4


LIGHTNING = '''
import json
import sys
import torch
import pytorch_lightning as pl
from torch.utils.data import DataLoader, TensorDataset
from ptdiag.api import session

torch.set_num_threads(1)


class Regressor(pl.LightningModule):
    def __init__(self, lr):
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(lr, symptom, specialists=None, max_steps=None):
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with session(symptom, specialists, quiet=True, max_steps=max_steps, config={"lr": lr}) as s:
        # built inside the block, so the probe sees the loader being made (batch size, dataset)
        data = DataLoader(TensorDataset(torch.randn(64, 8), torch.randn(64, 1)), batch_size=8)
        trainer.fit(Regressor(lr), data)
    return s


full, stopped = fit(1e-3, "loss is NaN"), fit(1e-3, None, ["tracking"], max_steps=5)
print(json.dumps({"dir": str(full.run_dir), "steps": full.report.steps_observed,
                  "params": full.report.params, "status": full.report.status,
                  "stopped_steps": stopped.report.steps_observed, "stopped_status": stopped.report.status}))
'''


def test_lightning_trainer_inside_a_session(workdir):
    pytest.importorskip("pytorch_lightning", reason="pytorch-lightning not installed (a test extra)")
    script = workdir / "fit.py"
    script.write_text(LIGHTNING)
    proc = subprocess.run([PYTHON, str(script)], cwd=workdir, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["status"] == "completed" and out["steps"] == 16  # 2 epochs of 8 batches, seen by the global hooks
    assert out["params"]["optimizer.name"] == "Adam" and out["params"]["lr"] == 1e-3
    assert out["params"]["dataloader.batch_size"] == 8
    assert out["stopped_steps"] == 5 and out["stopped_status"] == "completed"
    events = [json.loads(line) for p in (Path(out["dir"]) / "events").glob("*.jsonl")
              for line in p.read_text().splitlines()]
    losses = {e["step"]: e["value"] for e in events if e["ev"] == "loss"}
    assert sorted(losses) == recorded_steps([e for e in events if e["ev"] == "switched_off"], 16)
    assert all(math.isfinite(v) for v in losses.values())
