"""A classic BPF program in the layout the kernel takes it (struct
sock_fprog): a socket filter for SO_ATTACH_FILTER (pcap.py) and the seccomp
allow-list (sandbox.py) alike."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence


class Program:
    """``fprog`` points into a buffer this object holds: keep it alive
    through the system call that reads it."""

    def __init__(self, insns: Sequence[Sequence[int]]) -> None:
        code = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in insns)
        self._buf = ctypes.create_string_buffer(code, len(code))
        self.fprog = struct.pack("HL", len(insns), ctypes.addressof(self._buf))
