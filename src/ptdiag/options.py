"""Each specialist's options (`-o specialist.key=value`), declared once, as data.

The CLI checks every `-o` against these tables before a run starts (a wrong key or value
is one line and exit 2) and puts the typed values into the plan; the probe's plugins and
the parent-side parts read them back with their defaults through `settings()`, so no
part parses "yes"/"0"/"16GiB" on its own. Neutral: imported by the CLI (no torch) and by
the probe (no store, router or analysis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ptdiag.sizes import DEVICE_PRESETS, SizeError, parse_size, preset

YES = ("yes", "true", "on", "1")
NO = ("no", "false", "off", "0")


class OptionError(ValueError):
    """A `-o` key or value no specialist declares; the message is one line for the user."""


@dataclass(frozen=True)
class Option:
    name: str
    kind: str  # a key of KINDS
    default: Any
    help: str
    choices: tuple[str, ...] = ()  # kind "choice"
    minimum: int = 0  # kind "int"

    def parse(self, value: Any) -> Any:
        """The typed value of `value` (text from the command line, or already typed)."""
        return KINDS[self.kind][0](self, value)

    def describe(self) -> str:
        kind = "|".join(self.choices) if self.kind == "choice" else KINDS[self.kind][1].format(self=self)
        return f"{self.name} ({kind}, default {'none' if self.default is None else _show(self.default)})"


def _int(option: Option, value: Any) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or str(value).strip().isdigit()):
        raise OptionError(f"{value!r} is not a whole number")
    number = int(value)
    if number < option.minimum:
        raise OptionError(f"{number} is less than {option.minimum}")
    return number


def _bool(option: Option, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in YES + NO:
        raise OptionError(f"{value!r} is not yes or no")
    return word in YES


def _choice(option: Option, value: Any) -> str:
    word = str(value).strip().lower()
    if word not in option.choices:
        raise OptionError(f"{value!r} is not one of {', '.join(option.choices)}")
    return word


def _size(option: Option, value: Any) -> str:
    try:
        parse_size(value)
    except SizeError as error:
        raise OptionError(str(error)) from None
    return str(value).strip()


def _device(option: Option, value: Any) -> str:
    try:
        preset(value)
    except SizeError as error:
        raise OptionError(str(error)) from None
    return str(value).strip()


def _text(option: Option, value: Any) -> str:
    if not str(value).strip():
        raise OptionError("it is empty")
    return str(value)


# kind -> (parser, how `ptdiag options` names the values it takes)
KINDS: dict[str, tuple[Callable[[Option, Any], Any], str]] = {
    "int": (_int, "whole number >= {self.minimum}"),
    "bool": (_bool, "yes|no"),
    "choice": (_choice, ""),
    "size": (_size, "memory size, e.g. 16GiB"),
    "device": (_device, "device preset, e.g. V100-16GB"),
    "text": (_text, "text"),
}

OPTIONS: dict[str, tuple[Option, ...]] = {
    "memory": (
        Option("breakdown_step", "int", 2, "the step MemTracker breaks down by kind of memory (0: none); "
                                           "step 1 creates optimizer state, so 2 is a typical step"),
        Option("target_memory", "size", None, "will a step fit in this much memory (fake execution after step 1)"),
        Option("target", "device", None, "will a step fit on this device: " + ", ".join(DEVICE_PRESETS)),
    ),
    "performance": (
        Option("skip", "int", 4, "steps before the profiler's warm-up step", minimum=1),
        Option("profile_steps", "int", 3, "steps the profiler records"),
        Option("profile", "bool", True, "run the profiler window at all"),
        Option("scan_steps", "int", 2, "steps the call scan (syncs, hot lines) watches after the profiler"),
        Option("tail_steps", "int", 3, "bare steps timed after the windows, before the stop"),
        Option("stop", "choice", "auto", "end the training after the windows (auto: when performance is the "
                                         "only specialist in the plan)", choices=("auto", "yes", "no")),
        Option("telemetry", "bool", True, "sample CPU/GPU utilisation in a thread"),
        Option("window_memory", "size", None, "the most the profiler and scan windows may grow the process by "
                                              "(default: 15% of its size when they open)"),
    ),
    "numerics": (
        Option("stop", "bool", True, "end the training once the first non-finite value is localised"),
    ),
    "distributed": (
        Option("consistency", "choice", "auto", "compare parameter sums across ranks after the first steps "
                                                "(auto: up to 64 ranks)", choices=("auto", "on", "off")),
    ),
    "reproducibility": (
        Option("repeat", "bool", True, "run the command a second time and compare the two runs"),
        Option("steps", "int", 200, "at most this many steps of each companion run", minimum=1),
        Option("op_audit", "choice", "auto", "a short run under use_deterministic_algorithms listing the "
                                             "non-deterministic ops (auto: when the runs differ unexplained)",
               choices=("auto", "yes", "no")),
        Option("resume_cmd", "text", None, "the command that resumes the run from its checkpoint"),
        Option("resume_step", "int", None, "the step whose checkpoint resume_cmd resumes from (none: the first "
                                           "save)", minimum=1),
    ),
    "tracking": (),
}


def _show(value: Any) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)


def valid_keys(specialist: str) -> str:
    declared = OPTIONS[specialist]
    return (f"{specialist} options: " + "; ".join(o.describe() for o in declared)) if declared \
        else f"{specialist} has no options"


def parse(specialist: str, key: str, value: Any) -> Any:
    """The typed value of `-o specialist.key=value`; OptionError (one line, listing the
    valid keys or values) when no such option is declared or the value does not fit it."""
    if specialist not in OPTIONS:
        raise OptionError(f"-o {specialist}.{key}: no specialist {specialist!r}; the specialists are "
                          + ", ".join(OPTIONS))
    option = next((o for o in OPTIONS[specialist] if o.name == key), None)
    if option is None:
        raise OptionError(f"-o {specialist}.{key}: no such option; {valid_keys(specialist)}")
    try:
        return option.parse(value)
    except OptionError as error:
        raise OptionError(f"-o {specialist}.{key}={value}: {error}; {option.describe()}") from None


def parse_all(given: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every specialist's given options, typed (what the plan carries)."""
    return {specialist: {key: parse(specialist, key, value) for key, value in values.items()}
            for specialist, values in given.items()}


def settings(specialist: str, given: dict[str, Any]) -> dict[str, Any]:
    """All of a specialist's options: the declared defaults, overridden by the given ones."""
    return {o.name: o.default for o in OPTIONS.get(specialist, ())} | parse_all({specialist: given})[specialist]
