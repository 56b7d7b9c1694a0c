"""Reading a Chrome trace's events one at a time, from the file, never the whole JSON.

`json.load` of a 381 MB trace took 2.0 GiB: every event becomes a dict and the whole list
lives at once. The analysis only needs each event long enough to turn it into a Span, so
the file is parsed incrementally: the top-level object's keys are read as they come, and
the "traceEvents" array yields one decoded event at a time (json's own decoder,
`raw_decode`, on a window of the text that slides over the file). Peak memory is the
window plus the spans kept, whatever the file's size.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

CHUNK_CHARS = 1 << 20  # text read from the file at a time
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
EVENTS_KEY = "traceEvents"


class TraceError(ValueError):
    """The file is not a readable PyTorch profiler trace (corrupt, truncated, or other JSON)."""


class _Reader:
    """A sliding window of the file's text and the JSON tokens read from it."""

    def __init__(self, stream) -> None:
        self.stream, self.text, self.pos, self.eof = stream, "", 0, False

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.stream.read(CHUNK_CHARS)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos:] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            self.pos = _SPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._more():
                return ""

    def expect(self, allowed: str) -> str:
        found = self.peek()
        if not found or found not in allowed:
            raise TraceError(f"not a readable trace file (expected one of {allowed!r}, found "
                             f"{found or 'the end of the file'!r})")
        self.pos += 1
        return found

    def value(self) -> Any:
        """One JSON value; read more of the file while it may be cut at the window's end
        (a number or a value ending exactly there is complete only if the file ends)."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                if not self._more():
                    raise TraceError(f"not a readable trace file (JSONDecodeError: {exc})") from exc
                continue
            if end < len(self.text) or not self._more():
                self.pos = end
                return value


def _open_text(path: Path):
    with open(path, "rb") as raw:
        magic = raw.read(2)
    binary = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    return io.TextIOWrapper(binary, encoding="utf-8")


def _header(reader: _Reader, meta: dict[str, Any]) -> bool:
    """Read the top-level keys up to "traceEvents" into meta; True when the list begins."""
    reader.expect("{")
    if reader.peek() == "}":
        return False
    while True:
        key = reader.value()
        reader.expect(":")
        if key == EVENTS_KEY:
            if reader.peek() != "[":
                return False
            reader.expect("[")
            return True
        meta[key] = reader.value()
        if reader.expect(",}") == "}":
            return False


READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)


def _unreadable(exc: Exception) -> TraceError:
    return TraceError(f"not a readable trace file ({type(exc).__name__}: {exc})")


class StreamedEvents:
    """The "traceEvents" list of a trace file, re-read from the file on every iteration.
    `meta` (the trace's other keys) gets the keys after the list when a pass reaches them.
    `skip`: events left out (the analysis drops a step span this way)."""

    def __init__(self, path: Path, meta: dict[str, Any], skip: Callable[[dict], bool] | None = None) -> None:
        self.path, self.meta, self.skip = path, meta, skip

    def without(self, skip: Callable[[dict], bool]) -> "StreamedEvents":
        return StreamedEvents(self.path, self.meta, skip)

    def __iter__(self) -> Iterator[Any]:
        try:
            with _open_text(self.path) as stream:
                reader = _Reader(stream)
                _header(reader, {})
                if reader.peek() == "]":
                    reader.expect("]")
                else:
                    while True:
                        event = reader.value()
                        if self.skip is None or not (isinstance(event, dict) and self.skip(event)):
                            yield event
                        if reader.expect(",]") == "]":
                            break
                while reader.expect(",}") == ",":
                    key = reader.value()
                    reader.expect(":")
                    self.meta[key] = reader.value()
        except READ_ERRORS as exc:
            raise _unreadable(exc) from exc


def read_streamed(path: Path) -> dict[str, Any]:
    """{top-level keys before the events..., "traceEvents": StreamedEvents}."""
    meta: dict[str, Any] = {}
    try:
        with _open_text(path) as stream:
            if not _header(_Reader(stream), meta):
                raise TraceError("not a PyTorch profiler trace: no 'traceEvents' list at the top level")
    except READ_ERRORS as exc:
        raise _unreadable(exc) from exc
    meta[EVENTS_KEY] = StreamedEvents(path, meta)
    return meta
