"""The probe's hooks into the program's modules and tensors, owned in one place.

Plugins never call `register_forward_hook` and the like; they subscribe here
(`probe.model_hooks`). Three promises follow from that:

- Nothing is attached to the program's modules. The owner holds torch's *global* module
  forward hooks (one pre-hook and one post-hook, registered only while something is
  subscribed to them) and hands each call to the callbacks subscribed to that module,
  found by its identity. A module's own hook dicts stay as the program left them, so a
  whole-model `torch.save`, `pickle`, `copy.deepcopy` (an EMA copy is a new module: not
  watched, while the original still is), `torch.jit.script` and `state_dict()` see the
  model as they would without ptdiag, and a model saved under ptdiag loads where ptdiag
  is not installed.
- ptdiag's work never enters the program's graphs: while torch.compile, torch.export or
  torch.jit.trace trace the program, or a CUDA graph is captured (probe/gpu.py), the hooks
  do nothing. torch.compile(module) warns
  while a global module hook exists; ptdiag's own are not counted (patches.py).
- A callback that raises inside the program's call loses its whole instrument (`what`),
  `probe.switch_off(what, why)` says so, and the call goes on as without ptdiag: every
  hook returns None, so no input, output or gradient is changed. An exception that a
  signal handler of the program raised while the callback ran is the program's and goes
  on (`raised_by_signal_handler`), as does `probe.stop`'s SystemExit.

Callbacks: `before(module, args)` (torch hands a global pre-hook no keyword arguments)
and `after(module, args, kwargs, output)`; `always=True` also runs `after` when the
forward raised, with kwargs and output None. Subscribed while a hook runs, a callback
starts with the module's next call for `before` (as torch's own pre-hooks do) and with
this call's end for `after`.

Parked. An instrument that watches only some steps (a sampled check, the steps the
recorder keeps) parks its subscriptions between them (`set_active(what, False)`): they
leave the tables, and with nothing else subscribed torch's global hooks go too, so the
program's module calls on those steps take torch's fast path, as without ptdiag.
`set_active(what, True)` puts them back (modules freed meanwhile are left out).

Cost: while subscriptions exist, every module call takes torch's hook path (about a
microsecond) and one dictionary look-up; a subscribed one also the tracing checks and
the callback. The time callbacks take is charged to the probe's budget by instrument:
exactly before a forward; after it, where the numerics watch runs per module, one of
each POST_SAMPLE of an instrument's callbacks is timed, and its time scaled up.
"""

from __future__ import annotations

import time
import traceback
import weakref
from typing import Any, Callable

from ptdiag.probe import gpu
from ptdiag.probe.plugin import raised_by_signal_handler

WHY_CHARS = 300  # the exception's text kept in the switched_off event
POST_SAMPLE = 8  # after-forward callbacks timed for the budget: one in this many of an instrument's
_RAISED = object()  # what a global always-call hook gets in place of kwargs, after a forward raised


def _tracing_checks(torch) -> tuple[Callable[[], bool], Any, Callable[[], Any]]:
    """What tells that torch is tracing the program's code into a graph, cheapest first
    where it is seen: Dynamo (torch.compile, strict export) folds `is_dynamo_compiling()`
    to True while it traces, so nothing after it is traced; torch.export without Dynamo
    sets `torch.compiler._is_compiling_flag`; torch.jit.trace has a tracing state."""
    dynamo = getattr(torch.compiler, "is_dynamo_compiling", torch.compiler.is_compiling)
    return dynamo, torch.compiler, torch._C._get_tracing_state


class Subscription:
    """One callback on one module (or on every module); `remove()` ends it."""

    __slots__ = ("_owner", "_table", "_key", "_entry")

    def __init__(self, owner: "ModelHooks", table: str, key: int | None, entry: tuple) -> None:
        self._owner, self._table, self._key, self._entry = owner, table, key, entry

    def remove(self) -> None:
        self._owner._remove(self._table, self._key, lambda entry: entry is self._entry)


