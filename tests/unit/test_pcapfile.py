"""The -w savefile writer, read back with scapy."""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from tuninetd.supervisor.pcapfile import (
    LINKTYPE_ETHERNET,
    PCAP_MAGIC,
    SNAPLEN,
    PcapFileError,
    Savefile,
    check_existing,
)

GLOBAL_HEADER = struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)
ETHER_FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / TCP())
RAW_V4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"payload")
RAW_V6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(flags="A"))


def append(path: str, ts: float, data: bytes, link: str) -> None:
    """One packet, the file opened for it and closed again."""
    f = Savefile(path)
    try:
        f.append(ts, data, link)
    finally:
        f.close()


def _usec(ts: float) -> int:
    return round(ts * 1_000_000)


def test_packets_read_back(tmp_path: Path) -> None:
    path = str(tmp_path / "dump.pcap")
    writes = [
        (1_700_000_000.123456, ETHER_FRAME, "ether"),
        (1_700_000_001.000001, RAW_V4, "raw"),
        (1_700_000_002.999999, RAW_V6, "raw"),
        (1_700_000_003.5, ETHER_FRAME + b"tail", "ether"),
    ]
    for ts, data, link in writes:
        append(path, ts, data, link)

    packets = rdpcap(path)
    assert len(packets) == len(writes)
    for pkt, (ts, data, link) in zip(packets, writes, strict=True):
        assert _usec(float(pkt.time)) == _usec(ts)
        assert pkt.wirelen == len(bytes(pkt))
        if link == "ether":
            assert bytes(pkt) == data
        else:
            assert bytes(pkt)[14:] == data
            assert pkt[Ether].src == pkt[Ether].dst == "00:00:00:00:00:00"
    assert packets[1][Ether].type == 0x0800
    assert packets[1][IP].src == "10.0.0.1"
    assert packets[2][Ether].type == 0x86DD
    assert packets[2][IPv6].src == "2001:db8::1"


def test_exact_bytes_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "dump.pcap"
    old_umask = os.umask(0o000)
    try:
        append(str(path), 3.25, b"\x00" * 14, "ether")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == GLOBAL_HEADER + struct.pack("<IIII", 3, 250_000, 14, 14) + bytes(14)
    assert path.stat().st_mode & 0o777 == 0o600


def test_microsecond_rounding_carries_into_seconds(tmp_path: Path) -> None:
    path = tmp_path / "dump.pcap"
    append(str(path), 9.9999996, ETHER_FRAME, "ether")
    assert struct.unpack_from("<II", path.read_bytes(), 24) == (10, 0)


def test_raw_packet_of_unknown_version_is_not_labelled_ip(tmp_path: Path) -> None:
    path = tmp_path / "dump.pcap"
    append(str(path), 1.0, b"\x50" * 20, "raw")
    append(str(path), 2.0, b"", "raw")
    data = path.read_bytes()
    assert data[24 + 16 : 24 + 16 + 14] == bytes(14)
    assert data[-14:] == bytes(14)


def test_append_to_existing_keeps_one_header(tmp_path: Path) -> None:
    path = tmp_path / "dump.pcap"
    append(str(path), 1.0, ETHER_FRAME, "ether")
    append(str(path), 2.0, RAW_V4, "raw")
    size = 24 + (16 + len(ETHER_FRAME)) + (16 + 14 + len(RAW_V4))
    assert path.stat().st_size == size
    assert path.read_bytes().count(GLOBAL_HEADER) == 1
    assert len(rdpcap(str(path))) == 2


def test_appends_to_file_written_by_scapy(tmp_path: Path) -> None:
    path = str(tmp_path / "dump.pcap")
    wrpcap(path, [Ether(ETHER_FRAME)])
    append(path, 5.0, RAW_V6, "raw")
    assert len(rdpcap(path)) == 2


def test_oversized_packet_is_cut_at_snaplen(tmp_path: Path) -> None:
    path = tmp_path / "dump.pcap"
    append(str(path), 1.0, bytes(SNAPLEN + 10), "ether")
    incl_len, orig_len = struct.unpack_from("<II", path.read_bytes(), 24 + 8)
    assert (incl_len, orig_len) == (SNAPLEN, SNAPLEN + 10)
    assert path.stat().st_size == 24 + 16 + SNAPLEN


