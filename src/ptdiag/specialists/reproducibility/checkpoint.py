"""`ptdiag inspect CKPT.pt`: audit a checkpoint file on its own.

The file is loaded with `torch.load(weights_only=True)` only: tensors and plain
containers, plus numpy arrays and dtypes (numpy's RNG state is an array), never
arbitrary classes. A file that would need arbitrary unpickling is refused with the
globals it asks for; a truncated or corrupt file gets a clear error. Without a run to
measure, "missing" means absent from the file, with what that absence does on resume.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from ptdiag.findings import Analysis, Finding
from ptdiag.checkpoint_contents import CATEGORIES, categories, describe
from ptdiag.specialists.reproducibility.checkpoints import FIX_BY_STATE

KIND = "checkpoint"
SUFFIXES = (".pt", ".pth", ".ckpt", ".tar")
# absent from a file that is meant to resume training: what the resumed run loses
ALWAYS_NEEDED = {
    "optimizer": "the optimizer restarts: momentum buffers / Adam moments start from zero",
    "counter": "the resumed run cannot know its epoch or step",
    "rng.torch": "torch draws (shuffle without a generator, dropout, augmentation) differ after resume",
}
NEEDED_IF_USED = {
    "scheduler": "an LR schedule restarts from its first value",
    "scaler": "an AMP loss scale restarts from its initial value",
    "rng.python": "python-random augmentation differs after resume",
    "rng.numpy": "numpy augmentation differs after resume",
    "rng.cuda": "CUDA dropout/random ops differ after resume",
    "data": "a DataLoader generator's shuffle order, or the position in the epoch, restarts",
}


def sniff(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load(path: Path):
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(path) or re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))
        if not unsafe:
            raise ValueError("not a readable torch checkpoint (truncated or corrupt): the pickle stream is "
                             "invalid") from error
        raise ValueError(
            f"refused: loading it needs arbitrary unpickling of {', '.join(dict.fromkeys(unsafe))}. ptdiag loads "
            "checkpoints with weights_only=True only and never runs code from a file; save state_dicts and "
            "plain containers (vars(args), not an argparse.Namespace)") from error
    except Exception as error:  # the unpickler fails in many ways on a cut or damaged file
        first = (str(error).splitlines() or [type(error).__name__])[0].split(". ")[0]
        raise ValueError(f"not a readable torch checkpoint (truncated or corrupt): {type(error).__name__}: {first}") \
            from error


def inspect(path: Path) -> Analysis:
    obj = load(path)
    items = describe(obj)
    held = categories(items)
    lines = [f"{CATEGORIES[c]} ({', '.join(keys)})" for c, keys in sorted(held.items(), key=lambda kv: list(CATEGORIES).index(kv[0]))]
    findings = [Finding(
        code="reproducibility.ckpt_contents", specialist="reproducibility", severity="info",
        title=f"{path.name}: " + (", ".join(CATEGORIES[c] for c in held) or "nothing ptdiag recognises"),
        detail="Holds: " + ("; ".join(lines) or "no model, optimizer, counter or RNG state") + ".",
        evidence={"path": str(path), "bytes": path.stat().st_size, "contents": [i.to_dict() for i in items]})]
    absent = [c for c in ALWAYS_NEEDED if c not in held]
    maybe = [c for c in NEEDED_IF_USED if c not in held]
    if absent and "model" in held:
        findings.append(Finding(
            code="reproducibility.ckpt_incomplete", specialist="reproducibility", severity="warning",
            title=f"{path.name} cannot resume training exactly: no " + ", ".join(CATEGORIES[c] for c in absent),
            detail="; ".join(f"no {CATEGORIES[c]}: {ALWAYS_NEEDED[c]}" for c in absent)
                   + ". Also absent, needed only if the training used them: "
                   + "; ".join(f"{CATEGORIES[c]} ({NEEDED_IF_USED[c]})" for c in maybe) + ".",
            evidence={"path": str(path), "contents": sorted(held), "missing": absent, "missing_if_used": maybe},
            fix="Save " + ", ".join(FIX_BY_STATE[c] for c in absent) + " with the weights; `ptdiag \"resume differs\" "
                "-o reproducibility.resume_cmd=... -- python train.py` measures what your run needs."))
    return Analysis(findings=findings, metrics={"checkpoint": {"categories": sorted(held), "items": len(items),
                                                                "bytes": path.stat().st_size}})


def _numpy_globals() -> list:
    """numpy arrays, as in np.random.get_state(): data, not code."""
    try:
        import numpy as np
    except ImportError:
        return []
    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)),
            type(np.dtype(np.float64)), type(np.dtype(np.int64))]


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file: the load error says enough
        return []
