"""End to end: what the words missed is still measured. Under torchrun with 2 gloo ranks,
words that plan numerics alone still get distributed's cheap checks, which find the
missing set_epoch; a triage on one process runs the seeding and checkpoint audits
without running the command twice."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import FAST_SAMPLE_ARGS, PROGRAMS, PYTHON, SAMPLES, free_port, load_report, ptdiag_cmd

pytestmark = pytest.mark.slow


def _ptdiag(tmp_path, words: str, command: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PTDIAG_STORE"}
    done = subprocess.run(ptdiag_cmd(words, "--json", "r.json", "--", *command), cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return load_report(tmp_path / "r.json")


def _events(tmp_path, kind: str) -> list[dict]:
    return [json.loads(line) for p in (tmp_path / "ptdiag-runs").glob("*/events/*.jsonl")
            for line in p.read_text().splitlines() if f'"{kind}"' in line]


def test_several_ranks_get_distributeds_cheap_checks_whatever_the_words(tmp_path):
    command = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(SAMPLES / "resnet_ddp.py"), "--bug", "no_set_epoch", *FAST_SAMPLE_ARGS[:2], "--samples", "32",
               "--image-size", "16", "--batch-size", "8", "--epochs", "2"]
    report = _ptdiag(tmp_path, "the loss plateaus at a higher value than expected", command)
    assert report["route"]["specialists"] == ["numerics"]  # the words named numerics only
    assert report["route"]["cheap_checks"] == ["distributed"]
    assert any(n.startswith("the run had 2 processes") for n in report["route"]["notes"])
    finding = next(f for f in report["findings"] if f["code"] == "distributed.sampler_epoch_not_set")
    assert finding["evidence"]["ranks"] == [0, 1] and finding["evidence"]["epochs"] == [0, 1]
    assert sorted(e["rank"] for e in _events(tmp_path, "dist_env")) == [0, 1]
    assert not _events(tmp_path, "dist_checksums")  # cheap: no replica checksums


def test_a_triage_audits_seeds_and_checkpoints_without_a_second_run(tmp_path):
    report = _ptdiag(tmp_path, "Fix my PyTorch training",
                     [PYTHON, str(PROGRAMS / "repro_train.py"), "--seed", "none", "--epochs", "2"])
    assert report["route"]["ambiguous"]
    assert report["route"]["cheap_checks"] == ["reproducibility", "distributed", "tracking"]
    codes = [f["code"] for f in report["findings"]]
    unseeded = next(f for f in report["findings"] if f["code"] == "reproducibility.unseeded")
    assert "torch" in unseeded["evidence"]["rngs"]
    assert "reproducibility.ckpt_contents" in codes
    assert not [c for c in codes if c.startswith("distributed.")]  # one process: nothing to say
    assert not list((tmp_path / "ptdiag-runs").glob("*/companions"))  # the command ran once
    steps = _events(tmp_path, "repro_step")
    assert steps and all(e["sums"] is None and e["rng"] for e in steps)  # no weight checksums
