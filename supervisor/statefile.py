"""The daemon's state between two runs: ``/run/tuninetd/NAME.state``.

Up or down, since when (wall clock, with the boot it was written in), the
sensor and summary of the last trigger, and a fingerprint of the commands.
A new run of the same daemon with the same commands in the same boot that
finds ``up`` resumes it instead of running start again. The file is rewritten
whole (temp file and rename, root's, 0600) on every change of state, so a
SIGKILL or a crash leaves either the old record or the new one, never half.

Reading trusts nothing beyond the fields: a bounded read, a strict schema,
every value checked. Anything else is ignored with one log line, and the
daemon starts down as it would without the file.
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

STATE_DIR = "/run/tuninetd"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
MAX_SIZE = 8192
MAX_LINES = 8
MAX_TEXT = 300
VERSION = 1
_KEYS = {"version", "state", "since", "boot_id", "command", "sensor", "summary"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Corrupt(Exception):
    """The bytes are not a state record; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Record:
    up: bool
    since: float  # time.time() of the change
    boot_id: str
    command: str  # fingerprint(cfg)
    sensor: str  # the sensor of the last trigger, "" before any
    summary: tuple[str, ...]  # its summary lines


def daemon_name(cfg: Settings) -> str:
    """``--name``, else derived from the sensors: ``eth0``, ``nflog-1``, ``eth0+nflog-1``."""
    given: str = getattr(cfg, "name", "")  # the names branch adds Settings.name
    return given or "+".join(s.name if s.kind == "pcap" else f"nflog-{s.name}"
                             for s in cfg.sensors)


def state_path(cfg: Settings) -> str:
    return os.path.join(STATE_DIR, f"{daemon_name(cfg)}.state")


def fingerprint(cfg: Settings) -> str:
    """sha256 of the argv lists of start and stop: another command, another
    service. Worked out in a forked child: hashlib maps OpenSSL's libcrypto,
    3 MiB that the supervisor would keep for this one digest."""
    argvs = json.dumps([cfg.argv("start"), cfg.argv("stop")], separators=(",", ":"))
    return str(forked.answer(lambda: _sha256(argvs), "fingerprint"))


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def boot_id() -> str:
    with open(BOOT_ID) as f:
        return f.read().strip()


def dump(record: Record) -> bytes:
    return json.dumps({
        "version": VERSION, "state": "up" if record.up else "down", "since": record.since,
        "boot_id": record.boot_id, "command": record.command, "sensor": record.sensor,
        "summary": list(record.summary),
    }, separators=(",", ":")).encode() + b"\n"


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise Corrupt(f"{what} is not a short line of printable text")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise Corrupt("a key is given twice")
    return obj


def _no_constant(name: str) -> None:
    raise Corrupt(f"{name} is not a number")


def parse(data: bytes) -> Record:
    """The record in ``data``; Corrupt for anything but exactly what ``dump`` writes."""
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
    if obj["state"] not in ("up", "down"):
        raise Corrupt("state is neither up nor down")
    since = obj["since"]
    if (isinstance(since, bool) or not isinstance(since, int | float)
            or not math.isfinite(since) or not 0 < since < 2**40):
        raise Corrupt("since is not a time")
    if not isinstance(obj["boot_id"], str) or not _UUID.fullmatch(obj["boot_id"]):
        raise Corrupt("boot_id is not a boot id")
    if not isinstance(obj["command"], str) or not _SHA256.fullmatch(obj["command"]):
        raise Corrupt("command is not a sha256")
    summary = obj["summary"]
    if not isinstance(summary, list) or len(summary) > MAX_LINES:
        raise Corrupt(f"summary is not a list of at most {MAX_LINES} lines")
    return Record(up=obj["state"] == "up", since=float(since), boot_id=obj["boot_id"],
                  command=obj["command"], sensor=_text(obj["sensor"], "sensor"),
                  summary=tuple(_text(line, "a summary line") for line in summary))


def _safe_dir(path: str) -> str | None:
    """Why ``path`` cannot hold root's state (made if missing), or None."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        return f"{path} is not a directory of root's that only root can write to"
    return None


class StateFile:
    def __init__(self, cfg: Settings) -> None:
        self.path = state_path(cfg)
        self.command = fingerprint(cfg)
        self.boot = boot_id()
        self.broken = _safe_dir(os.path.dirname(self.path))

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
        why = self.broken
        record = None
        if why is None:
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
        if why is not None:
            log.info("CORE: no state of a previous run to resume from %s (%s); starting down",
                     self.path, why)
            return None
        return record

    def save(self, up: bool, sensor: str, summary: tuple[str, ...]) -> None:
        if self.broken is not None:
            return
        data = dump(Record(up, time.time(), self.boot, self.command, sensor, summary))
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
