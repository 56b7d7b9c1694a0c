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
from ptdiag.verification import measure, measure_shards, measure_step, why_not
from ptdiag.verification.metrics import METRICS

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
        for metric in (intervention.metric, *intervention.metric_for.values()):
            assert metric in interventions.METRICS and metric in METRICS
        assert intervention.verifies and all(f"`{c.split('.', 1)[1]}`" in documented or f"`{c}`" in documented
                                             for c in intervention.verifies)  # a contract code, or an added one
        for code in intervention.verifies:
            settings = intervention.settings_for({"clip_at": 2.0, "lr_start": 0.1, "lr_before_onset": 1.0, "cores": 4,
                                                  "sampler": "RandomSampler", "location": "train.py:3",
                                                  "training_mode": False, "causes": [{"kind": "ops"}],
                                                  "estimated_peak_bytes": 2e8, "budget_bytes": 1e8,
                                                  "largest_batch": 30, "batch_size": 64,
                                                  "expected_gains": [
                                                      {"change": "threads", "cores_per_process": 2}],
                                                  "dtype": "float16", "lowest_scale": 8.0, "first_scale": 64.0,
                                                  "indices": [3]}, code)
            assert intervention.describe(settings)  # the phrase takes its own settings
        assert set(intervention.evidence_for) <= set(intervention.verifies)


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


def test_the_lr_factor_comes_from_what_the_explosion_measured():
    scale = interventions.BY_NAME["lr_scale"]
    # AdamW at 1000 on weights of RMS 0.02: each step moves a weight by ~the LR; 1 % of 0.02
    adam = scale.settings_for({"adaptive": True, "weight_rms": 0.02, "lr_configured": 1000.0, "lr_before_onset": 167.0,
                               "growth_per_step": 2.9e9})
    assert adam["factor"] * 1000.0 == pytest.approx(2e-4)
    # SGD whose gradient grew x27.5 a step: lr*lambda ~ 28.5, so x0.5/28.5 lands below 2/lambda
    assert scale.settings_for({"adaptive": False, "growth_per_step": 27.5})["factor"] == pytest.approx(0.018)
    assert scale.settings_for({"adaptive": False, "growth_per_step": 1.5})["factor"] == 0.1  # at least 10x lower
    assert scale.settings_for({"adaptive": True, "lr_configured": 3.0})["factor"] == 0.01  # weights not measured
    assert scale.retry({"factor": 0.018}) == {"factor": 0.0018}  # the second rung, 10x lower again
    assert interventions.BY_NAME["clip_grad_norm"].retry is None  # one try


def test_the_other_numerics_fixes_apply_only_where_their_cause_was_measured():
    fp32 = interventions.BY_NAME["autocast_float32"]
    assert fp32.settings_for({"dtype": "bfloat16"}) == {"from_dtype": "bfloat16"}
    assert fp32.settings_for({"dtype": "float32"}) is None and fp32.settings_for({}) is None  # no autocast
    scaler = interventions.BY_NAME["grad_scaler_scale"]
    assert scaler.settings_for({"lowest_scale": 512.0, "first_scale": 65536.0}) == {"init_scale": 512.0}
    assert scaler.settings_for({"lowest_scale": 65536.0, "first_scale": 65536.0}) is None  # it never fell
    assert scaler.settings_for({"dtype": "float16", "op": "aten::addmm"}) is None  # an op's overflow: no scale fell
    skip = interventions.BY_NAME["skip_batches"]
    assert skip.settings_for({"indices": [37], "dataset": "Poisoned", "epoch": 0, "batch": 4}) == {
        "skip": {"indices": [37]}, "dataset": "Poisoned"}
    unknowable = skip.settings_for({"indices": None, "dataset": "Stream", "epoch": 1, "batch": 4})
    assert unknowable == {"skip": {"epoch": 1, "batch": 4}, "dataset": "Stream"}
    assert skip.describe(unknowable) == "batch 4 of epoch 1 skipped"
    assert skip.settings_for({"indices": None}) is None  # no loader seen: nothing to skip


@pytest.mark.parametrize("text", [None, "", "not json", '{"name": "no_such"}', '["lr_scale"]'])
def test_a_malformed_or_unknown_request_applies_nothing(text):
    assert interventions.decode(text) is None


def test_a_request_round_trips_with_the_defaults_filled_in():
    intervention, settings = interventions.decode(interventions.encode("dataloader_workers", {"num_workers": 3}))
    assert intervention.name == "dataloader_workers"
    assert settings == {"num_workers": 3, "pin_memory": "auto", "persistent_workers": True}


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
            "'persistent': loaders[0].persistent_workers, "
            "'batches': batches}))\n")
    out, events = run_with(code, tmp_path, interventions.encode("dataloader_workers", {"num_workers": 2}))
    assert out["workers"] == [2, 2, 6]  # a loader given more keeps them
    assert out["pin"] is False and out["persistent"] is True  # pinned: only where CUDA is available
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


