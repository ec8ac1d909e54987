"""The daemon's state between two runs: ``/run/tuninetd/NAME.state``, NAME
being the name the daemon claimed (supervisor/instance.py), whose lock it holds.

Up, down, or starting (brought up, its start not ended yet), since when
(wall clock, with the boot it was written in), the sensor and summary of the
last trigger, and a fingerprint of the commands. A new run of the same daemon
with the same commands in the same boot that finds ``up`` resumes it instead
of running start again; ``starting`` is not resumed: that start may never
have run to its end, so the next packet runs it again. The file is rewritten
whole (temp file and rename, root's, 0600) on every change of state, so a
SIGKILL or a crash leaves either the old record or the new one, never half.
An orderly exit while down removes it: there is nothing to resume.

The writer and the reader keep one rule (``check``): the daemon never writes
a record that its next run would refuse. Reading trusts nothing beyond the
fields: a bounded read, a strict schema, every value checked. Anything else
is ignored with one log line, and the daemon starts down as it would without
the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any

from tuninetd.common.logs import log
from tuninetd.supervisor import forked
from tuninetd.supervisor.config.settings import Settings

BOOT_ID = "/proc/sys/kernel/random/boot_id"
MAX_SIZE = 8192
MAX_LINES = 8
# The longest line the daemon words is the NFLOG prefix's: 64 characters
# shown, each at most 8 once quoted (\u10ffff), and 19 around them: 531.
MAX_TEXT = 640
VERSION = 1
STATES = ("down", "starting", "up")
_KEYS = {"version", "state", "since", "boot_id", "command", "sensor", "summary"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Corrupt(Exception):
    """The bytes are not a state record; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Record:
    state: str  # one of STATES
    since: float  # time.time() of the change
    boot_id: str
    command: str  # fingerprint(cfg)
    sensor: str  # the sensor of the last trigger, "" before any
    summary: tuple[str, ...]  # its summary lines


def fingerprint(cfg: Settings) -> str:
    """sha256 of the argv lists of start and stop: another command, another
    service. Worked out in a forked child: hashlib maps OpenSSL's libcrypto,
    which the supervisor would keep for this one digest."""
    argvs = json.dumps([cfg.argv("start"), cfg.argv("stop")], separators=(",", ":"))
    return str(forked.answer(lambda: _sha256(argvs), "fingerprint"))


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def boot_id() -> str:
    with open(BOOT_ID) as f:
        return f.read().strip()


def check(record: Record) -> bytes:
    """The one rule of the writer and the reader: the record's bytes as
    written, or Corrupt when the reader would refuse them."""
    if record.state not in STATES:
        raise Corrupt(f"state is not one of {', '.join(STATES)}")
    since = record.since
    if (isinstance(since, bool) or not isinstance(since, int | float)
            or not math.isfinite(since) or not 0 < since < 2**40):
        raise Corrupt("since is not a time")
    if not isinstance(record.boot_id, str) or not _UUID.fullmatch(record.boot_id):
        raise Corrupt("boot_id is not a boot id")
    if not isinstance(record.command, str) or not _SHA256.fullmatch(record.command):
        raise Corrupt("command is not a sha256")
    _text(record.sensor, "sensor")
    if not isinstance(record.summary, tuple) or len(record.summary) > MAX_LINES:
        raise Corrupt(f"summary is not a list of at most {MAX_LINES} lines")
    for line in record.summary:
        _text(line, "a summary line")
    data = json.dumps({
        "version": VERSION, "state": record.state, "since": record.since,
        "boot_id": record.boot_id, "command": record.command, "sensor": record.sensor,
        "summary": list(record.summary),
    }, separators=(",", ":")).encode() + b"\n"
    if len(data) > MAX_SIZE:
        raise Corrupt(f"larger than {MAX_SIZE} bytes")
    return data


def dump(record: Record) -> bytes:
    """What the state file holds; Corrupt rather than a record the reader refuses."""
    return check(record)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise Corrupt(f"{what} is not a line of at most {MAX_TEXT} printable characters")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Corrupt("a key is given twice")
    return obj


def _no_constant(name: str) -> None:
    raise Corrupt(f"{name} is not a number")


def parse(data: bytes) -> Record:
    """The record in ``data``; Corrupt for anything that ``dump`` would not write."""
    if len(data) > MAX_SIZE:
        raise Corrupt(f"larger than {MAX_SIZE} bytes")
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Corrupt("not a JSON record") from None
    if not isinstance(obj, dict) or set(obj) != _KEYS:
        raise Corrupt("not the fields of a state record")
    if obj["version"] != VERSION or isinstance(obj["version"], bool):
        raise Corrupt("an unknown version")
    summary = obj["summary"]
    if not isinstance(summary, list):
        raise Corrupt(f"summary is not a list of at most {MAX_LINES} lines")
    since = obj["since"]
    if isinstance(since, bool) or not isinstance(since, int | float):
        raise Corrupt("since is not a time")
    try:
        since = float(since)
    except OverflowError:
        raise Corrupt("since is not a time") from None
    # Typed as JSON gave them: ``check`` holds each to the rule.
    record = Record(obj["state"], since, obj["boot_id"], obj["command"], obj["sensor"],
                    tuple(summary))
    check(record)
    return record


class StateFile:
    def __init__(self, path: str, cfg: Settings) -> None:
        """``path``: the claimed name's (``Instance.state_path``), in the
        run directory that claiming the name made safe."""
        self.path = path
        self.command = fingerprint(cfg)
        self.boot = boot_id()

    def _read(self) -> bytes:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
                raise Corrupt("not a regular file of root's, mode 0600")
            return os.read(fd, MAX_SIZE + 1)
        finally:
            os.close(fd)

    def load(self) -> Record | None:
        """The previous run's record when it may be resumed; one log line when
        there is none that may be (down is simply down: no line)."""
        why = None
        record = None
        try:
            record = parse(self._read())
        except FileNotFoundError:
            why = "there is none"
        except OSError as exc:
            why = f"cannot read it: {exc.strerror}"
        except Corrupt as exc:
            why = f"it is corrupt: {exc}"
        if record is not None and record.boot_id != self.boot:
            why = "it was written before a reboot"
        elif record is not None and record.command != self.command:
            why = "it was written for other commands"
        elif record is not None and record.state == "starting":
            why = "its start had not ended"
        if why is not None:
            log.info("CORE: no state of a previous run to resume from %s (%s); starting down",
                     self.path, why)
            return None
        return record

    def save(self, state: str, sensor: str, summary: tuple[str, ...]) -> None:
        try:
            data = dump(Record(state, time.time(), self.boot, self.command, sensor, summary))
        except Corrupt as exc:
            # The next run would refuse it: none is better than a stale one.
            log.error("CORE: cannot write the state file %s: %s", self.path, exc)
            self.remove()
            return
        folder, name = os.path.split(self.path)
        temp = f".{name}.{os.getpid()}"
        try:
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            log.error("CORE: cannot write the state file %s: %s", self.path, exc.strerror)
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dfd)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            log.error("CORE: cannot write the state file %s: %s", self.path, exc.strerror)
        finally:
            os.close(dfd)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
