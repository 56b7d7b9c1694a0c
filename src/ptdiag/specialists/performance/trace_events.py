"""Reading a PyTorch profiler (Kineto) Chrome trace into the few kinds of span we analyse.

Kineto's trace schema changed over the years: 2021 traces call GPU kernels `Kernel`,
memory copies `Memcpy` and CPU ops `Operator`; current ones say `kernel`, `gpu_memcpy`,
`cpu_op`, and put record_function ranges (ProfilerStep#N, the DataLoader's `__next__`)
under `user_annotation`. The tables below map both spellings onto one vocabulary so
the analysis never branches on the torch version that wrote the trace.

GPU work whose launch (a CUDA runtime/driver call with the same `correlation` id) is not
in the trace was queued before the profiler started: it belongs to an earlier,
unprofiled step and would stretch the GPU timeline over a window the CPU side never
recorded. It is set aside and counted (TraceLens' timeline leaves it out the same way).

Collectives leave CPU-side spans too (COLLECTIVE_SPAN): the c10d op the training thread
calls (`c10d::allreduce_`, `record_param_comms`) and the backend's own range on its worker
thread (`gloo:all_reduce`), which gloo keeps open until every rank has contributed; a rank
that arrives early therefore shows a long span, the last one to arrive a short one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ptdiag.specialists.performance.trace_stream import StreamedEvents, TraceError, read_streamed


# Event category (lower-cased) -> the kind of span it is.
CATEGORY_KINDS = {
    "kernel": "kernel",
    "gpu_memcpy": "memcpy",
    "memcpy": "memcpy",
    "gpu_memset": "memset",
    "memset": "memset",
    "cpu_op": "cpu_op",
    "operator": "cpu_op",
    "user_annotation": "annotation",
    "cuda_runtime": "launch",
    "cuda_driver": "launch",
    "runtime": "launch",
    "driver": "launch",
}
STEP_PREFIX = "ProfilerStep#"
DATA_WAIT_PREFIX = "enumerate(DataLoader)#"
# CPU ops and annotations of a collective: c10d's ops, DDP's/FSDP's `record_param_comms`,
# and the backends' ranges (`gloo:all_reduce`, `nccl:all_reduce`, `ProcessGroupGloo...`).
# Seen in torch 2.14 gloo traces: `c10d::allreduce_` (main thread) and `gloo:all_reduce`.
COLLECTIVE_SPAN = re.compile(r"^(c10d|c10d_functional)::|^(gloo|nccl|mpi|ucc):|record_param_comms|ProcessGroup",
                             re.IGNORECASE)


class Span(NamedTuple):
    """One complete event (a tuple: 100k+ of them are built per large trace)."""

    name: str
    start: float  # microseconds, the trace's clock
    end: float
    pid: Any
    tid: Any
    correlation: Any = None  # links a GPU span to the CPU call that launched it
    input_types: tuple[str, ...] = ()  # a CPU op's "Input type" (record_shapes): dtypes, "Scalar", ...

    @property
    def dur(self) -> float:
        return self.end - self.start


@dataclass
class GpuSpans:
    """GPU activity of one kind each: kernels, memory copies, memsets."""

    kernels: list[Span] = field(default_factory=list)
    memcpys: list[Span] = field(default_factory=list)
    memsets: list[Span] = field(default_factory=list)

    def by_kind(self) -> dict[str, list[Span]]:
        return {"kernel": self.kernels, "memcpy": self.memcpys, "memset": self.memsets}

    def count(self) -> int:
        return len(self.kernels) + len(self.memcpys) + len(self.memsets)

    def summed_us(self) -> float:
        """Sum of durations (overlaps counted twice): how much work, not how long."""
        return sum(span.dur for spans in self.by_kind().values() for span in spans)

    def plus(self, other: "GpuSpans") -> "GpuSpans":
        return GpuSpans(self.kernels + other.kernels, self.memcpys + other.memcpys,
                        self.memsets + other.memsets)


@dataclass
class TraceEvents:
    """The spans of one trace file (one rank), grouped by what they are."""

    gpu: GpuSpans = field(default_factory=GpuSpans)  # launched within the trace
    gpu_unlinked: GpuSpans = field(default_factory=GpuSpans)  # launched before it began
    cpu_ops: list[Span] = field(default_factory=list)  # ops, not record_function annotations
    launches: list[Span] = field(default_factory=list)  # CUDA runtime/driver calls (launches, copies)
    steps: list[Span] = field(default_factory=list)
    data_waits: list[Span] = field(default_factory=list)
    collectives: list[Span] = field(default_factory=list)  # CPU-side collective ops and ranges
    rank: int | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    malformed_events: int = 0


def read_trace(path: Path) -> dict[str, Any]:
    """A Chrome-trace JSON file, gzip-compressed or plain, without holding it in memory:
    its top-level keys before "traceEvents" are read now, the events are streamed from the
    file each time they are iterated (trace_stream.StreamedEvents; the keys after the
    list are filled in as a pass reaches them). TraceError if it is not readable."""
    return read_streamed(Path(path))


def collect_events(trace: Any) -> TraceEvents:
    """Sort a trace's complete ("X") events into kernels, copies, CPU ops and steps."""
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), (list, StreamedEvents)):
        raise TraceError("not a PyTorch profiler trace: no 'traceEvents' list at the top level")
    events = TraceEvents()
    gpu = events.gpu.by_kind()
    launched: set[Any] = set()
    for event in trace["traceEvents"]:
        events.event_count += 1
        if not isinstance(event, dict):
            raise TraceError(f"not a PyTorch profiler trace: an event is a {type(event).__name__}")
        if event.get("ph") != "X":
            continue
        kind = CATEGORY_KINDS.get(str(event.get("cat", "")).lower())
        if kind is None:
            continue
        span = _span(event, with_types=kind == "cpu_op")
        if span is None:
            events.malformed_events += 1
        elif kind == "launch":
            launched.add(span.correlation)
            events.launches.append(span)
        elif kind in gpu:
            gpu[kind].append(span)
        elif span.name.startswith(STEP_PREFIX):
            events.steps.append(span)
        else:
            if span.name.startswith(DATA_WAIT_PREFIX):
                events.data_waits.append(span)
            elif COLLECTIVE_SPAN.search(span.name):
                events.collectives.append(span)
            if kind == "cpu_op":
                events.cpu_ops.append(span)
    launched.discard(None)
    if launched:
        for kind, spans in gpu.items():
            events.gpu_unlinked.by_kind()[kind].extend(s for s in spans if s.correlation not in launched)
            spans[:] = [s for s in spans if s.correlation in launched]
    events.steps.sort(key=lambda s: s.start)
    # after the pass: a streamed trace's keys after the events list are known only now
    events.rank = _rank(trace)
    events.devices = _devices(trace, {k.pid for k in events.gpu.kernels})
    return events


