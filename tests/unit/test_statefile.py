"""The state file's parser: exactly what dump writes comes back; any other
bytes are Corrupt, never another exception."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuninetd.common import wire
from tuninetd.supervisor import statefile, wording
from tuninetd.supervisor.facts import Ethernet, Facts, Network
from tuninetd.supervisor.statefile import Corrupt, Record

BOOT = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
GOOD = Record("up", 1764500000.25, BOOT, "a" * 64, "pcap:eth0",
              ("|- IPv4 10.0.0.1 > 10.0.0.2, NXT_HDR: 0x11 (UDP)",))

printable = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn")),
                    max_size=statefile.MAX_TEXT).filter(str.isprintable)


@given(st.builds(Record, st.sampled_from(statefile.STATES), st.floats(1, 2**39), st.just(BOOT),
                 st.text("0123456789abcdef", min_size=64, max_size=64), printable,
                 st.lists(printable, max_size=statefile.MAX_LINES).map(tuple)))
def test_what_dump_writes_parses_back(record: Record) -> None:
    assert statefile.parse(statefile.dump(record)) == record


@given(st.binary(max_size=statefile.MAX_SIZE + 64))
def test_arbitrary_bytes_are_corrupt_or_a_record(data: bytes) -> None:
    with contextlib.suppress(Corrupt):
        statefile.parse(data)


@given(st.dictionaries(st.sampled_from([*sorted(statefile._KEYS), "extra"]),
                       st.none() | st.booleans() | st.integers() | st.floats() | st.text()
                       | st.lists(st.text(), max_size=3)))
def test_arbitrary_records_are_corrupt_or_valid(changes: dict[str, object]) -> None:
    """A good record with any of its fields changed (or one added): refused,
    or taken with every field as given, nothing dropped or altered."""
    fields = {**json.loads(statefile.dump(GOOD)), **changes}
    try:
        record = statefile.parse(json.dumps(fields).encode())
    except Corrupt:
        return
    assert json.loads(statefile.dump(record)) == fields


def mutate(**changes: object) -> bytes:
    fields = json.loads(statefile.dump(GOOD))
    fields.update(changes)
    return json.dumps(fields).encode()


@pytest.mark.parametrize("data", [
    mutate(state="sideways"),
    mutate(since=float("inf")),
    mutate(since=True),
    mutate(version=2),
    mutate(boot_id="../../etc"),
    mutate(command="A" * 64),
    mutate(sensor="pcap:eth0\n|- forged line"),
    mutate(summary=["x"] * (statefile.MAX_LINES + 1)),
    mutate(summary="not a list"),
    mutate(extra=1),
    statefile.dump(GOOD)[:-10],
    b'{"version":1,"version":1}',
    b" " * (statefile.MAX_SIZE + 1),
    b"\xff\xfe",
    b"[" * 100000,
    b"[" * 5000,
])
def test_what_is_not_exactly_a_record_is_corrupt(data: bytes) -> None:
    with pytest.raises(Corrupt):
        statefile.parse(data)


# -- one rule for the writer and the reader -------------------------------------

any_text = st.text(max_size=statefile.MAX_TEXT + 40)
records = st.builds(Record, st.sampled_from(statefile.STATES), st.floats(-1, 2**41),
                    st.just(BOOT) | st.text(max_size=40),
                    st.text("0123456789abcdef", min_size=64, max_size=64) | any_text,
                    any_text, st.lists(any_text, max_size=statefile.MAX_LINES + 2).map(tuple))


@given(records)
def test_the_writer_writes_only_what_the_reader_takes(record: Record) -> None:
    try:
        data = statefile.dump(record)
    except Corrupt:
        return
    assert statefile.parse(data) == record


@given(records)
def test_the_reader_takes_everything_the_writer_would_write(record: Record) -> None:
    """The other way: what the reader takes, written again, is taken again."""
    data = json.dumps({
        "version": statefile.VERSION, "state": record.state, "since": record.since,
        "boot_id": record.boot_id, "command": record.command, "sensor": record.sensor,
        "summary": list(record.summary)}).encode()
    try:
        read = statefile.parse(data)
    except Corrupt:
        with pytest.raises(Corrupt):
            statefile.dump(record)
        return
    assert statefile.parse(statefile.dump(read)) == read


# Any text, and text from the last plane, each character of which is quoted longest.
prefixes = (st.text(min_size=1, max_size=wire.MAX_PREFIX)
            | st.text(st.characters(min_codepoint=0x100000), min_size=64,
                      max_size=wire.MAX_PREFIX))


@given(prefixes, st.sampled_from(["pcap:eth0", "nflog:65535", f"pcap:{'x' * 15}"]))
def test_every_summary_the_daemon_words_is_saved_and_read_back(prefix: str,
                                                                sensor: str) -> None:
    """An NFLOG prefix of 60 Cyrillic letters made a line of 379 characters,
    which the reader refused: the restart started down while the service ran."""
    facts = Facts("ether", Ethernet("02:00:00:00:00:01", "02:00:00:00:00:02", 0x86DD, 4095),
                  Network(6, "ffff:" * 7 + "ffff", "fe80::1", 143), prefix)
    record = Record("up", 1764500000.25, BOOT, "a" * 64, sensor, wording.summary(facts))
    assert statefile.parse(statefile.dump(record)) == record


@pytest.mark.parametrize(("prefix", "longest"), [("ж" * 60, 379), (chr(0x10FFFF) * 64, 531)],
                         ids=["cyrillic", "last-plane"])
def test_the_longest_summary_lines(prefix: str, longest: int) -> None:
    facts = Facts("raw", None, None, prefix)
    record = Record("up", 1764500000.25, BOOT, "a" * 64, "nflog:1", wording.summary(facts))
    assert max(len(line) for line in record.summary) == longest
    assert statefile.parse(statefile.dump(record)) == record
