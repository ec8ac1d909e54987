"""The start threshold's bookkeeping (sensors/loop.StartWindow, with the clock
passed in) and the checks and words of the start and keep-alive options."""

from __future__ import annotations

import pytest

from tuninetd.sensors.loop import FirstPacket, StartWindow
from tuninetd.supervisor import wording
from tuninetd.supervisor.config import configure
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.errors import UsageError

FIRST = FirstPacket("ether", {"ethertype": 0x86DD})


def test_without_a_threshold_the_first_packet_fires() -> None:
    window = StartWindow(1, 1.0)
    assert window.offer(FIRST, 10.0) is FIRST
    assert window.first is None
    assert window.offer(None, 10.0) is None


def test_the_nth_packet_within_the_window_fires_the_first() -> None:
    window = StartWindow(3, 1.0)
    assert window.offer(FIRST, 10.0) is None
    assert window.add(0, 10.2) is None and window.first is FIRST
    assert window.add(1, 10.5) is None
    assert window.add(1, 10.9) is FIRST
    assert window.first is None


def test_a_burst_counted_at_once_fires_at_once() -> None:
    window = StartWindow(5, 2.0)
    window.offer(FIRST, 0.0)
    assert window.add(7, 0.001) is FIRST


def test_a_window_that_ends_short_closes_without_firing() -> None:
    window = StartWindow(3, 1.0)
    window.offer(FIRST, 10.0)
    assert window.add(1, 10.4) is None
    assert window.add(0, 11.0) is None
    assert window.first is None, "over at its end"


def test_packets_counted_at_the_end_still_count() -> None:
    window = StartWindow(3, 1.0)
    window.offer(FIRST, 10.0)
    assert window.add(2, 11.0) is FIRST


def test_a_new_window_starts_from_nothing() -> None:
    window = StartWindow(3, 1.0)
    window.offer(FIRST, 10.0)
    window.add(1, 11.0)
    second = FirstPacket("ether", {"ethertype": 0x0806})
    assert window.offer(second, 12.0) is None
    assert window.seen == 1 and window.ends == 13.0
    assert window.add(1, 12.5) is None
    assert window.add(1, 12.6) is second


def test_closed_by_an_order() -> None:
    window = StartWindow(2, 1.0)
    window.offer(FIRST, 0.0)
    window.close()
    assert window.add(5, 0.1) is None


def settings(*argv: str) -> Settings:
    return configure.parse(["-c", "/bin/true", *argv]).settings


@pytest.mark.parametrize(("argv", "message"), [
    (["-n", "1", "--start-packets", "0"],
     "--start-packets '0': expected a whole number of packets from 1 to 1000000"),
    (["-n", "1", "--start-packets", "2.5"],
     "--start-packets '2.5': expected a whole number of packets from 1 to 1000000"),
    (["-n", "1", "--start-packets", "3", "--start-window", "0"],
     "--start-window '0': expected seconds from 0.01 to 3600"),
    (["-n", "1", "--start-window", "2"],
     "--start-window 2: a start window needs --start-packets 2 or more (the first packet "
     "starts otherwise)"),
    (["-n", "1", "--keep-filter", "udp"],
     "--keep-filter 'udp': a keep-alive filter applies to -i sensors, and there is none "
     "(--keep-group is the -n sensors' one)"),
    (["-i", "lo", "--keep-group", "3"],
     "--keep-group 3: a keep-alive group applies to -n sensors, and there is none "
     "(--keep-filter is the -i sensors' one)"),
    (["-n", "1", "--keep-group", "70000"],
     "--keep-group '70000': expected an NFLOG group number from 0 to 65535"),
    (["-i", "lo", "-a", "--keep-filter", "udp"],
     "--keep-filter 'udp' and -a: -a is the ACK keep-alive filter; give one (with both, "
     "write the ACK test into the keep-alive filter)"),
])
def test_bad_start_and_keep_options_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as exc:
        settings(*argv)
    assert str(exc.value) == message


def test_the_window_defaults_to_one_beat() -> None:
    cfg = settings("-n", "1", "--start-packets", "3", "--beat", "0.5")
    assert (cfg.start_packets, cfg.start_window, cfg.start_span) == (3, None, 0.5)
    assert wording.start_threshold(cfg) == "3 matching packets within 0.5 s"
    assert wording.start_threshold(settings("-n", "1")) == "the first matching packet"


def test_the_keep_group_is_counted_by_one_sensor() -> None:
    """Its own sensor counts it; when no -n group is it, the first sensor
    binds it; every other sensor counts nothing while up."""
    own = settings("-n", "1", "-n", "2", "--keep-group", "2").sensors
    assert [(s.group, s.count_group) for s in own] == [(1, None), (2, 2)]
    beside = settings("-n", "1", "-n", "2", "--keep-group", "9").sensors
    assert [(s.group, s.count_group) for s in beside] == [(1, 9), (2, None)]
    plain = settings("-n", "1", "-n", "2").sensors
    assert [(s.group, s.count_group) for s in plain] == [(1, 1), (2, 2)]


def test_keep_alive_words() -> None:
    cfg = settings("-n", "4", "-n", "5", "--keep-group", "5", "-a")
    assert [wording.keep_alive(s, cfg) for s in cfg.sensors] == [
        "nothing (nflog group 5 keeps it up)", "tcp[ack] packets, nflog group 5"]
