"""The trigger-packet decoder (sensor side: bytes to facts) and the wording
(supervisor side: checked facts to the original's lines) together, against
packets built with scapy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_RS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from tests.support.trigger_text import Summary, summarize
from tuninetd.sensors.decode import describe, tcp_ack
from tuninetd.supervisor.wording import NOT_IP_LINE

# The examples of the original README, which scripts in the wild grep for.
README_V4 = (
    Ether(src="1b:1c:0d:45:a9:e1", dst="f4:6d:04:64:11:25")
    / IP(src="192.168.1.1", dst="13.107.42.14")
    / TCP(dport=443, flags="S")
)
README_V6_TAGGED = (
    Ether(src="f4:6d:04:64:11:24", dst="33:33:00:00:00:02")
    / Dot1Q(vlan=3)
    / IPv6(src="fe80::f66d:4ff:fe64:1124", dst="ff02::2")
    / ICMPv6ND_RS()
)

# (bytes, link) samples for the mutation properties.
VALID_PACKETS: list[tuple[bytes, str]] = [
    (bytes(README_V4), "ether"),
    (bytes(README_V6_TAGGED), "ether"),
    (bytes(Ether() / ARP()), "ether"),
    (bytes(IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01" * 4) / UDP()), "raw"),
    (bytes(IPv6() / IPv6ExtHdrHopByHop() / TCP(flags="A")), "raw"),
    (bytes(IP() / TCP(flags="A")), "raw"),
]


def _printable(line: str) -> bool:
    return all(" " <= ch <= "~" for ch in line)


def test_ipv4_tcp_over_ethernet_matches_original() -> None:
    assert summarize(bytes(README_V4), "ether") == Summary(
        lines=[
            "|- IPv4 192.168.1.1 > 13.107.42.14, NXT_HDR: 0x06 (TCP)",
            "|- MAC: 1b:1c:0d:45:a9:e1 > f4:6d:04:64:11:25, EtherType: 0x0800 (IPv4)",
        ],
        src="192.168.1.1",
        dst="13.107.42.14",
        proto="TCP",
    )


def test_ipv6_icmpv6_with_vlan_tag_matches_original() -> None:
    assert summarize(bytes(README_V6_TAGGED), "ether") == Summary(
        lines=[
            "|- IPv6 fe80::f66d:4ff:fe64:1124 > ff02::2, NXT_HDR: 0x3A (IPv6-ICMP)",
            "|- MAC: f4:6d:04:64:11:24 > 33:33:00:00:00:02, 802.1Q VID: 3, "
            "EtherType: 0x86DD (IPv6)",
        ],
        src="fe80::f66d:4ff:fe64:1124",
        dst="ff02::2",
        proto="IPv6-ICMP",
    )


def test_vid_ignores_priority_and_dei_bits() -> None:
    frame = (
        Ether(src="00:00:00:00:00:01", dst="00:00:00:00:00:02")
        / Dot1Q(prio=7, dei=1, vlan=4094)
        / IP(src="1.2.3.4", dst="5.6.7.8")
        / UDP()
    )
    assert summarize(bytes(frame), "ether").lines[1] == (
        "|- MAC: 00:00:00:00:00:01 > 00:00:00:00:00:02, 802.1Q VID: 4094, EtherType: 0x0800 (IPv4)"
    )


def test_raw_ipv4_udp() -> None:
    pkt = IP(src="10.1.2.3", dst="10.3.2.1") / UDP(sport=1234, dport=53) / b"x"
    assert summarize(bytes(pkt), "raw") == Summary(
        ["|- IPv4 10.1.2.3 > 10.3.2.1, NXT_HDR: 0x11 (UDP)"], "10.1.2.3", "10.3.2.1", "UDP"
    )


def test_raw_ipv4_with_options() -> None:
    pkt = IP(src="10.1.2.3", dst="10.3.2.1", options=b"\x01" * 8) / ICMP()
    assert summarize(bytes(pkt), "raw").lines == [
        "|- IPv4 10.1.2.3 > 10.3.2.1, NXT_HDR: 0x01 (ICMP)"
    ]


def test_raw_ipv6_reports_fixed_header_next_header() -> None:
    pkt = IPv6(src="2001:db8::1", dst="2001:db8:0:0:1::2") / IPv6ExtHdrHopByHop() / TCP()
    assert summarize(bytes(pkt), "raw") == Summary(
        ["|- IPv6 2001:db8::1 > 2001:db8::1:0:0:2, NXT_HDR: 0x00 (unresolved)"],
        "2001:db8::1",
        "2001:db8::1:0:0:2",
        "unresolved",
    )


def test_ipv4_mapped_ipv6_address_text_as_inet_ntop() -> None:
    pkt = IPv6(src="::ffff:1.2.3.4", dst="::1") / UDP()
    assert summarize(bytes(pkt), "raw").lines == [
        "|- IPv6 ::ffff:1.2.3.4 > ::1, NXT_HDR: 0x11 (UDP)"
    ]


def test_bad_ipv4_checksum_is_still_decoded() -> None:
    pkt = IP(src="10.0.0.1", dst="10.0.0.2", chksum=0) / TCP()
    assert summarize(bytes(pkt), "raw").src == "10.0.0.1"


def test_arp_has_no_l3_line() -> None:
    frame = Ether(src="aa:bb:cc:dd:ee:ff", dst="ff:ff:ff:ff:ff:ff") / ARP()
    assert summarize(bytes(frame), "ether") == Summary(
        [
            NOT_IP_LINE,
            "|- MAC: aa:bb:cc:dd:ee:ff > ff:ff:ff:ff:ff:ff, EtherType: 0x0806 (ARP)",
        ],
        None,
        None,
        None,
    )


def test_unknown_ethertype_is_unresolved() -> None:
    frame = Ether(src="00:00:00:00:00:01", dst="00:00:00:00:00:02", type=0x1234) / Raw(b"x" * 40)
    assert summarize(bytes(frame), "ether").lines == [
        NOT_IP_LINE,
        "|- MAC: 00:00:00:00:00:01 > 00:00:00:00:00:02, EtherType: 0x1234 (unresolved)",
    ]


def test_unknown_protocol_is_unresolved() -> None:
    summary = summarize(bytes(IP(src="1.1.1.1", dst="2.2.2.2", proto=253)), "raw")
    assert summary.lines == ["|- IPv4 1.1.1.1 > 2.2.2.2, NXT_HDR: 0xFD (unresolved)"]
    assert summary.proto == "unresolved"


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (6, "TCP"), (17, "UDP"), (1, "ICMP"), (58, "IPv6-ICMP"), (47, "GRE"), (4, "IP-in-IP"),
        (115, "L2TP"), (89, "OSPF"), (88, "EIGRP"), (2, "IGMP"), (3, "GGP"), (41, "IPv6"),
        (43, "IPv6-Route"), (44, "IPv6-Frag"), (50, "ESP"), (52, "I-NLSP"), (55, "MOBILE"),
        (56, "TLSP"), (59, "IPv6-NoNxt"), (60, "IPv6-Opts"), (66, "RVD"), (97, "ETHERIP"),
        (98, "ENCAP"), (108, "IPComp"), (111, "IPX-in-IP"), (124, "IS-IS-over-IPv4"),
        (129, "IPLT"), (132, "SCTP"), (136, "UDPLite"), (137, "MPLS-in-IP"), (143, "Ethernet"),
        (0, "unresolved"), (255, "unresolved"),
    ],
)  # fmt: skip
def test_protocol_names(number: int, name: str) -> None:
    v4 = summarize(bytes(IP(src="1.1.1.1", dst="2.2.2.2", proto=number)), "raw")
    v6 = summarize(bytes(IPv6(src="::1", dst="::2", nh=number)), "raw")
    assert v4.lines == [f"|- IPv4 1.1.1.1 > 2.2.2.2, NXT_HDR: 0x{number:02X} ({name})"]
    assert v6.lines == [f"|- IPv6 ::1 > ::2, NXT_HDR: 0x{number:02X} ({name})"]


@pytest.mark.parametrize(
    ("ethertype", "name"),
    [
        (0x0800, "IPv4"), (0x0806, "ARP"), (0x86DD, "IPv6"), (0x8100, "802.1Q"),
        (0x0842, "Wake-on-LAN"), (0x8035, "RARP"), (0x809B, "AppleTalk"),
        (0x80F3, "AppleTalk ARP"), (0x8137, "IPX"), (0x8808, "Ethernet-Flowcontrol"),
        (0x8847, "MPLS-unicast"), (0x8848, "MPLS-multicast"), (0x8863, "PPPoE-Discovery"),
        (0x8864, "PPPoE-Session"), (0x88BF, "MikroTik-RoMON"), (0x88CC, "LLDP"),
        (0x88A8, "unresolved"),
    ],
)  # fmt: skip
def test_ethertype_names(ethertype: int, name: str) -> None:
    # A one-byte payload is too short for any header behind the EtherType.
    frame = bytes(6) + bytes.fromhex("0102030405ff") + ethertype.to_bytes(2, "big") + b"\x00"
    assert summarize(frame, "ether").lines == [
        NOT_IP_LINE,
        f"|- MAC: 01:02:03:04:05:ff > 00:00:00:00:00:00, EtherType: 0x{ethertype:04X} ({name})",
    ]


def test_ethertype_and_ip_version_must_agree() -> None:
    frame = Ether(src="00:00:00:00:00:01", dst="00:00:00:00:00:02", type=0x0800) / IPv6() / UDP()
    assert summarize(bytes(frame), "ether").lines[0] == NOT_IP_LINE


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(IP())[:19],
        bytes(IPv6())[:39],
        # IHL 15 announces 60 bytes of header that are not there.
        b"\x4f" + bytes(IP())[1:],
        # IHL 4 is below the minimum header size.
        b"\x44" + bytes(IP())[1:],
        # Version 5 is neither.
        b"\x55" + bytes(IP())[1:],
    ],
    ids=["empty", "ipv4-19", "ipv6-39", "ihl-15", "ihl-4", "version-5"],
)
def test_truncated_or_invalid_raw_header(data: bytes) -> None:
    assert summarize(data, "raw") == Summary([NOT_IP_LINE], None, None, None)


def test_truncated_ethernet_header_has_no_mac_line() -> None:
    assert summarize(bytes(README_V4)[:13], "ether").lines == [NOT_IP_LINE]


def test_truncated_vlan_tag_reports_outer_ethertype() -> None:
    assert summarize(bytes(README_V6_TAGGED)[:17], "ether").lines == [
        NOT_IP_LINE,
        "|- MAC: f4:6d:04:64:11:24 > 33:33:00:00:00:02, EtherType: 0x8100 (802.1Q)",
    ]


def test_truncated_ip_after_ethernet_keeps_mac_line() -> None:
    data = bytes(README_V6_TAGGED)[: 18 + 39]
    assert summarize(data, "ether").lines == [
        NOT_IP_LINE,
        "|- MAC: f4:6d:04:64:11:24 > 33:33:00:00:00:02, 802.1Q VID: 3, EtherType: 0x86DD (IPv6)",
    ]


def test_unknown_link_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="link"):
        describe(b"", "ppp")


@given(st.binary(max_size=200), st.sampled_from(["ether", "raw"]))
def test_arbitrary_bytes_never_raise(data: bytes, link: str) -> None:
    _check_summary(summarize(data, link))


@pytest.mark.parametrize(("data", "link"), VALID_PACKETS)
def test_every_truncation_is_safe(data: bytes, link: str) -> None:
    for length in range(len(data) + 1):
        _check_summary(summarize(data[:length], link))


@given(
    st.sampled_from(VALID_PACKETS),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_byte_flips_never_raise(sample: tuple[bytes, str], flips: list[tuple[int, int]]) -> None:
    data, link = sample
    mutated = bytearray(data)
    for index, value in flips:
        mutated[index % len(mutated)] = value
    _check_summary(summarize(bytes(mutated), link))
    tcp_ack(bytes(mutated))


def _check_summary(summary: Summary) -> None:
    # Whatever the bytes, the facts pass the supervisor's checks (summarize
    # would raise facts.Bad): a packet alone never gets its sensor killed.
    assert 1 <= len(summary.lines) <= 2
    assert all(_printable(line) for line in summary.lines)
    assert (summary.src is None) == (summary.dst is None) == (summary.proto is None)


# tcp_ack


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("S", False),
        ("A", True),
        ("SA", True),
        ("FA", True),
        ("PA", True),
        ("R", False),
        ("", False),
    ],
)
def test_tcp_ack_flags(flags: str, expected: bool) -> None:
    assert tcp_ack(bytes(IP() / TCP(flags=flags))) is expected
    assert tcp_ack(bytes(IPv6() / TCP(flags=flags))) is expected


def test_tcp_ack_ipv4_options() -> None:
    assert tcp_ack(bytes(IP(options=b"\x01" * 8) / TCP(flags="A")))


@pytest.mark.parametrize(
    "ext",
    [
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrDestOpt(),
        IPv6ExtHdrRouting(),
        IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8::1"]) / IPv6ExtHdrDestOpt(),
    ],
    ids=["hop-by-hop", "dest-opts", "routing", "chain"],
)
def test_tcp_ack_walks_ipv6_extension_headers(ext: IPv6ExtHdrHopByHop) -> None:
    assert tcp_ack(bytes(IPv6() / ext / TCP(flags="A")))
    assert not tcp_ack(bytes(IPv6() / ext / TCP(flags="S")))


def test_tcp_ack_extension_walk_is_bounded() -> None:
    chain = IPv6()
    for _ in range(9):
        chain = chain / IPv6ExtHdrDestOpt()
    assert not tcp_ack(bytes(chain / TCP(flags="A")))


def test_tcp_ack_fragments_are_not_trusted() -> None:
    assert not tcp_ack(bytes(IPv6() / IPv6ExtHdrFragment() / TCP(flags="A")))
    # A non-first IPv4 fragment whose payload happens to look like an ACK.
    assert not tcp_ack(bytes(IP(proto=6, frag=100) / TCP(flags="A")))
    assert tcp_ack(bytes(IP(flags="MF") / TCP(flags="A")))


@pytest.mark.parametrize(
    "pkt",
    [
        IP() / UDP() / (b"\x10" * 20),
        IPv6() / UDP() / (b"\x10" * 20),
        IP() / ICMP() / (b"\xff" * 20),
    ],
    ids=["udp4", "udp6", "icmp"],
)
def test_tcp_ack_non_tcp(pkt: IP) -> None:
    assert not tcp_ack(bytes(pkt))


@pytest.mark.parametrize(
    "pkt",
    [
        IP() / TCP(flags="A"),
        IPv6() / TCP(flags="A"),
        IPv6() / IPv6ExtHdrHopByHop() / TCP(flags="A"),
    ],
    ids=["v4", "v6", "v6-hbh"],
)
def test_tcp_ack_truncated(pkt: IP) -> None:
    data = bytes(pkt)
    flags_at = len(data) - 20 + 13
    for length in range(flags_at + 1):
        assert not tcp_ack(data[:length])
    assert tcp_ack(data[: flags_at + 1])


def test_tcp_ack_not_ip() -> None:
    assert not tcp_ack(bytes(Ether() / IP() / TCP(flags="A")))
    assert not tcp_ack(b"")


@given(st.binary(max_size=120))
def test_tcp_ack_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert tcp_ack(data) in (True, False)
