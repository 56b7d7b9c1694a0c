"""TensorBoard event files written directly: TFRecord framing around `Event` protocol
buffers holding scalar summaries. No tensorflow, tensorboard or torch is needed to write
them; TensorBoard (and its EventAccumulator) reads them like any SummaryWriter's.

    <dir>/<run name or id>/events.out.tfevents.<time>.<host>.ptdiag
"""

from __future__ import annotations

import re
import socket
import struct
import time
from pathlib import Path

from ptdiag.tracking_export.series import run_series

FILE_VERSION = b"brain.Event:2"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")


def export_run(record: dict, run_dir: Path, tensorboard_dir: Path) -> Path:
    """Write one run's curves as an event file; returns the file. The sub-directory is
    named after the run, so TensorBoard lists runs by name (ids keep names unique)."""
    folder = Path(tensorboard_dir) / _folder_name(record)
    folder.mkdir(parents=True, exist_ok=True)
    wall = record.get("started") or time.time()
    path = folder / f"events.out.tfevents.{int(wall)}.{socket.gethostname()}.ptdiag"
    events = [_event(wall, 0, file_version=FILE_VERSION)]
    for tag, points in sorted(run_series(run_dir).items()):
        events.extend(_event(wall, step, tag=tag, value=value) for step, value in points)
    path.write_bytes(b"".join(_record(event) for event in events))
    return path


def _folder_name(record: dict) -> str:
    name = _UNSAFE.sub("_", record.get("name") or "").strip("_")
    return f"{name}_{record['run_id']}" if name else record["run_id"]


# -- protocol buffers: the few fields an Event with a scalar summary needs -------------------

def _varint(number: int) -> bytes:
    number &= (1 << 64) - 1  # int64 on the wire: negatives as two's complement
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def _event(wall: float, step: int, *, file_version: bytes | None = None, tag: str | None = None,
           value: float | None = None) -> bytes:
    """Event{wall_time=1: double, step=2: int64, file_version=3: string, summary=5:
    Summary{value=1: Value{tag=1: string, simple_value=2: float}}}."""
    out = _field(1, 1) + struct.pack("<d", wall) + _field(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version)
    if tag is not None:
        summary_value = _length_delimited(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value)
        out += _length_delimited(5, _length_delimited(1, summary_value))
    return out


# -- TFRecord framing: length, masked CRC-32C of the length, data, masked CRC-32C of it ---

def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)
