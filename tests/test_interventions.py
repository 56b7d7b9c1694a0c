"""Interventions: declared once (ptdiag.interventions), applied inside the program by the
probe only in a verification run (PTDIAG_INTERVENTION), measured and put on the finding
(ptdiag.verification)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptdiag import interventions
from ptdiag.events import INTERVENTION_ENV, read_events
from ptdiag.findings import Finding
from ptdiag.launch.runner import child_environment
from ptdiag.probe.interventions import PLUGINS
from ptdiag.verification import attach as attaching
from ptdiag.verification import measure, why_not

DOCS = Path(__file__).resolve().parents[1] / "docs"


def run_with(code: str, tmp_path: Path, asked: str | None):
    """`code` under the probe (no specialist) with INTERVENTION_ENV set to `asked`; the
    program's stdout's last line as JSON, and the events."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k != INTERVENTION_ENV}
    if asked is not None:
        base[INTERVENTION_ENV] = asked
    env = child_environment(run_dir, {"specialists": []}, base)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [e for p in sorted((run_dir / "events").glob("*.jsonl")) for e in read_events(p)]
    return json.loads(proc.stdout.strip().splitlines()[-1]), events


# -- the registry ----------------------------------------------------------------------------
def test_every_intervention_is_applied_measured_and_verifies_documented_codes():
    documented = (DOCS / "finding_codes.md").read_text()
    assert set(PLUGINS) == set(interventions.BY_NAME)
    for intervention in interventions.INTERVENTIONS:
        assert intervention.metric in interventions.METRICS and intervention.metric in measure.METRICS
        assert intervention.verifies and all(f"`{c.split('.', 1)[1]}`" in documented for c in intervention.verifies)
        settings = intervention.settings_for({"clip_at": 2.0, "lr_start": 0.1, "lr_before_onset": 1.0, "cores": 4})
        assert intervention.describe(settings)  # the phrase takes its own settings


def test_settings_come_from_the_evidence_where_it_measured_them():
    clip = interventions.BY_NAME["clip_grad_norm"]
    assert clip.settings_for({"clip_at": 146.0}) == {"max_norm": 146.0}
    assert clip.settings_for({}) == clip.defaults
    cap = interventions.BY_NAME["lr_cap"]
    assert cap.settings_for({"lr_start": 0.05, "lr_safe": 5.0, "lr_before_onset": 50.0}) == {"max_lr": 0.05}
    assert cap.settings_for({"lr_start": 10.0, "lr_before_onset": 10.0}) is None  # no schedule raised it
    assert interventions.BY_NAME["seed_all"].settings_for({"rngs": ["torch"]}) == {"seed": 0}
    workers = interventions.BY_NAME["dataloader_workers"]
    assert workers.settings_for({"cores": 16})["num_workers"] == 4
    assert workers.settings_for({"cores": 2})["num_workers"] == 2  # one worker only alternates with the loop


@pytest.mark.parametrize("text", [None, "", "not json", '{"name": "no_such"}', '["lr_scale"]'])
def test_a_malformed_or_unknown_request_applies_nothing(text):
    assert interventions.decode(text) is None


def test_a_request_round_trips_with_the_defaults_filled_in():
    intervention, settings = interventions.decode(interventions.encode("dataloader_workers", {"num_workers": 3}))
    assert intervention.name == "dataloader_workers" and settings == {"num_workers": 3, "pin_memory": "auto"}


# -- applied inside the program ------------------------------------------------------------------
SCHEDULED = """
import json, torch
w = torch.nn.Parameter(torch.zeros(1))
opt = torch.optim.SGD([w], lr=1.0)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
seen, moved = [], []
for i in range(3):
    before = w.detach().clone()
    w.grad = torch.ones(1)
    seen.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
    moved.append(float(before - w.detach()))
for i in range(2):  # the program's own schedule, set by hand each step
    opt.param_groups[0]["lr"] = 2.0
    before = w.detach().clone()
    w.grad = torch.ones(1)
    opt.step()
    seen.append(opt.param_groups[0]["lr"])
    moved.append(float(before - w.detach()))
print(json.dumps({"seen": seen, "moved": moved}))
"""


