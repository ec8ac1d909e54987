"""The two ways the daemon refuses to run: bad input (``UsageError``, exit
status 2, shared with tuntapd) and a start that failed (exit status 1)."""

from __future__ import annotations

from tuninetd.common.usage import UsageError

__all__ = ["StartupError", "UsageError"]


class StartupError(Exception):
    """Something the daemon needs could not be set up (a socket, a worker);
    the message says why. Exit status 1."""
