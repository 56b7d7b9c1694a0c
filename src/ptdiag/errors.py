"""The errors that mean "bad input": the CLI prints their one-line message and exits 2."""

from ptdiag.inspect import InspectError
from ptdiag.launch.command import CommandError
from ptdiag.runs.errors import StoreError

USER_ERRORS = (CommandError, StoreError, InspectError, ValueError)
