"""The probe inside one process of the user's program.

It owns the run-wide facts every specialist shares (the optimizer step count, the
event log, the run dir), installs the patches its plugins need, and enforces
`--max-steps`. It stays out of the way: no output, no change to what the program sees.
"""

from __future__ import annotations

import atexit
import faulthandler
import importlib
import importlib.util
import os
import signal
import sys
import time
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable

from ptdiag import options as option_tables
from ptdiag.probe import gpu, interventions, patches
from ptdiag.probe.budget import Budget
from ptdiag.probe.event_log import EventWriter
from ptdiag.probe.instruments import Instruments
from ptdiag.probe.model_hooks import ModelHooks
from ptdiag.probe.plugin import Dispatcher, Plugin
from ptdiag.probe.steps import WATCH as HAND_WRITTEN_WATCH, HandWrittenSteps

STACK_DUMP_SIGNAL = signal.SIGUSR2  # SIGUSR1 is often taken (SLURM pre-emption, Lightning)


def load_plugins(probe: "Probe", specialists: list[str]) -> list[Plugin]:
    """Tracking always records; each planned specialist (or one run for its cheap checks
    only, `probe.cheap`) adds its in-process part, if any; a verification run's
    intervention comes last (probe.interventions)."""
    plugins = []
    for name in dict.fromkeys(["tracking", *specialists, *probe.cheap]):
        module_name = f"ptdiag.probe.plugins.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        plugins.append(importlib.import_module(module_name).Plugin(probe))
    return plugins + interventions.plugins(probe)


def cheap_checks(plan: dict, world_size: int | None) -> frozenset[str]:
    """The specialists this process runs for their cheap checks only: the plan's (a
    triage's), plus distributed's whenever the job has several ranks, whatever the words
    said (a problem seen only with several processes is distributed's first)."""
    planned = set(plan.get("specialists", []))
    cheap = set(plan.get("cheap", [])) - planned
    if (world_size or 1) > 1 and "distributed" not in planned:
        cheap.add("distributed")
    return frozenset(cheap)


