"""Errors that end a command with one line and exit code 2 (megatron_bond/cli.py prints them).

``ConfigError`` (megatron_bond.config) is bad input found before the work; ``RunError`` is a run that must
stop during the work (non-finite updates in a row, a reward service that stays down): what is on disk
from before stays as it was.
"""


class RunError(RuntimeError):
    pass