def test_the_lr_is_scaled_for_each_step_only_and_the_programs_schedule_is_kept(tmp_path):
    out, events = run_with(SCHEDULED, tmp_path, interventions.encode("lr_scale", {"factor": 0.1}))
    assert out["seen"] == [1.0, 0.5, 0.25, 2.0, 2.0]  # what the program reads: its own values
    assert out["moved"] == pytest.approx([0.1, 0.05, 0.025, 0.2, 0.2])  # what the updates used
    applied = [e for e in events if e["ev"] == "intervention"]
    assert applied[0]["applied"] == 1 and applied[-1]["applied"] == 5 and applied[0]["settings"] == {"factor": 0.1}


def test_the_lr_is_capped_where_the_programs_schedule_went_above(tmp_path):
    out, _ = run_with(SCHEDULED, tmp_path, interventions.encode("lr_cap", {"max_lr": 0.3}))
    assert out["seen"] == [1.0, 0.5, 0.25, 2.0, 2.0]
    assert out["moved"] == pytest.approx([0.3, 0.3, 0.25, 0.3, 0.3])


def test_without_the_request_the_program_is_untouched(tmp_path):
    out, events = run_with(SCHEDULED, tmp_path, None)
    assert out["moved"] == pytest.approx([1.0, 0.5, 0.25, 2.0, 2.0])
    assert not [e for e in events if e["ev"] == "intervention"]


def test_gradients_are_clipped_before_the_step(tmp_path):
    code = ("import json, torch\nw = torch.nn.Parameter(torch.zeros(4))\nopt = torch.optim.SGD([w], lr=1.0)\n"
            "w.grad = torch.full((4,), 100.0)\nopt.step()\nprint(json.dumps({'moved': float(w.detach().norm())}))\n")
    out, _ = run_with(code, tmp_path, interventions.encode("clip_grad_norm", {"max_norm": 3.0}))
    assert out["moved"] == pytest.approx(3.0, rel=1e-4)  # 200 without the clip


def test_dataloaders_get_workers_however_the_program_spelled_its_arguments(tmp_path):
    code = ("import json, torch\nfrom torch.utils.data import DataLoader\ndata = list(range(8))\n"
            "loaders = [DataLoader(data, 2), DataLoader(data, 2, False, None, None, 0), "
            "DataLoader(data, batch_size=2, num_workers=6)]\n"
            "batches = [b.tolist() for b in loaders[0]]\n"
            "print(json.dumps({'workers': [d.num_workers for d in loaders], 'pin': loaders[0].pin_memory, "
            "'batches': batches}))\n")
    out, events = run_with(code, tmp_path, interventions.encode("dataloader_workers", {"num_workers": 2}))
    assert out["workers"] == [2, 2, 6]  # a loader given more keeps them
    assert out["pin"] is False  # auto: only where CUDA is available
    assert out["batches"] == [[0, 1], [2, 3], [4, 5], [6, 7]]  # same data, same order
    assert [e for e in events if e["ev"] == "intervention"][-1]["applied"] == 3


def test_every_generator_is_seeded_at_the_start_and_deterministic_algorithms_are_on(tmp_path):
    code = ("import json, random, torch\nimport numpy\n"
            "print(json.dumps({'draws': [torch.rand(1).item(), random.random(), float(numpy.random.rand())], "
            "'deterministic': torch.are_deterministic_algorithms_enabled()}))\n")
    asked = interventions.encode("seed_all", {"seed": 3})
    one, events = run_with(code, tmp_path / "one", asked)
    two, _ = run_with(code, tmp_path / "two", asked)
    assert one == two and one["deterministic"] is True
    plain, _ = run_with(code, tmp_path / "plain", None)
    assert plain["draws"] != one["draws"] and plain["deterministic"] is False
    assert not [e for e in events if e["ev"] == "seed"]  # not taken for the program's own seeding


# -- measured and put on the finding ------------------------------------------------------------
NAN_BEFORE = {"step": 14, "value": "inf", "steps": 14, "first_loss": 1.1, "last_finite_loss": 8e33}


