"""The `ptdiag` executable: split off the user's command, then hand the rest to the CLI.

`ptdiag route TEXT [--json]` is answered here without loading typer (which imports
pydantic, ~80 ms): the router must answer within 150 ms, interpreter start included.
"""

from __future__ import annotations

import json
import os
import sys

from ptdiag import __version__

SUBCOMMANDS = ("diagnose", "track", "route", "runs", "env", "inspect", "options")
HELP = ("--help", "-h")


def split_argv(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """ptdiag's own arguments, and the user's command after the first `--` (or None)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def print_route(text: str, as_json: bool) -> int:
    from ptdiag.router import route

    plan = route(text)
    if as_json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    print("plan: " + (" → ".join(plan.specialists) or "none")
          + (" (ambiguous: triage measures instead)" if plan.ambiguous else f" (confidence {plan.confidence:.2f})"))
    for reason in plan.reasons:
        why = [f"matched {', '.join(map(str, reason['matched']))}"] if reason["matched"] else []
        if reason.get("words"):  # the learned model's top-weighted n-grams for this specialist
            why.append(f"words {', '.join(map(str, reason['words']))}")
        if "probability" in reason:
            why.append(f"probability {reason['probability']:.2f}")
        print(f"  {reason['specialist']}: {'; '.join(why) or '-'}")
    for note in plan.notes:
        print(f"  note: {note}")
    return 0


def _fast_route(head: list[str]) -> int | None:
    if head[:1] != ["route"] or set(head) & set(HELP):
        return None
    words = [a for a in head[1:] if a != "--json"]
    if len(words) != 1 or words[0].startswith("-"):
        return None  # let the CLI explain what is wrong
    return print_route(words[0], "--json" in head)


def main(argv: list[str] | None = None) -> None:
    """A reader that closed the pipe early (`ptdiag runs list | head`) ends ptdiag quietly,
    as Python's docs advise: no traceback, and no second error when Python flushes stdout
    at exit."""
    try:
        try:
            _main(argv)
        finally:
            sys.stdout.flush()  # here, where a closed pipe is still caught below
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _main(argv: list[str] | None) -> None:
    head, command = split_argv(sys.argv[1:] if argv is None else list(argv))
    if head[:1] == ["--version"]:
        print(f"ptdiag {__version__}")
        sys.exit(0)
    if head and head[0] not in SUBCOMMANDS and head[0] not in HELP:
        head = ["diagnose", *head]
    elif not head and command is not None:
        head = ["diagnose"]
    fast = _fast_route(head) if command is None else None
    if fast is not None:
        sys.exit(fast)
    from ptdiag import cli

    if head[:1] == ["diagnose"] and command is None and not set(head) & set(HELP):
        print(f"ptdiag: error: {cli.NO_COMMAND}", file=sys.stderr)
        sys.exit(2)
    cli.user_command = command
    sys.exit(cli.run_app(head))
