"""Where log lines go: stderr in the foreground, syslog as ``tuninetd`` with -d.

Lines are the original's, plain; levels map to syslog priorities. tuntapd
logs through the same handler and ``use``, as ``tuntapd``.
"""

from __future__ import annotations

import logging
import sys
import syslog

log = logging.getLogger("tuninetd")

_PRIORITY = {
    logging.DEBUG: syslog.LOG_DEBUG,
    logging.INFO: syslog.LOG_INFO,
    logging.WARNING: syslog.LOG_WARNING,
    logging.ERROR: syslog.LOG_ERR,
    logging.CRITICAL: syslog.LOG_CRIT,
}


class SyslogHandler(logging.Handler):
    """Records to syslog as ``ident[pid]``, facility daemon (tuntapd uses it too)."""

    def __init__(self, ident: str = "tuninetd") -> None:
        super().__init__()
        syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            syslog.syslog(_PRIORITY.get(record.levelno, syslog.LOG_INFO), self.format(record))
        except Exception:
            self.handleError(record)


def to_stderr() -> None:
    use(logging.StreamHandler(sys.stderr))


def to_syslog() -> None:
    use(SyslogHandler())


def use(handler: logging.Handler, logger: logging.Logger = log, fmt: str = "%(message)s") -> None:
    """Make ``handler`` the only place ``logger``'s INFO and above go, as ``fmt``."""
    handler.setFormatter(logging.Formatter(fmt))
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
