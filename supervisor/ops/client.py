"""The client: ``tuninetd status [NAME] [--json] [--control PATH]`` asks the
running daemons how they are, ``tuninetd up|down [NAME]`` tells one what to
do. Daemons are found by their control sockets in /run/tuninetd.

Exit status: 0 answered, 2 bad usage (or several daemons and no NAME for a
verb), 3 no daemon running (no socket, or a stale one nobody listens on) or
no daemon of that name, 4 permission denied (the socket is root's, mode
0600), 1 anything else (no answer in time, a garbled one, one from a
process that is not root's).

Whoever listens on the socket is asked for its uid (SO_PEERCRED) before it
is believed, and what it answers is printed sanitised: only printable ASCII
in text, valid JSON with every string cleaned the same way, so no answer can
move the cursor, clear the screen or set the terminal's title.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import json
import math
import os
import socket
import sys
import time
from typing import Any, NoReturn

from tuninetd.common import __version__
from tuninetd.supervisor import instance
from tuninetd.supervisor.ops.control import peer_uid

TIMEOUT = 5.0
MAX_REPLY = 1 << 20

OK, FAILED, USAGE, NOT_RUNNING, DENIED = 0, 1, 2, 3, 4


class StatusError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(USAGE)


ABOUT = {
    "status": "Show the state of the running tuninetd daemons, or of the one named.",
    "up": 'Run "start" now, as if matching traffic came (the ttl clock starts).',
    "down": 'Run "stop" now, as SIGHUP does.',
}


def _parser(verb: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"tuninetd {verb}", description=f"{ABOUT[verb]} Needs root.",
                epilog="exit status: 0 ok, 2 bad usage, 3 no daemon running or no such "
                "name, 4 permission denied")
    p.add_argument("name", metavar="NAME", nargs="?",
                   help="the daemon's name (see tuninetd status)")
    if verb == "status":
        p.add_argument("--json", action="store_true",
                       help="print a JSON array, one object per daemon")
    p.add_argument("--control", metavar="PATH",
                   help=f"the daemon's control socket (default {instance.RUN_DIR}/NAME.sock)")
    p.add_argument("-v", "--version", action="version", version=f"tuninetd {__version__}")
    return p


def query(path: str, timeout: float = TIMEOUT, cmd: str = "status") -> dict[str, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, NotADirectoryError):
            raise StatusError(f"no daemon running: control socket {path} does not exist",
                              NOT_RUNNING) from None
        except ConnectionRefusedError:
            raise StatusError(f"no daemon running: nobody listens on {path} (stale socket)",
                              NOT_RUNNING) from None
        except PermissionError:
            raise StatusError(f"permission denied: {path} (run as root)", DENIED) from None
        except OSError as exc:
            if exc.errno == errno.ENOTSOCK:
                raise StatusError(f"no daemon running: {path} is not a socket",
                                  NOT_RUNNING) from None
            raise StatusError(f"cannot connect to {path}: {exc.strerror or exc}",
                              FAILED) from None
        owner = peer_uid(sock)
        if owner not in (0, os.geteuid()):
            raise StatusError(f"not asking the process on {path}: it runs as uid {owner}, "
                              "not root, so it is not tuninetd", FAILED)
        data = b""
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # a refusal may already be waiting
                sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            while b"\n" not in data and len(data) <= MAX_REPLY:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise StatusError(f"no answer from the daemon on {path} within {timeout:g} s",
                              FAILED) from None
        except OSError as exc:
            raise StatusError(f"lost the connection to {path}: {exc.strerror or exc}",
                              FAILED) from None
    finally:
        sock.close()
    try:
        record = json.loads(data.partition(b"\n")[0])
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict):
        raise StatusError(f"the daemon on {path} gave no valid answer", FAILED)
    if "error" in record:
        error = str(record["error"])
        code = DENIED if error == "permission denied" else FAILED
        raise StatusError(f"{error}: {path}" if code == DENIED else error, code)
    return record


def sanitised(value: Any) -> Any:
    """``value`` (a decoded JSON answer) with every string, keys included, cut
    to printable ASCII (anything else becomes ``?``) and every float that
    JSON cannot write (NaN, infinities) made null."""
    if isinstance(value, str):
        return "".join(c if " " <= c <= "~" else "?" for c in value)
    if isinstance(value, dict):
        return {sanitised(k): sanitised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sanitised(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(seconds_ago: float | None, at: float | None) -> str:
    if seconds_ago is None:
        return ""
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "?"
    return f"{duration(seconds_ago)} ago ({clock})"


def render(s: dict[str, Any]) -> str:
    out = [f"{s.get('name', '?')}: {s.get('state')} (tuninetd {s.get('version', '?')}, "
           f"pid {s.get('pid', '?')})"]

    def field(name: str, value: str) -> None:
        out.append(f"  {name + ':':<14}{value}")

    field("ttl", f"{s.get('ttl')} s")
    start = s.get("start")
    if isinstance(start, dict) and start.get("text"):
        field("start on", str(start["text"]))
    keep = s.get("keep_alive")
    if isinstance(keep, dict):
        for n, (sensor, what) in enumerate(keep.items()):
            field("kept up by" if n == 0 else "", f"{sensor}: {what}")
    idle = s.get("idle_seconds")
    field("idle", "no matching packet yet" if idle is None
          else f"{duration(idle)} since the last matching packet")
    trigger = s.get("last_trigger")
    if trigger:
        field("last trigger", f"{trigger.get('sensor')}, "
              f"{_when(trigger.get('seconds_ago'), trigger.get('time'))}")
        for line in trigger.get("lines") or []:
            out.append(f"  {'':<14}{line}")
    else:
        field("last trigger", "none yet")
    c = s.get("commands") or {}
    starts, stops = c.get("starts", 0), c.get("stops", 0)
    field("commands", f"{starts} start{'s' * (starts != 1)}, {stops} stop{'s' * (stops != 1)}"
          f" run, {c.get('failed', 0)} failed")
    for name, key in (("last command", "last"), ("last failure", "last_failure")):
        last = c.get(key)
        if last:
            took = "" if last.get("duration") is None else f" after {last['duration']:.2f} s"
            field(name, f"{last.get('event')}: {last.get('result')}{took}, "
                  f"{_when(last.get('seconds_ago'), last.get('time'))}")
    if c.get("running") or c.get("pending"):
        field("queue", f"running: {c.get('running') or '-'}; "
              f"waiting: {', '.join(c.get('pending') or []) or '-'}")
    hold = s.get("hold")
    if hold:
        field("hold", f"queue {hold.get('queue')}, {hold.get('state')}: "
              f"{hold.get('held', 0)} held now, {hold.get('released', 0)} released, "
              f"{hold.get('overflowed', 0)} overflowed")
    out.append("")
    header = ("ROLE", "PID", "USER", "STATE", "UPTIME", "RESTARTS", "CPU%", "RSS")
    rows = [header]
    for p in s.get("processes") or []:
        cpu = p.get("cpu_percent")
        rows.append((
            str(p.get("role")), str(p.get("pid") or "-"), str(p.get("user") or "-"),
            str(p.get("state")), duration(p.get("uptime_seconds")), str(p.get("restarts", 0)),
            "-" if cpu is None else f"{cpu:.1f}", size(p.get("rss_bytes")),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    for p in s.get("processes") or []:
        if p.get("last_exit"):
            out.append(f"  last exit of {p.get('role')}: {p['last_exit']}")
    return "\n".join(out) + "\n"


def sockets(name: str | None, control: str | None) -> list[str]:
    """The control sockets to ask: the one given, the one named, or all."""
    if control is not None:
        return [control]
    if name is not None:
        if (why := instance.problem(name)) is not None:
            raise StatusError(f"{name!r}: not a daemon name: {why}", USAGE)
        return [instance.socket_path(name)]
    return sorted(glob.glob(os.path.join(glob.escape(instance.RUN_DIR), "*.sock")),
                  key=lambda path: os.path.basename(path).removesuffix(".sock"))


def gather(name: str | None, control: str | None) -> list[tuple[str, dict[str, Any]]]:
    """(socket, status) of each daemon that answers. Sockets of daemons that
    are gone are passed over, unless the one asked for is such a socket."""
    paths = sockets(name, control)
    found = []
    for path in paths:
        try:
            found.append((path, query(path)))
        except StatusError as exc:
            if exc.code != NOT_RUNNING or len(paths) == 1:
                if name is not None and exc.code == NOT_RUNNING:
                    raise StatusError(f"no daemon named {name} is running "
                                      f"(no live control socket {path})", NOT_RUNNING) from None
                raise
    if not found:
        raise StatusError(f"no daemon running: no live control socket in {instance.RUN_DIR}",
                          NOT_RUNNING)
    return found


def act(verb: str, name: str | None, control: str | None) -> str:
    daemons = gather(name, control)
    if len(daemons) > 1:
        names = ", ".join(str(record.get("name")) for _path, record in daemons)
        raise StatusError(f"several daemons run: name one ({names})", USAGE)
    path, _record = daemons[0]
    reply = query(path, cmd=verb)
    return f"{reply.get('name')} (pid {reply.get('pid')}): {reply.get('result')}"


def main(verb: str, argv: list[str]) -> int:
    ns = _parser(verb).parse_args(argv)
    try:
        if verb != "status":
            print(sanitised(act(verb, ns.name, ns.control)))
            return OK
        records = [sanitised(record) for _path, record in gather(ns.name, ns.control)]
    except StatusError as exc:
        print(f"tuninetd {verb}: {sanitised(str(exc))}", file=sys.stderr)
        return exc.code
    if ns.json:
        print(json.dumps(records, indent=2, sort_keys=False))
    else:
        sys.stdout.write("\n".join(render(r) for r in records))
    return OK
