"""Headless Chromium (the Debian package `chromium`) driven from the command line.

Console messages are read from Chromium's own log (`--enable-logging=stderr --v=0`
prints each as an `INFO:CONSOLE` line), the page's DOM after load from `--dump-dom`,
and a PNG from `--screenshot`: no DevTools client needed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0")
CONSOLE_LINE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\]? ?(.*)")
WINDOW = (1280, 2000)
TIMEOUT_S = 60


def find() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class Load:
    console: list[str]  # every console message the page produced (errors, CSP violations, logs)
    stdout: str  # --dump-dom: the DOM after load


def _run(binary: str, page: Path, *extra: str) -> Load:
    with tempfile.TemporaryDirectory(prefix="ptdiag-chromium-") as profile:
        proc = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    console = [m.group(1) for line in proc.stderr.splitlines() if (m := CONSOLE_LINE.search(line))]
    return Load(console, proc.stdout)


def dump_dom(binary: str, page: Path) -> Load:
    return _run(binary, page, "--dump-dom")


def screenshot(binary: str, page: Path, png: Path) -> Load:
    return _run(binary, page, f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}")


def png_size(png: Path) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR), without an image library."""
    header = png.read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{png} is not a PNG")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
