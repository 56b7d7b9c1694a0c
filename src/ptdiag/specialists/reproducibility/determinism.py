"""Did two runs of the same command agree, and if not, what measurably made them part.

Causes are stated only where measured: a generator whose state differed when a step's
forward pass began, a seed call with a different value, different initial weights, a
different batch, an environment setting that differed, or (when none of those) the
non-deterministic ops the audit run was warned about.
"""

from __future__ import annotations

from ptdiag.findings import Finding
from ptdiag.specialists.reproducibility.compare import Comparison, Difference, compare
from ptdiag.specialists.reproducibility.trace import Trace, rng_label

SPECIALIST = "reproducibility"
ENV_KEYS = ("threads", "interop_threads", "deterministic_algorithms", "cudnn_benchmark", "cudnn_deterministic",
            "tf32_matmul", "tf32_cudnn", "environ")
SEEDABLE = ("python", "numpy", "torch", "cuda")
SEED_CALL = {"python": "random.seed(s)", "numpy": "np.random.seed(s)", "torch": "torch.manual_seed(s)",
             "cuda": "torch.manual_seed(s)"}


def determinism_findings(main: Trace, repeat: Trace | None, audit: Trace | None) -> list[Finding]:
    if repeat is None:
        return []
    result = compare(main, repeat)
    if result.difference is None:
        return [_identical(main, repeat, result)] if result.compared else []
    return [_differs(main, repeat, audit, result)]


def _identical(main: Trace, repeat: Trace, result: Comparison) -> Finding:
    return Finding(
        code="reproducibility.deterministic", specialist=SPECIALIST, severity="info",
        title=f"Two runs of the command were bit-identical for {result.compared} steps",
        detail=f"ptdiag ran the command a second time and compared every step: the batch, the loss, the learning "
               f"rate, every generator's state and all {result.tensors} parameters and buffers (bit checksums) "
               f"agreed{_cap_note(main, result)}.",
        evidence={"steps_compared": result.compared, "tensors": result.tensors,
                  "repeat_run": str(repeat.run.run_dir)})


def _cap_note(main: Trace, result: Comparison) -> str:
    return f" (the first {result.compared} of the run's {main.last_step} steps)" if result.compared < main.last_step else ""


def _differs(main: Trace, repeat: Trace, audit: Trace | None, result: Comparison) -> Finding:
    d = result.difference
    causes = causes_of(main, repeat, d) + _op_causes(main, d, audit)
    where = ("the initial weights (before step 1)" if d.stage == "weights" else f"step {d.step}")
    what = _what_differs(d)
    return Finding(
        code="reproducibility.nondeterministic", specialist=SPECIALIST, severity="error",
        title=f"Two runs of the same command differ from {where}: {what}",
        detail=(f"Identical through step {d.step - 1}. " if d.step else "")
               + "Why, as measured: " + ("; ".join(c["cause"] for c in causes) if causes else
                                         "no cause could be measured") + ".",
        evidence={**d.to_dict(), "steps_identical": max(d.step - 1, 0), "causes": causes,
                  "repeat_run": str(repeat.run.run_dir)},
        fix=_fix(causes))


def _what_differs(d: Difference) -> str:
    parts = []
    if d.rng:
        parts.append("generator state of " + ", ".join(rng_label(k) for k in d.rng))
    if d.input:
        parts.append("the batch")
    if d.loss:
        parts.append(f"loss {d.loss[0]!r} vs {d.loss[1]!r}")
    if d.tensors:
        parts.append(f"{d.tensor_count} parameter/buffer tensor(s), first {d.tensors[0]}")
    return ", ".join(parts) or "learning rate"


def causes_of(main: Trace, other: Trace, d: Difference) -> list[dict]:
    """Measured reasons two runs that should agree did not (shared with the resume check)."""
    causes = []
    for kind in SEEDABLE:
        a = [s for s in main.seeds if s.get("kind") == kind]
        b = [s for s in other.seeds if s.get("kind") == kind]
        if a and b and a[0].get("value") != b[0].get("value"):
            causes.append({"cause": f"{kind} was seeded with a value that changes per run "
                                    f"({a[0]['value']} vs {b[0]['value']} at {a[0].get('location')})",
                           "kind": "seed_value", "rng": kind, "location": a[0].get("location")})
    first_forward = main.steps.get(d.step) if d.step else None
    for kind in (d.rng or []):
        if kind.startswith("loader"):
            causes.append({"cause": f"{rng_label(kind)} was in another state at step {d.step} (data order)",
                           "kind": "rng", "rng": kind})
        elif not main.seed_calls(kind):
            causes.append({"cause": f"{rng_label(kind)} was never seeded: its state differed when step {d.step} "
                                    "began", "kind": "unseeded", "rng": kind})
        else:
            causes.append({"cause": f"{rng_label(kind)} was seeded ({main.seed_calls(kind)[0].get('location')}) "
                                    f"but its state differed when step {d.step} began", "kind": "rng", "rng": kind})
    if d.stage == "weights":
        torch_seeded = main.seed_calls("torch")
        causes.append({"cause": f"the initial weights differ ({d.tensor_count} tensors, first {d.tensors[0]})"
                                + ("" if torch_seeded else ": torch was never seeded, so initialisation drew "
                                                           "from a different state"),
                       "kind": "init", "rng": None if torch_seeded else "torch"})
    if d.input and first_forward is not None:
        causes.append({"cause": f"the batch of step {d.step} differed (data order or augmentation)",
                       "kind": "input"})
    causes.extend(environment_causes(main, other))
    return causes