class Probe:
    def __init__(self, run_dir: Path, plan: dict, rank: int, world_size: int | None = None) -> None:
        """`world_size`: the job's number of ranks when the launcher knows it before the
        environment says (an mp.spawn worker's process group); else WORLD_SIZE."""
        self.run_dir = run_dir
        self.plan = plan
        self.rank = rank
        self.cheap = cheap_checks(plan, world_size or _env_int("WORLD_SIZE"))
        self.step = 0
        self.max_steps: int | None = plan.get("max_steps")
        self.options: dict = plan.get("options", {})  # per specialist: {"memory": {"target_memory": "16GiB"}}
        self._primary_optimizer: weakref.ref | None = None
        self._scaled_loss: tuple = (None, None)  # (weakref to GradScaler.scale's output, its scale)
        self._switched_off: set[str] = set()
        self.stopped: dict | None = None  # set by stop(): the program's SystemExit is ptdiag's
        self.events = EventWriter(run_dir / "events" / f"rank{rank}.p{os.getpid()}.jsonl")
        self.instruments = Instruments(self.switch_off, self.log_error)  # modes and trackers, for the plugins
        self.budget = Budget(self.emit, self.switch_off)  # what ptdiag costs the program, kept bounded
        # module and tensor hooks, for the plugins
        self.model_hooks = ModelHooks(self.switch_off, self.log_error, self.budget.charge)
        self.dispatcher = Dispatcher(load_plugins(self, plan.get("specialists", [])), self.log_error,
                                     self.budget.charge)
        self.hand_written = HandWrittenSteps(self.model_hooks, self._hand_written_step)  # steps without torch.optim

    # -- plumbing shared by patches and plugins -------------------------------------------
    def emit(self, event: str, /, **fields: Any) -> None:
        self.events.write(event, **fields)

    def call(self, hook: str, *args: Any) -> None:
        self.dispatcher.call(hook, *args)

    def settings(self, specialist: str) -> dict[str, Any]:
        """A specialist's options, typed, with their declared defaults (ptdiag.options). The
        CLI checked them before the run; a plan that still holds a bad one (written by
        hand, or by the API) costs that specialist its given options, never the run."""
        given = self.options.get(specialist, {}) if isinstance(self.options, dict) else {}
        try:
            return option_tables.settings(specialist, given)
        except option_tables.OptionError as error:
            self.log_error(f"{specialist}'s options ignored: {error}")
            return option_tables.settings(specialist, {})

    def log_error(self, message: str) -> None:
        try:
            with open(self.run_dir / "probe-errors.log", "a", encoding="utf-8") as fh:
                fh.write(f"pid {os.getpid()} rank {self.rank}: {message}\n")
        except OSError:
            pass

    def guarded(self, installer: Callable) -> Callable:
        def run(module):
            try:
                installer(self, module)
            except Exception:
                self.log_error(f"patch {installer.__name__} not installed:\n{traceback.format_exc()}")

        return run

    # -- life cycle ------------------------------------------------------------------------
    def install(self) -> None:
        self.emit("start", pid=os.getpid(), ppid=os.getppid(), rank=self.rank,
                  local_rank=_env_int("LOCAL_RANK"), world_size=_env_int("WORLD_SIZE"),
                  node_rank=_env_int("GROUP_RANK"), cwd=os.getcwd(), executable=sys.executable)
        self._install_stack_dumps()
        self._previous_excepthook = sys.excepthook

        def excepthook(exc_type, exc, tb):
            self.call("on_exception", exc_type, exc, tb)
            self._previous_excepthook(exc_type, exc, tb)

        self._excepthook = excepthook
        sys.excepthook = excepthook
        atexit.register(self._at_exit)
        gpu.on_first_capture(lambda: self.switch_off(gpu.CAPTURE, gpu.CAPTURE_WHY))
        patches.install(self)

    def _install_stack_dumps(self) -> None:
        """Stacks on demand (the parent's --timeout) and on a fatal signal (segfault)."""
        stacks = self.run_dir / "stacks"
        stacks.mkdir(exist_ok=True)
        self._stack_file = open(stacks / f"rank{self.rank}.p{os.getpid()}.txt", "a")
        faulthandler.register(STACK_DUMP_SIGNAL, file=self._stack_file, all_threads=True)
        self._enabled_faulthandler = not faulthandler.is_enabled()
        if self._enabled_faulthandler:  # a user who enabled it keeps it on their stderr
            faulthandler.enable(file=self._stack_file, all_threads=True)
        (self.run_dir / "procs").mkdir(exist_ok=True)
        (self.run_dir / "procs" / str(os.getpid())).write_text(str(self.rank))

    def _at_exit(self) -> None:
        """ptdiag's last work in the process; a failure of it is logged, never printed as
        'Exception ignored in atexit callback' on the program's stderr."""
        self.max_steps = None  # the program is ending: nothing left to stop
        try:
            self.hand_written.at_exit()  # the last hand-written update, if any
        except SystemExit:
            pass  # a plugin's stop at that step: the program is ending anyway, the rest below must run
        except Exception:
            self.log_error(f"the last hand-written update was not looked at:\n{traceback.format_exc()}")
        self.call("on_program_end")
        self.call("on_exit")
        try:
            self.instruments.close_all()
            self.budget.close()
        except Exception:
            self.log_error(f"closing the instruments at exit failed:\n{traceback.format_exc()}")
        self.emit("exit", steps=self.step)
        self.events.close()

    def close(self) -> None:
        """End recording in a process that goes on (the Python API's session): write the
        exit event now and undo what install() did that can be undone. The patches on
        torch stay in place but call an empty dispatcher: one no-op call each; the hooks
        into modules and tensors are removed."""
        self.max_steps = None
        atexit.unregister(self._at_exit)
        self._at_exit()
        self.dispatcher = Dispatcher([], self.log_error)
        self.model_hooks.close()
        if sys.excepthook is self._excepthook:
            sys.excepthook = self._previous_excepthook
        faulthandler.unregister(STACK_DUMP_SIGNAL)
        if self._enabled_faulthandler:
            faulthandler.disable()
        self._stack_file.close()

    # -- what ptdiag changes about the run: always said --------------------------------------
    def stop(self, by: str, reason: str, keep_running: str | None = None) -> None:
        """The one way ptdiag ends a training early: a clean SystemExit(0) after the
        `stopped` event that the report turns into `stopped_by` (who, at which step, why,
        and the option that keeps the training running). `stopped` says so to the Python
        API's session, whose block this SystemExit ends."""
        self.stopped = {"by": by, "reason": reason, "step": self.step, "keep_running": keep_running}
        self.emit("stopped", **self.stopped, wall=time.time())
        self.events.flush()
        raise SystemExit(0)

    def switch_off(self, what: str, why: str, budget: bool = False) -> None:
        """Record that ptdiag removed one of its own instruments (it faulted, or would cost
        more than its budget); the report lists these under `switched_off`. Said once per
        instrument. Not an error: a fault's traceback is logged where it is caught, and a
        budget's decision is none (the report said 'the probe logged internal errors' for it).
        `budget`: the per-step budget sampled the instrument down (the terminal says those
        in one line: a sub-millisecond step can take five)."""
        if what in self._switched_off:
            return
        self._switched_off.add(what)
        self.emit("switched_off", what=what, why=why, step=self.step, **({"budget": True} if budget else {}))

    # -- the loss a GradScaler scaled (patches: GradScaler.scale) ---------------------------
    def note_scaled_loss(self, scaled, scale) -> None:
        self._scaled_loss = (weakref.ref(scaled), scale)

    def loss_scale(self, loss):
        """The scale a GradScaler multiplied `loss` by (its device tensor, changed in place
        by `update()`), or None when `loss` is not what `GradScaler.scale` handed back."""
        ref, scale = self._scaled_loss
        return scale if ref is not None and ref() is loss else None

    # -- the step (what one is: probe/steps.py) ----------------------------------------------
    # The hooks of every step call the dispatcher directly and skip what has ended (the
    # hand-written update watch once an optimizer stepped) or what nobody hears on this step:
    # a 0.55 ms step paid ~30 Python calls of ptdiag's before (docs/benchmarks.md).
    def backward_called(self, loss) -> None:
        """The program called backward on `loss` (patches: torch.autograd.backward)."""
        if not self.hand_written.ended:
            self._watch_hand_written(self.hand_written.backward_begins)
        self.dispatcher.call("on_backward", loss)

    def backward_returned(self, loss, params: list | None = None) -> None:
        """`params`: the parameters torch.autograd.grad returned gradients for (none: backward)."""
        self.dispatcher.call("on_backward_end", loss)
        if not self.hand_written.ended:
            self._watch_hand_written(self.hand_written.backward_ended, loss, params)

    def hears_backward(self) -> bool:
        """Whether a backward call means anything to ptdiag now (patches: its wrapper calls
        the original alone when not)."""
        live = self.dispatcher.live
        return not self.hand_written.ended or "on_backward" in live or "on_backward_end" in live

    def _watch_hand_written(self, what: Callable, *args) -> None:
        """The hand-written update watch, guarded: its fault costs it, never the program."""
        if self.hand_written.ended or gpu.capturing():  # inert inside a CUDA graph capture (probe/gpu.py)
            return
        start = time.perf_counter()
        try:
            what(*args)
        except SystemExit:
            raise  # Probe.stop at --max-steps
        except Exception as exc:
            self.hand_written.optimizer_stepped()  # ends the watch
            self.log_error(f"the hand-written update watch raised:\n{traceback.format_exc()}")
            self.switch_off(HAND_WRITTEN_WATCH, f"{type(exc).__name__}: {exc}"[:300])
        finally:
            self.budget.charge(HAND_WRITTEN_WATCH, time.perf_counter() - start)  # ptdiag's cost, measured

    def is_primary(self, optimizer) -> bool:
        """Steps count for the primary optimizer: the first one, or a later one over the
        same parameters. A script that builds a new optimizer every step still takes steps
        (the old object may live on: a reference cycle, a list, a plugin's reference); a
        GAN's second optimizer, over other parameters, does not count. When the primary is
        gone, the next optimizer that steps takes over."""
        primary = self._primary_optimizer() if self._primary_optimizer is not None else None
        if primary is optimizer:
            return True
        if primary is None or _same_parameters(primary, optimizer):
            self._primary_optimizer = weakref.ref(optimizer)
            return True
        return False

    def optimizer_stepping(self, optimizer) -> None:
        if not self.hand_written.ended:
            self.hand_written.optimizer_stepped()  # before a closure's backward passes (LBFGS) run inside step()
        if "on_step_begin" in self.dispatcher.live and self.is_primary(optimizer):
            self.dispatcher.call("on_step_begin", self.step + 1, optimizer)

    def optimizer_stepped(self, optimizer) -> None:
        if not self.hand_written.ended:
            self.hand_written.optimizer_stepped()
        self.dispatcher.call("on_any_optimizer_step", optimizer)
        if not self.is_primary(optimizer):
            return
        self._step_taken(optimizer)

    def _hand_written_step(self, update) -> None:
        """A step of a program that updates its parameters by hand (probe/steps.py): the
        plugins see it as they see an optimizer's, `update` standing for the optimizer."""
        self.call("on_step_begin", self.step + 1, update)
        self._step_taken(update)

    def _step_taken(self, optimizer) -> None:
        self.step += 1
        self.dispatcher.call("on_step", self.step, optimizer)
        self.events.flush_each = False  # lines written so far went out one by one
        if self.events.unflushed:  # a step the recorder skips wrote nothing
            flushing = time.perf_counter()
            self.events.flush()
            self.budget.charge("probe", time.perf_counter() - flushing)
        self.budget.step_ended()
        if self.max_steps is not None and self.step >= self.max_steps and not gpu.capturing():
            # not from inside a CUDA graph capture: the program's capture would end broken
            self.stop("max_steps", f"--max-steps {self.max_steps} was reached")


def _same_parameters(one, other) -> bool:
    """Whether two optimizers update the same model: their first parameter is the same
    tensor (one lookup: this runs when a non-primary optimizer steps)."""
    try:
        first = one.param_groups[0]["params"][0]
        return first is other.param_groups[0]["params"][0]
    except (AttributeError, IndexError, KeyError, TypeError):
        return False


def _env_int(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None
