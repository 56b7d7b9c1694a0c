"""The program's configuration as the program itself sees it, read once at its first
training step, when every config style has been parsed and applied:

- config objects held by the program's code: in `__main__`'s globals or the locals of
  the program's own frames on the stack (Hydra's `cfg` inside `main()`, a `config` built
  under `if __name__ == "__main__"`): dataclass instances (Hugging Face's
  `TrainingArguments` among them), OmegaConf `DictConfig`, yacs and minGPT-style
  `CfgNode`, a Hugging Face model config, a LightningModule's `hparams`, and plain dicts
  named like a config (`config = {k: globals()[k] for k in config_keys}` in nanoGPT);
- `__main__` globals that a `--key=value` argument named (nanoGPT's configurator
  overrides module globals by exec'ing a file: what counts is the value after it ran).

argparse is read where it parses (`on_args`). Nested values are flattened with dots
(`trainer.max_iters`, `model.n_layer`), so `runs list --where trainer.max_iters=300` and
`runs compare` work on them. Only plain values are kept (numbers, strings, booleans,
None, short lists of those), at most MAX_KEYS per source; secrets are redacted.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
from typing import Any, Callable, Iterator

from ptdiag.location import is_user_file

MAX_KEYS = 300  # per config object: a TrainingArguments has ~120 plain fields
MAX_DEPTH = 4
MAX_STR = 200
MAX_LIST = 16
# names a plain dict of settings goes by
CONFIG_DICT_NAMES = frozenset({"config", "cfg", "conf", "hparams", "hyperparameters", "hyper_parameters",
                               "hp", "settings", "train_config", "training_config", "run_config"})
SIMPLE = (bool, int, float, str, type(None))


def _type_names(value) -> set[str]:
    return {cls.__name__ for cls in type(value).__mro__}


def _fields(value) -> dict:
    return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}


def _omegaconf_container(value):
    omegaconf = sys.modules.get("omegaconf")
    try:
        return omegaconf.OmegaConf.to_container(value, resolve=True)
    except Exception:  # an unresolvable interpolation or a missing value: read as written
        return omegaconf.OmegaConf.to_container(value, resolve=False)


# (what it is, whether a value is one, its settings: a dict, or the config object it holds)
# — first match wins
RECOGNISERS: tuple[tuple[str, Callable[[Any], bool], Callable[[Any], Any]], ...] = (
    ("DictConfig", lambda v: type(v).__name__ == "DictConfig" and "omegaconf" in sys.modules, _omegaconf_container),
    ("CfgNode", lambda v: type(v).__name__ == "CfgNode", lambda v: v if isinstance(v, dict) else vars(v)),
    ("dataclass", lambda v: dataclasses.is_dataclass(v) and not isinstance(v, type), _fields),
    ("LightningModule hparams", lambda v: "LightningModule" in _type_names(v), lambda v: dict(v.hparams)),
    ("model config", lambda v: "PretrainedConfig" in _type_names(v), lambda v: v.to_dict()),
    ("model config", lambda v: "PreTrainedModel" in _type_names(v), lambda v: v.config),
    ("Trainer args", lambda v: type(v).__name__ == "Trainer" and dataclasses.is_dataclass(getattr(v, "args", None)),
     lambda v: v.args),
)


def flatten(value, prefix: str = "", depth: int = 0, into: dict | None = None, nodes: dict | None = None) -> dict:
    """Plain leaves of nested mappings/config objects, keyed by dotted path; `nodes`
    collects the config objects visited, by id (a part of a config recorded whole, such
    as the trainer's own `config.trainer`, is not recorded again; held, so that no id is
    reused by a new object while the walk goes on)."""
    found = {} if into is None else into
    if depth > MAX_DEPTH or len(found) >= MAX_KEYS:
        return found
    plain = _plain(value)
    if plain is not _NOT_PLAIN:
        if prefix:
            found[prefix] = plain
        return found
    if nodes is not None:
        if id(value) in nodes:
            return found  # recorded already, whole or as part of another
        nodes[id(value)] = value
    settings = settings_of(value)
    if settings is None:
        return found
    if not isinstance(settings, dict):  # the config object a model or trainer holds
        return flatten(settings, prefix, depth + 1, found, nodes)
    for key, item in settings.items():
        flatten(item, f"{prefix}.{key}" if prefix else str(key), depth + 1, found, nodes)
    return found


_NOT_PLAIN = object()


def _plain(value):
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        return value[:MAX_STR]
    if isinstance(value, SIMPLE):
        return value
    if isinstance(value, (list, tuple)) and len(value) <= MAX_LIST and all(isinstance(v, SIMPLE) for v in value):
        return [v[:MAX_STR] if isinstance(v, str) else v for v in value]
    return _NOT_PLAIN


def settings_of(value):
    """A config object's settings (a dict, or the config object it holds); None when
    `value` is none of the kinds recognised."""
    if isinstance(value, dict):
        return value
    for _, matches, read in RECOGNISERS:
        if matches(value):
            return read(value)
    return None


def _kind(name: str, value) -> str | None:
    """What makes `value` a config: a recognised config object, or a settings dict by name."""
    for kind, matches, _ in RECOGNISERS:
        if matches(value):
            return kind
    if isinstance(value, dict) and name.lower() in CONFIG_DICT_NAMES and value \
            and all(isinstance(v, SIMPLE + (dict, list, tuple)) for v in value.values()):
        return "dict"
    return None


def _candidates(frame) -> Iterator[tuple[str, Any]]:
    """(name, value) of __main__'s globals, then the locals of the program's own frames,
    outermost first (the script's `config` before a helper's)."""
    main = sys.modules.get("__main__")
    yield from list(vars(main).items()) if main is not None else []
    frames = []
    while frame is not None:
        if is_user_file(frame.f_code.co_filename) and frame.f_code.co_name != "<module>":
            frames.append(frame)
        frame = frame.f_back
    for user_frame in reversed(frames):
        yield from list(user_frame.f_locals.items())


def config_objects(frame) -> list[tuple[str, dict]]:
    """(source, flattened settings) of every config object the program holds, each once."""
    found, seen = [], {}
    for name, value in _candidates(frame):
        if name.startswith("_"):
            continue
        try:
            kind = _kind(name, value)
            settings = flatten(value, nodes=seen) if kind is not None else None
        except Exception:  # an object that only looks like a config (a CfgNode with __slots__): not one
            continue
        if settings:
            found.append((f"{name} ({kind if kind != 'dataclass' else type(value).__name__})", settings))
    return found


def overridden_globals(argv: list[str]) -> dict:
    """`__main__` globals named by `--key=value` (or `--key value`) arguments, with the
    values the program holds now: a configurator that exec'd its overrides into the
    module's globals has applied them."""
    main = sys.modules.get("__main__")
    names = vars(main) if main is not None else {}
    found = {}
    for argument in argv:
        if not argument.startswith("--"):
            continue
        key = argument[2:].partition("=")[0]
        if key in names and not key.startswith("_"):
            plain = _plain(names[key])
            if plain is not _NOT_PLAIN:
                found[key] = plain
    return found


def program_config(frame, argv: list[str]) -> list[tuple[str, dict]]:
    """Every source of configuration the program holds at this moment."""
    found = config_objects(frame)
    overridden = overridden_globals(argv)
    if overridden:
        found.append(("globals set by --key=value", overridden))
    return found
