"""Finding and loading NCCL Flight Recorder dumps, one pickle per rank.

PyTorch writes one dump per rank (TORCH_NCCL_DEBUG_INFO_TEMP_FILE + rank, e.g.
`nccl_trace_rank_3`), a pickle of plain dicts and lists. Pickles can run code when
loaded, so they are read with the builtins-only unpickler; anything else is refused
before a single object is built from it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from ptdiag.safe_pickle import UnsafePickleError, load_path

# A dump file name ends with its rank: `<prefix><rank>`.
RANK_SUFFIX = re.compile(r"(\d+)$")
# Pickle protocols 2..5 open with PROTO (0x80) then the protocol number.
PICKLE_HEADERS = tuple(bytes([0x80, protocol]) for protocol in (2, 3, 4, 5))
# Keys every Flight Recorder dump has at its top level; one of the first two appears
# near the start of the file, which is all that sniffing reads.
REQUIRED_KEYS = ("entries", "version")
# Fields of each entry that the analysis cannot do without.
ENTRY_KEYS = ("process_group", "state", "profiling_name")
SNIFF_MARKERS = (b"pg_config", b"entries", b"nccl_version")
SNIFF_BYTES = 64 * 1024


class FlightRecorderError(ValueError):
    """A path that cannot be analysed as Flight Recorder dumps, with the reason."""


def looks_like_dump(path: Path) -> bool:
    """Cheap check: a rank-suffixed file holding a pickle that mentions FR keys."""
    if not path.is_file() or not RANK_SUFFIX.search(path.name):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return False
    return head.startswith(PICKLE_HEADERS) and any(marker in head for marker in SNIFF_MARKERS)


def dump_files(path: Path) -> dict[int, Path]:
    """Rank -> dump file for a directory of dumps or a single dump file."""
    if not path.exists():
        raise FlightRecorderError(f"{path}: no such file or directory")
    candidates = sorted(path.iterdir()) if path.is_dir() else [path]
    files: dict[int, Path] = {}
    for candidate in candidates:
        if not looks_like_dump(candidate):
            continue
        rank = int(RANK_SUFFIX.search(candidate.name).group(1))
        if rank in files:
            raise FlightRecorderError(
                f"{path}: two dumps claim rank {rank} ({files[rank].name}, {candidate.name});"
                " keep one dump set per directory"
            )
        files[rank] = candidate
    if not files:
        raise FlightRecorderError(
            f"{path}: no Flight Recorder dumps found (expected pickle files named <prefix><rank>,"
            " as written with TORCH_NCCL_TRACE_BUFFER_SIZE and TORCH_NCCL_DUMP_ON_TIMEOUT=1)"
        )
    return files


def load_dump(path: Path) -> dict[str, Any]:
    """One rank's dump as plain data; refuses anything but builtin containers."""
    try:
        loaded = load_path(path)
    except UnsafePickleError as exc:
        raise FlightRecorderError(f"{path}: refused, not a plain-data Flight Recorder dump ({exc})") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, TypeError, MemoryError) as exc:
        raise FlightRecorderError(f"{path}: corrupt or truncated Flight Recorder dump ({exc})") from exc
    return check_dump(str(path), loaded)


def check_dump(source: str, dump: Any) -> dict[str, Any]:
    """The dump itself if it has the shape the analysis reads, else a one-line error naming `source`."""
    if not isinstance(dump, dict) or not all(key in dump for key in REQUIRED_KEYS):
        raise FlightRecorderError(
            f"{source}: not a Flight Recorder dump (needs keys {', '.join(REQUIRED_KEYS)})"
        )
    if not isinstance(dump["entries"], list):
        raise FlightRecorderError(f"{source}: 'entries' is {type(dump['entries']).__name__}, not a list")
    for index, entry in enumerate(dump["entries"]):
        if not isinstance(entry, dict) or not all(key in entry for key in ENTRY_KEYS):
            raise FlightRecorderError(
                f"{source}: entry {index} lacks one of {', '.join(ENTRY_KEYS)}; not a Flight Recorder entry"
            )
    return dump


def load_dumps(path: Path) -> dict[int, dict[str, Any]]:
    """Rank -> loaded dump for every dump file under `path`."""
    return {rank: load_dump(file) for rank, file in dump_files(path).items()}
