"""Append trigger packets to a classic pcap savefile (the ``-w FILE`` option).

The file is always LINKTYPE_ETHERNET, as the original's: packets from links
without an Ethernet header (tun devices, NFLOG) get a synthetic one.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144

_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_HEADER = _GLOBAL_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)
# Zero MACs: the packet had no link header, so there are no addresses to show.
_SYNTHETIC_MACS = bytes(12)
_ETHERTYPE_BY_IP_VERSION = {4: b"\x08\x00", 6: b"\x86\xdd"}
# An EtherType below 0x0600 is an 802.3 length, so readers will not try to
# decode a packet of unknown version as IP.
_ETHERTYPE_UNKNOWN = b"\x00\x00"


class PcapFileError(OSError):
    """The path exists but is not a savefile this module may append to."""


def append(path: str, ts: float, data: bytes, link: str) -> None:
    """Append one packet captured at ``ts`` (seconds since the epoch).

    ``link`` is ``"ether"`` (``data`` is an Ethernet frame) or ``"raw"``
    (``data`` starts at the IP header). The file is created (mode 0644 before
    umask) with its global header if missing or empty. Raises PcapFileError
    (an OSError) when the path holds something else than a regular, little-
    endian, microsecond, LINKTYPE_ETHERNET pcap file, so it is never corrupted;
    OSError on any I/O failure, including a short write (the file is then cut
    back to its previous size); ValueError for an unknown ``link`` or a ``ts``
    that a pcap record cannot hold.
    """
    frame = _frame(data, link)
    if not 0 <= ts < 2**32 - 1:
        raise ValueError(f"timestamp {ts!r} does not fit a pcap record")
    ts_sec, ts_usec = divmod(round(ts * 1_000_000), 1_000_000)
    captured = frame[:SNAPLEN]
    record = _RECORD_HEADER.pack(ts_sec, ts_usec, len(captured), len(frame)) + captured

    # O_RDWR rather than O_WRONLY: the header of an existing file must be read
    # through the same descriptor that will write to it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or device could block the supervisor's event loop forever.
            raise PcapFileError(errno.EINVAL, "not a regular file", path)
        if st.st_size == 0:
            record = _HEADER + record
        else:
            _check_header(fd, path)
        # One write for the whole record so that a reader never sees half of
        # a record header.
        written = os.write(fd, record)
        if written != len(record):
            os.ftruncate(fd, st.st_size)
            raise OSError(
                errno.ENOSPC,
                f"short write ({written} of {len(record)} bytes), record dropped",
                path,
            )
    finally:
        os.close(fd)


def _frame(data: bytes, link: str) -> bytes:
    if link == "ether":
        return data
    if link != "raw":
        raise ValueError(f"unknown link type {link!r}")
    version = data[0] >> 4 if data else 0
    return _SYNTHETIC_MACS + _ETHERTYPE_BY_IP_VERSION.get(version, _ETHERTYPE_UNKNOWN) + data


def _check_header(fd: int, path: str) -> None:
    header = os.pread(fd, _GLOBAL_HEADER.size, 0)
    if len(header) < _GLOBAL_HEADER.size:
        raise PcapFileError(
            errno.EINVAL, "not a pcap savefile (too short), refusing to append", path
        )
    magic, major, _minor, _zone, _sigfigs, _snaplen, linktype = _GLOBAL_HEADER.unpack(header)
    if magic != PCAP_MAGIC or major != 2:
        raise PcapFileError(
            errno.EINVAL,
            "not a little-endian microsecond pcap savefile, refusing to append",
            path,
        )
    if linktype != LINKTYPE_ETHERNET:
        raise PcapFileError(
            errno.EINVAL,
            f"pcap savefile has link type {linktype}, not LINKTYPE_ETHERNET; refusing to append",
            path,
        )
