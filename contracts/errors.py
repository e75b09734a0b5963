"""The kinds of failure a stage reports to the user, each with its own exit code (cli/exits.py, cli/main.py).

Anything else that escapes a command is an internal error: a defect of maskrt, reported as one and never blamed on
the user's input.
"""

from __future__ import annotations


class BadInput(ValueError):
    """The user's input, file or flag cannot be used: one sentence naming it and what is wrong (exit code 2).

    A ValueError, so that Python callers of the API catch it where they catch any bad argument."""


class TensorRTUnavailable(Exception):
    """TensorRT, its builder or a GPU that the work needs is not on this machine: one sentence saying what to
    install (exit code 3). What could be done without it is done before this is raised."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt (contracts/signals.py), so that every path
    that cleans up after Ctrl-C cleans up after it too; exit code 143 where Ctrl-C's is 130."""
