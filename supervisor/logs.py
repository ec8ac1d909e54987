"""Where log lines go: stderr in the foreground, syslog as ``tuninetd`` with -d.

Lines are the original's, plain; levels map to syslog priorities.
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
    def __init__(self) -> None:
        super().__init__()
        syslog.openlog("tuninetd", syslog.LOG_PID, syslog.LOG_DAEMON)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            syslog.syslog(_PRIORITY.get(record.levelno, syslog.LOG_INFO), self.format(record))
        except Exception:
            self.handleError(record)


def to_stderr() -> None:
    _use(logging.StreamHandler(sys.stderr))


def to_syslog() -> None:
    _use(SyslogHandler())


def _use(handler: logging.Handler) -> None:
    handler.setFormatter(logging.Formatter("%(message)s"))
    for old in list(log.handlers):
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
