"""The two ways the daemon refuses to run."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input (command line or config file): the message names the option
    or key and the value. One line, exit status 2, nothing spawned."""


class StartupError(Exception):
    """Something the daemon needs could not be set up (a socket, a worker);
    the message says why. Exit status 1."""
