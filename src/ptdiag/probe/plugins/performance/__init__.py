"""The performance specialist inside the user's process.

Every step: the cheap phase breakdown (breakdown.py). Once, after warm-up: a count of
the Python calls of one step (python_calls.py), a short torch.profiler window whose trace
is saved gzipped in the run dir, then a short call scan (scan.py) for host
synchronisations, per-line torch calls and float64. These windows are one one-off window
of the probe's budget, bounded in memory: the profiler records Python stacks over as many
steps as the counted step's calls fit (none: no stacks), and is stopped early, its trace
kept, when what it recorded would grow the process beyond the budget once processed (it
is looked at in every hook of the step). A profiler stopped so before its first recorded
step ended has nothing to analyse: it is taken again once, one step, without Python stacks
or shapes; cut again, the analysis says it cannot tell (`performance.not_profiled`).
Throughout:
background telemetry (telemetry.py) and a count of optimizer objects (a new one every
step is a bug: each starts with empty state).
When performance is the only question asked, the run is stopped once both windows are
recorded; the analysis then reads everything back from the run dir.

Options (`-o performance.KEY=VALUE`): skip (steps before the profiler's warm-up step, at
least 2: the last of them is the counted one),
profile_steps, scan_steps, tail_steps (bare steps after the windows before the stop),
stop (auto | yes | no), profile (yes | no), telemetry (yes | no), window_memory (the
windows' memory bound, a size such as 2GiB; default 15% of the process).
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import time
import weakref

from ptdiag.location import user_location
from ptdiag.probe.plugin import Plugin as ProbePlugin
from ptdiag.probe.plugins.performance.breakdown import StepBreakdown
from ptdiag.probe.plugins.performance.python_calls import BYTES_PER_EVENT, PythonCalls
from ptdiag.probe.plugins.performance.telemetry import Telemetry, usable_cores
from ptdiag.sizes import parse_size

NEW_OPTIMIZER_EVENTS = 5  # new optimizer objects described one by one; the rest are counted
TRACE_NAME = "trace.json.gz"
FORWARD_TIMING = "performance forward timing"  # the model's hooks: where each forward begins and ends
PHASE_HOOKS = ("on_batch", "on_backward", "on_backward_end", "on_step_begin")  # the other phase boundaries
PROFILER = "performance profiler window"
SCAN = "performance call scan"
SYNC_DEBUG = "performance scan's CUDA sync debug mode"
STACKS = "performance profiler's Python stacks"
FULL_SCOPE = "performance profiler's stacks and shapes"  # given up when they fill the window before one step ends
WINDOWS = "performance windows"  # the budget's one-off window: the call count, the profiler, the scan
# What the profiler holds once it stops, per byte the process grew while it recorded: an
# op event takes ~0.4 KB while recorded and ~4-6 KB once processed (measured: torch 2.14, CPU)
RECORDING_EXPANSION = 12
# What --max-steps shortens first, and to what least (_fit_into)
FIT_ORDER = (("tail_steps", 0), ("skip", 2), ("scan_steps", 0), ("profile_steps", 1))


def _gzip(source, target) -> None:
    """Compress fast (level 1: ~10x smaller, 0.2 s for 20 MB; torch's own .gz export
    uses level 9, over 10x slower for 30% less), then drop the plain file."""
    with open(source, "rb") as plain, gzip.open(target, "wb", compresslevel=1) as packed:
        shutil.copyfileobj(plain, packed, 1 << 20)
    os.unlink(source)


def _return_freed_memory() -> None:
    """Hand the profiler's freed memory back to the OS (glibc's malloc_trim).

    A window with Python stacks allocates and frees hundreds of MB of small objects; glibc
    keeps that heap fragmented, and afterwards every backward pass grew and trimmed the heap
    top again: measured 2.3k -> 9-14k page faults per backward and backward 1.3-1.5x slower
    for the rest of the process (plain torch, no ptdiag, with a DataLoader in the loop).
    One trim after the window restores it (0 faults, backward as before the window)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util
    import gc

    gc.collect()  # the profiler's result objects hold reference cycles
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to hand back
        pass