class ModelHooks:
    def __init__(self, switch_off: Callable[[str, str], None], log_error: Callable[[str], None],
                 charge: Callable[[str, float], None] = lambda what, seconds: None) -> None:
        self._switch_off = switch_off
        self._log_error = log_error
        self._charge = charge
        # module id -> ((callback, what, always, timed), ...): tuples, replaced on change, so a
        # dispatch in progress keeps the snapshot it started with; the dicts themselves
        # stay (the hooks hold their `get`)
        self._pre: dict[int, tuple] = {}
        self._post: dict[int, tuple] = {}
        self._any_pre: tuple = ()
        self._always: set[int] = set()  # module ids with an always-call callback after their forward
        self._post_counts: dict[str, list[int]] = {}  # what -> [its after-forward callbacks, those timed]
        self._alive: dict[int, weakref.ref] = {}  # module id -> the weak reference that forgets it
        self._handles: dict[str, tuple] = {}  # "pre"/"post" -> (the kind registered, torch's handle, its dict)
        self._parked: dict[str, list[tuple]] = {}  # what -> [(table, module id, entry, weak reference)] set aside
        self.off: set[str] = set()  # instruments switched off for the run

    # -- subscribing -------------------------------------------------------------------------
    def before_forward(self, module, callback: Callable, what: str) -> Subscription | None:
        """`callback(module, args)` before each forward of `module`. None when `what` is off."""
        return self._add("_pre", module, (callback, what, False, False))

    def after_forward(self, module, callback: Callable, what: str, always: bool = False) -> Subscription | None:
        """`callback(module, args, kwargs, output)` after each forward of `module`;
        `always`: also when the forward raised (kwargs and output None)."""
        return self._add("_post", module, (callback, what, always, self._sampled(what)))

    def before_any_forward(self, callback: Callable, what: str) -> Subscription | None:
        """`callback(module, args)` before the forward of every module (to find the model)."""
        return self._add("_any_pre", None, (callback, what, False, False))

    def on_gradient(self, tensor, callback: Callable, what: str):
        """`callback(grad)` when the gradient of `tensor` is computed; the gradient goes on
        unchanged. A tensor hook lives in the autograd graph, which no pickle or copy of a
        model holds."""
        if what in self.off:
            return None

        def gradient_hook(grad):
            if what not in self.off and not gpu.capturing():
                self._run(callback, (grad,), what)
            return None

        return tensor.register_hook(gradient_hook)

    def is_on(self, what: str) -> bool:
        return what not in self.off

    def unsubscribe(self, what: str) -> None:
        """End every subscription of instrument `what` (its owner gives it up; the budget
        sheds it): the modules it watched cost nothing more."""
        self._remove_everywhere(lambda entry: entry[1] == what)

    def set_active(self, what: str, active: bool) -> None:
        """Park (False) or put back (True) every subscription of instrument `what`, for the
        steps it does not watch (see the module's doc). Idempotent; between module calls."""
        if not active and what not in self._parked:
            parked = [("_any_pre", None, entry, None) for entry in self._any_pre if entry[1] == what]
            for table in ("_pre", "_post"):
                parked += [(table, key, entry, self._alive.get(key))
                           for key, entries in getattr(self, table).items() for entry in entries if entry[1] == what]
            self._remove_everywhere(lambda entry: entry[1] == what)
            self._parked[what] = parked
        elif active and what in self._parked:
            for table, key, entry, ref in self._parked.pop(what):
                if key is None:
                    self._any_pre = (*self._any_pre, entry)
                elif ref is not None and ref() is not None:  # else the module was freed meanwhile
                    self._alive.setdefault(key, ref)
                    self._store(table, key, (*getattr(self, table).get(key, ()), entry))
                    if table == "_post":
                        counts = self._post_counts.setdefault(what, [0, 0])
                        counts[0] += 1
                        counts[1] += entry[3]
            self._sync()

    def hook_ids(self) -> set[int]:
        """The ids of ptdiag's global hooks in torch's hook dicts (for torch's own checks)."""
        return {handle.id for _, handle, _ in self._handles.values()}

    def close(self) -> None:
        """Remove every subscription and ptdiag's global hooks (the Python API's session ended)."""
        self._pre.clear()
        self._post.clear()
        self._any_pre = ()
        self._alive.clear()
        self._always.clear()
        self._post_counts.clear()
        self._parked.clear()
        self._sync()

    # -- calling plugins ---------------------------------------------------------------------
    def _run(self, callback: Callable, args: tuple, what: str) -> None:
        """One callback, timed for the budget, its exception caught (see the module's doc)."""
        start = time.perf_counter()
        try:
            callback(*args)
        except Exception as exc:
            if raised_by_signal_handler(exc):
                raise
            self.fault(what, exc)
        finally:
            self._charge(what, time.perf_counter() - start)

    def fault(self, what: str, exc: BaseException) -> None:
        """A callback of instrument `what` raised: all of `what` is removed, for the run."""
        self.off.add(what)
        self._remove_everywhere(lambda entry: entry[1] == what)
        self._log_error(f"{what} raised:\n{''.join(traceback.format_exception(exc))}")
        self._switch_off(what, f"{type(exc).__name__}: {exc}"[:WHY_CHARS])

    def _pre_hook(self, torch) -> Callable:
        """torch's global pre-hook. It runs on every module call: what it reads is bound."""
        subscriptions_of, run = self._pre.get, self._run
        dynamo_compiling, compiler, tracing_state = _tracing_checks(torch)

        def before_forward(module, args) -> None:
            subscribed = subscriptions_of(id(module))  # before any-module callbacks subscribe more
            any_module = self._any_pre
            if (subscribed is None and not any_module) or dynamo_compiling() or compiler._is_compiling_flag \
                    or tracing_state() is not None or gpu.capturing():
                return None
            for callback, what, _, _ in any_module + (subscribed or ()):
                run(callback, (module, args), what)
            return None

        return before_forward

    def _post_hook(self, torch) -> Callable:
        """torch's global post-hook, called with (module, args, kwargs, output), or with
        (module, args, None) as an always-call hook after the forward raised. It runs on
        every module call, and the numerics watch subscribes to every module: what it
        reads is bound, and only the callbacks marked timed (one in POST_SAMPLE of an
        instrument's) are timed, their time scaled to all of the instrument's."""
        subscriptions_of, fault, charge, clock = self._post.get, self.fault, self._charge, time.perf_counter
        counts_of = self._post_counts.get
        dynamo_compiling, compiler, tracing_state = _tracing_checks(torch)

        def after_forward(module, args, kwargs, output=_RAISED) -> None:
            subscribed = subscriptions_of(id(module))
            if subscribed is None or dynamo_compiling() or compiler._is_compiling_flag or tracing_state() is not None \
                    or gpu.capturing():
                return None
            if output is _RAISED:
                subscribed = tuple(entry for entry in subscribed if entry[2])
                kwargs = output = None
            for callback, what, _, timed in subscribed:
                start = clock() if timed else 0.0
                try:
                    callback(module, args, kwargs, output)
                except Exception as exc:
                    if raised_by_signal_handler(exc):
                        raise
                    fault(what, exc)
                if timed:
                    callbacks, sampled = counts_of(what, (1, 1))
                    charge(what, (clock() - start) * callbacks / max(sampled, 1))
            return None

        return after_forward

    # -- the tables --------------------------------------------------------------------------
    def _add(self, table: str, module, entry: tuple) -> Subscription | None:
        if entry[1] in self.off:
            return None
        if entry[1] in self._parked:  # its instrument is parked: the new subscription waits with it
            key = None if module is None else id(module)
            ref = None if module is None else (self._alive.get(key)
                                               or weakref.ref(module, lambda _, key=key: self._forget(key)))
            self._parked[entry[1]].append((table, key, entry, ref))
            if table == "_post":  # counted again when put back
                counts = self._post_counts[entry[1]]
                counts[0] -= 1
                counts[1] -= entry[3]
            return Subscription(self, table, key, entry)
        if module is None:
            self._any_pre = (*self._any_pre, entry)
            key = None
        else:
            key = id(module)
            if key not in self._alive:
                self._alive[key] = weakref.ref(module, lambda _, key=key: self._forget(key))
            self._store(table, key, (*getattr(self, table).get(key, ()), entry))
        self._sync()
        return Subscription(self, table, key, entry)

    def _sampled(self, what: str) -> bool:
        """Whether a new after-forward callback of `what` is one of those timed."""
        counts = self._post_counts.setdefault(what, [0, 0])
        timed = counts[0] % POST_SAMPLE == 0
        counts[0] += 1
        counts[1] += timed
        return timed

    def _remove(self, table: str, key: int | None, drop: Callable[[tuple], bool]) -> None:
        for what, parked in self._parked.items():  # a parked subscription removed, or its instrument ended
            self._parked[what] = [p for p in parked if p[0] != table or p[1] != key or not drop(p[2])]
        if key is None:
            self._any_pre = tuple(entry for entry in self._any_pre if not drop(entry))
        else:
            entries = getattr(self, table).get(key, ())
            dropped = [drop(entry) for entry in entries]
            self._store(table, key, tuple(entry for entry, gone in zip(entries, dropped) if not gone))
            for (_, what, _, timed), gone in zip(entries, dropped):
                if gone and table == "_post":
                    counts = self._post_counts[what]
                    counts[0] -= 1
                    counts[1] -= timed
            if key not in self._pre and key not in self._post:
                self._alive.pop(key, None)
        self._sync()

    def _remove_everywhere(self, drop: Callable[[tuple], bool]) -> None:
        self._remove("_any_pre", None, drop)
        for table in ("_pre", "_post"):
            for key in list(getattr(self, table)):
                self._remove(table, key, drop)

    def _store(self, table: str, key: int, entries: tuple) -> None:
        if entries:
            getattr(self, table)[key] = entries
        else:
            getattr(self, table).pop(key, None)
        if table == "_post":
            if any(always for _, _, always, _ in entries):
                self._always.add(key)
            else:
                self._always.discard(key)

    def _forget(self, key: int) -> None:
        """A subscribed module was freed: its id may be given to a new object. A weak
        reference's callback: whatever it raises, Python prints to the program's stderr
        (at interpreter shutdown, when modules are freed last, even imports fail)."""
        try:
            for table in ("_pre", "_post"):
                self._remove(table, key, lambda entry: True)
        except Exception:
            pass

    def _sync(self) -> None:
        """Hold torch's global hooks exactly while something is subscribed to them (with
        none, module calls take torch's fast path again); the post-hook is torch's
        always-call kind only while a callback asks for it (that costs a little per call)."""
        wanted = {"pre": bool(self._pre or self._any_pre) and "pre",
                  "post": bool(self._post) and ("post always" if self._always else "post")}
        for table, kind in wanted.items():
            held = self._handles.get(table)
            if held is not None and held[0] != kind:
                del self._handles[table]
                handle, with_kwargs = held[1:]
                handle.remove()  # it leaves its id in torch's with_kwargs dict, where it counts as a global hook
                with_kwargs.pop(handle.id, None)
            if kind and table not in self._handles:
                self._handles[table] = (kind, *self._register(kind))

    def _register(self, kind: str) -> tuple:
        """torch's handle of the new global hook, and torch's dict of with_kwargs hooks
        (kept: removing a hook may happen at interpreter shutdown, when imports fail)."""
        import torch
        from torch.nn.modules import module

        if kind == "pre":
            handle = module.register_module_forward_pre_hook(self._pre_hook(torch))
        else:
            handle = module.register_module_forward_hook(self._post_hook(torch), with_kwargs=True,
                                                         always_call=kind == "post always")
        return handle, module._global_forward_hooks_with_kwargs
