"""Where log lines go: stderr in the foreground, syslog as ``tuninetd`` with -d.

Lines are the original's, plain; levels map to syslog priorities. On stderr
that is the journal (systemd's JOURNAL_STREAM names it), each line starts
with its sd-daemon ``<N>`` priority prefix, which journald strips and keeps
as the priority. tuntapd logs through the same handlers and ``use``, as
``tuntapd``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import syslog
import time

log = logging.getLogger("tuninetd")

SYSLOG_SOCKET = "/dev/log"

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


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines on stderr; ``<N>``-prefixed when stderr is the journal, else,
    with ``timestamps``, beginning with the local time to the millisecond."""

    def __init__(self, timestamps: bool = False) -> None:
        super().__init__(sys.stderr)
        self.journal = is_journal(sys.stderr.fileno())
        self.timestamps = timestamps and not self.journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            prefix = f"<{_PRIORITY.get(record.levelno, syslog.LOG_INFO)}>"
        elif self.timestamps:
            when = time.localtime(record.created)
            millis = int(record.created * 1000) % 1000
            prefix = f"{time.strftime('%Y-%m-%d %H:%M:%S', when)}.{millis:03d} "
        else:
            return text
        return "\n".join(prefix + line for line in text.split("\n"))


def is_journal(fd: int) -> bool:
    """systemd sets JOURNAL_STREAM to ``device:inode`` of the stream it
    connects stdout/stderr to; a redirected fd no longer matches it."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def syslog_unreachable(path: str = SYSLOG_SOCKET) -> str | None:
    """Why nothing would receive syslog lines (libc drops them silently), or None."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # as libc tries them
        with socket.socket(socket.AF_UNIX, kind) as s:
            try:
                s.connect(path)
            except OSError as exc:
                if exc.errno == errno.EPROTOTYPE:
                    continue
                return f"nothing listens on {path} ({(exc.strerror or str(exc)).lower()})"
            return None
    return f"nothing listens on {path}"


def daemon_refusal(prog: str) -> str | None:
    """The line that refuses ``prog -d`` when its log would be lost, or None."""
    if problem := syslog_unreachable():
        return (f"{prog}: -d logs to syslog, but {problem}: start a syslog daemon "
                "(e.g. rsyslog), or run in the foreground (under systemd the journal "
                "keeps the lines)")
    return None


def to_stderr(timestamps: bool = False) -> None:
    use(StderrHandler(timestamps))


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
