"""A few steps watched call by call: host synchronisations, torch calls per source line,
float64 results.

A function mode (pushed by the probe's instruments) sees every torch function and Tensor method the program calls from
Python (`.item()`, `print(loss)` through `Tensor.__format__`, `F.conv2d`, ...), with the
Python stack at hand, so each call can be attributed to the line that made it. It costs
a Python round-trip per call, so it is entered only for a short window of steps (after
the profiler window, so it does not distort the profile) and left again.

What counts as a host synchronisation: on a GPU, what torch itself says is one: its CUDA
sync debug mode is on over the window (instruments/sync_debug.py) and each synchronising
call it reports is counted, at the call of the program's that made it (`torch.cuda.
synchronize` and syncs inside torch's own code included). On a CPU run no device exists:
a table (SYNC_CALLS, with SYNC_WHEN for calls that block only with some arguments) names
the calls that would block the host on a GPU, and their own cost is measured. The table
also serves a GPU run whose program set a sync debug mode of its own (then only calls on
device tensors count).

A call is counted only when the first frame outside torch is not ptdiag's own (the
recorder reads the loss with `float()`). A synchronising call counts only when the
program's own line made it directly: libraries' calls (torchvision's FakeData `.item()`,
an optimizer's CPU step counter) are host-side work, not device waits.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from functools import lru_cache

from ptdiag.location import PTDIAG_DIR as LOCATION_PTDIAG_DIR
from ptdiag.location import format_location, is_ptdiag_work, is_user_file
from ptdiag.probe.instruments import OpObserver
from ptdiag.probe.instruments.ops import op_caller
from ptdiag.probe.plugins.performance.python_calls import LOADER_FILE

# Tensor method / torch function name -> what it does to the host.
SYNC_CALLS = {
    "item": "copies one value to the host",
    "tolist": "copies the tensor to the host",
    "cpu": "copies the tensor to the host",
    "to": "copies the tensor to the host (.to('cpu'))",
    "numpy": "copies the tensor to the host",
    "__float__": "copies one value to the host",
    "__int__": "copies one value to the host",
    "__bool__": "copies one value to the host (a tensor in an if/while)",
    "__format__": "formats the tensor (print/f-string): copies it to the host",
    "__repr__": "formats the tensor (print/str): copies it to the host",
    "__getitem__": "boolean-mask indexing: the output size depends on the data, waits for the device",
    "where": "torch.where(cond) with one argument is nonzero: the output size depends on the data",
    "equal": "torch.equal returns a Python bool: waits for the device",
    "nonzero": "output size depends on the data: waits for the device",
    "masked_select": "output size depends on the data: waits for the device",
    "unique": "output size depends on the data: waits for the device",
    "synchronize": "waits for all the GPU work queued so far (torch.cuda.synchronize)",
}
SYNC_OTHER = "synchronises with the device (reported by torch's CUDA sync debug mode)"


def _to_host(args, kwargs, torch) -> bool:
    """`.to("cpu")`, `.to(cpu_tensor)`, `.to(device=...)` of a device tensor; not a dtype
    change, nor a non-blocking copy (it does not wait). On a CPU run never: there the
    program's `.to(device)` of its batches is the same call, and is no copy to the host on
    a GPU."""
    source = args[0] if args else None
    if not isinstance(source, torch.Tensor) or source.device.type == "cpu":
        return False
    if kwargs.get("non_blocking") or (len(args) > 2 and args[2] is True):
        return False
    for target in (*args[1:2], kwargs.get("device")):
        if isinstance(target, torch.Tensor):
            target = target.device
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu":
            return True
    return False


def _mask_index(args, kwargs, torch) -> bool:
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts)


def _one_argument(args, kwargs, torch) -> bool:
    return len(args) + len(kwargs) == 1


# calls that block only with some arguments: name -> (args, kwargs, torch) -> whether they do
SYNC_WHEN = {"to": _to_host, "__getitem__": _mask_index, "where": _one_argument}
TORCH_DIR = None  # set on first use: the directory of the installed torch package
# torch's wrappers between a Tensor method and the mode (Tensor.__format__ -> handler)
DISPATCH_FILES = (os.path.join("torch", "overrides.py"), os.path.join("torch", "_tensor.py"),
                  os.path.join("torch", "_tensor_str.py"))
PTDIAG_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOP_LINES = 10
MICROBENCH_CALLS = 300
FP64_BENCH_SIZE = 192


_is_user_file = lru_cache(maxsize=4096)(is_user_file)


def _in_loader(frame) -> bool:
    """Whether a DataLoader's iteration is on the stack (a Dataset's __getitem__ run by
    the loader in the training process): looked up once per line, the first time it calls."""
    while frame is not None:
        if frame.f_code.co_filename.replace("\\", "/").endswith(LOADER_FILE):
            return True
        frame = frame.f_back
    return False


def _callers(frame):
    """(direct caller, first frame outside torch, innermost user frame) of a torch call.

    The direct caller is the first frame past torch's own dispatch wrappers: the line
    that ran the call (a loop runs it many times), wherever it lives."""
    direct, outside, user = None, None, None
    while frame is not None:
        filename = frame.f_code.co_filename
        if direct is None and not filename.endswith(DISPATCH_FILES):
            direct = frame
        if outside is None and not filename.startswith(TORCH_DIR):
            outside = frame
        if outside is not None and _is_user_file(filename):
            user = frame
            break
        frame = frame.f_back
    return direct, outside, user


def _first_outside_torch(frame):
    """The first frame that is neither torch's nor one of ptdiag's frames that only pass a
    program's call on (the probe's patches, its op watches' modes: location.is_ptdiag_work)."""
    while frame is not None:
        filename = frame.f_code.co_filename
        passing = _in_ptdiag(filename) and not is_ptdiag_work(filename)
        if not (filename.startswith(TORCH_DIR) or passing):
            return frame
        frame = frame.f_back
    return None