class Plugin(ProbePlugin):
    name = "performance"

    def __init__(self, probe) -> None:
        super().__init__(probe)
        options = probe.settings("performance")
        self.skip = max(2, options["skip"])  # step `skip` is counted (python_calls.py): one step before it
        self.profile_steps = options["profile_steps"] if options["profile"] else 0
        self.scan_steps = options["scan_steps"]
        others = [s for s in probe.plan.get("specialists", []) if s not in ("performance", "tracking")]
        stop = options["stop"]
        self.stop_when_done = stop == "yes" or (stop == "auto" and not others)
        self.tail_steps = options["tail_steps"]  # bare steps after the windows, before the stop
        self.window_memory = parse_size(options["window_memory"]) if options["window_memory"] else None
        self._shapes = True  # the profiler records input shapes (not in the smaller scope of a second try)
        self._stacks = False  # the profiler under way records Python stacks
        self._again = False  # the profiler was cut before one step ended: taken again at this step's end
        self.breakdown = StepBreakdown(probe.emit)
        self._fit_into(probe.max_steps)
        self._schedule(self.profile_steps)
        self.telemetry = Telemetry() if options["telemetry"] else None
        self._torch = None
        self._cuda = False
        self._device = None  # the model's (a CUDA one if any): where its work is timed and measured
        self._profiler = None
        self._scan = None
        self._scan_window = None
        self._sync_debug = None  # torch's CUDA sync debug mode over the scan (a GPU run)
        self._window = None  # the probe budget's one-off window around all of these
        self._calls: PythonCalls | None = None
        self._program_growth = 0  # the process's growth over the counted step: the program's own
        self._grown_before_recording: int | None = None  # the window's growth when the profiler began recording
        self._first_step_fits = False  # the counted step's Python calls, with stacks, fit the window (_fit_stacks)
        self._optimizers: weakref.WeakSet = weakref.WeakSet()
        self._optimizer_objects = 0
        self._optimizer_steps = 0
        self._finished = False
        self._scan_facts: dict = {}

    # -- set-up ------------------------------------------------------------------------------
    def on_torch_import(self, torch) -> None:
        self._torch = torch

    def on_model(self, module) -> None:
        params = list(module.parameters())
        dtypes: dict[str, int] = {}
        for p in params:
            dtypes[str(p.dtype)] = dtypes.get(str(p.dtype), 0) + p.numel()
        self._device = next((p.device for p in params if p.is_cuda), params[0].device)
        self._cuda = self._device.type == "cuda"
        if self._cuda:
            self.breakdown.use_cuda(self._device)
        self.probe.model_hooks.before_forward(module, self.breakdown.forward_pre_hook, FORWARD_TIMING)
        self.probe.model_hooks.after_forward(module, self.breakdown.forward_hook, FORWARD_TIMING)
        self.probe.emit("perf_model", cls=type(module).__name__, param_dtypes=dtypes,
                        device=str(params[0].device), location=user_location(2))

    def on_dataloader(self, loader) -> None:
        self.probe.emit("perf_loader", batch_size=loader.batch_size, num_workers=loader.num_workers,
                        pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers,
                        prefetch_factor=getattr(loader, "prefetch_factor", None))

    # -- the step ----------------------------------------------------------------------------
    def on_batch(self, loader, wait_s) -> None:
        self.breakdown.data_wait(wait_s)
        self._keep_profile_in_budget()

    def on_backward(self, tensor) -> None:
        self.breakdown.begin("backward")
        self._keep_profile_in_budget()

    def on_backward_end(self, tensor) -> None:
        self.breakdown.end("backward")
        self._keep_profile_in_budget()

    def on_step_begin(self, step, optimizer) -> None:
        self.breakdown.begin("optimizer")
        self._keep_profile_in_budget()

    def on_step(self, step, optimizer) -> None:
        self.breakdown.end("optimizer")
        self.breakdown.step_end(step, self.probe.budget.records(step))
        self._time_phases(step + 1)
        if step == 1:
            self._start_telemetry()
        if step > self.stop_at:
            return
        if self._again:  # a second try, in the smaller scope: warm-up at the next step, one step recorded
            self._again = False
            self.skip, self._grown_before_recording = step, None
            first_try = self.breakdown.instrumented
            self._schedule(1)
            self.breakdown.instrumented |= first_try  # its steps stay out of the typical step too
        if step == self.skip - 1 and self.profile_steps:
            self._count_python_calls()
        elif step == self.skip and self.profile_steps:
            self._start_profiler()
        elif self._profiler is not None:
            self._profiler.step()
            if step >= self.profile_end or not self._profiler.open:  # not open: it faulted (switched off)
                self._stop_profiler()
            elif step == self.skip + 1:  # the warm-up step ended: recording begins
                self._grown_before_recording = self._window.grown()
            else:
                self._keep_profile_in_budget()
        if step == self.profile_end and self.scan_steps:
            self._start_scan()
        elif self._scan is not None and step >= self.scan_end:
            self._stop_scan(step - self.profile_end)
        if step == self.stop_at and self.stop_when_done:
            self._stop("both profiling windows are recorded (the diagnosis needs no more steps)")

    def _fit_into(self, max_steps: int | None) -> None:
        """Shorten the windows to end by --max-steps: a --max-steps 6 run otherwise ends inside
        the profiler (imagenet's ResNet-18 on the CPU: "No problem found", nothing analysed).
        Tail steps go first, then the steps skipped before the count, then the scan, then
        profiled steps; each keeps its minimum (one profiled step, two before the count)."""
        if not max_steps:
            return
        for name, least in FIT_ORDER:
            over = self.skip + 1 + self.profile_steps + self.scan_steps + self.tail_steps - max_steps
            if over <= 0:
                return
            setattr(self, name, max(least, getattr(self, name) - over))

    def _time_phases(self, step: int) -> None:
        """The phases are timed on the steps whose row is kept (and in the windows, whose
        hooks also keep the profiler within budget); between them the model's hooks and the
        phase hooks are parked (ModelHooks.set_active, Dispatcher.set_active), so the
        program's module calls cost nothing. On CUDA every step's device row is kept."""
        if not self._cuda:
            timed = self.probe.budget.records(step) or step in self.breakdown.instrumented
            self.probe.model_hooks.set_active(FORWARD_TIMING, timed)
            self.probe.dispatcher.set_active(self.name, PHASE_HOOKS, timed)

    def _schedule(self, profile_steps: int) -> None:
        """The windows' step numbers: step `skip` counted, the profiler's warm-up at skip+1,
        recorded skip+2 .. profile_end, then the scan, then the tail steps before the stop."""
        self.profile_steps = profile_steps
        self.profile_end = self.skip + 1 + profile_steps if profile_steps else self.skip
        self.scan_end = self.profile_end + self.scan_steps
        self.stop_at = self.scan_end + self.tail_steps
        self.breakdown.instrumented = set(range(self.skip, self.scan_end + 1))

    def on_program_end(self) -> None:
        """Its windows end first: the other plugins' exit work is not the program's steps."""
        self._finish()

    def on_exit(self) -> None:
        self._finish()

    def _stop(self, reason: str) -> None:
        """End the training cleanly once the diagnosis has what it needs (--max-steps' way)."""
        self._finish()
        self.probe.stop("performance", reason, keep_running="-o performance.stop=no")

    def on_any_optimizer_step(self, optimizer) -> None:
        """Every optimizer's steps, not only the primary's: new objects counted."""
        self._optimizer_steps += 1
        if optimizer in self._optimizers:
            return
        self._optimizers.add(optimizer)
        self._optimizer_objects += 1
        if self._optimizer_objects <= NEW_OPTIMIZER_EVENTS:
            groups = getattr(optimizer, "param_groups", None) or [{}]
            self.probe.emit("perf_optimizer", cls=type(optimizer).__name__, nth=self._optimizer_objects,
                            optimizer_steps=self._optimizer_steps, location=user_location(2),
                            tensors=sum(len(g.get("params") or ()) for g in groups),
                            foreach=groups[0].get("foreach"), fused=groups[0].get("fused"))

    # -- windows -----------------------------------------------------------------------------
    def _start_telemetry(self) -> None:
        torch = self._torch
        if self.telemetry is not None:
            self.telemetry.start(self._device_index() if self._cuda else None)
        capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: None)()
        self.probe.emit("perf_env", cores=usable_cores(), torch_threads=torch.get_num_threads(),
                        cuda=self._cuda, cpu_capability=capability,
                        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                        local_processes=_int(os.environ.get("LOCAL_WORLD_SIZE")))

    def _device_index(self) -> int:
        """The model's CUDA device as an index (`cuda` alone means the current device)."""
        index = self._device.index
        return index if index is not None else self._torch.cuda.current_device()

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerActivity, schedule

        activities = [ProfilerActivity.CPU]
        if self._cuda:
            activities.append(ProfilerActivity.CUDA)
        folder = self.probe.run_dir / "artifacts"
        folder.mkdir(exist_ok=True)
        name = TRACE_NAME if self.probe.rank == 0 else f"trace.rank{self.probe.rank}.json.gz"
        path = folder / name
        first = self.skip + 1  # ProfilerStep#0 is this training step (the warm-up step)

        def save(prof) -> None:
            start = time.perf_counter()
            plain = path.with_suffix("")  # trace.json: written by Kineto, then compressed
            prof.export_chrome_trace(str(plain))
            _gzip(plain, path)
            self.probe.emit("perf_trace", path=str(path.relative_to(self.probe.run_dir)),
                            first_step=first, warmup_steps=1, steps=self.profile_steps,
                            export_s=round(time.perf_counter() - start, 3), cuda=self._cuda)

        if self._open_window() is None:
            return
        with_stack = self._stacks = self._fit_stacks()
        self._profiler = self.probe.instruments.profile(
            PROFILER, self.probe.run_dir / "kineto.log", activities=activities, record_shapes=self._shapes,
            with_stack=with_stack, on_trace_ready=save,
            schedule=schedule(wait=0, warmup=1, active=self.profile_steps, repeat=1))
        if self._profiler is None and not self.scan_steps:
            self._close_window()

    def _stop_profiler(self) -> None:
        profiler, self._profiler = self._profiler, None
        profiler.close()
        del profiler
        _return_freed_memory()
        if not self.scan_steps and not self._again:
            self._close_window()

    # -- the budget: the windows' memory -------------------------------------------------------
    def _open_window(self):
        if self._window is None:
            self._window = self.probe.budget.window(WINDOWS, self.window_memory)
        return self._window if self._window is not None and not self._window.closed else None

    def _close_window(self, abandoned: str | None = None) -> None:
        if self._window is not None:
            self._window.close(abandoned)

    def _count_python_calls(self) -> None:
        """Count the next step's Python calls, up to what the profile's stacks can afford."""
        window = self._open_window()
        if window is None:
            return
        self._calls = PythonCalls(window.allowance // BYTES_PER_EVENT)  # beyond that, not one step fits
        if not self._calls.start():
            self._calls = None
            self.probe.switch_off(STACKS, "the program profiles itself (sys.setprofile): the profiler's Python "
                                          "tracer would replace its profile function")

    def _fit_stacks(self) -> bool:
        """Whether the profile records Python stacks: over as many of its steps as the
        counted step's calls fit in the window's memory (fewer steps then, said), or none."""
        calls, self._calls = self._calls, None
        if calls is None:
            return False
        calls.stop()
        self._program_growth = max(0, self._window.grown())
        self.probe.emit("perf_python_calls", step=self.skip, calls=calls.calls, capped=calls.capped,
                        location=calls.where, in_loader=calls.in_loader)
        budget = f"ptdiag's budget ({self._window.allowance >> 20} MiB)"
        if calls.capped:
            where = f", {'in the DataLoader, ' if calls.in_loader else ''}at {calls.where}" if calls.where else ""
            self.probe.switch_off(STACKS, f"step {self.skip} made over {calls.limit} Python calls{where}; recorded "
                                          f"with stacks they would grow the process beyond {budget}: the profile "
                                          "is taken without them")
            return False
        fit = self._window.allowance // (BYTES_PER_EVENT * max(1, calls.calls))
        self._first_step_fits = fit >= 1
        if fit < self.profile_steps:
            dropped = f"step {fit + 1}" if fit + 1 == self.profile_steps else f"steps {fit + 1}-{self.profile_steps}"
            self.probe.switch_off(f"performance profiler's {dropped}",
                                  f"step {self.skip} made {calls.calls} Python calls; recorded with stacks, "
                                  f"{fit} of the {self.profile_steps} profiled steps fit {budget}")
            self._schedule(fit)
        return True

    def _keep_profile_in_budget(self) -> None:
        """Stop the profiler early, its trace kept, when what it recorded so far (the growth
        since recording began, beyond the program's own pace) would take the window beyond
        its memory once processed.

        Not before the first recorded step is complete when the counted step's calls said it
        fits (_fit_stacks): the growth of a step in progress, times the expansion, over-counts
        (a ResNet-18 at batch 4 on the CPU grew ~60 MB in its first recorded backward, 1.1 GB
        process, and was cut there; run to the end, its 3 recorded steps took ~130 MB with the
        export, the trace 3 MB) and a cut there leaves a trace with no step to analyse."""
        window, before = self._window, self._grown_before_recording
        if self._profiler is None or window is None or before is None:
            return
        if self._first_step_fits and self.probe.step <= self.skip + 1:  # inside the first recorded step
            return
        pace = self._program_growth * (self.probe.step - self.skip)  # steps recorded, the current one included
        recorded = window.grown() - before - pace
        if before + recorded * RECORDING_EXPANSION <= window.allowance:
            return
        profiled = self.probe.step - self.skip - 1  # the recorded steps that ended before this one
        self.probe.emit("perf_trace_cut", step=self.probe.step, budget=True, profiled=profiled)
        beyond = (f"stopped at step {self.probe.step + 1}: its events would grow the process beyond ptdiag's "
                  f"budget ({window.allowance >> 20} MiB) once processed")
        self._again = not profiled and (self._stacks or self._shapes)
        self._stop_profiler()
        if self._again:  # nothing to analyse yet: once more, without what made it large
            self._shapes = False
            self.probe.switch_off(FULL_SCOPE, f"{beyond}, before its first profiled step ended; taken again from "
                                              f"step {self.probe.step + 3}, one step, without Python stacks or shapes")
        elif not profiled:
            self.probe.switch_off(PROFILER, f"{beyond}, before its first profiled step ended: no trace to analyse")
        else:
            self.probe.switch_off(PROFILER, f"{beyond}; the trace holds the steps before")

    def _start_scan(self) -> None:
        from ptdiag.probe.plugins.performance import scan

        if self._open_window() is None:
            return
        torch = self._torch
        overhead = scan.per_call_overhead_us(torch)
        slowdown = scan.float64_slowdown(torch, self._device if self._cuda else torch.device("cpu"))
        self._scan_facts = {"per_call_us": overhead, "float64_slowdown": slowdown}
        self._scan = scan.CallScan(torch, self._cuda)
        self._scan_window = self.probe.instruments.watch_ops(SCAN, self._scan, functions=True)
        if self._scan_window is not None and self._cuda:  # torch itself reports every sync (scan.py)
            self._sync_debug = self.probe.instruments.sync_debug(SYNC_DEBUG, torch, self._scan.on_sync)
            self._scan.by_sync_debug = self._sync_debug is not None
        if self._scan_window is None:
            self._scan = None
            self._close_window()

    def _stop_scan(self, steps: int) -> None:
        observer, self._scan = self._scan, None
        if self._sync_debug is not None:
            self._sync_debug.close()
            self._sync_debug = None
        self._scan_window.close()
        if self.probe.instruments.available(SCAN):  # else it faulted: its counts are partial
            self.probe.emit("perf_scan", first_step=self.profile_end + 1, **observer.summary(steps),
                            syncs_from="torch's sync debug mode" if observer.by_sync_debug else "call table",
                            **self._scan_facts)
        self._close_window()

    def _finish(self) -> None:
        """Close whatever window is open and write everything buffered (once: at the
        stop, or at exit when the program ends first)."""
        if self._finished:
            return
        self._finished = True
        if self._calls is not None:  # the program ended in the counted step
            self._calls.stop()
        if self._scan is not None:
            self._stop_scan(max(1, self.probe.step - self.profile_end))
        if self._profiler is not None:  # the program ended inside the window
            self.probe.emit("perf_trace_cut", step=self.probe.step, budget=False,
                            profiled=max(0, self.probe.step - self.skip - 1))
            self._stop_profiler()
        self._close_window()
        self.breakdown.flush(wait_gpu=self._cuda)
        self.probe.emit("perf_optimizers", objects=self._optimizer_objects, steps=self._optimizer_steps,
                        alive=len(self._optimizers))
        if self.telemetry is not None:
            self.probe.emit("perf_telemetry", **self.telemetry.stop())


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None
