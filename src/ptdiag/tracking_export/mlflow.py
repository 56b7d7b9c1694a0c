"""Sync a recorded run to an MLflow tracking server through its REST API (stdlib HTTP:
ptdiag needs no mlflow client installed, only the URI of a server).

One ptdiag run becomes one MLflow run in experiment `group` (or "ptdiag"), tagged
`ptdiag.run_id` so that syncing again finds it instead of duplicating it: params (the
recorded hyperparameters), metrics (per-step loss, lr, step time and what the script
logged), tags (user tags, status, git commit, the failure), artifacts (report, meta,
packages, git patch).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ptdiag.runs.errors import StoreError
from ptdiag.tracking_export.series import run_series

DEFAULT_EXPERIMENT = "ptdiag"
RUN_ID_TAG = "ptdiag.run_id"
ARTIFACTS = ("report.json", "meta.json", "packages.json", "git.patch")
# MLflow's log-batch limits per request, and its longest param value.
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
MAX_PARAM_CHARS = 6000
HTTP_TIMEOUT_S = 30
# ptdiag status -> MLflow run status
STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "killed": "KILLED", "running": "RUNNING"}
FAILED = "FAILED"


class MlflowError(StoreError):
    """The tracking server refused or could not be reached: one line saying which."""


def sync_mlflow(record: dict, run_dir: Path, uri: str) -> dict:
    """Create (or find) the MLflow run of this ptdiag run and log it. Returns
    {"experiment_id", "run_id", "created"}."""
    client = _Rest(uri)
    experiment_id = client.experiment(record.get("group") or DEFAULT_EXPERIMENT)
    existing = client.find_run(experiment_id, record["run_id"])
    if existing is not None:
        return {"experiment_id": experiment_id, "run_id": existing, "created": False}
    started_ms = int((record.get("started") or time.time()) * 1000)
    run = client.call("runs/create", {
        "experiment_id": experiment_id, "start_time": started_ms,
        "run_name": record.get("name") or record["run_id"],
        "tags": _pairs(_tags(record))[:MAX_TAGS]})["run"]
    mlflow_id = run["info"]["run_id"]
    params = _pairs({k: _param_text(v) for k, v in (record.get("params") or {}).items()})
    metrics = [{"key": tag, "value": value, "timestamp": started_ms, "step": int(step)}
               for tag, points in run_series(run_dir).items() for step, value in points]
    for start in range(0, len(params), MAX_PARAMS):
        client.call("runs/log-batch", {"run_id": mlflow_id, "params": params[start:start + MAX_PARAMS]})
    for start in range(0, len(metrics), MAX_METRICS):
        client.call("runs/log-batch", {"run_id": mlflow_id, "metrics": metrics[start:start + MAX_METRICS]})
    for name in ARTIFACTS:
        if (run_dir / name).exists():
            client.upload(run["info"]["artifact_uri"], name, (run_dir / name).read_bytes())
    ended = record.get("ended")
    client.call("runs/update", {"run_id": mlflow_id,
                                "status": STATUS.get(record.get("status"), FAILED),
                                "end_time": int(ended * 1000) if ended else started_ms})
    return {"experiment_id": experiment_id, "run_id": mlflow_id, "created": True}


def _tags(record: dict) -> dict:
    tags = {str(k): str(v) for k, v in (record.get("tags") or {}).items()}
    git = (record.get("environment") or {}).get("git") or record.get("git") or {}
    tags.update({RUN_ID_TAG: record["run_id"], "ptdiag.status": str(record.get("status")),
                 "ptdiag.command": " ".join(record.get("command") or [])[:5000]})
    if git.get("commit"):
        tags["mlflow.source.git.commit"] = git["commit"]
        tags["ptdiag.git_dirty"] = str(bool(git.get("dirty")))
    failure = next((f["evidence"].get("failure") for f in record.get("findings", [])
                    if f.get("code") == "tracking.run_recorded" and f["evidence"].get("failure")), None)
    if failure:
        tags["ptdiag.failure"] = f"{failure['type']} at step {failure['step']} " \
                                 f"({failure['location']}): {failure['message']}"[:5000]
    return tags


def _param_text(value) -> str:
    return (value if isinstance(value, str) else json.dumps(value, default=str))[:MAX_PARAM_CHARS]


def _pairs(mapping: dict) -> list[dict]:
    return [{"key": key, "value": value} for key, value in mapping.items()]


class _Rest:
    def __init__(self, uri: str) -> None:
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise MlflowError(f"--mlflow needs the http(s):// URI of a tracking server, not {uri!r}")
        self.base = uri.rstrip("/")

    def call(self, endpoint: str, body: dict | None = None, *, query: dict | None = None) -> dict:
        url = f"{self.base}/api/2.0/mlflow/{endpoint}"
        if query is not None:
            return self._send(urllib.request.Request(f"{url}?{urllib.parse.urlencode(query)}"))
        return self._send(urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"}))

    def experiment(self, name: str) -> str:
        try:
            return self.call("experiments/get-by-name", query={"experiment_name": name}
                             )["experiment"]["experiment_id"]
        except MlflowError as error:
            if "RESOURCE_DOES_NOT_EXIST" not in str(error):
                raise
        return self.call("experiments/create", {"name": name})["experiment_id"]

    def find_run(self, experiment_id: str, ptdiag_id: str) -> str | None:
        found = self.call("runs/search", {"experiment_ids": [experiment_id], "max_results": 1,
                                          "filter": f"tags.`{RUN_ID_TAG}` = '{ptdiag_id}'"})
        runs = found.get("runs") or []
        return runs[0]["info"]["run_id"] if runs else None

    def upload(self, artifact_uri: str, name: str, data: bytes) -> None:
        """Artifacts go through the server's proxy (mlflow-artifacts:/...), the default of
        `mlflow server`; a server that hands out its own storage URI is not written to."""
        scheme, _, path = artifact_uri.partition(":")
        if scheme != "mlflow-artifacts":
            raise MlflowError(f"the server stores artifacts at {artifact_uri}, which ptdiag cannot "
                              "write to; start it with --serve-artifacts")
        quoted = urllib.parse.quote(f"{path.lstrip('/')}/{name}")
        self._send(urllib.request.Request(
            f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{quoted}", data=data, method="PUT",
            headers={"Content-Type": "application/octet-stream"}))

    def _send(self, request: urllib.request.Request) -> dict:
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                text = response.read().decode() or "{}"
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise MlflowError(f"MLflow server {self.base} answered {error.code}: {detail}") from error
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise MlflowError(f"cannot reach MLflow server {self.base}: {reason}") from error
        return json.loads(text)