def environment_causes(main: Trace, other: Trace) -> list[dict]:
    if not main.env or not other.env:
        return []
    causes = []
    for key in ENV_KEYS:
        if main.env.get(key) != other.env.get(key):
            causes.append({"cause": f"the environment differed: {key} {main.env.get(key)} vs {other.env.get(key)}",
                           "kind": "environment", "setting": key})
    return causes


def _op_causes(main: Trace, d: Difference, audit: Trace | None) -> list[dict]:
    """Where no generator or batch explains it: the computation itself was not deterministic."""
    if d.stage == "weights" or d.rng or d.input:
        return []
    causes = []
    stage = ("the loss differed from identical weights, batch and generator states" if d.stage == "forward"
             else "the loss agreed but the parameters after the update did not (backward or optimizer)")
    ops = audit.ops if audit else []
    settings = audit.settings if audit else []
    for alert in settings[:1]:
        causes.append({"cause": f"{stage}; cuBLAS ran without a deterministic workspace: torch alerted at "
                                f"{alert.get('location')} that {alert['setting']} is not set",
                       "kind": "cublas_workspace", "setting": alert["setting"]})
    if ops:
        listed = "; ".join(f"{o['op']} at {o.get('location')}" for o in ops[:5])
        causes.append({"cause": f"{stage}; with use_deterministic_algorithms(warn_only=True) torch named "
                                f"{len(ops)} non-deterministic op(s): {listed}",
                       "kind": "ops", "ops": [{"op": o["op"], "location": o.get("location")} for o in ops]})
    elif not settings:
        audited = " (the audit run with use_deterministic_algorithms found none)" if audit else ""
        causes.append({"cause": f"{stage}{audited}", "kind": "computation"})
    if main.env and main.env.get("cudnn_benchmark"):
        causes.append({"cause": "torch.backends.cudnn.benchmark was True: cuDNN may pick other kernels per run",
                       "kind": "environment", "setting": "cudnn_benchmark"})
    return causes


def _fix(causes: list[dict]) -> str:
    fixes = []
    unseeded = sorted({c["rng"] for c in causes if c["kind"] in ("unseeded", "init") and c.get("rng")})
    if unseeded:
        fixes.append("seed at the start of the program: " + ", ".join(dict.fromkeys(SEED_CALL[k] for k in unseeded)))
    if any(c["kind"] == "seed_value" for c in causes):
        fixes.append("use a fixed seed (from the config), not one derived from the time or the process")
    if any(c.get("rng", "") and str(c.get("rng")).startswith("loader") for c in causes):
        fixes.append("give the DataLoader generator=torch.Generator().manual_seed(s)")
    if any(c["kind"] == "environment" for c in causes):
        fixes.append("pin the settings that differed (torch.set_num_threads(n); cudnn.benchmark=False)")
    if any(c["kind"] == "cublas_workspace" for c in causes):
        fixes.append("set CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment before the program starts")
    if any(c["kind"] in ("ops", "computation") for c in causes):
        fixes.append("torch.use_deterministic_algorithms(True), CUBLAS_WORKSPACE_CONFIG=:4096:8 and "
                     "torch.backends.cudnn.benchmark=False (slower), or replace the listed ops")
    return "; ".join(fixes) + "." if fixes else "Compare the two runs' recorded events to find what differs."


def unseeded_findings(main: Trace, repeat: Trace | None) -> list[Finding]:
    """Generators the training drew from (measured) with no seed call of the program's."""
    consumed = main.consumed()
    loaded_first = any(e.get("step") == 0 for e in main.loads)
    at_start = repeat.steps.get(1).rng if repeat and repeat.steps.get(1) else {}
    mine = main.steps.get(1).rng if main.steps.get(1) else {}
    unseeded, why = [], {}
    for kind in SEEDABLE:
        if main.seed_calls(kind):
            continue
        if kind in consumed:
            why[kind] = f"drawn from during training (state moved at step {consumed[kind]})"
        elif kind == "torch" and main.names and not loaded_first:
            why[kind] = "the model was initialised from it"
        else:
            continue
        unseeded.append(kind)
    if not unseeded:
        return []
    differed = [k for k in unseeded if k in at_start and k in mine and at_start[k] != mine[k]]
    workers = [l["loader"] for l in main.loaders if l.get("num_workers") and "torch" in unseeded]
    detail = "; ".join(f"{rng_label(k)}: {why[k]}" for k in unseeded)
    if differed:
        detail += f". In the repeated run {', '.join(rng_label(k) for k in differed)} started step 1 in another state"
    if workers:
        detail += f". DataLoader worker seeds derive from the torch RNG (loader {', '.join(map(str, workers))})"
    return [Finding(
        code="reproducibility.unseeded", specialist=SPECIALIST, severity="warning",
        title="Never seeded, yet the run depends on them: " + ", ".join(rng_label(k) for k in unseeded),
        detail=detail + ".",
        evidence={"rngs": unseeded, "why": why, "differed_in_repeat": differed, "dataloader_workers": workers,
                  "seeded": sorted({s["kind"] for s in main.seeds})},
        fix="At the start of the program: " + ", ".join(dict.fromkeys(SEED_CALL[k] for k in unseeded))
            + " with one seed from the config.")]
