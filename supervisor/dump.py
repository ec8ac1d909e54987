"""``-w FILE``: trigger packets appended to a pcap savefile, failures
reported once per kind (a full disk gives short writes of varying sizes and
ENOSPC, all one failure), not per packet.

The file is opened once, at start. Its folder must be one only root can
write (checked at start, and again before opening it anew), so nobody else
can plant a symlink or a hard link at its name. Should the path come to name
another file (log rotation, a removal), that is logged and the path opened
anew, under the same checks; nothing is written through a symlink.
"""

from __future__ import annotations

import errno
import time

from tuninetd.supervisor import pcapfile, wording
from tuninetd.supervisor.config import ownership
from tuninetd.supervisor.errors import StartupError


def _open(path: str) -> pcapfile.Savefile:
    if problem := ownership.root_folder_problem(path):
        raise pcapfile.PcapFileError(errno.EPERM, f"{problem}, not opened", path)
    return pcapfile.Savefile(path)


class PacketDump:
    def __init__(self, path: str) -> None:
        self.path = path
        self.failing = ""  # the kind of the failure last reported, "" when writing works
        try:
            self.file: pcapfile.Savefile | None = _open(path)
        except OSError as exc:
            raise StartupError(f"cannot open the -w file {path}: "
                               f"{exc.strerror or exc}") from None

    def append(self, packet: bytes, link: str) -> None:
        try:
            if self.file is not None and self.file.replaced():
                wording.dump_replaced(self.path)
                self.file.close()
                self.file = None
            if self.file is None:
                self.file = _open(self.path)
            self.file.append(time.time(), packet, link)
        except OSError as exc:
            why = exc.strerror or str(exc)
            kind = f"errno {exc.errno}" if exc.errno else why
            if kind != self.failing:
                wording.dump_failed(self.path, why)
            self.failing = kind
        else:
            if self.failing:
                wording.dump_works_again(self.path)
            self.failing = ""
