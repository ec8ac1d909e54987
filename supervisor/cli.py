"""The command line: the original's flags plus ours, every value checked
before anything is spawned. A bad value is one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import stat
import sys
from dataclasses import replace
from typing import NoReturn

from tuninetd.common import __version__, ifname
from tuninetd.supervisor import bpf, configfile
from tuninetd.supervisor.config import DEFAULT_CONTROL, Account, SensorSpec, Settings
from tuninetd.supervisor.errors import UsageError

MAX_TTL = 10 * 365 * 86400
# What an option is when neither the command line nor the config file sets it.
DEFAULTS: dict[str, object] = {
    "interfaces": [],
    "groups": [],
    "ttl": "600",
    "ack_only": False,
    "daemon": False,
    "user": "nobody",
    "command_timeout": "300",
    "beat": "1",
    "control": DEFAULT_CONTROL,
}
SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL
MAX_TIMEOUT = 7 * 86400

USAGE = (
    "tuninetd -i <ifname> -c <path> [-a] [-d] [-f <filter>] [-n <nflog-group>] [-t <ttl>]"
    " [-w <path>]\n"
    "       tuninetd -n <nflog-group> -c <path> [-a] [-d] [-i <ifname> [-f <filter>]]"
    " [-t <ttl>] [-w <path>]\n"
    "       [--user NAME] [--exec-user NAME] [--command-timeout SEC] [--beat SEC]\n"
    "       [--config FILE] [--check-config] [--control PATH] [--pidfile PATH]"
    " [--metrics HOST:PORT]\n"
    "       tuninetd status [--json] [--control PATH]"
)

EPILOG = """\
options beyond the original:
  -i and -n may be given several times: one sensor process each.
  Every option has a key of the same name in the --config file (interfaces,
  groups, filter, command, ttl, ack_only, daemon, pcap_file, user, exec_user,
  command_timeout, beat, control, pidfile, metrics), plus start_command and
  stop_command (argv lists); the command line overrides the file.

status:
  tuninetd status [--json] [--control PATH]
      state, ttl, idle time, last trigger, commands run and one row per
      process of a running daemon (needs root; exit 3: no daemon running,
      exit 4: permission denied)

signals:
  SIGHUP   don't wait for ttl, run "stop" now
  SIGUSR1  log the configuration and the current state
  SIGTERM, SIGINT  exit (a running command may finish within its timeout)

examples:
  tuninetd -n 1 -c /path/to/toggletunnel.sh -w /path/to/pcap-savefile
  tuninetd -i tap0 -c /path/to/toggleservice.sh -a
  tuninetd -i tun0 -f "! host 1.2.3.4" -c /path/to/somebinary -t 3600 -d
  tuninetd -i enp3s0 -f "arp and host 4.3.2.1" -n 1 -c /path/to/run.py
  tuninetd --config /etc/tuninetd/tuninetd.toml --check-config
  tuninetd --config /etc/tuninetd/tuninetd.toml --metrics 127.0.0.1:9101
  tuninetd status --json
