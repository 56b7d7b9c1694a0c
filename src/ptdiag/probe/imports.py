"""Run code right after a module is imported, without importing it ourselves.

The probe must not import torch (1.3 s) or numpy into a program that may never use
them, yet it must patch them before the program's first use. A meta-path finder wraps
the loader of the watched modules and calls the callbacks once the module has executed.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from typing import Callable

_callbacks: dict[str, list[Callable]] = {}
_lock = threading.RLock()


def when_imported(name: str, callback: Callable) -> None:
    """Call `callback(module)` once `name` is imported (now, if it already is)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _callbacks.setdefault(name, []).append(callback)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            return
    callback(module)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _callbacks:
            return None
        with _lock:
            callbacks = _callbacks.pop(fullname, None)
        if not callbacks:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module, _orig=original_exec):
            _orig(module)
            for cb in callbacks:
                cb(module)

        spec.loader.exec_module = exec_module
        return spec


_FINDER = _PostImportFinder()
