"""Reading the CUDA caching allocator's snapshot format into checked, typed records.

`torch.cuda.memory._snapshot()` (and `_dump_snapshot`, its pickle) is a dict of plain
containers whose fields grew over torch versions. Everything version-dependent lives
here, so the analysis code sees one shape:

- every version: ``segments`` (device, address, total_size, stream, blocks) and blocks
  (size, state, frames); ``device_traces[device]`` events (action, addr, size, stream,
  frames); an ``oom`` event carries ``device_free`` instead of ``addr``.
- torch 2.0 blocks: no ``frames``/``requested_size``; a ``history`` list whose first
  entry holds ``real_size`` and ``frames`` (the visualiser's legacy reader does the same).
- blocks without ``address``: placed by tiling from the segment's address, as torch
  itself computes them.
- newer torch: ``time_us`` on each trace event, ``allocator_settings`` at the top
  (``expandable_segments``, ``PYTORCH_CUDA_ALLOC_CONF``, ...), ``is_expandable`` on
  segments. Missing fields become None, never a guess.

Frames are innermost call first, as torch records them.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptdiag import safe_pickle

ALLOCATED = "active_allocated"
PENDING_FREE = "active_pending_free"
INACTIVE = "inactive"
BLOCK_STATES = (ALLOCATED, PENDING_FREE, INACTIVE)
# torch's docstring once named the pending state "active_awaiting_free"; the allocator
# writes "active_pending_free". Accept both spellings as the same state.
BLOCK_STATE_ALIASES = {"active_awaiting_free": PENDING_FREE}

# Errors the unpickler raises on a corrupt or cut-off file.
CORRUPT_PICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
    AttributeError, OverflowError,
)


class SnapshotError(ValueError):
    """The file or dict is not a CUDA memory snapshot ptdiag can read."""


@dataclass(frozen=True)
class Frame:
    filename: str
    line: int
    name: str


@dataclass(frozen=True)
class Block:
    address: int
    size: int
    requested_size: int
    state: str
    frames: tuple[Frame, ...]


@dataclass(frozen=True)
class Segment:
    device: int
    address: int
    total_size: int
    stream: int
    is_expandable: bool | None
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class TraceEvent:
    index: int
    action: str
    addr: int | None
    size: int
    stream: int | None
    frames: tuple[Frame, ...]
    time_us: int | None
    device_free: int | None


@dataclass
class Snapshot:
    segments: list[Segment]
    traces: dict[int, list[TraceEvent]] = field(default_factory=dict)
    allocator_settings: dict[str, Any] | None = None

    @property
    def devices(self) -> list[int]:
        seen = {s.device for s in self.segments} | {d for d, t in self.traces.items() if t}
        return sorted(seen)


def load_snapshot_file(path: Path) -> dict[str, Any]:
    """Unpickle with builtins only; any refusal or corruption becomes a SnapshotError."""
    try:
        raw = safe_pickle.load_path(path)
    except safe_pickle.UnsafePickleError as exc:
        raise SnapshotError(f"{path}: not loaded, it is not plain snapshot data ({exc})") from exc
    except CORRUPT_PICKLE_ERRORS as exc:
        raise SnapshotError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not isinstance(raw, dict) or "segments" not in raw:
        raise SnapshotError(
            f"{path}: a pickle of {type(raw).__name__}, not a CUDA memory snapshot "
            "(expected a dict with 'segments' and 'device_traces')"
        )
    return raw


def parse_snapshot(raw: Any) -> Snapshot:
    """Check and normalise a snapshot dict; a malformed part is named in the error."""
    if not isinstance(raw, dict):
        raise SnapshotError(f"a snapshot is a dict, not {type(raw).__name__}")
    frames = _FrameReader()
    segments = [_segment(s, f"segments[{i}]", frames)
                for i, s in enumerate(_list(raw, "segments", "snapshot"))]
    traces = {}
    for device, trace in enumerate(_as_list(raw.get("device_traces", []), "device_traces")):
        where = f"device_traces[{device}]"
        traces[device] = [_event(e, i, f"{where}[{i}]", frames) for i, e in enumerate(_as_list(trace, where))]
    settings = raw.get("allocator_settings")
    return Snapshot(segments, traces, settings if isinstance(settings, dict) else None)


def _segment(raw: Any, where: str, frames: _FrameReader) -> Segment:
    seg = _dict(raw, where)
    address = _int(seg, "address", where)
    offset = address
    blocks = []
    for i, b in enumerate(_list(seg, "blocks", where)):
        block = _block(b, offset, f"{where}.blocks[{i}]", frames)
        blocks.append(block)
        offset = block.address + block.size
    expandable = seg.get("is_expandable")
    return Segment(
        device=_optional_int(seg, "device", where) or 0,
        address=address,
        total_size=_int(seg, "total_size", where),
        stream=_optional_int(seg, "stream", where) or 0,
        is_expandable=expandable if isinstance(expandable, bool) else None,
        blocks=tuple(blocks),
    )


def _block(raw: Any, default_address: int, where: str, frames: _FrameReader) -> Block:
    block = _dict(raw, where)
    size = _int(block, "size", where)
    state = BLOCK_STATE_ALIASES.get(block.get("state"), block.get("state"))
    if state not in BLOCK_STATES:
        raise SnapshotError(f"{where}: unknown block state {block.get('state')!r}")
    history = block.get("history")
    if "frames" not in block and isinstance(history, list) and history:
        first = _dict(history[0], f"{where}.history[0]")
        frames_raw, requested = first.get("frames", []), first.get("real_size", size)
    else:
        frames_raw, requested = block.get("frames", []), block.get("requested_size", size)
    address = _optional_int(block, "address", where)
    return Block(
        address=default_address if address is None else address,
        size=size,
        requested_size=requested if isinstance(requested, int) else size,
        state=state,
        frames=frames(frames_raw, where),
    )


def _event(raw: Any, index: int, where: str, frames: _FrameReader) -> TraceEvent:
    event = _dict(raw, where)
    action = event.get("action")
    if not isinstance(action, str):
        raise SnapshotError(f"{where}: trace event without an 'action'")
    return TraceEvent(
        index=index,
        action=action,
        addr=_optional_int(event, "addr", where),
        size=_optional_int(event, "size", where) or 0,
        stream=_optional_int(event, "stream", where),
        frames=frames(event.get("frames", []), where),
        time_us=_optional_int(event, "time_us", where),
        device_free=_optional_int(event, "device_free", where),
    )


class _FrameReader:
    """Converts each distinct stack once.

    torch hands out one list per distinct traceback and the pickle keeps that sharing, so
    a trace of a million events repeats a few hundred stacks: converting by object
    identity keeps parsing linear in events, not in frames.
    """

    def __init__(self) -> None:
        self._done: dict[int, tuple[Any, tuple[Frame, ...]]] = {}

    def __call__(self, raw: Any, where: str) -> tuple[Frame, ...]:
        hit = self._done.get(id(raw))
        if hit is not None and hit[0] is raw:
            return hit[1]
        frames = tuple(_frame(f) for f in _as_list(raw, f"{where}.frames") if isinstance(f, dict))
        self._done[id(raw)] = (raw, frames)  # holding `raw` keeps its id from being reused
        return frames


def _frame(raw: dict[str, Any]) -> Frame:
    line = raw.get("line")
    return Frame(str(raw.get("filename", "??")), line if isinstance(line, int) else 0,
                 str(raw.get("name", "??")))


def _dict(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SnapshotError(f"{where}: expected a dict, found {type(raw).__name__}")
    return raw


def _as_list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, (list, tuple)):
        raise SnapshotError(f"{where}: expected a list, found {type(raw).__name__}")
    return list(raw)


def _list(container: dict[str, Any], key: str, where: str) -> list[Any]:
    if key not in container:
        raise SnapshotError(f"{where}: missing {key!r}")
    return _as_list(container[key], f"{where}.{key}")


def _int(container: dict[str, Any], key: str, where: str) -> int:
    value = _optional_int(container, key, where)
    if value is None:
        raise SnapshotError(f"{where}: missing {key!r}")
    return value


def _optional_int(container: dict[str, Any], key: str, where: str) -> int | None:
    value = container.get(key)
    if value is None or type(value) is int:  # exact type: a bool is not a size
        return value
    raise SnapshotError(f"{where}.{key}: expected an integer, found {value!r}")
