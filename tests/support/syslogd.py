"""A stand-in for syslogd: a datagram socket that a command run under
``unshare`` sees as /dev/log, and that keeps what the command's libc sends
there, byte for byte. Nothing outside that command's mount namespace changes,
whether or not the machine has a /dev/log of its own."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from tests.support.netlab import wait_for

LOG_DAEMON = 3 << 3
LOG_INFO = 6


class Syslog:
    """A /dev/log that keeps what ``ident`` sends it, as (priority, pid, message)."""

    def __init__(self, path: Path, ident: str) -> None:
        self.ident = ident
        # <PRI>Mmm dd hh:mm:ss ident[pid]: message
        self.pattern = re.compile(
            rb"<(\d+)>\w{3} [ \d]\d \d\d:\d\d:\d\d " + re.escape(ident.encode())
            + rb"\[(\d+)\]: (.*)"
        )
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.records: list[tuple[int, int, str]] = []

    def poll(self) -> list[tuple[int, int, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.records
            m = self.pattern.match(data)
            assert m, f"not a syslog record from {self.ident}: {data!r}"
            self.records.append((int(m[1]), int(m[2]), m[3].decode()))

    def wait(self, needle: str) -> tuple[int, int, str]:
        def probe() -> tuple[int, int, str] | None:
            return next((r for r in self.poll() if needle in r[2]), None)

        return wait_for(f"syslog line {needle!r}", probe)


def private_dev(folder: Path) -> list[str]:
    """An argv prefix that runs a command in a private mount namespace whose
    /dev is ``folder``/dev: the real null and net/tun bound in, nothing else
    (no /dev/log unless the caller binds a socket there)."""
    dev = folder / "dev"
    (dev / "net").mkdir(parents=True, exist_ok=True)
    (dev / "null").touch()
    (dev / "net" / "tun").touch()
    script = (f"mount --bind /dev/null {dev}/null && mount --bind /dev/net/tun {dev}/net/tun"
              f' && mount --rbind {dev} /dev && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


@contextlib.contextmanager
def private_dev_log(folder: Path, ident: str) -> Iterator[tuple[Syslog, list[str]]]:
    """The receiver, and an argv prefix that runs a command seeing it as /dev/log
    (see private_dev)."""
    prefix = private_dev(folder)
    log = Syslog(folder / "dev" / "log", ident)
    try:
        yield log, prefix
    finally:
        log.sock.close()
