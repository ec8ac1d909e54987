"""Append trigger packets to a classic pcap savefile (the ``-w FILE`` option).

The file is always LINKTYPE_ETHERNET, as the original's: packets from links
without an Ethernet header (tun devices, NFLOG) get a synthetic one.
"""

from __future__ import annotations

import contextlib
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
    """The path holds something this module will not append to."""


class Savefile:
    """The savefile, opened once and kept open.

    Opened with O_NOFOLLOW: a symlink at the path is refused, never followed
    (root would write where it points). The file must be a regular file of
    the daemon's own user with one link (another name for it could be
    someone else's file), and, unless empty, a little-endian microsecond
    LINKTYPE_ETHERNET savefile, so it is never corrupted. Created 0600 when
    missing (trigger packets are the traffic of others); an existing file
    keeps the mode it has. Raises PcapFileError (an OSError) for each
    refusal, OSError when it cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # O_RDWR rather than O_WRONLY: the header of an existing file must be
        # read through the same descriptor that will write to it.
        self.fd = _open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)

    def replaced(self) -> bool:
        """The path no longer names the open file (renamed, removed, or
        something else put in its place)."""
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            return True
        st = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)

    def append(self, ts: float, data: bytes, link: str) -> None:
        """Append one packet captured at ``ts`` (seconds since the epoch).

        ``link`` is ``"ether"`` (``data`` is an Ethernet frame) or ``"raw"``
        (``data`` starts at the IP header). OSError on any I/O failure,
        including a short write (the file is then cut back to its previous
        size); ValueError for an unknown ``link`` or a ``ts`` that a pcap
        record cannot hold.
        """
        frame = _frame(data, link)
        if not 0 <= ts < 2**32 - 1:
            raise ValueError(f"timestamp {ts!r} does not fit a pcap record")
        ts_sec, ts_usec = divmod(round(ts * 1_000_000), 1_000_000)
        captured = frame[:SNAPLEN]
        record = _RECORD_HEADER.pack(ts_sec, ts_usec, len(captured), len(frame)) + captured
        size = os.fstat(self.fd).st_size
        if size == 0:
            record = _HEADER + record
        # One write for the whole record so that a reader never sees half of
        # a record header.
        written = os.write(self.fd, record)
        if written != len(record):
            os.ftruncate(self.fd, size)
            raise OSError(
                errno.ENOSPC,
                f"short write ({written} of {len(record)} bytes), record dropped",
                self.path,
            )

    def close(self) -> None:
        os.close(self.fd)


def check_existing(path: str) -> None:
    """The checks of Savefile on what is at ``path`` now, if anything,
    without creating it (for --check-config too)."""
    # O_NONBLOCK: opening a FIFO for reading would wait for a writer.
    with contextlib.suppress(FileNotFoundError):
        os.close(_open(path, os.O_RDONLY | os.O_NONBLOCK))


def _open(path: str, flags: int) -> int:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PcapFileError(errno.ELOOP, "is a symbolic link, refusing to follow it",
                                path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or device could block the supervisor's event loop forever.
            raise PcapFileError(errno.EINVAL, "not a regular file", path)
        if st.st_uid != os.geteuid():
            raise PcapFileError(errno.EPERM, f"owned by uid {st.st_uid}, not by the daemon's "
                                f"(uid {os.geteuid()})", path)
        if st.st_nlink != 1:
            raise PcapFileError(errno.EMLINK, f"has {st.st_nlink} hard links: another name "
                                "for it may be someone else's file", path)
        if st.st_size:
            _check_header(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
