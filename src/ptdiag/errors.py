"""The errors that mean "bad input": the CLI prints their one-line message and exits 2."""

from ptdiag.inspect import InspectError
from ptdiag.launch.command import CommandError
from ptdiag.runs.errors import StoreError


class UsageProblem(Exception):
    """Bad input to ptdiag itself: one line to the user, exit 2."""


USER_ERRORS = (UsageProblem, CommandError, StoreError, InspectError, ValueError)
