"""Memory specialist parts on real torch objects: sizes, holders, forwards, the fit estimate."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import PROGRAMS, PYTHON, REPO
from ptdiag.probe.instruments import Instruments
from ptdiag.probe.model_hooks import ModelHooks
from ptdiag.probe.plugins.memory import holders
from ptdiag.probe.plugins.memory.forwards import ForwardWatch
from ptdiag.specialists.memory.leak import leak_finding
from ptdiag.sizes import SizeError, parse_size, preset, target_from_options

sys.path.insert(0, str(PROGRAMS))
import mem_model  # noqa: E402


def test_sizes_and_presets():
    assert parse_size("16GiB") == 16 * 2**30
    assert parse_size("1.5 GB") == 1_500_000_000
    assert preset("v100-16gb") == 16160 * 2**20  # nvidia-smi's Total, not the 16 GiB on the box
    assert target_from_options({"target": "A100-80GB"}) == ("A100-80GB", 80 * 2**30)
    # what a program can use, below the size sold: T4 15 GiB, A10/L4 ~22.5, L40S ~45, H200 ~140
    usable_gib = {name: preset(name) / 2**30 for name in ("T4-16GB", "A10-24GB", "L4-24GB", "L40S-48GB",
                                                          "H200-141GB")}
    assert usable_gib == pytest.approx({"T4-16GB": 15.0, "A10-24GB": 22.49, "L4-24GB": 22.49,
                                        "L40S-48GB": 44.99, "H200-141GB": 140.4}, abs=0.01)
    with pytest.raises(SizeError, match="not a memory size"):
        parse_size("lots")
    with pytest.raises(SizeError, match="unknown device preset"):
        preset("V200")


def _steps(model, optimizer, n, keep):
    """A training loop as users write it; `keep` picks what it holds across steps."""
    total, seen, scans = 0.0, [], []
    for step in range(1, n + 1):
        x, y = mem_model.batch(2)
        out = model(x)
        loss = F.cross_entropy(out, y)
        holders.tag_backward(loss, step)
        loss.backward()
        optimizer.step()
        if keep == "loss":
            total += loss
        elif keep == "outputs":
            seen.append(out)
        else:
            total += loss.item()
        scans.append({"step": step, "rss": 0,
                      "holders": [h.to_dict() for h in holders.scan(sys._getframe(), step, torch)]})
    return scans


def test_holder_found_for_loss_accumulated_with_its_graph():
    scans = _steps(*mem_model.build(), 4, "loss")
    found = [h for s in scans for h in s["holders"] if h["name"] == "total"]
    assert found and found[-1]["kind"] == "graph_tensor" and found[-1]["from_step"] == 1
    line = _steps.__code__.co_firstlineno + 11  # the `total += loss` line
    assert found[-1]["location"].endswith(f"test_memory_units.py:{line}")
    finding = leak_finding(scans, rank=0)
    assert finding.code == "memory.leak" and finding.evidence["holder"] == "total"


def test_holder_found_for_outputs_kept_in_a_list():
    scans = _steps(*mem_model.build(), 4, "outputs")
    found = [h for s in scans for h in s["holders"] if h["name"] == "seen"]
    assert [h["items"] for h in found] == [1, 2, 3, 4] and found[-1]["kind"] == "container"
    assert found[-1]["location"].endswith(f"test_memory_units.py:{_steps.__code__.co_firstlineno + 13}")
    assert leak_finding(scans, rank=0).evidence["kind"] == "container"


def test_no_holder_when_only_numbers_are_kept():
    scans = _steps(*mem_model.build(), 4, "numbers")
    assert not any(s["holders"] for s in scans)
    assert leak_finding(scans, rank=0) is None


def test_steady_growth_without_holder_is_a_leak_and_noise_is_not():
    growing = [{"step": s, "rss": 1000 * 2**20 + s * 4 * 2**20, "holders": []} for s in range(1, 12)]
    assert leak_finding(growing, 0).evidence["rate_bytes_per_step"] == 4 * 2**20
    noisy = [{"step": s, "rss": 1000 * 2**20 + (s % 2) * 30 * 2**20, "holders": []} for s in range(1, 12)]
    assert leak_finding(noisy, 0) is None


def test_memory_ptdiags_windows_kept_is_not_the_programs_leak():
    """A program growing 0.5 MiB a step, and ptdiag's profiler window (steps 18-22) keeping
    60 MiB: the program's rate is 0.5 MiB a step, which is below the leak bar; reported as
    measured it would be a 'leak' of over 2 MiB a step."""
    mib = 2**20
    window = {"ev": "window", "t": 22.5, "seconds": 5.0, "grew": 60 * mib, "what": "performance windows"}
    series = [{"step": s, "t": float(s), "holders": [],
               "rss": 1000 * mib + s * mib // 2 + (60 * mib * min(1, max(0, s - 17) / 5))} for s in range(1, 41)]
    assert leak_finding(series, 0) is not None  # as the probe saw it, without knowing its own share
    assert leak_finding(series, 0, [window]) is None
    leaking = [dict(e, rss=e["rss"] + e["step"] * 4 * mib) for e in series]
    found = leak_finding(leaking, 0, [window])
    assert found.evidence["rate_bytes_per_step"] == int(4.5 * mib)
    assert found.evidence["ptdiag_window_bytes"] == 60 * mib and "ptdiag's own measurement windows" in found.detail


def test_forward_watch_counts_eval_forwards_without_backward_and_their_saved_bytes():
    model, optimizer = mem_model.build()
    events = []
    instruments = Instruments(lambda what, why: None, lambda message: None)
    watch = ForwardWatch(torch, instruments, lambda ev, **f: events.append((ev, f)), lambda: 1)
    hooks = ModelHooks(lambda what, why: None, lambda message: None)
    watch.attach(model, hooks)
    x, y = mem_model.batch(4)
    F.cross_entropy(model(x), y).backward()  # used: not counted
    watch.backward_done()
    model.eval()
    for _ in range(3):
        model(x)  # grad mode on, never backward'd
    with torch.no_grad():
        model(x)  # not recorded at all
    watch.finish()
    hooks.close()
    unused = [f for ev, f in events if ev == "mem_unused_forward"]
    assert unused[-1]["count"] == 3 and unused[-1]["training"] is False
    saved = [f for ev, f in events if ev == "mem_saved" and not f["training"]]
    # conv1 output + relu output + conv2 output + ... of 4 samples: at least the 32x32x32 floats saved
    assert saved and saved[0]["bytes"] >= 4 * 32 * 32 * 32 * 4


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_fit_estimate_within_10_percent_of_measured_cpu_peaks():
    from ptdiag.probe.plugins.memory.fit import FakeStep, estimate

    model, optimizer = mem_model.build()
    step = FakeStep(torch, model, optimizer, mem_model.batch(16)[:1])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(PROGRAMS))
    batches = (16, 64, 128)
    out = subprocess.run([PYTHON, str(PROGRAMS / "mem_peak.py"), *map(str, batches)], env=env, check=True,
                         capture_output=True, text=True).stdout
    for batch, measured in zip(batches, map(int, out.split())):
        estimated = step.peak(batch)[0]
        assert abs(estimated - measured) <= 0.10 * measured, (batch, estimated, measured)
    result = estimate(step, budget=80 * 2**20)
    assert result.peak_bytes == step.peak(16)[0]
    assert step.peak(result.largest_batch)[0] <= 80 * 2**20 < step.peak(result.largest_batch + 8)[0]
    assert all(p.grad is None for p in model.parameters()) and not optimizer.state  # the real ones untouched


def _wide_mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                                torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def test_fit_estimate_runs_under_the_autocast_the_programs_forward_ran_in():
    """A bf16-autocast program keeps 16-bit activations: each sample adds less memory than
    in float32, and the estimate must see that (it ran in float32 before)."""
    from ptdiag.probe.plugins.memory.fit import FakeStep

    model, optimizer = _wide_mlp()
    events = []
    watch = ForwardWatch(torch, Instruments(lambda what, why: None, lambda message: None),
                         lambda ev, **f: events.append((ev, f)), lambda: 1)
    hooks = ModelHooks(lambda what, why: None, lambda message: None)
    watch.attach(model, hooks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(256, 64))
    hooks.close()
    assert watch.last_autocast == {"device": "cpu", "dtype": "bfloat16"}
    assert [f["autocast"] for ev, f in events if ev == "mem_saved"] == ["bfloat16"]
    per_256 = {}
    for name, autocast in (("fp32", None), ("bf16", watch.last_autocast)):
        step = FakeStep(torch, model, optimizer, watch.last_input, autocast)
        per_256[name] = step.peak(512)[0] - step.peak(256)[0]
    assert 0 < per_256["bf16"] < 0.6 * per_256["fp32"], per_256


def test_fit_estimate_runs_the_module_inside_torch_compile():
    from ptdiag.probe.plugins.memory.fit import FakeStep

    model, optimizer = _wide_mlp()
    args = (torch.randn(8, 64),)
    compiled = FakeStep(torch, torch.compile(model), optimizer, args)
    assert compiled.model is model
    assert compiled.peak(8)[0] == FakeStep(torch, model, optimizer, args).peak(8)[0]


FSDP2_FIT = """
import tempfile, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from ptdiag.probe.plugins.memory.fit import FakeStep, NotSupported
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
fully_shard(model[0], mesh=init_device_mesh("cpu", (1,)))
try:
    FakeStep(torch, model, torch.optim.SGD(model.parameters(), lr=0.1), (torch.randn(2, 4),))
except NotSupported as declined:
    print(declined)
dist.destroy_process_group()
"""


def test_fit_estimate_declines_an_fsdp_sharded_model():
    """FSDP2's fully_shard on CPU (world size 1): a fake step would run its all-gathers."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([PYTHON, "-c", FSDP2_FIT], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("the model is sharded by FSDPModule"), out.stderr[-2000:]
