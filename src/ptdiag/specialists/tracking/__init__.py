"""The tracking specialist: every run is recorded; say what was kept, what is at risk
(uncommitted code, metrics logged without their config, checkpoints that cannot say
what produced them), and answer "which run had lr 0.01" from what the store held when
the run was recorded."""

from __future__ import annotations

from ptdiag.findings import Analysis, Finding
from ptdiag.recorded import RecordedRun
from ptdiag.specialists.tracking import record
from ptdiag.specialists.tracking.metrics import tracked_metrics

# A checkpoint holding one of these (checkpoint_contents' categories, found under any key
# name and in nested dicts: EPOCHS_RUN, iter_num, {"meta": {"global_step": ...}}) says
# what produced it.
SAYS_WHAT_PRODUCED_IT = frozenset({"counter", "metadata"})
# Whether the recorder can see hyperparameters logged to TensorBoard/MLflow/W&B at all:
# without that hook, "logged no config" cannot be told from "logged it unseen".


def analyse(run: RecordedRun) -> Analysis:
    findings = [_recorded(run)]
    findings += _dirty_tree(run) + _config_not_logged(run) + _checkpoints_without_metadata(run)
    findings += _runs_matching(run)
    return Analysis(findings=findings, metrics=tracked_metrics(run))


def _recorded(run: RecordedRun) -> Finding:
    params = record.params(run)
    seeds = record.seeds(run)
    git = run.meta.get("git")
    data = record.data_identity(run)
    logged = record.logged_scalars(run)
    run_id = run.meta.get("run_id", run.run_dir.name)
    kept = [f"{len(params)} parameters" if params else "no parameters (none were parsed or seen)",
            f"seeds ({', '.join(seeds)})" if seeds else "no seeds (the program set none)",
            "git state" if git else "no git state (not a git work tree)",
            "environment" + (" and installed packages" if (run.run_dir / "packages.json").exists() else ""),
            _data_text(data),
            f"{run.steps_observed} steps of loss and step time"]
    if logged:
        kept.append(f"{len(logged)} metrics the script logged ({', '.join(sorted(logged)[:5])})")
    return Finding(
        code="tracking.run_recorded", specialist="tracking", severity="info",
        title=f"Run {run_id} recorded in {run.run_dir}",
        detail="Recorded: " + "; ".join(kept) + f". `ptdiag runs show {run_id}` shows it again.",
        evidence={"run_dir": str(run.run_dir), "params": sorted(params), "seeds": sorted(seeds),
                  "git": bool(git), "steps": run.steps_observed, "data": data,
                  "logged_metrics": sorted(logged), "failure": record.failure(run)},
        fix="")


def _data_text(data: dict) -> str:
    """Only what was seen: a program without a DataLoader has inputs but no dataset."""
    if not data:
        return "no data identity (no DataLoader or forward pass seen)"
    parts = []
    if data.get("dataset"):
        parts.append(data["dataset"] + (f", {data['length']} samples" if data.get("length") is not None else ""))
    else:
        parts.append("no DataLoader")
    if data.get("fingerprint"):
        parts.append(f"inputs {data['fingerprint']}")
    return f"data ({', '.join(parts)})"


def _dirty_tree(run: RecordedRun) -> list[Finding]:
    git = run.meta.get("git")
    if not (git and git.get("dirty")):
        return []
    patch = run.run_dir / "git.patch"
    return [Finding(
        code="tracking.dirty_tree", specialist="tracking", severity="warning",
        title="The code had uncommitted changes: the run's result is not tied to a commit",
        detail=f"Commit {git.get('commit', '?')[:12]} plus uncommitted changes; the diff was saved to "
               f"{patch} so the run can be reproduced. The diff may contain secrets: check it before sharing.",
        evidence={"commit": git.get("commit"), "branch": git.get("branch"),
                  "patch": str(patch) if patch.exists() else None},
        fix="Commit (or stash) before runs you want to keep; `git apply` the saved patch to reproduce this one.")]