@lru_cache(maxsize=1024)
def _in_ptdiag(filename: str) -> bool:
    return os.path.normcase(os.path.abspath(filename)).startswith(LOCATION_PTDIAG_DIR)


def _where(frame) -> str | None:
    return format_location(frame.f_code.co_filename, frame.f_lineno) if frame is not None else None


class CallScan(OpObserver):
    """Counts the program's torch calls per line, its synchronising calls and float64
    results; the probe's instruments hand it every call (a function mode) and, on a GPU,
    every synchronisation torch reports (`on_sync`, with `by_sync_debug` set)."""

    def __init__(self, torch, device_is_cuda: bool) -> None:
        global TORCH_DIR
        TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
        self.torch, self.device_is_cuda = torch, device_is_cuda
        self.by_sync_debug = False  # torch reports the syncs (on_sync): the table is not used
        self.calls: Counter = Counter()  # (direct caller line, is user code) -> torch calls
        self.loading: dict = {}  # line -> whether its first call ran inside a DataLoader's iteration
        self.syncs: dict[tuple, list] = defaultdict(lambda: [0, 0.0])  # (call, line) -> [n, s]
        self.float64: Counter = Counter()  # line -> calls returning float64 tensors
        self.total_calls = 0
        self._in_call: list | None = None  # [whether torch reported a sync] during a watched call

    def before(self, func, args, kwargs):
        name = getattr(func, "__name__", "")
        sync = not self.by_sync_debug and is_sync(name, args, kwargs, self.device_is_cuda, self.torch)
        self._in_call = [False]
        return name, sync, time.perf_counter()

    def after(self, func, args, kwargs, result, before) -> None:
        name, sync, start = before
        reported, self._in_call = self._in_call, None
        sync = sync or bool(reported and reported[0])
        direct, outside, user = _callers(op_caller())
        if outside is None or outside.f_code.co_filename.startswith(PTDIAG_DIR):
            return
        self.total_calls += 1
        line = _where(direct)
        if self.calls[(line, _is_user_file(direct.f_code.co_filename))] == 0:
            self.loading[line] = _in_loader(direct)
        self.calls[(line, _is_user_file(direct.f_code.co_filename))] += 1
        if sync and user is direct:  # the program's own line, not a library's (data pipeline)
            entry = self.syncs[(name, line)]
            entry[0] += 1
            entry[1] += time.perf_counter() - start
        if isinstance(result, self.torch.Tensor) and result.dtype == self.torch.float64:
            self.float64[_where(user) or line] += 1

    def on_sync(self, frame) -> None:
        """torch reported a synchronisation made at `frame` (the sync debug mode). Whose it
        is, the first frame outside torch tells (ptdiag's wrappers of the program's calls
        looked through): ptdiag's own (its readings, inside the program's backward or on
        autograd's threads) are not counted. Inside a watched call, that call is marked
        (counted as it returns, at its line); outside one (torch.cuda.synchronize, a sync
        inside torch's own code) it counts at the program's line that made it."""
        first = _first_outside_torch(frame)
        if first is None or is_ptdiag_work(first.f_code.co_filename):
            return
        if self._in_call is not None:
            self._in_call[0] = True
            return
        direct, outside, user = _callers(frame)
        if user is not None and user is outside:
            name = direct.f_code.co_name if direct is not None and direct.f_code.co_name in SYNC_CALLS else "sync"
            self.syncs[(name, _where(user))][0] += 1

    def summary(self, steps: int) -> dict:
        per = max(steps, 1)
        return {
            "steps": steps,
            "torch_calls_per_step": round(self.total_calls / per, 1),
            "top_lines": [{"location": loc, "user": user, "calls_per_step": round(n / per, 1),
                           "in_loader": self.loading.get(loc, False)}
                          for (loc, user), n in self.calls.most_common(TOP_LINES)],
            "syncs": sorted(({"call": call, "location": loc, "per_step": round(n / per, 2),
                              "ms_per_step": round(1000 * s / per, 4), "what": SYNC_CALLS.get(call, SYNC_OTHER)}
                             for (call, loc), (n, s) in self.syncs.items()),
                            key=lambda row: -row["per_step"]),
            "float64_calls_per_step": round(sum(self.float64.values()) / per, 1),
            "float64_lines": [loc for loc, _ in self.float64.most_common(3)],
        }


