"""Errors of the run store, each a one-line message that says what to do."""

from __future__ import annotations


class StoreError(Exception):
    """The run store cannot be read or written (permissions, full disk, bad files)."""


class RunNotFound(StoreError):
    """No run matches the id (or id prefix) the user gave."""


class QueryError(StoreError):
    """A filter or sort the user typed cannot be read (bad key, operator or date)."""
