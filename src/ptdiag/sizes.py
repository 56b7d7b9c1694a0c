"""Memory sizes as users write them ("16GiB", "512MB") and named device presets.

Presets are the memory a program can address on the card, not the size on the box (a
"16GB" T4 gives 15 GiB). The fit estimate compares a step's peak with that figure; the
few hundred MiB the CUDA context takes are not subtracted.
"""

from __future__ import annotations

import re

UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
         "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
# Usable device memory: the "Total" nvidia-smi prints for each card, in MiB, read off
# nvidia-smi tables posted for each model (CUDA's own total is a little lower still, e.g.
# 15110 MiB on a T4: the driver keeps some). The name says the size as sold, which users
# know the card by.
MIB = 2**20
DEVICE_PRESETS = {
    "T4-16GB": 15360 * MIB, "V100-16GB": 16160 * MIB, "V100-32GB": 32510 * MIB,
    "A10-24GB": 23028 * MIB, "A100-40GB": 40960 * MIB, "A100-80GB": 81920 * MIB,
    "L4-24GB": 23034 * MIB, "L40S-48GB": 46068 * MIB, "H100-80GB": 81559 * MIB,
    "H200-141GB": 143771 * MIB, "RTX3090-24GB": 24576 * MIB, "RTX4090-24GB": 24564 * MIB,
}

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


class SizeError(ValueError):
    """A memory size or preset ptdiag cannot read."""


def parse_size(text: str) -> int:
    """Bytes in '16GiB', '16 GB', '512MiB', '1e9' is not accepted (say the unit)."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in UNITS:
        raise SizeError(f"not a memory size: {text!r} (write e.g. 16GiB, 512MiB, 24GB)")
    return int(float(match.group(1)) * UNITS[unit])


def preset(name: str) -> int:
    for key, value in DEVICE_PRESETS.items():
        if key.lower() == str(name).strip().lower():
            return value
    raise SizeError(f"unknown device preset {name!r}; known: {', '.join(DEVICE_PRESETS)}")


def target_from_options(options: dict) -> tuple[str, int] | None:
    """(label, bytes) from `-o memory.target_memory=16GiB` or `-o memory.target=V100-16GB`."""
    if options.get("target_memory"):
        return str(options["target_memory"]), parse_size(options["target_memory"])
    if options.get("target"):
        return str(options["target"]), preset(options["target"])
    return None