"""


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
    a("-a", dest="ack_only", action="store_true", default=None,
      help="use only tcp[ack] packets to zero TTL timer (see -t)")
    a("-c", dest="command", metavar="<path>",
      help="executable, run with 'start' and 'stop' as its argument")
    a("-d", dest="daemon", action="store_true", default=None,
      help="daemonize; log to syslog as tuninetd")
    a("-f", dest="filter", metavar="<filter>",
      help="packet filter for the pcap sensors, as tcpdump takes it")
    a("-i", dest="interfaces", metavar="<ifname>", action="append",
      help="network interface for a pcap sensor (repeatable)")
    a("-n", dest="groups", metavar="<nflog-group>", action="append",
      help="netfilter NFLOG group 0..65535 for an nflog sensor (repeatable)")
    a("-t", dest="ttl", metavar="<ttl>",
      help="seconds without matching packets before 'stop' is run (default 600)")
    a("-w", dest="pcap_file", metavar="<path>",
      help="append each start-event packet to this pcap savefile")
    a("--user", metavar="NAME",
      help="account the sensors drop to after opening their capture (default nobody)")
    a("--exec-user", metavar="NAME",
      help="account the commands run as (default: the daemon's own)")
    a("--command-timeout", metavar="SEC",
      help="kill a start/stop command and its process tree after SEC seconds "
      "(default 300; 0 means never)")
    a("--beat", metavar="SEC",
      help="heartbeat interval of the workers (default 1; at least 0.1)")
    a("--config", metavar="FILE",
      help="read options from this TOML file (see conf/tuninetd.toml); "
      "the command line overrides it")
    a("--check-config", action="store_true",
      help="check the configuration, print it as TOML and exit (0: valid, 2: not)")
    a("--control", metavar="PATH",
      help=f"control socket for 'tuninetd status' (default {DEFAULT_CONTROL})")
    a("--pidfile", metavar="PATH", help="write the daemon's pid here; removed at exit")
    a("--metrics", metavar="HOST:PORT",
      help="serve Prometheus metrics at http://HOST:PORT/metrics "
      "(needs: pip install tuninetd[metrics])")
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


def _command(text: str | None, option: str = "-c") -> str:
    if text is None:
        raise UsageError("-c <path> is required: the executable to run with start and stop")
    if not text:
        raise UsageError(f"{option} '': expected the path of an executable, got an empty string")
    path = os.path.abspath(text)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"{option} {text!r}: {(exc.strerror or str(exc)).lower()}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{option} {text!r}: is a directory, expected an executable file")
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise UsageError(f"{option} {text!r}: not executable (chmod +x it)")
    return path


def _argv(option: str, argv: tuple[str, ...]) -> tuple[str, ...]:
    """start_command / stop_command: the program is looked up in PATH now, once."""
    if any("\0" in arg for arg in argv):
        raise UsageError(f"{option}: an argument contains a NUL byte")
    program = argv[0]
    if program and "/" not in program:
        found = shutil.which(program)
        if found is None:
            raise UsageError(f"{option} {program!r}: not found in PATH ({os.environ.get('PATH')})")
        program = found
    return (_command(program, option), *argv[1:])


def _socket_path(option: str, text: str) -> str:
    path = os.path.abspath(text)
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise UsageError(f"{option} {text!r}: too long for a unix socket path "
                         f"(at most {SUN_PATH_MAX} bytes)")
    return _file_path(option, text)


def _file_path(option: str, text: str) -> str:
    """A file the daemon creates (control socket, pidfile): its directory must exist."""
    if not text:
        raise UsageError(f"{option} '': expected a file path, got an empty string")
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise UsageError(f"{option} {text!r}: is a directory, expected a file path")
    if not os.path.isdir(os.path.dirname(path)):
        raise UsageError(f"{option} {text!r}: directory {os.path.dirname(path)} does not exist")
    return path


def _metrics(option: str, text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text, 10)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise UsageError(f"{option} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9101 "
                         "or [::1]:9101")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"{option} {text!r}: cannot resolve {host!r} ({exc})") from None
    try:
        import prometheus_client  # noqa: F401 - the optional extra, checked now
    except ImportError:
        raise UsageError(f"{option} {text!r}: prometheus-client is not installed: "
                         "pip install tuninetd[metrics]") from None
    return host, port


def _interface(name: str, option: str = "-i") -> SensorSpec:
    if ifname.problem(name) is not None:
        raise UsageError(f"{option} {name!r}: not a valid interface name "
                         f"(1 to {ifname.IFNAMSIZ - 1} bytes, no '/', ':' or spaces)")
    link = bpf.link_of(name)
    if link is None:
        raise UsageError(f"{option} {name!r}: no such network interface (see: ip link)")
    return SensorSpec("pcap", name, link=link)


def _with_filters(specs: list[SensorSpec], flt: str | None, ack_only: bool,
                  option: str = "-f") -> list[SensorSpec]:
    """Every pcap sensor gets its programs, compiled all at once."""
    wanted = [(flt or "", s.link) for s in specs]
    if ack_only:
        wanted += [(bpf.ack_expression(flt), s.link) for s in specs]
    compiled = bpf.compile_filters(wanted)

    def program(expression: str, spec: SensorSpec) -> bpf.Program:
        result = compiled[(expression, spec.link)]
        if isinstance(result, bpf.FilterError):
            raise UsageError(
                f"{option} {flt!r}: {result} (on {spec.name}, link type {spec.link})")
        return result

    return [
        replace(spec, bpf=program(flt or "", spec),
                bpf_ack=program(bpf.ack_expression(flt), spec) if ack_only else None)
        for spec in specs
    ]


def _group(text: str, option: str = "-n") -> SensorSpec:
    try:
        group = int(text, 10)
    except ValueError:
        group = -1
    if not 0 <= group <= 65535:
        raise UsageError(f"{option} {text!r}: expected an NFLOG group number from 0 to 65535")
    return SensorSpec("nflog", str(group), group=group)


def _pcap_file(text: str, option: str = "-w") -> str:
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise UsageError(f"{option} {text!r}: is a directory, expected a file path")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {text!r}: directory {folder} does not exist or is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {text!r}: file is not writable")
    return path


Argv = tuple[str, ...]


class _Origin:
    """Where each value came from, for messages: the option on the command
    line, or the key and line in the config file."""

    def __init__(self) -> None:
        self.file: configfile.ConfigFile | None = None
        self.from_file: set[str] = set()

    def label(self, dest: str, option: str) -> str:
        if self.file is not None and dest in self.from_file:
            return f"{self.file.where(dest)}: {dest}"
        return option


def _apply_file(ns: argparse.Namespace) -> _Origin:
    """Fill in from --config what the command line left out, then the defaults."""
    origin = _Origin()
    if ns.config is not None:
        origin.file = configfile.load(ns.config)
        values = dict(origin.file.values)
        if ns.command is not None:  # -c replaces the file's commands, all of them
            values.pop("start_command", None)
            values.pop("stop_command", None)
        for dest, value in values.items():
            if getattr(ns, dest, None) is None:
                setattr(ns, dest, value)
                origin.from_file.add(dest)
    for dest in ("start_command", "stop_command"):
        if not hasattr(ns, dest):
            setattr(ns, dest, None)
    for dest, value in DEFAULTS.items():
        if getattr(ns, dest) is None:
            setattr(ns, dest, value)
    return origin


def _commands(ns: argparse.Namespace, origin: _Origin) -> tuple[str, Argv, Argv]:
    """-c / command, and the file's start_command and stop_command argv lists."""
    o = origin.label
    start = _argv(o("start_command", "start_command"), ns.start_command) if ns.start_command else ()
    stop = _argv(o("stop_command", "stop_command"), ns.stop_command) if ns.stop_command else ()
    if ns.command is None and start and stop:
        return "", start, stop
    if ns.command is None and (start or stop):
        given, missing = ("start_command", "stop_command") if start else ("stop_command",
                                                                        "start_command")
        raise UsageError(f"{origin.label(given, given)}: {missing} is missing: give both, "
                         "or command (-c) for the other")
    return _command(ns.command, origin.label("command", "-c")), start, stop


