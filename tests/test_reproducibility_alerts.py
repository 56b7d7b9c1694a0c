"""The audit run's alerts from torch's use_deterministic_algorithms(True, warn_only=True),
fed to the reproducibility plugin as torch words them, and what the analysis makes of them.
Torch 2.4 to 2.13 also alert when cuBLAS runs without a deterministic workspace (a CUDA
run: no CPU program can raise it, so its recorded text is used): that is a setting of the
environment, not an op, and its fix is the variable."""

from __future__ import annotations

import json

from ptdiag.events import REPRO_ROLE_ENV
from ptdiag.probe.core import Probe
from ptdiag.probe.event_log import EventWriter
from ptdiag.probe.plugins.reproducibility import Plugin
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.reproducibility.determinism import determinism_findings
from ptdiag.specialists.reproducibility.trace import Trace

# as torch 2.4's Context::alertCuBLASConfigNotDeterministic words it (seen in users' logs)
CUBLAS_ALERT = ("Deterministic behavior was enabled with either `torch.use_deterministic_algorithms(True)` or "
                "`at::Context::setDeterministicAlgorithms(true)`, but this operation is not deterministic because "
                "it uses CuBLAS and you have CUDA >= 10.2. To enable deterministic behavior in this case, you must "
                "set an environment variable before running your PyTorch application: CUBLAS_WORKSPACE_CONFIG=:4096:8 "
                "or CUBLAS_WORKSPACE_CONFIG=:16:8. For more information, go to "
                "https://docs.nvidia.com/cuda/cublas/index.html#results-reproducibility (Triggered internally at "
                "/pytorch/aten/src/ATen/Context.cpp:217.)")
# Context::alertNotDeterministic's text for an op (torch 2.14.1's libtorch_cpu)
OP_ALERT = ("index_add_cuda_ does not have a deterministic implementation, but you set "
            "'torch.use_deterministic_algorithms(True, warn_only=True)'. You can file an issue at "
            "https://github.com/pytorch/pytorch/issues to help us prioritize adding deterministic support for "
            "this operation.")


def _audit_events(tmp_path, monkeypatch) -> list[dict]:
    monkeypatch.setenv(REPRO_ROLE_ENV, "audit")
    probe = Probe(tmp_path, {"specialists": []}, 0)
    plugin = Plugin(probe)
    plugin.on_warning(CUBLAS_ALERT, UserWarning, "train.py:31")
    plugin.on_warning(OP_ALERT, UserWarning, "train.py:40")
    probe.events.close()
    return [json.loads(line) for path in (tmp_path / "events").glob("*.jsonl") for line in path.read_text().splitlines()]


def test_the_cublas_alert_is_a_setting_and_an_op_alert_names_its_op(tmp_path, monkeypatch):
    events = _audit_events(tmp_path, monkeypatch)
    ops = [e for e in events if e["ev"] == "nondeterministic_op"]
    assert [(e["op"], e["location"]) for e in ops] == [("index_add_cuda_", "train.py:40")]
    setting = next(e for e in events if e["ev"] == "nondeterministic_setting")
    assert (setting["setting"], setting["location"]) == ("CUBLAS_WORKSPACE_CONFIG", "train.py:31")


def _run(folder, loss: float, extra=()) -> Trace:
    writer = EventWriter(folder / "events" / "rank0.p1.jsonl")
    writer.write("repro_names", names=["fc.weight"], dtypes=["float32"])
    writer.write("repro_step", step=0, sums=[7], input=None, rng={})
    writer.write("loss", step=1, value=loss, finite=True, skipped=False)
    writer.write("repro_step", step=1, sums=[8], input=None, rng={})
    for kind, fields in extra:
        writer.write(kind, **fields)
    writer.close()
    (folder / "meta.json").write_text(json.dumps({"run_id": folder.name}))
    return Trace.of(RecordedRun.load(folder))


def test_a_difference_with_only_the_cublas_alert_is_blamed_on_the_workspace_setting(tmp_path, monkeypatch):
    alerts = [(e.pop("ev"), e) for e in _audit_events(tmp_path / "probe", monkeypatch)
              if e["ev"] == "nondeterministic_setting"]
    for _, fields in alerts:
        fields.pop("t", None)
    main, repeat = _run(tmp_path / "main", 0.5), _run(tmp_path / "repeat", 0.5000001)
    audit = _run(tmp_path / "audit", 0.5, alerts)
    finding = next(f for f in determinism_findings(main, repeat, audit) if f.code == "reproducibility.nondeterministic")
    causes = finding.evidence["causes"]
    assert [c["kind"] for c in causes] == ["cublas_workspace"] and "train.py:31" in causes[0]["cause"]
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment" in finding.fix
