"""Checks on the command before it runs, so bad input gets one clear line, not a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PYTHON_NAMES = ("python", "python3")


class CommandError(Exception):
    """The command cannot be run; the message is the one line the user sees."""


def resolve(command: list[str], cwd: Path) -> str:
    """Path of the program to run, or CommandError saying why there is none."""
    if not command or not command[0].strip():
        raise CommandError("no command after '--': e.g. ptdiag \"loss is NaN\" -- python train.py")
    program = command[0]
    if os.sep in program:
        path = (cwd / program) if not os.path.isabs(program) else Path(program)
        if not path.exists():
            raise CommandError(f"command not found: {program}")
        if path.is_dir():
            raise CommandError(f"{program} is a directory, not a program")
        if not os.access(path, os.X_OK):
            raise CommandError(f"{program} is not executable (chmod +x, or run it with python)")
        found = str(path)
    else:
        found = shutil.which(program)
        if found is None:
            raise CommandError(f"command not found: {program}")
    _check_python_script(command, cwd)
    return found


def _check_python_script(command: list[str], cwd: Path) -> None:
    name = os.path.basename(command[0])
    if not name.startswith(PYTHON_NAMES) or len(command) < 2 or command[1].startswith("-"):
        return
    script = cwd / command[1]
    if not script.exists():
        raise CommandError(f"script not found: {command[1]}")
    if script.is_dir() and not (script / "__main__.py").exists():
        raise CommandError(f"{command[1]} is a directory without __main__.py, not a script")
