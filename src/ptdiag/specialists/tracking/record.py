"""What a run recorded about its configuration, read back from the probe's events."""

from __future__ import annotations

import json

from ptdiag.recorded import RecordedRun

# what the run's record took from the other runs of the store when it was recorded
# (store_facts.record_once, in ptdiag's own process): its name, the runs its symptom asked for
STORE_FACTS = "store_facts.json"


def params(run: RecordedRun) -> dict:
    """Hyperparameters: argparse names as the script defines them; then the config the
    program held at its first step (config objects and dicts flattened with dots, globals a
    `--key=value` set) and what it logged to MLflow/W&B/TensorBoard, under their own names,
    the first source of a name winning; then optimizer.*, dataloader.* (the training
    loader) and model.*."""
    main = run.main
    if main is None:
        return {}
    found: dict = {}
    args = main.first("args")
    if args:
        found.update(args["values"])
    for event in main.of("config") + main.of("logged_params"):
        for key, value in (event.get("values") or event.get("params") or {}).items():
            found.setdefault(key, value)
    optimizer = main.first("optimizer")
    if optimizer:
        found["optimizer.name"] = optimizer["cls"]
        for key, value in (optimizer["groups"][0] if optimizer["groups"] else {}).items():
            found[f"optimizer.{key}"] = value
        found["optimizer.lr"] = configured_lr(optimizer)
        if len(optimizer["groups"]) > 1:
            found["optimizer.param_groups"] = len(optimizer["groups"])
    used = {e.get("loader") for e in main.of("step")}
    for loader in main.of("dataloader"):
        if loader.get("loader") in used:
            for key in ("batch_size", "num_workers", "pin_memory", "dataset", "dataset_len", "sampler"):
                found[f"dataloader.{key}"] = loader.get(key)
            break
    model = main.first("model")
    if model:
        found["model.class"] = model["cls"]
        found["model.params"] = model["params"]
        found["model.dtype"] = model["dtype"]
        found["model.device"] = model["device"]
    return found


def configured_lr(optimizer: dict):
    """The learning rate the program configured, not the schedule's value at the first
    step (a warm-up's first, 1e-5 for 6e-4): the first group's `max_lr` (OneCycleLR's
    peak, which it starts at a fraction of), else its `initial_lr` (where a torch LR
    scheduler keeps the LR it was given), else the LR the optimizer was built with
    (`defaults`; a loop that sets each group's LR by hand, as nanoGPT does, leaves it
    alone), else the first group's LR."""
    group = optimizer["groups"][0] if optimizer.get("groups") else {}
    for value in (group.get("max_lr"), group.get("initial_lr"), (optimizer.get("defaults") or {}).get("lr"),
                  group.get("lr")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return group.get("lr")


def other_losses(run: RecordedRun) -> dict[str, list[tuple[int, float]]]:
    """The losses of other optimizers' steps (a GAN's generator), per optimizer:
    "optimizer 2 (Adam)" -> (primary step, loss)."""
    main = run.main
    found: dict[str, list[tuple[int, float]]] = {}
    for event in main.of("other_loss") if main else []:
        found.setdefault(f"optimizer {event['optimizer']} ({event['cls']})", []).append(
            (event["step"], float(event["value"])))
    return found


def seeds(run: RecordedRun) -> dict:
    """The first seed of each kind the program set, with where it set it."""
    main = run.main
    found: dict = {}
    for event in main.of("seed") if main else []:
        found.setdefault(event["kind"], {"value": event["value"], "location": event["location"]})
    return found


def torch_environment(run: RecordedRun) -> dict:
    """torch's build as imported, updated by what the program's CUDA showed once it was
    initialised (the probe asks nothing of CUDA before the program does)."""
    main = run.main
    event = main.first("env") if main else None
    cuda = main.first("env_cuda") if main else None
    return {**(event["torch"] if event else {}), **(cuda["torch"] if cuda else {})}


def logged_scalars(run: RecordedRun) -> dict[str, list[tuple[int, float]]]:
    """What the script itself logged to TensorBoard/MLflow/W&B: per tag, (optimizer step,
    value) in logging order. Non-numeric values are left out."""
    main = run.main
    found: dict[str, list[tuple[int, float]]] = {}
    for event in main.of("scalar") if main else []:
        try:
            value = float(event["value"])
        except (TypeError, ValueError):
            continue
        found.setdefault(event["tag"], []).append((event.get("step") or 0, value))
    return found


def logging_sources(run: RecordedRun) -> list[str]:
    main = run.main
    return sorted({e["source"] for e in main.of("scalar")}) if main else []


def data_identity(run: RecordedRun) -> dict:
    """The training data as far as it can be named without reading it: the training
    loader's dataset class and length, and the per-sample shapes/dtypes the model got."""
    main = run.main
    if main is None:
        return {}
    found: dict = {}
    used = {e.get("loader") for e in main.of("step")}
    for loader in main.of("dataloader"):
        if loader.get("loader") in used or not used:
            found.update(dataset=loader.get("dataset"), length=loader.get("dataset_len"),
                         batch_size=loader.get("batch_size"), sampler=loader.get("sampler"))
            break
    fed = main.first("data_identity")
    if fed:
        found.update(inputs=fed["inputs"], fingerprint=fed["fingerprint"])
    return found


def failure(run: RecordedRun) -> dict | None:
    """The exception that ended the run: type, message, optimizer step, file:line."""
    if not run.exceptions:
        return None
    exc = run.exceptions[-1]
    return {"type": exc.get("type"), "message": exc.get("message"), "step": exc.get("step"),
            "location": exc.get("location"), "rank": exc.get("rank")}


def peak_memory(run: RecordedRun) -> dict:
    """Peak host RSS over all probed processes, and CUDA allocator peaks of rank 0."""
    found: dict = {}
    rss = [e["max_rss_bytes"] for e in run.all_events("resources") if e.get("max_rss_bytes")]
    if rss:
        found["peak_rss_bytes"] = max(rss)
    main = run.main
    event = main.first("resources") if main else None
    if event and event.get("cuda"):
        found["cuda_max_allocated_bytes"] = max(d["max_allocated_bytes"] for d in event["cuda"].values())
    return found


def store_facts(run: RecordedRun) -> dict:
    """{"name", "runs_matching"} as decided when the run was recorded; {} when nothing
    was (a companion run, a recorded fixture)."""
    try:
        return json.loads((run.run_dir / STORE_FACTS).read_text())
    except (OSError, ValueError):
        return {}