SKIPPING = """
import json, torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

class Numbers(Dataset):
    def __len__(self):
        return 12
    def __getitem__(self, i):
        return i

class Other(Numbers):
    pass

torch.manual_seed(0)
loaders = {"plain": DataLoader(Numbers(), batch_size=4), "shuffled": DataLoader(Numbers(), 4, shuffle=True),
           "batch_sampler": DataLoader(Numbers(), batch_sampler=BatchSampler(SequentialSampler(range(12)), 4, False)),
           "workers": DataLoader(Numbers(), batch_size=4, num_workers=1), "other": DataLoader(Other(), batch_size=4)}
out = {name: [[b.tolist() for b in loader] for _ in range(2)] for name, loader in loaders.items()}
out["batch_size"] = loaders["plain"].batch_size
print(json.dumps(out))
"""


def test_the_batches_holding_the_poisoned_indices_are_left_out_every_epoch(tmp_path):
    asked = interventions.encode("skip_batches", {"skip": {"indices": [5]}, "dataset": "Numbers"})
    out, events = run_with(SKIPPING, tmp_path, asked)
    kept = [[0, 1, 2, 3], [8, 9, 10, 11]]
    for name in ("plain", "batch_sampler", "workers"):
        assert out[name] == [kept, kept], name
    assert out["other"][0] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # another dataset: untouched
    shuffled = out["shuffled"]
    assert all(len(epoch) == 2 and 5 not in sum(epoch, []) for epoch in shuffled)  # wherever 5 fell
    assert out["batch_size"] == 4  # the loader the program reads is the one it built
    plain, _ = run_with(SKIPPING, tmp_path / "plain", None)
    assert plain["shuffled"][0] != plain["shuffled"][1] and len(plain["shuffled"][0]) == 3
    assert [e for e in events if e["ev"] == "intervention"][-1]["applied"] == 4 * 2  # batches left out: 4 loaders, 2 epochs


def test_where_the_indices_were_not_knowable_the_batch_at_the_failing_place_is_left_out(tmp_path):
    asked = interventions.encode("skip_batches", {"skip": {"epoch": 1, "batch": 2}, "dataset": "Numbers"})
    out, _ = run_with(SKIPPING, tmp_path, asked)
    assert out["plain"] == [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], [[0, 1, 2, 3], [4, 5, 6, 7]]]


AMP = """
import json, torch
scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 20)
low = torch.amp.GradScaler("cpu", init_scale=4.0)
w = torch.randn(8, 8)
with torch.autocast("cpu", dtype=torch.bfloat16):
    inside = (w @ w).dtype
with torch.cpu.amp.autocast(dtype=torch.bfloat16):
    legacy = (w @ w).dtype
print(json.dumps({"inside": str(inside), "legacy": str(legacy), "scale": scaler.get_scale(),
                  "low": low.get_scale()}))
"""


def test_autocast_regions_run_in_float32(tmp_path):
    out, events = run_with(AMP, tmp_path, interventions.encode("autocast_float32", {"from_dtype": "bfloat16"}))
    assert (out["inside"], out["legacy"]) == ("torch.float32", "torch.float32")
    plain, _ = run_with(AMP, tmp_path / "plain", None)
    assert (plain["inside"], plain["legacy"]) == ("torch.bfloat16", "torch.bfloat16")
    assert [e for e in events if e["ev"] == "intervention"][-1]["applied"] == 2


def test_grad_scalers_start_at_the_lower_scale_and_keep_a_lower_one(tmp_path):
    out, _ = run_with(AMP, tmp_path, interventions.encode("grad_scaler_scale", {"init_scale": 256.0}))
    assert (out["scale"], out["low"]) == (256.0, 4.0)
    plain, _ = run_with(AMP, tmp_path / "plain", None)
    assert plain["scale"] == 2.0 ** 20


# -- measured and put on the finding ------------------------------------------------------------
NAN_BEFORE = {"step": 14, "value": "inf", "steps": 14, "first_loss": 1.1, "last_finite_loss": 8e33}