def is_sync(name: str, args, kwargs, device_is_cuda: bool, torch) -> bool:
    """Whether a call blocks the host by the table: on a GPU run only on a device tensor."""
    if name not in SYNC_CALLS or not SYNC_WHEN.get(name, lambda *_: True)(args, kwargs, torch):
        return False
    if not device_is_cuda:
        return True
    first = args[0] if args else None
    return isinstance(first, torch.Tensor) and first.device.type != "cpu"


def per_call_overhead_us(torch) -> float:
    """The fixed cost of one tiny torch call from Python here, in µs (median of 3 runs):
    a lower bound of what each op of the step costs beyond its arithmetic."""
    a = torch.zeros(1)
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(MICROBENCH_CALLS):
            torch.add(a, a)
        runs.append((time.perf_counter() - start) / MICROBENCH_CALLS)
    return round(sorted(runs)[1] * 1e6, 3)


def float64_slowdown(torch, device) -> float:
    """How many times slower a matmul is in float64 than in float32 on this device.

    The operand is a constant, never random: a draw from torch's generator here would move
    the program's own random stream (every dropout mask and shuffle after the scan differed
    from the bare run's), and a matmul's time does not depend on its values."""
    times = {}
    for dtype in (torch.float32, torch.float64):
        a = torch.full((FP64_BENCH_SIZE, FP64_BENCH_SIZE), 1.0 / FP64_BENCH_SIZE, dtype=dtype, device=device)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            product = a @ a
            if device.type == "cuda":
                product.cpu()  # once, inside the measurement window only
            runs.append(time.perf_counter() - start)
        times[dtype] = sorted(runs)[2]
    return round(times[torch.float64] / max(times[torch.float32], 1e-9), 2)
