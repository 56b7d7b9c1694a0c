"""The JSON renderer: the machine-readable contract, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ptdiag.events import jsonable
from ptdiag.report.model import Report


def write_json(data: dict, path: Path) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(jsonable(data), fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: Report, path: Path) -> None:
    write_json(report.to_dict(), path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
