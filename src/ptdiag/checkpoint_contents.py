"""What a saved object holds, in the terms an exact resume needs.

Used on the live object inside `torch.save` (the probe) and on a file loaded with
`weights_only=True` (`ptdiag inspect`), so both describe a checkpoint the same way.
Structure decides first (an optimizer state_dict has "state" and "param_groups" whatever
its key is called; a 5056-byte uint8 tensor is a Mersenne-Twister state); key names only
decide what structure cannot (an int is a counter when it is called "epoch").
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

CATEGORIES = {
    "model": "model weights",
    "optimizer": "optimizer state",
    "scheduler": "LR scheduler state",
    "scaler": "GradScaler state",
    "counter": "epoch/step counter",
    "rng.python": "python RNG state",
    "rng.numpy": "numpy RNG state",
    "rng.torch": "torch CPU RNG state",
    "rng.cuda": "CUDA RNG state",
    "data": "sampler/DataLoader position or generator",
    "metadata": "config/git metadata",
    "metric": "metric value",
}

MT19937_TORCH_BYTES = 5056  # torch.get_rng_state() of the CPU Mersenne Twister
PHILOX_BYTES = 16  # torch.cuda.get_rng_state(): seed and offset
PYTHON_MT_WORDS = 625
MAX_DEPTH = 4

# (pattern on the key, category) for values whose structure does not say; first match wins.
# Keys are lower-cased with "-" and "." read as "_", so "train_sampler" and "best-acc" match.
KEY_HINTS = (
    (r"(^|_)(sampler|loader|dataloader|generator|data_state|batch_idx|batch_index|data_pos|data_position)($|_)",
     "data"),
    (r"(^|_)(epoch|epochs|step|steps|global_step|iteration|iter|it|n_iter|num_updates|updates)($|_)", "counter"),
    (r"(^|_)(config|cfg|args|hparams|hyperparameters|hyper_parameters|git|commit|version|meta|metadata|date|timestamp)($|_)",
     "metadata"),
    (r"(^|_)(best|acc|accuracy|loss|metric|score|top1|top5)($|_)", "metric"),
)
# containers a key names as a whole (a config dict holds "epochs" that are no counter)
WHOLE_CONTAINERS = ("data", "metadata")
# a bare RNG state is placed by its key: "cuda_rng" is CUDA's, "generator" is data order
RNG_KEY_OF = ((r"cuda", "rng.cuda"), (r"sampler|loader|generator|data", "data"))


@dataclass
class Item:
    key: str  # path inside the object: "optimizer", "rng/torch", "" for the object itself
    category: str
    summary: str

    def to_dict(self) -> dict:
        return {"key": self.key, "category": self.category, "summary": self.summary}


def file_path(f) -> str | None:
    """The path `torch.save`/`torch.load` wrote or read: a str/PathLike, or an open file's
    name (`with open(path, "wb") as f: torch.save(model, f)`); None for a buffer."""
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    name = getattr(f, "name", None)
    return name if isinstance(name, str) else None


def file_label(f) -> str:
    """How a report names the target: its path, or what kind of in-memory buffer it was."""
    return file_path(f) or f"an in-memory {type(f).__name__}"


def describe(obj) -> list[Item]:
    """Every recognised part of a saved object; unrecognised leaves are left out."""
    items: list[Item] = []
    _walk(obj, "", items, 0)
    return items


def categories(items: list[Item]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for item in items:
        found.setdefault(item.category, []).append(item.key or "(whole object)")
    return found


def _walk(obj, key: str, items: list[Item], depth: int) -> None:
    found = _by_structure(obj, key)
    if found is not None:
        items.append(Item(key, *found))
        return
    hinted = _by_key(key, obj)
    if hinted in WHOLE_CONTAINERS and isinstance(obj, (dict, list, tuple)):
        items.append(Item(key, hinted, _short(obj)))
        return
    if _is_mapping(obj) and depth < MAX_DEPTH:
        for k, v in obj.items():
            _walk(v, f"{key}/{k}" if key else str(k), items, depth + 1)
        return
    if isinstance(obj, (list, tuple)) and depth < MAX_DEPTH and obj and len(obj) <= 64:
        for i, v in enumerate(obj):
            _walk(v, f"{key}[{i}]", items, depth + 1)
        return
    if hinted is not None:
        items.append(Item(key, hinted, _short(obj)))


def _by_structure(obj, key: str) -> tuple[str, str] | None:
    torch = sys.modules.get("torch")
    if _is_mapping(obj):
        keys = set(obj)
        if {"state", "param_groups"} <= keys:
            groups = obj["param_groups"]
            lrs = sorted({g.get("lr") for g in groups if isinstance(g, dict) and "lr" in g}, key=str)
            return "optimizer", f"state for {len(obj['state'])} parameters, {len(groups)} group(s), lr {lrs}"
        if "last_epoch" in keys and keys & {"base_lrs", "_step_count", "_last_lr"}:
            return "scheduler", f"last_epoch {obj['last_epoch']}"
        if {"scale", "growth_factor"} <= keys:
            return "scaler", f"scale {_short(obj['scale'])}"
        if "bit_generator" in keys:
            return "rng.numpy", f"numpy {obj['bit_generator']} state"
        if obj and torch is not None and all(isinstance(v, torch.Tensor) for v in obj.values()) \
                and not _rng_tensor(next(iter(obj.values())), torch):
            n = sum(v.numel() for v in obj.values())
            return "model", f"{len(obj)} tensors, {n:,} values"
    if _python_rng_state(obj):
        return "rng.python", "python random.getstate()"
    if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "MT19937":
        return "rng.numpy", "numpy.random.get_state()"
    if torch is not None:
        if isinstance(obj, torch.nn.Module):
            n = sum(p.numel() for p in obj.parameters())
            return "model", f"whole {type(obj).__name__} module pickled ({n:,} parameters): needs weights_only=False to load"
        if _rng_tensor(obj, torch):
            return _rng_category(obj, key), f"{obj.numel()}-byte generator state"
        if isinstance(obj, (list, tuple)) and obj and all(_rng_tensor(t, torch) and t.numel() == PHILOX_BYTES
                                                          for t in obj):
            return "rng.cuda", f"{len(obj)} CUDA generator state(s)"
    if type(obj).__name__ == "Namespace":
        return "metadata", f"argparse.Namespace with {len(vars(obj))} values"
    return None


def _rng_tensor(obj, torch) -> bool:
    return (isinstance(obj, torch.Tensor) and obj.dtype == torch.uint8 and obj.dim() == 1
            and obj.numel() in (MT19937_TORCH_BYTES, PHILOX_BYTES))


def _rng_category(tensor, key: str) -> str:
    for pattern, category in RNG_KEY_OF:
        if re.search(pattern, key, re.IGNORECASE):
            return category
    return "rng.torch" if tensor.numel() == MT19937_TORCH_BYTES else "rng.cuda"


def _python_rng_state(obj) -> bool:
    return (isinstance(obj, tuple) and len(obj) == 3 and isinstance(obj[1], tuple)
            and len(obj[1]) == PYTHON_MT_WORDS)


def _by_key(key: str, obj) -> str | None:
    leaf = re.sub(r"[-.\s]", "_", key.rsplit("/", 1)[-1].lower())
    for pattern, category in KEY_HINTS:
        if re.search(pattern, leaf):
            if category == "counter" and not (isinstance(obj, int) and not isinstance(obj, bool)):
                continue
            return category
    return None


def _is_mapping(obj) -> bool:
    return isinstance(obj, dict)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