def wants_check(argv: list[str]) -> bool:
    """--check-config: print the effective configuration instead of starting."""
    return bool(_parser().parse_args(argv).check_config)


def parse(argv: list[str]) -> Settings:
    ns = _parser().parse_args(argv)
    origin = _apply_file(ns)
    o = origin.label
    if not ns.interfaces and not ns.groups:
        raise UsageError("no sensor: give -i <ifname> and/or -n <nflog-group> "
                         "(interfaces or groups in a config file)")
    for option, values in ((o("interfaces", "-i"), ns.interfaces), (o("groups", "-n"), ns.groups)):
        seen = set()
        for v in values:
            if v in seen:
                raise UsageError(f"{option} {v!r} given twice: one sensor per source")
            seen.add(v)
    if ns.filter is not None and not ns.interfaces:
        raise UsageError(f"{o('filter', '-f')} {ns.filter!r}: a filter applies to -i sensors, "
                         "and there is none")
    command, start_command, stop_command = _commands(ns, origin)
    ttl = _whole_seconds(o("ttl", "-t"), ns.ttl, MAX_TTL)
    timeout = _seconds(o("command_timeout", "--command-timeout"), ns.command_timeout, 0.1,
                       MAX_TIMEOUT, zero_ok=True)
    beat = _seconds(o("beat", "--beat"), ns.beat, 0.1, 60, zero_ok=False)
    sensor_user = _account(o("user", "--user"), ns.user)
    if sensor_user.uid == 0:
        raise UsageError(f"{o('user', '--user')} {ns.user!r}: sensors must drop to an "
                         "unprivileged account")
    exec_user = (_account(o("exec_user", "--exec-user"), ns.exec_user)
                 if ns.exec_user is not None else None)
    control = _socket_path(o("control", "--control"), ns.control)
    pidfile = _file_path(o("pidfile", "--pidfile"), ns.pidfile) if ns.pidfile is not None else None
    metrics = _metrics(o("metrics", "--metrics"), ns.metrics) if ns.metrics is not None else None
    pcap_file = _pcap_file(ns.pcap_file, o("pcap_file", "-w")) if ns.pcap_file is not None else None
    interfaces = [_interface(i, o("interfaces", "-i")) for i in ns.interfaces]
    groups = [_group(g, o("groups", "-n")) for g in ns.groups]
    sensors = _with_filters(interfaces, ns.filter, ns.ack_only, o("filter", "-f"))
    sensors += groups
    return Settings(
        command=command,
        sensors=tuple(sensors),
        sensor_user=sensor_user,
        ttl=ttl,
        ack_only=ns.ack_only,
        daemon=ns.daemon,
        pcap_filter=ns.filter,
        pcap_file=pcap_file,
        exec_user=exec_user,
        command_timeout=timeout,
        beat=beat,
        control=control,
        pidfile=pidfile,
        metrics=metrics,
        start_command=start_command,
        stop_command=stop_command,
    )


def parse_or_exit(argv: list[str]) -> Settings:
    try:
        return parse(argv)
    except UsageError as exc:
        print(f"tuninetd: {exc}", file=sys.stderr)
        sys.exit(2)
