"""Issue 18's "done when", swept: ptdiag with verification on (as by default) over the
numerics, performance and distributed samples and the diagnostics programs that no other verification test
runs; every top finding that has an intervention comes out verified in the right direction
(NaN gone, wait lower), or demoted, or the report says why its fix could not be tried
(tests/verified_top.py). The programs the other verification tests run (nan_quick, the
tiny GPT's three LRs, nan_causes, sleepy_loader, optimizer_loop, the DDP sampler and
set_epoch ones) are checked on the reports those tests already make. Tiny step counts:
85 s of CPU in all, 196 s wall on the loaded 2-core box (docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from conftest import (DEFAULT_VERIFY, FAST_SAMPLE_ARGS, PERF_WINDOWS, PYTHON, REPO, SAMPLES, free_port, load_report,
                      run_ptdiag)
from verified_top import problems, top_findings

pytestmark = pytest.mark.slow

NUMERICS, PERFORMANCE = REPO / "diagnostics" / "numerics", REPO / "diagnostics" / "performance"
PORT = "{port}"  # a free port, chosen when the case runs
DDP = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", PORT, SAMPLES / "resnet_ddp.py",
       *FAST_SAMPLE_ARGS[:2], "--samples", "32", "--image-size", "16", "--epochs", "2"]
# (symptom, program and its arguments, ptdiag's options, the top finding's code, the intervention
# that must have been tried, or None where the report must say why none could be)
CASES = {
    "resnet_nan_lr": ("loss is NaN", [SAMPLES / "resnet_nan.py", "--bug", "lr", "--epochs", "8", *FAST_SAMPLE_ARGS],
                      [], "numerics.grad_explosion", "lr_cap"),
    "resnet_nan_poison": ("loss is NaN", [SAMPLES / "resnet_nan.py", "--bug", "poison", *FAST_SAMPLE_ARGS], [],
                          "numerics.nonfinite_input", "skip_batches"),
    "resnet_nan_fp16": ("loss is NaN", [SAMPLES / "resnet_nan.py", "--bug", "fp16", *FAST_SAMPLE_ARGS], [],
                        "numerics.fp16_overflow", "autocast_float32"),
    # plain SGD by hand (p.data.add_): no optimizer step to change, and the report says so
    "lstm_manual_sgd": ("the loss explodes", [NUMERICS / "lstm_lm_manual_sgd.py", "--lr", "3000", "--clip", "1e9",
                                              "--epochs", "1"], [], "numerics.grad_explosion", None),
    # 2 gloo ranks: judged from the indices each rank drew, never from times
    "resnet_ddp_no_sampler": ("training with DDP", [*DDP, "--bug", "no_sampler"], [],
                              "distributed.no_distributed_sampler", "distributed_sampler"),
    "resnet_ddp_no_set_epoch": ("training with DDP", [*DDP, "--bug", "no_set_epoch"], [],
                                "distributed.sampler_epoch_not_set", "sampler_set_epoch"),
    "images_decode_in_loop": ("training is slow", [PERFORMANCE / "images_decode_in_loop.py"], PERF_WINDOWS,
                              "performance.dataloader_bound", "dataloader_workers"),
    "augment_loader_bound": ("training is slow", [PERFORMANCE / "augment_loader_bound.py"], PERF_WINDOWS,
                             "performance.dataloader_bound", "dataloader_workers"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_top_finding_with_a_fix_is_verified_demoted_or_explained(workdir, case):
    symptom, command, options, code, intervention = CASES[case]
    port = str(free_port())
    command = [port if part == PORT else str(part) for part in command]
    proc = run_ptdiag(symptom, *options, "--json", "r.json", "--", PYTHON, *command, cwd=workdir, env=DEFAULT_VERIFY)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    report = load_report(workdir / "r.json")
    assert report["findings"][0]["code"] == code, [(f["code"], f["severity"]) for f in report["findings"]]
    assert problems(report) == []
    top = top_findings(report)[0]
    if intervention is None:
        assert "verified" not in top and any(f"{code} was not verified: " in n and "by hand" in n
                                             for n in report["notes"])
        return
    verified = top["verified"]
    assert verified["intervention"] == intervention
    if verified["metric"] == "first_nonfinite_step":  # a NaN fix on CPU is exact: it must remove the NaN
        assert verified["helped"] is True and verified["after"] is None and verified["before"] >= 1
    elif verified["metric"] in ("shards_disjoint", "epoch_order"):  # counted indices: no load can change them
        assert verified["helped"] is True and verified["after"] == 0 < verified["before"]
    else:  # a loader's wait on a loaded box: lower, or the finding demoted (never an error) and said
        assert verified["helped"] is False or verified["after"] < verified["before"]
