"""Sync to a real MLflow tracking server started on 127.0.0.1 (no mock), read back with
MLflow's own client; and scalars a script logs to TensorBoard captured by `ptdiag track`."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import PYTHON, run_ptdiag

pytestmark = pytest.mark.slow
SERVER_START_S = 180  # alembic migrations + imports: ~50 s measured on the loaded 2-core box

TB_SCRIPT = """
import argparse, torch
from torch.utils.tensorboard import SummaryWriter
p = argparse.ArgumentParser(); p.add_argument("--lr", type=float, default=0.1)
args = p.parse_args()
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=args.lr)
writer = SummaryWriter("tb-own")
for step in range(5):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    writer.add_scalar("train/loss", loss.item(), step)
writer.add_scalar("val/acc", 0.5, 4)
writer.close()
torch.save(model.state_dict(), "model.pt")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("mlflow not installed")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/db.sqlite",
         "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("mlflow server did not start")
            time.sleep(1)
    yield uri
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A script that logs to TensorBoard, run under `ptdiag track`."""
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard not installed")
    workdir = tmp_path_factory.mktemp("tb")
    (workdir / "train.py").write_text(TB_SCRIPT)
    proc = run_ptdiag("track", "--quiet", "--tag", "team=vision", "--", PYTHON, "train.py", "--lr", "0.05",
                      cwd=workdir)
    assert proc.returncode == 0, proc.stderr.decode()
    [run_dir] = [p for p in (workdir / "ptdiag-runs").iterdir() if p.is_dir()]
    return workdir, run_dir


def test_logged_scalars_and_checkpoint_are_recorded(tracked):
    workdir, run_dir = tracked
    report = json.loads((run_dir / "report.json").read_text())
    recorded = next(f for f in report["findings"] if f["code"] == "tracking.run_recorded")
    assert recorded["evidence"]["logged_metrics"] == ["train/loss", "val/acc"]
    ckpt = next(f for f in report["findings"] if f["code"] == "tracking.ckpt_no_metadata")
    assert ckpt["evidence"]["paths"] == ["model.pt"] and ckpt["evidence"]["keys"] == ["bias", "weight"]
    save_line = TB_SCRIPT.splitlines().index('torch.save(model.state_dict(), "model.pt")') + 1
    assert ckpt["evidence"]["location"].endswith(f"train.py:{save_line}")


def test_sync_to_a_real_mlflow_server(tracked, mlflow_server):
    from mlflow.tracking import MlflowClient

    workdir, run_dir = tracked
    out = run_ptdiag("runs", "export", run_dir.name, "--mlflow", mlflow_server, cwd=workdir)
    assert out.returncode == 0, out.stderr.decode()
    again = run_ptdiag("runs", "export", run_dir.name, "--mlflow", mlflow_server, cwd=workdir)
    assert b"already synced" in again.stdout
    client = MlflowClient(mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("ptdiag").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.05" and run.data.params["optimizer.name"] == "SGD"
    assert run.data.tags["team"] == "vision" and run.data.tags["ptdiag.run_id"] == run_dir.name
    assert [m.step for m in client.get_metric_history(run.info.run_id, "ptdiag/loss")] == [1, 2, 3, 4, 5]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/acc")] == [(5, 0.5)]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.json", "meta.json", "packages.json"}