@pytest.mark.parametrize("after, helped", [
    ({"step": None, "value": None, "steps": 28, "first_loss": 1.1, "last_finite_loss": 0.67}, True),
    ({"step": 16, "value": "nan", "steps": 16, "first_loss": 1.1, "last_finite_loss": 9e30}, False),
    ({"step": None, "value": None, "steps": 28, "first_loss": 1.1, "last_finite_loss": 3e7}, False),  # diverges
    # real nanoGPT at --learning_rate=1000, the LR x0.01: finite, but 4.19 -> 258.8 is no training
    ({"step": None, "value": None, "steps": 28, "first_loss": 4.19, "last_finite_loss": 258.8}, False),
    ({"step": None, "value": None, "steps": 9, "first_loss": 1.1, "last_finite_loss": 0.9}, None),  # ended early
    # the program ended on its own, finite, before the step that failed: its batch was left out
    ({"step": None, "value": None, "steps": 9, "first_loss": 1.1, "last_finite_loss": 0.9, "completed": True}, True),
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


def test_the_cause_whose_fix_removed_the_nan_is_ranked_above_the_one_whose_fix_did_not(tmp_path):
    explosion = Finding("numerics.grad_explosion", "numerics", "error", "grew", evidence={"step": 6})
    loss = Finding("numerics.nonfinite_loss", "numerics", "error", "nan", evidence={"step": 15})
    fp16 = Finding("numerics.fp16_overflow", "numerics", "warning", "overflow", evidence={"step": 15})
    tried = {"numerics.grad_explosion": ("lr_scale", False), "numerics.fp16_overflow": ("autocast_float32", True)}
    (tmp_path / attaching.STATE_FILE).write_text(json.dumps({"results": [
        {"finding": {"code": code, "step": step}, "verified": {"intervention": name, "helped": helped,
                                                                 "metric": "first_nonfinite_step"}}
        for (code, (name, helped)), step in zip(tried.items(), (6, 15))]}))
    findings = [explosion, loss, fp16]
    attaching.attach(findings, tmp_path)
    assert findings == [fp16, loss, explosion]  # the cause first, where the explosion stood
    assert (fp16.severity, explosion.severity) == ("error", "warning")  # promoted; demoted
    from ptdiag.findings import sort_findings
    assert [f.code for f in sort_findings(findings, ["numerics"])][0] == "numerics.fp16_overflow"


def test_with_every_cause_refuted_the_specialists_order_stands(tmp_path):
    explosion = Finding("numerics.grad_explosion", "numerics", "error", "grew", evidence={"step": 6})
    fp16 = Finding("numerics.fp16_overflow", "numerics", "warning", "overflow", evidence={"step": 15})
    (tmp_path / attaching.STATE_FILE).write_text(json.dumps({"results": [
        {"finding": {"code": f.code, "step": f.evidence["step"]},
         "verified": {"intervention": "x", "helped": False, "metric": "first_nonfinite_step"}}
        for f in (explosion, fp16)]}))
    findings = [explosion, fp16]
    attaching.attach(findings, tmp_path)
    assert findings == [explosion, fp16] and (explosion.severity, fp16.severity) == ("warning", "info")


def test_a_diverged_loss_is_helped_when_it_ends_within_10x_of_where_it_began_over_as_many_steps():
    metric = measure.METRICS["loss_growth"]
    before = {"step": None, "value": None, "steps": 30, "first_loss": 4.13, "last_finite_loss": 148.6}
    after = {"step": None, "value": None, "steps": 30, "first_loss": 4.13, "last_finite_loss": 4.04}
    assert metric.helped(before, after) is True
    assert metric.helped(before, {**after, "last_finite_loss": 60.0}) is False  # x14.5: still diverges
    assert metric.helped(before, {**after, "step": 12, "value": "nan"}) is False
    assert metric.helped(before, {**after, "steps": 12}) is None  # fewer steps
    assert "4.13 -> 4.04 over 30 steps (it went 4.13 -> 148.6" in metric.sentence("x", before, after, True)
    assert interventions.BY_NAME["lr_scale"].metric_of("numerics.loss_diverged") == "loss_growth"
    assert interventions.BY_NAME["lr_scale"].metric_of("numerics.grad_explosion") == "first_nonfinite_step"


def test_a_scaler_fix_helps_when_the_share_of_dropped_updates_falls():
    metric = measure.METRICS["scaler_skips"]
    before = {"skipped": 9, "backward_passes": 12, "first_skipped": [1], "first_scale": 2.0 ** 26, "steps": 3}
    after = {"skipped": 0, "backward_passes": 3, "first_skipped": [], "first_scale": 131072.0, "steps": 3}
    assert metric.helped(before, after) is True  # the same 3 updates, in 3 backward passes instead of 12
    assert metric.helped(before, {**after, "skipped": 2, "backward_passes": 5}) is False  # 40 % against 75 %
    assert metric.helped(before, {**after, "steps": 2}) is None  # ended early
    assert "dropped 0 of 3 updates (it dropped 9 of 12)" in metric.sentence("x", before, after, True)


def test_an_lr_factor_that_did_not_help_gets_one_stronger_rung_and_no_more(tmp_path, monkeypatch):
    import contextlib
    from types import SimpleNamespace

    from ptdiag import verification

    explosion = Finding("numerics.grad_explosion", "numerics", "error", "grew", evidence={"step": 4})
    scale, clip = interventions.BY_NAME["lr_scale"], interventions.BY_NAME["clip_grad_norm"]
    planned = [verification.Planned(explosion, scale, {"factor": 0.01}, {"step": 9}, 19, "first_nonfinite_step"),
               verification.Planned(explosion, clip, {"max_norm": 1.0}, {"step": 9}, 19, "first_nonfinite_step")]
    tried = []

    def verify(ctx, item, left):  # the LR helps from x0.001 down; run order and folders recorded
        tried.append((item.folder, item.settings))
        helped = item.intervention is scale and item.settings["factor"] <= 0.001
        return {"verified": {"intervention": item.intervention.name, "settings": item.settings, "helped": helped}}

    monkeypatch.setattr(verification, "plan", lambda findings, run: planned)
    monkeypatch.setattr(verification, "_verify", verify)
    _recorded(tmp_path, [{"ev": "optimizer", "cls": "SGD", "groups": []}, {"ev": "exit", "steps": 9}])
    ctx = SimpleNamespace(options=SimpleNamespace(verify=True, verify_budget_s=100.0), run_dir=tmp_path,
                          keeping_saved_files=lambda run: contextlib.nullcontext())
    verification.after_run(ctx, [])
    assert tried == [("verify-lr_scale", {"factor": 0.01}), ("verify-lr_scale-rung2", {"factor": 0.001})]
    results = json.loads((tmp_path / attaching.STATE_FILE).read_text())["results"]
    assert [r["verified"]["helped"] for r in results] == [False, True]  # clipping not tried: the LR helped


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


# -- performance and distributed: threads, the loader's sampler ------------------------------------
def test_threads_come_from_the_compute_bound_advice_only():
    threads = interventions.BY_NAME["torch_threads"]
    assert threads.settings_for({"expected_gains": [{"change": "torch.compile"},
                                                    {"change": "threads", "cores_per_process": 4}]}) == {"num_threads": 4}
    assert threads.settings_for({"expected_gains": [{"change": "torch.compile"}]}) is None  # threads were not the advice
    assert interventions.BY_NAME["distributed_sampler"].settings_for({}) is None  # which loader: not measured


def test_torch_runs_on_the_threads_asked_for(tmp_path):
    code = ("import json, torch\nat_import = torch.get_num_threads()\n"
            "torch.set_num_threads(1)  # the program's own count, the finding's cause\n"
            "model = torch.nn.Linear(2, 1)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
            "model(torch.ones(1, 2)).sum().backward()\nopt.step()\n"
            "print(json.dumps({'at_import': at_import, 'threads': torch.get_num_threads()}))\n")
    out, events = run_with(code, tmp_path, interventions.encode("torch_threads", {"num_threads": 3}))
    assert out == {"at_import": 3, "threads": 3}
    assert [e for e in events if e["ev"] == "intervention"][-1]["applied"] == 2  # at import, after the program's


SHARDED = """
import json, os
os.environ.update(WORLD_SIZE="2", RANK="1")  # torchrun's environment, no process group: the sampler reads it
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler
data = list(range(10))
train = DataLoader(data, 2, True)  # shuffle given by position
evaluation = DataLoader(data, batch_size=2)
weighted = DataLoader(data, batch_size=2, sampler=torch.utils.data.WeightedRandomSampler([1.0] * 10, 10))
epochs = [[i for b in train for i in b.tolist()] for _ in range(2)]
print(json.dumps({"kinds": [type(d.sampler).__name__ for d in (train, evaluation, weighted)],
                  "rank": train.sampler.rank, "epochs": epochs, "epoch": train.sampler.epoch}))
"""


def test_the_training_loaders_sampler_is_replaced_by_a_distributed_one_that_changes_epoch(tmp_path):
    out, events = run_with(SHARDED, tmp_path, interventions.encode("distributed_sampler", {"sampler": "RandomSampler"}))
    # only the loader of the finding's kind; a weighted sampler's weights are not dropped
    assert out["kinds"] == ["DistributedSampler", "SequentialSampler", "WeightedRandomSampler"]
    assert out["rank"] == 1 and out["epoch"] == 1  # set_epoch before each pass
    first, second = out["epochs"]
    assert len(first) == 5 and sorted(first) != list(range(10)) and first != second  # half the data, a new order
    assert [e for e in events if e["ev"] == "intervention"][-1]["applied"] == 1  # one sampler built


def test_set_epoch_is_called_before_each_pass_even_with_workers(tmp_path):
    code = ("import json, torch\nfrom torch.utils.data import DataLoader, DistributedSampler\n"
            "data = list(range(12))\nsampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True)\n"
            "loader = DataLoader(data, batch_size=3, sampler=sampler, num_workers=1)\n"
            "epochs = [[i for b in loader for i in b.tolist()] for _ in range(2)]\n"
            "print(json.dumps({'epochs': epochs, 'epoch': sampler.epoch}))\n")
    plain, _ = run_with(code, tmp_path / "plain", None)
    assert plain["epochs"][0] == plain["epochs"][1]  # the bug: every epoch replays the first's order
    out, events = run_with(code, tmp_path / "fixed", interventions.encode("sampler_set_epoch", {}))
    assert out["epochs"][0] == plain["epochs"][0] and out["epochs"][1] != out["epochs"][0]
    assert out["epoch"] == 1 and [e for e in events if e["ev"] == "intervention"][-1]["applied"] == 2


def _ranks_drew(tmp_path: Path, drawn: dict[int, list[list[int]]], n: int = 8):
    """A run dir whose ranks' training loader drew these indices, pass by pass."""
    from ptdiag.recorded import RecordedRun

    (tmp_path / "events").mkdir(parents=True)
    for rank, passes in drawn.items():
        lines = [{"ev": "start", "rank": rank, "pid": 10 + rank},
                 {"ev": "dist_loader", "loader": 0, "sampler": "RandomSampler", "sharded": False},
                 {"ev": "dist_loader", "loader": 1, "sampler": "SequentialSampler", "sharded": False},
                 *({"ev": "step", "step": e + 1, "loader": 0, "epoch": e} for e in range(len(passes))),
                 *({"ev": "dist_indices", "loader": 0, "epoch": e, "n": n, "indices": p, "complete": True,
                    "truncated": False} for e, p in enumerate(passes)),
                 {"ev": "dist_indices", "loader": 1, "epoch": 0, "n": n, "indices": list(range(n)), "complete": True,
                  "truncated": False},  # the evaluation loader: every rank reads all of it, not the training data
                 {"ev": "exit", "steps": len(passes)}]
        (tmp_path / "events" / f"rank{rank}.p{10 + rank}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    return RecordedRun.load(tmp_path)


def test_shards_are_disjoint_when_no_index_is_drawn_twice_but_the_padding():
    metric = measure_shards.METRICS["shards_disjoint"]
    before = {"shared_share": 1.0, "shared_indices": 4, "rank": 0, "drawn": 4, "ranks": 2, "padding": 0}
    assert metric.helped(before, {**before, "shared_share": 0.0, "shared_indices": 0}) is True
    # 9 samples on 2 ranks: the sampler pads to 10, one index drawn twice
    assert metric.helped(before, {**before, "shared_share": 0.2, "shared_indices": 1, "padding": 1}) is True
    assert metric.helped(before, {**before, "shared_share": 0.5, "shared_indices": 2, "padding": 1}) is False


def test_shards_and_epoch_order_are_read_from_the_training_loaders_indices(tmp_path):
    same = _ranks_drew(tmp_path / "same", {0: [[3, 1, 2, 0], [3, 1, 2, 0]], 1: [[3, 1, 2, 0], [3, 1, 2, 0]]}, n=4)
    shards, order = measure_shards.METRICS["shards_disjoint"], measure_shards.METRICS["epoch_order"]
    assert shards.before(same)["shared_share"] == 1.0 and order.before(same)["ranks_repeating"] == 2
    fixed = _ranks_drew(tmp_path / "fixed", {0: [[5, 1, 6, 0], [2, 4, 0, 6]], 1: [[3, 7, 2, 4], [1, 5, 3, 7]]})
    after = shards.after([fixed])
    assert (after["shared_indices"], after["padding"], after["ranks"]) == (0, 0, 2)
    assert shards.before(fixed) is None  # nothing shared: nothing to verify
    assert order.after([fixed])["ranks_repeating"] == 0 and order.before(fixed) is None
    assert "disjoint shards" in shards.sentence("a DistributedSampler", shards.before(same), after, True)


def test_a_run_ended_at_the_budget_is_judged_by_the_indices_every_rank_recorded(tmp_path):
    # on a loaded box the ranks' exit work alone passed the verification budget after the last
    # step: the shards each rank drew were recorded, and the verdict was None ("not verified")
    from ptdiag.verification import judge

    shards = measure_shards.METRICS["shards_disjoint"]
    before = shards.before(_ranks_drew(tmp_path / "same", {0: [[3, 1, 2, 0]], 1: [[3, 1, 2, 0]]}, n=4))
    cut = shards.after([_ranks_drew(tmp_path / "cut", {0: [[5, 1, 6, 0]], 1: [[3, 7, 2, 4]]})])
    helped, summary = judge(shards, "a DistributedSampler", before, cut, 1, True, -15)
    assert helped is True and "disjoint shards" in summary and "ended at the verification budget" in summary
    # rank 1's process ended before its pass was written: the shards of one rank tell nothing
    one = _ranks_drew(tmp_path / "one", {0: [[5, 1, 6, 0]], 1: []})
    assert shards.after([one]) is None and measure_shards.METRICS["epoch_order"].after([one]) is None
    assert judge(shards, "a DistributedSampler", before, None, 1, True, -15) == (
        None, "with a DistributedSampler the run was ended at the verification budget: not verified")
    # a metric of times is not judged on a cut run
    step = measure_step.METRICS["step_time"]
    timed = {"step_ms_p50": 100.0, "torch_threads": 1, "phases_ms": {}, "steps": 10}
    assert judge(step, "more threads", timed, {**timed, "step_ms_p50": 10.0}, 1, True, -15)[0] is None


def test_a_step_time_verdict_leaves_a_band_a_busy_machine_moves_through():
    metric = measure_step.METRICS["step_time"]
    before = {"step_ms_p50": 100.0, "torch_threads": 1, "phases_ms": {}, "steps": 10}
    assert metric.helped(before, {**before, "step_ms_p50": 60.0, "torch_threads": 2}) is True
    assert metric.helped(before, {**before, "step_ms_p50": 90.0}) is None
    assert metric.helped(before, {**before, "step_ms_p50": 101.0}) is False
    sentence = metric.sentence("torch.set_num_threads(2)", before, {**before, "step_ms_p50": 60.0, "torch_threads": 2},
                               True)
    assert "60.0 ms instead of 100.0 ms (1.7x) on 2 torch threads instead of 1" in sentence


EVALUATED = """
import json, torch
model = torch.nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)


def evaluate(x):
    return model(x)  # EVAL LINE


model(torch.ones(1, 2)).sum().backward()  # training: recorded
opt.step()
model.eval()
kept = evaluate(torch.ones(1, 2))
elsewhere = model(torch.ones(1, 2))
try:
    evaluate("not a tensor")  # the forward raises at that line: recording must come back on
except TypeError:
    pass
model.train()
print(json.dumps({"kept": kept.requires_grad, "elsewhere": elsewhere.requires_grad,
                  "after": torch.is_grad_enabled(), "training": model(torch.ones(1, 2)).requires_grad}))
"""


def test_evaluation_forwards_at_the_findings_line_record_no_graph(tmp_path):
    program = tmp_path / "evaluate.py"
    program.write_text(EVALUATED)
    line = next(i for i, text in enumerate(EVALUATED.splitlines(), 1) if "# EVAL LINE" in text)
    asked = interventions.encode("eval_no_grad", {"location": f"{program}:{line}", "training": False})
    out, events = run_with(f"exec(compile(open({str(program)!r}).read(), {str(program)!r}, 'exec'))", tmp_path, asked)
    # only the eval forwards at that line; recording back on after them, also after the one that raised
    assert out == {"kept": False, "elsewhere": True, "after": True, "training": True}
    assert [e for e in events if e["ev"] == "intervention"][-1]["applied"] == 2


def test_an_evaluation_fix_helps_when_no_forward_at_the_line_records_a_graph():
    metric = METRICS["unused_forwards"]
    site = "train.py:31 (eval)"
    before = {"forwards": 6, "location": "train.py:31", "training": False, "forwards_by_line": {site: 6},
              "saved_bytes_by_line": {site: 1070592}}
    after = {"forwards": 0, "forwards_by_line": {}, "saved_bytes_by_line": {site: 0}}
    assert metric.helped(before, after) is True
    assert "kept 0 B for backward instead of 1.02 MiB" in metric.sentence("no_grad", before, after, True)
    # the same count at another line or mode is another finding's, not this one's
    assert metric.helped(before, {**after, "forwards_by_line": {"train.py:31 (training)": 6}}) is True
    assert metric.helped(before, {**after, "forwards_by_line": {site: 6}}) is False


def test_deterministic_kernels_are_tried_only_where_the_computation_itself_differed(tmp_path):
    deterministic = interventions.BY_NAME["deterministic_algorithms"]
    assert deterministic.settings_for({"causes": [{"kind": "ops", "ops": []}]}) == {"cublas_workspace": ":4096:8"}
    assert deterministic.settings_for({"causes": [{"kind": "environment", "setting": "cudnn_benchmark"}]})
    assert deterministic.settings_for({"causes": [{"kind": "unseeded", "rng": "torch"}]}) is None  # seeding's to fix
    code = ("import json, os, torch\ntorch.backends.cudnn.benchmark = True  # the program's own\n"
            "torch.nn.Linear(2, 1)(torch.ones(1, 2))\n"
            "print(json.dumps({'on': torch.are_deterministic_algorithms_enabled(), "
            "'benchmark': torch.backends.cudnn.benchmark, 'cublas': os.environ.get('CUBLAS_WORKSPACE_CONFIG')}))\n")
    out, events = run_with(code, tmp_path, interventions.encode("deterministic_algorithms",
                                                                {"cublas_workspace": ":4096:8"}))
    assert out == {"on": True, "benchmark": False, "cublas": ":4096:8"}
    assert [e for e in events if e["ev"] == "intervention"][-1]["applied"] == 2  # at import, after the program's


def test_a_smaller_batch_is_tried_only_where_the_estimate_does_not_fit_and_some_batch_does(tmp_path):
    smaller = interventions.BY_NAME["loader_batch_size"]
    over = {"estimated_peak_bytes": 184e6, "budget_bytes": 157e6, "largest_batch": 62}
    assert smaller.settings_for(over) == {"batch_size": 62}
    assert smaller.settings_for({**over, "estimated_peak_bytes": 100e6}) is None  # it fits already
    assert smaller.settings_for({**over, "largest_batch": 0}) is None  # nothing fits: not a batch size matter
    code = ("import json\nfrom torch.utils.data import DataLoader\ndata = list(range(8))\n"
            "loaders = [DataLoader(data, 8), DataLoader(data, batch_size=2), DataLoader(data, batch_size=None)]\n"
            "print(json.dumps({'sizes': [d.batch_size for d in loaders], 'first': next(iter(loaders[0])).tolist()}))\n")
    out, events = run_with(code, tmp_path, interventions.encode("loader_batch_size", {"batch_size": 3}))
    assert out == {"sizes": [3, 2, None], "first": [0, 1, 2]}  # only the larger one, same order
    assert [e for e in events if e["ev"] == "intervention"][-1]["applied"] == 1


def test_a_smaller_batch_helps_when_its_measured_step_fits_and_partly_when_only_lower():
    metric = METRICS["step_peak"]
    before = {"peak_bytes": 184e6, "peak_from": "estimated", "batch_size": 128, "budget_bytes": 157e6}
    after = {"measured_peak_bytes": 150e6, "budget_bytes": 157e6, "batch_size": 62, "target": "150MiB"}
    assert metric.helped(before, after) is True
    assert metric.helped(before, {**after, "measured_peak_bytes": 162e6}) is None  # lower, still over
    assert metric.helped(before, {**after, "measured_peak_bytes": 190e6}) is False
    assert "lower, but still does not fit in 150MiB" in metric.sentence(
        "batch 62", before, {**after, "measured_peak_bytes": 162e6}, None)


# -- a smaller batch for an out-of-memory error ----------------------------------------------------
OOM_EVENTS = [{"ev": "dataloader", "loader": 0, "batch_size": 64},
              {"ev": "exception", "type": "OutOfMemoryError", "module": "torch", "step": 0,
               "message": "CUDA out of memory. Tried to allocate 2.00 GiB", "location": "train.py:40"}]


def test_an_oom_is_tried_at_half_the_training_loaders_batch_which_its_finding_now_names(tmp_path):
    from ptdiag.specialists.memory.oom import oom_findings

    smaller = interventions.BY_NAME["loader_batch_size"]
    assert smaller.metric_of("memory.oom") == "oom_step" and smaller.metric_of("memory.fit") == "step_peak"
    assert smaller.settings_for({"batch_size": 64}, "memory.oom") == {"batch_size": 32}
    assert smaller.settings_for({"batch_size": 1}, "memory.oom") is None  # nothing smaller to try
    assert smaller.settings_for({"batch_size": None}, "memory.oom") is None  # no loader seen
    # the fit estimate's evidence is not read for an OOM, nor the OOM's for the estimate
    assert smaller.settings_for({"largest_batch": 30, "estimated_peak_bytes": 2e8, "budget_bytes": 1e8},
                                "memory.oom") is None
    assert smaller.settings_for({"batch_size": 64}, "memory.fit") is None
    # the first step ran out: no step says which loader it trained on, the only one built did
    finding, = oom_findings(_recorded(tmp_path / "first", OOM_EVENTS), {})
    assert (finding.evidence["step"], finding.evidence["batch_size"]) == (1, 64)
    assert "(the DataLoader's is 64)" in finding.fix
    # later: the loader the steps trained on, not the evaluation's built after it
    later = _recorded(tmp_path / "later", [OOM_EVENTS[0], {"ev": "dataloader", "loader": 1, "batch_size": 500},
                                           {"ev": "step", "step": 1, "loader": 0},
                                           {**OOM_EVENTS[1], "step": 1}])
    assert oom_findings(later, {})[0].evidence["batch_size"] == 64
    two_unused = _recorded(tmp_path / "two", [OOM_EVENTS[0], {"ev": "dataloader", "loader": 1, "batch_size": 500},
                                              OOM_EVENTS[1]])
    assert oom_findings(two_unused, {})[0].evidence["batch_size"] is None  # which one trained: not known


def test_a_smaller_batch_helps_an_oom_when_the_run_gets_past_its_step_without_running_out(tmp_path):
    metric = METRICS["oom_step"]
    before = metric.before(_recorded(tmp_path / "bare", OOM_EVENTS))
    assert (before["step"], before["batch_size"]) == (1, 64)
    assert metric.before(_recorded(tmp_path / "fine", OOM_EVENTS[:1] + [{"ev": "exit", "steps": 3}])) is None
    assert metric.bound(before, None) == 3  # the failing step plus OOM_MARGIN_STEPS
    past = {"step": None, "steps": 3, "batch_size": 32, "completed": False}
    assert metric.helped(before, past) is True
    assert metric.helped(before, {**past, "steps": 2}) is None  # cut before the margin: can't tell
    assert metric.helped(before, {**past, "steps": 2, "completed": True}) is True  # the program's own end
    again = {**past, "step": 1, "steps": 0}
    assert metric.helped(before, again) is False
    assert "trained through step 3 without running out of memory (at batch 64 it ran out of memory at step 1)" \
        in metric.sentence("the DataLoader's batch size at most 32", before, past, True)
    assert "still ran out of memory at step 1" in metric.sentence("batch 32", before, again, False)


def test_the_optimizer_steps_fused_where_torch_can_else_foreach_and_updates_the_weights_as_its_loop_would(tmp_path):
    """Adam and SGD on the CPU get torch's fused kernel (set before their first step);
    Adagrad, whose constructor creates its state, and RMSprop, which has no fused kernel,
    get foreach; each computes the weights torch's for-loop does."""
    code = ("import gc, json, torch\n"
            "def trained(cls, **flags):\n"
            "    torch.manual_seed(0)\n"
            "    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))\n"
            "    opt = cls(model.parameters(), lr=0.1, **flags)\n"
            "    for _ in range(3):\n"
            "        opt.zero_grad(); model(torch.ones(2, 4)).sum().backward(); opt.step()\n"
            "    return opt, torch.cat([p.detach().flatten() for p in model.parameters()])\n"
            "out = {}\n"
            "for cls in (torch.optim.Adam, torch.optim.SGD, torch.optim.Adagrad, torch.optim.RMSprop):\n"
            "    opt, weights = trained(cls)\n"
            "    _, reference = trained(cls, foreach=False)\n"
            "    group = opt.param_groups[0]\n"
            "    out[cls.__name__] = [group.get('fused'), group['foreach'],\n"
            "                         bool(torch.allclose(weights, reference, atol=1e-6))]\n"
            "    del opt, group; gc.collect()  # the next optimizer to step becomes the primary one\n"
            "print(json.dumps(out))\n")
    out, events = run_with(code, tmp_path, interventions.encode("optimizer_fused", {"fused": True}))
    # each the primary optimizer in turn (the reference one, over other weights, is not)
    assert out == {"Adam": [True, False, True], "SGD": [True, False, True],
                   "Adagrad": [None, True, True], "RMSprop": [None, True, True]}
    assert [e for e in events if e["ev"] == "intervention"][-1]["applied"] >= 4


def test_an_optimizer_that_already_stepped_is_given_foreach_not_fused(tmp_path):
    """Its state (Adam's `step` on the CPU) is the for-loop's layout: fused needs its own."""
    code = ("import json, torch\n"
            "model = torch.nn.Linear(4, 1)\n"
            "model(torch.ones(2, 4)).sum().backward()\n"
            "earlier = torch.optim.Adam(model.parameters(), lr=0.1)\n"
            "earlier.step()  # the intervention fuses it; its state dict is saved as a program would\n"
            "state = earlier.state_dict(); del earlier\n"
            "import gc; gc.collect()\n"
            "opt = torch.optim.Adam(model.parameters(), lr=0.1)\n"
            "opt.load_state_dict(state)\n"
            "opt.param_groups[0]['fused'] = None  # resumed by a program that does not ask for fused\n"
            "opt.step()\n"
            "print(json.dumps([opt.param_groups[0]['fused'], opt.param_groups[0]['foreach']]))\n")
    out, _ = run_with(code, tmp_path, interventions.encode("optimizer_fused", {"fused": True}))
    assert out == [None, True]


def test_a_fix_whose_metric_the_run_did_not_measure_is_said_not_silent(tmp_path):
    """A GradScaler's collapsed scale (the fix: a lower init_scale) in a run whose loss never
    went non-finite and that recorded no scaler: nothing can judge the fix, and the report
    says so; an explosion that stayed finite but grew is judged by the loss's growth."""
    from ptdiag import verification

    losses = [{"ev": "loss", "step": s, "value": 2.0 * 10 ** s} for s in range(1, 5)]
    run = _recorded(tmp_path, [*losses, {"ev": "exit", "steps": 4}])
    overflow = Finding("numerics.fp16_overflow", "numerics", "warning", "t",
                       evidence={"step": 3, "lowest_scale": 256.0, "first_scale": 65536.0})
    explosion = Finding("numerics.grad_explosion", "numerics", "error", "t",
                        evidence={"step": 2, "growth_per_step": 9.0, "clip_at": 1.0})
    planned = verification.plan([explosion, overflow], run)
    assert {(p.intervention.name, p.metric) for p in planned} == {("lr_scale", "loss_growth"),
                                                                 ("clip_grad_norm", "loss_growth")}
    unjudged, = verification.unmeasured([explosion, overflow], run, planned)
    assert unjudged["finding"]["code"] == "numerics.fp16_overflow"
    assert unjudged["skipped"].startswith("the GradScaler's initial scale at 256 could not be judged: this run did "
                                          "not measure the backward passes whose update a GradScaler skipped")
    note, = attaching.attach([overflow], _with_results(tmp_path, [unjudged]))
    assert note.startswith("numerics.fp16_overflow was not verified: the GradScaler's initial scale at 256")


def _with_results(tmp_path: Path, results: list[dict]) -> Path:
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / attaching.STATE_FILE).write_text(json.dumps({"results": results}))
    return folder
