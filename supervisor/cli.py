"""The command line: the original's flags plus ours, every value checked
before anything is spawned. A bad value is one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import sys
from typing import NoReturn

from tuninetd.common import __version__
from tuninetd.supervisor import bpf
from tuninetd.supervisor.config import Account, Config, SensorSpec

MAX_TTL = 10 * 365 * 86400
MAX_TIMEOUT = 7 * 86400
IFNAMSIZ = 16

USAGE = (
    "tuninetd -i <ifname> -c <path> [-a] [-d] [-f <filter>] [-n <nflog-group>] [-t <ttl>]"
    " [-w <path>]\n"
    "       tuninetd -n <nflog-group> -c <path> [-a] [-d] [-i <ifname> [-f <filter>]]"
    " [-t <ttl>] [-w <path>]\n"
    "       [--user NAME] [--exec-user NAME] [--command-timeout SEC] [--beat SEC]"
)

EPILOG = """\
options beyond the original:
  -i and -n may be given several times: one sensor process each.

signals:
  SIGHUP   don't wait for ttl, run "stop" now
  SIGUSR1  log the configuration and the current state
  SIGTERM, SIGINT  exit (a running command may finish within its timeout)

examples:
  tuninetd -n 1 -c /path/to/toggletunnel.sh -w /path/to/pcap-savefile
  tuninetd -i tap0 -c /path/to/toggleservice.sh -a
  tuninetd -i tun0 -f "! host 1.2.3.4" -c /path/to/somebinary -t 3600 -d
  tuninetd -i enp3s0 -f "arp and host 4.3.2.1" -n 1 -c /path/to/run.py
"""


class UsageError(Exception):
    """A bad value on the command line: the message names the option and the value."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tuninetd",
        usage=USAGE,
        description="Network event emitter: runs <path> start when matching traffic "
        "appears and <path> stop after <ttl> idle seconds.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    a = p.add_argument
    a("-a", dest="ack_only", action="store_true",
      help="use only tcp[ack] packets to zero TTL timer (see -t)")
    a("-c", dest="command", metavar="<path>",
      help="executable, run with 'start' and 'stop' as its argument")
    a("-d", dest="daemon", action="store_true", help="daemonize; log to syslog as tuninetd")
    a("-f", dest="filter", metavar="<filter>",
      help="packet filter for the pcap sensors, as tcpdump takes it")
    a("-i", dest="interfaces", metavar="<ifname>", action="append", default=[],
      help="network interface for a pcap sensor (repeatable)")
    a("-n", dest="groups", metavar="<nflog-group>", action="append", default=[],
      help="netfilter NFLOG group 0..65535 for an nflog sensor (repeatable)")
    a("-t", dest="ttl", metavar="<ttl>", default="600",
      help="seconds without matching packets before 'stop' is run (default 600)")
    a("-w", dest="pcap_file", metavar="<path>",
      help="append each start-event packet to this pcap savefile")
    a("--user", default="nobody", metavar="NAME",
      help="account the sensors drop to after opening their capture (default nobody)")
    a("--exec-user", metavar="NAME",
      help="account the commands run as (default: the daemon's own)")
    a("--command-timeout", default="300", metavar="SEC",
      help="kill a start/stop command and its process tree after SEC seconds "
      "(default 300; 0 means never)")
    a("--beat", default="1", metavar="SEC",
      help="heartbeat interval of the workers (default 1; at least 0.1)")
    a("-h", "--help", action="help", help="print this help")
    a("-v", "--version", action="version", version=f"tuninetd {__version__}",
      help="print version")
    return p


def _whole_seconds(option: str, text: str, maximum: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: expected a positive whole number of seconds"
        ) from None
    if not 0 < value <= maximum:
        raise UsageError(f"{option} {text}: expected a whole number of seconds from 1 to {maximum}")
    return value