@pytest.mark.parametrize(
    "content",
    [
        b"hello, world\n" * 4,
        GLOBAL_HEADER[:20],
        # Nanosecond-resolution magic: our microsecond records would be misread.
        struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET),
        # Big-endian savefile.
        struct.pack(">IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET),
        # LINKTYPE_RAW.
        struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, 101),
    ],
    ids=["text", "short", "nanosecond", "big-endian", "linktype-raw"],
)
def test_foreign_file_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "precious"
    path.write_bytes(content)
    with pytest.raises(PcapFileError, match="refusing to append"):
        append(str(path), 1.0, ETHER_FRAME, "ether")
    assert path.read_bytes() == content


def test_fifo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    with pytest.raises(PcapFileError, match="not a regular file"):
        append(str(path), 1.0, ETHER_FRAME, "ether")


def test_open_failure_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        append(str(tmp_path / "missing-dir" / "dump.pcap"), 1.0, ETHER_FRAME, "ether")


@pytest.mark.parametrize("ts", [-1.0, 2.0**32, float("nan"), float("inf")])
def test_timestamp_out_of_range(tmp_path: Path, ts: float) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        append(str(tmp_path / "dump.pcap"), ts, ETHER_FRAME, "ether")


def test_unknown_link(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="link"):
        append(str(tmp_path / "dump.pcap"), 1.0, ETHER_FRAME, "ppp")


@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: the full-filesystem test needs root to mount a tmpfs")
        pytest.skip("needs root to mount a 16 KiB tmpfs")
    with tempfile.TemporaryDirectory() as mountpoint:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", mountpoint], check=True)
        try:
            yield Path(mountpoint)
        finally:
            subprocess.run(["umount", mountpoint], check=True)


def _fill(path: Path) -> None:
    with path.open("wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(bytes(1024))


def test_full_filesystem_raises(tiny_fs: Path) -> None:
    path = tiny_fs / "dump.pcap"
    _fill(tiny_fs / "filler")
    with pytest.raises(OSError):
        append(str(path), 1.0, ETHER_FRAME, "ether")


def test_short_write_raises_and_keeps_file_valid(tiny_fs: Path) -> None:
    path = tiny_fs / "dump.pcap"
    append(str(path), 1.0, ETHER_FRAME, "ether")
    size = path.stat().st_size
    _fill(tiny_fs / "filler")
    # Bigger than what is left of the file's last page: written only in part.
    with pytest.raises(OSError, match="short write"):
        append(str(path), 2.0, bytes(8192), "ether")
    assert path.stat().st_size == size
    assert len(rdpcap(str(path))) == 1


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_bytes(b"")
    link = tmp_path / "dump.pcap"
    link.symlink_to(precious)
    with pytest.raises(PcapFileError, match="symbolic link"):
        Savefile(str(link))
    with pytest.raises(PcapFileError, match="symbolic link"):
        check_existing(str(link))
    dangling = tmp_path / "dangling.pcap"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(PcapFileError, match="symbolic link"):
        Savefile(str(dangling))
    assert precious.read_bytes() == b"" and not (tmp_path / "would-be-created").exists()


def test_hard_link_is_refused(tmp_path: Path) -> None:
    """Another name for the file may be someone else's (in another folder)."""
    other = tmp_path / "other"
    other.write_bytes(b"")
    os.link(other, tmp_path / "dump.pcap")
    with pytest.raises(PcapFileError, match="2 hard links"):
        Savefile(str(tmp_path / "dump.pcap"))
    assert other.read_bytes() == b""


def test_file_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    path = tmp_path / "dump.pcap"
    path.write_bytes(b"")
    os.chown(path, 65534, -1)
    with pytest.raises(PcapFileError, match="owned by uid 65534"):
        Savefile(str(path))


def test_fifo_is_checked_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(PcapFileError, match="not a regular file"):
        check_existing(str(tmp_path / "fifo"))
    check_existing(str(tmp_path / "missing"))  # nothing there: nothing to say, nothing made
    assert not (tmp_path / "missing").exists()


def test_replaced_sees_a_rename_a_removal_and_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "dump.pcap"
    f = Savefile(str(path))
    try:
        assert not f.replaced()
        path.rename(tmp_path / "dump.pcap.1")
        assert f.replaced()
        path.write_bytes(b"")
        assert f.replaced()
        path.unlink()
        assert f.replaced()
    finally:
        f.close()
