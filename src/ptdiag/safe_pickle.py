"""Unpickling of artifacts that must never execute code.

Memory snapshots and NCCL Flight Recorder dumps are pickles of plain containers. Loading
them with `pickle.load` would run whatever a crafted file asks for, so only the builtin
data types below may be constructed; anything else is refused with a clear message.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

SAFE_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
     "int", "float", "complex", "bool", "NoneType", "slice", "range"}
)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something other than plain builtin data."""


class _BuiltinsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in SAFE_BUILTINS:
            import builtins

            return getattr(builtins, name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: only plain builtin data is allowed in this file"
        )


def loads(data: bytes) -> Any:
    return _BuiltinsOnlyUnpickler(io.BytesIO(data)).load()


def load_path(path: Path) -> Any:
    """Load a pickle file with builtins only; raises UnsafePickleError or pickle.UnpicklingError."""
    with open(path, "rb") as fh:
        return _BuiltinsOnlyUnpickler(fh).load()
