"""What a run recorded about its configuration, read back from the probe's events."""

from __future__ import annotations

from ptdiag.recorded import RecordedRun


def params(run: RecordedRun) -> dict:
    """Hyperparameters: argparse names as the script defines them, then optimizer.*,
    dataloader.* (the training loader) and model.*."""
    main = run.main
    if main is None:
        return {}
    found: dict = {}
    args = main.first("args")
    if args:
        found.update(args["values"])
    optimizer = main.first("optimizer")
    if optimizer:
        found["optimizer.name"] = optimizer["cls"]
        for key, value in (optimizer["groups"][0] if optimizer["groups"] else {}).items():
            found[f"optimizer.{key}"] = value
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


def seeds(run: RecordedRun) -> dict:
    """The first seed of each kind the program set, with where it set it."""
    main = run.main
    found: dict = {}
    for event in main.of("seed") if main else []:
        found.setdefault(event["kind"], {"value": event["value"], "location": event["location"]})
    return found


def torch_environment(run: RecordedRun) -> dict:
    main = run.main
    event = main.first("env") if main else None
    return event["torch"] if event else {}
