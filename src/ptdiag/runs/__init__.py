"""The run store: one directory per ptdiag invocation plus a SQLite index to list them."""

from ptdiag.runs.errors import RunNotFound, StoreError
from ptdiag.runs.store import RunStore

__all__ = ["RunNotFound", "RunStore", "StoreError"]