def _config_not_logged(run: RecordedRun) -> list[Finding]:
    main = run.main
    logged = record.logged_scalars(run)
    if not logged or main is None or main.of("logged_params"):
        return []
    sources = record.logging_sources(run)
    return [Finding(
        code="tracking.config_not_logged", specialist="tracking", severity="warning",
        title=f"The script logs {len(logged)} metrics to {', '.join(sources)} but no hyperparameters",
        detail=f"Logged: {', '.join(sorted(logged)[:8])}; no hyperparameters were logged with them, so "
               f"the dashboard cannot say which settings produced these curves. ptdiag kept "
               f"{len(record.params(run))} parameters in its own record of this run.",
        evidence={"sources": sources, "metrics": sorted(logged), "params_logged": 0},
        fix={"tensorboard": "writer.add_hparams(vars(args), {...final metrics...})",
             "mlflow": "mlflow.log_params(vars(args))",
             "wandb": "wandb.init(config=vars(args))"}.get(sources[0], "log vars(args) once at start")
            + "; or export ptdiag's record: ptdiag runs export ID --tensorboard DIR / --mlflow URI.")]


def _checkpoints_without_metadata(run: RecordedRun) -> list[Finding]:
    """torch.save calls whose object cannot say what produced it: a bare module/tensor,
    or a dict holding only state (no epoch/step, no config)."""
    bare = [e for e in run.all_events("save") if not SAYS_WHAT_PRODUCED_IT & set(e.get("holds") or {})]
    if not bare:
        return []
    first = bare[0]
    paths = sorted({e["path"] for e in bare})
    # the model's weights alone (`torch.save(model.state_dict(), path)`, PyTorch's recipe for
    # inference; minGPT's adder and pytorch/examples save their best model so) are an export,
    # not a checkpoint to resume: a note, not a warning on a correct program
    weights_only = all(set(e.get("holds") or {}) == {"model"} for e in bare)
    return [Finding(
        code="tracking.ckpt_no_metadata", specialist="tracking", severity="info" if weights_only else "warning",
        title=f"{len(bare)} checkpoint save(s) hold no config or progress: "
              f"{paths[0]}{' and others' if len(paths) > 1 else ''}",
        detail=f"First at step {first.get('step')} ({first.get('location')}): saved {_saved_object(first)}; "
               "nothing in it says which hyperparameters, epoch or code produced it.",
        evidence={"paths": paths[:10], "location": first.get("location"), "step": first.get("step"),
                  "keys": (first.get("keys") or [])[:20], "saves": len(bare)},
        fix="Save a dict: {'model': model.state_dict(), 'optimizer': optimizer.state_dict(), "
            f"'epoch': epoch, 'step': step, 'config': vars(args), 'ptdiag_run': '{run.meta.get('run_id', '')}'}}.")]


def _saved_object(save: dict) -> str:
    """A dict by its keys; a whole module as what it is (pickled code and weights)."""
    if save.get("keys") is not None:
        return f"a {save.get('type')} with keys {save['keys'][:8]}"
    if "(whole object)" in (save.get("holds") or {}).get("model", []):
        return (f"the whole {save.get('type')} module (torch.save(model): pickled class and weights, "
                "loadable only with weights_only=False)")
    return f"a {save.get('type')}"


def _runs_matching(run: RecordedRun) -> list[Finding]:
    """The stored runs matching the hyperparameters the symptom named, as listed when the
    run was recorded (store_facts): re-analysing it later gives the same answer."""
    matching = record.store_facts(run).get("runs_matching")
    if not matching:
        return []
    rows = matching["runs"]
    asked = " ".join(f"--where {key}={value}" for key, value in matching["query"].items())
    listed = "; ".join(f"{r['run_id']} ({r.get('name')}, {r['status']})" for r in rows[:5])
    return [Finding(
        code="tracking.runs_matching", specialist="tracking", severity="info",
        title=f"{len(rows)} stored run(s) match {asked.replace('--where ', '')}",
        detail=(f"Matching: {listed}." if rows else "No stored run matches.")
               + f" The same question later: ptdiag runs list {asked}.",
        evidence={"query": matching["query"], "runs": [r["run_id"] for r in rows]},
        fix=f"ptdiag runs compare {' '.join(r['run_id'] for r in rows[:3])}" if len(rows) > 1 else "")]
