"""``-w FILE``: trigger packets appended to a pcap savefile, failures
reported once per kind (a full disk gives short writes of varying sizes and
ENOSPC, all one failure), not per packet."""

from __future__ import annotations

import time

from tuninetd.supervisor import pcapfile, wording


class PacketDump:
    def __init__(self, path: str) -> None:
        self.path = path
        self.failing = ""  # the kind of the failure last reported, "" when writing works

    def append(self, packet: bytes, link: str) -> None:
        try:
            pcapfile.append(self.path, time.time(), packet, link)
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