def _seconds(option: str, text: str, minimum: float, maximum: float, zero_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or not (minimum <= value <= maximum or (zero_ok and value == 0)):
        lo = "0 (never) or " if zero_ok else ""
        raise UsageError(f"{option} {text!r}: expected {lo}seconds from {minimum:g} to {maximum:g}")
    return value


def _account(option: str, name: str) -> Account:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise UsageError(f"{option} {name!r}: no such user on this system") from None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid)


def _command(text: str | None) -> str:
    if text is None:
        raise UsageError("-c <path> is required: the executable to run with start and stop")
    if not text:
        raise UsageError("-c '': expected the path of an executable, got an empty string")
    path = os.path.abspath(text)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"-c {text!r}: {(exc.strerror or str(exc)).lower()}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"-c {text!r}: is a directory, expected an executable file")
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise UsageError(f"-c {text!r}: not executable (chmod +x it)")
    return path


def _interface(name: str, flt: str | None, ack_only: bool) -> SensorSpec:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name in (".", ".."):
        raise UsageError(f"-i {name!r}: not a valid interface name (1 to 15 bytes)")
    link = bpf.link_of(name)
    if link is None:
        raise UsageError(f"-i {name!r}: no such network interface (see: ip link)")
    try:
        prog = bpf.compile_filter(flt or "", link)
        ack = bpf.compile_filter(bpf.ack_expression(flt), link) if ack_only else None
    except bpf.FilterError as exc:
        raise UsageError(f"-f {flt!r}: {exc} (on {name}, link type {link})") from None
    return SensorSpec("pcap", name, link=link, bpf=prog, bpf_ack=ack)


def _group(text: str) -> SensorSpec:
    try:
        group = int(text, 10)
    except ValueError:
        group = -1
    if not 0 <= group <= 65535:
        raise UsageError(f"-n {text!r}: expected an NFLOG group number from 0 to 65535")
    return SensorSpec("nflog", str(group), group=group)


def _pcap_file(text: str) -> str:
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise UsageError(f"-w {text!r}: is a directory, expected a file path")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"-w {text!r}: directory {folder} does not exist or is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"-w {text!r}: file is not writable")
    return path


def parse(argv: list[str]) -> Config:
    ns = _parser().parse_args(argv)
    if not ns.interfaces and not ns.groups:
        raise UsageError("no sensor: give -i <ifname> and/or -n <nflog-group>")
    for option, values in (("-i", ns.interfaces), ("-n", ns.groups)):
        seen = set()
        for v in values:
            if v in seen:
                raise UsageError(f"{option} {v!r} given twice: one sensor per source")
            seen.add(v)
    if ns.filter is not None and not ns.interfaces:
        raise UsageError(f"-f {ns.filter!r}: a filter applies to -i sensors, and there is none")
    command = _command(ns.command)
    ttl = _whole_seconds("-t", ns.ttl, MAX_TTL)
    timeout = _seconds("--command-timeout", ns.command_timeout, 0.1, MAX_TIMEOUT, zero_ok=True)
    beat = _seconds("--beat", ns.beat, 0.1, 60, zero_ok=False)
    sensor_user = _account("--user", ns.user)
    if sensor_user.uid == 0:
        raise UsageError(f"--user {ns.user!r}: sensors must drop to an unprivileged account")
    exec_user = _account("--exec-user", ns.exec_user) if ns.exec_user is not None else None
    sensors = [_interface(i, ns.filter, ns.ack_only) for i in ns.interfaces]
    sensors += [_group(g) for g in ns.groups]
    return Config(
        command=command,
        sensors=tuple(sensors),
        sensor_user=sensor_user,
        ttl=ttl,
        ack_only=ns.ack_only,
        daemon=ns.daemon,
        pcap_filter=ns.filter,
        pcap_file=_pcap_file(ns.pcap_file) if ns.pcap_file is not None else None,
        exec_user=exec_user,
        command_timeout=timeout,
        beat=beat,
    )


def parse_or_exit(argv: list[str]) -> Config:
    try:
        return parse(argv)
    except UsageError as exc:
        print(f"tuninetd: {exc}", file=sys.stderr)
        sys.exit(2)