@pytest.mark.parametrize("after, helped", [
    ({"step": None, "value": None, "steps": 28, "first_loss": 1.1, "last_finite_loss": 0.67}, True),
    ({"step": 16, "value": "nan", "steps": 16, "first_loss": 1.1, "last_finite_loss": 9e30}, False),
    ({"step": None, "value": None, "steps": 28, "first_loss": 1.1, "last_finite_loss": 3e7}, False),  # diverges
    # real nanoGPT at --learning_rate=1000, the LR x0.01: finite, but 4.19 -> 258.8 is no training
    ({"step": None, "value": None, "steps": 28, "first_loss": 4.19, "last_finite_loss": 258.8}, False),
    ({"step": None, "value": None, "steps": 9, "first_loss": 1.1, "last_finite_loss": 0.9}, None),  # ended early
])
def test_a_nan_fix_helps_only_when_the_loss_stays_finite_and_bounded_past_the_failure(after, helped):
    metric = measure.METRICS["first_nonfinite_step"]
    assert metric.helped(NAN_BEFORE, after) is helped
    assert metric.sentence("the learning rate x0.01", NAN_BEFORE, after, helped)
    assert metric.bound(NAN_BEFORE, None) == 28


def _recorded(tmp_path: Path, events: list[dict]):
    from ptdiag.recorded import RecordedRun

    (tmp_path / "events").mkdir(parents=True)
    lines = [{"ev": "start", "rank": 0, "pid": 1}, *events]
    (tmp_path / "events" / "rank0.p1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    return RecordedRun.load(tmp_path)


def test_the_first_nonfinite_step_survives_the_budget_shedding_per_step_lines(tmp_path):
    """On sub-millisecond steps the recorder and the watch each keep 1 step in N."""
    run = _recorded(tmp_path / "shed", [
        {"ev": "loss", "step": 1, "value": 1.5, "finite": True},
        {"ev": "numerics", "step": 2, "loss": 3.0}, {"ev": "numerics", "step": 6, "loss": "nan"},
        {"ev": "exit", "steps": 6}])
    found = measure.METRICS["first_nonfinite_step"].before(run)
    assert (found["step"], found["value"], found["first_loss"], found["last_finite_loss"]) == (6, "nan", 1.5, 3.0)
    stopped = _recorded(tmp_path / "stopped", [
        {"ev": "loss", "step": 1, "value": 1.5, "finite": True},
        {"ev": "stopped", "by": "numerics", "step": 9, "reason": "localised"}, {"ev": "exit", "steps": 9}])
    assert measure.METRICS["first_nonfinite_step"].before(stopped)["step"] == 9  # its own loss line was shed


def test_a_loader_fix_helps_when_the_wait_halves():
    metric = measure.METRICS["data_wait_share"]
    before = {"data_wait_share": 0.8, "step_ms_p50": 36.5, "data_wait_ms_p50": 23.8, "steps": 13}
    assert metric.helped(before, {**before, "data_wait_share": 0.16, "data_wait_ms_p50": 1.0}) is True
    # the step 6x faster, the wait 28 -> 2 ms, yet its share 53 % -> 28 %: the wait itself decides
    assert metric.helped({**before, "data_wait_share": 0.53, "data_wait_ms_p50": 28.4},
                         {**before, "data_wait_share": 0.28, "data_wait_ms_p50": 2.3, "step_ms_p50": 8.2}) is True
    assert metric.helped(before, {**before, "data_wait_share": 0.5, "data_wait_ms_p50": 15.0}) is None  # partly
    assert metric.helped(before, {**before, "data_wait_share": 0.7, "data_wait_ms_p50": 21.0}) is False
    after = {**before, "data_wait_share": 0.16, "step_ms_p50": 6.2, "data_wait_ms_p50": 1.0}
    sentence = metric.sentence("num_workers=2", before, after, True)
    assert "6.2 ms instead of 36.5 ms (5.9x)" in sentence and "1.0 ms (16%)" in sentence


def _verified(name: str, helped, last_loss=None) -> dict:
    return {"verified": {"intervention": name, "helped": helped, "summary": f"{name} {helped}",
                         "measured": {"after": {"last_finite_loss": last_loss}}}}


def test_runs_that_still_differ_once_seeded_leave_the_unseeded_finding_standing():
    metric = measure.METRICS["repeat_identical"]
    before = {"first_difference_step": 0, "stage": "weights", "steps_compared": 0}
    assert metric.helped(before, {"first_difference_step": None, "stage": None, "steps_compared": 8}) is True
    still = {"first_difference_step": 0, "stage": "weights", "steps_compared": 0}
    assert metric.helped(before, still) is None  # another cause (a clock seed), not "seeding does not matter"
    assert "another cause remains" in metric.sentence("every RNG seeded", before, still, None)


def test_attach_ranks_the_fixes_and_demotes_a_finding_none_of_them_helped(tmp_path):
    explosion = Finding("numerics.grad_explosion", "numerics", "error", "grew", evidence={"step": 4})
    loader = Finding("performance.dataloader_bound", "performance", "warning", "waits", evidence={"step": None})
    other = Finding("numerics.nonfinite_loss", "numerics", "error", "inf", evidence={"step": 14})
    key = {"code": "numerics.grad_explosion", "step": 4}
    (tmp_path / attaching.STATE_FILE).write_text(json.dumps({"results": [
        {"finding": key, **_verified("clip_grad_norm", True, 3e3)},
        {"finding": key, **_verified("lr_scale", True, 0.6)},
        {"finding": {"code": "performance.dataloader_bound", "step": None}, **_verified("dataloader_workers", False)},
        {"finding": {"code": "numerics.loss_spike", "step": 2}, "skipped": "the verification budget was spent"},
    ]}))
    notes = attaching.attach([explosion, loader, other], tmp_path)
    assert explosion.verified["intervention"] == "lr_scale"  # the lower loss afterwards ranks first
    assert [v["intervention"] for v in explosion.verified["also"]] == ["clip_grad_norm"]
    assert explosion.severity == "error"
    assert loader.severity == "info" and loader.verified["helped"] is False  # demoted, saying what was tried
    assert other.verified is None and "verified" not in other.to_dict()
    assert notes == ["numerics.loss_spike was not verified: the verification budget was spent"]


def test_a_skipped_verification_is_said_once_as_a_note(tmp_path):
    (tmp_path / attaching.STATE_FILE).write_text(json.dumps({"skipped": "--no-verify"}))
    assert attaching.attach([], tmp_path) == ["fixes were not tried in verification runs: --no-verify"]
    assert attaching.attach([], tmp_path / "absent") == []


class _Run:
    def __init__(self, node_ranks):
        self.processes = [type("P", (), {"of": staticmethod(lambda kind, n=n: [{"node_rank": n}])})()
                          for n in node_ranks]


def test_verification_runs_by_default_only_for_short_single_node_runs():
    assert why_not(None, _Run([0, 0]), 12.0) is None
    assert "2 nodes" in why_not(None, _Run([0, 1]), 12.0)
    assert "took 400 s" in why_not(None, _Run([0]), 400.0)
    assert why_not(True, _Run([0, 1]), 400.0) is None
    assert why_not(False, _Run([0]), 1.0) == "--no-verify"


class _Events:
    def __init__(self, optimizer_events):
        self._events = optimizer_events

    def all_events(self, kind):
        return self._events if kind == "optimizer" else []


def test_optimizer_step_fixes_are_not_run_where_the_weights_are_updated_by_hand():
    """word_language_model's `p.data.add_(p.grad, alpha=-lr)`: the LR and clipping fixes act
    at an optimizer's step, so their two runs measured nothing ('never applied')."""
    from ptdiag.verification import inapplicable

    scale = interventions.BY_NAME["lr_scale"]
    reason = inapplicable(scale, {"factor": 0.01}, _Events([]))
    assert "by hand" in reason and "x0.01" in reason
    assert inapplicable(scale, {"factor": 0.01}, _Events([{"cls": "SGD"}])) is None
    workers = interventions.BY_NAME["dataloader_workers"]
    assert inapplicable(workers, {"num_workers": 2, "pin_memory": "auto"}, _Events([])) is None