def _span(event: dict[str, Any], with_types: bool = False) -> Span | None:
    """The event as a Span; None when its time fields are missing or not numbers."""
    start, dur = event.get("ts"), event.get("dur")
    if not isinstance(start, (int, float)) or not isinstance(dur, (int, float)) or dur < 0:
        return None
    args = event.get("args")
    if not isinstance(args, dict):
        args = {}
    types = args.get("Input type") if with_types else None
    return Span(str(event.get("name", "")), float(start), float(start) + float(dur),
                event.get("pid"), event.get("tid"), args.get("correlation"),
                tuple(str(t) for t in types) if isinstance(types, list) else ())


def _devices(trace: dict[str, Any], used: set[Any]) -> list[dict[str, Any]]:
    """Name and compute capability of the GPUs the kernels ran on (Kineto: pid = device id)."""
    listed = trace.get("deviceProperties")
    return [
        {"id": d.get("id"), "name": d.get("name"),
         "compute_capability": f"{d.get('computeMajor')}.{d.get('computeMinor')}"}
        for d in (listed if isinstance(listed, list) else [])
        if isinstance(d, dict) and d.get("id") in used
    ]


def _rank(trace: dict[str, Any]) -> int | None:
    info = trace.get("distributedInfo")
    rank = info.get("rank") if isinstance(info, dict) else None
    return rank if isinstance(rank, int) else None
