"""Every option of the daemon, declared once, as gunicorn's config declares
its settings: the flags, the config file key and its TOML type, the default,
the check of one value, the help. The argparse parser, the config file's
keys, the defaults, ``--check-config``'s rendering and the help's key list
are made from this table; the checks that need two options at once (a
filter needs an interface, a command its exec user) are configure.py's."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuninetd.common import __version__, usage
from tuninetd.supervisor.config import probes, values
from tuninetd.supervisor.config.settings import SENSOR_ACCOUNTS, Settings
from tuninetd.supervisor.errors import UsageError
from tuninetd.supervisor.instance import RUN_DIR

# The original's flags, in its own usage lines; everything else is listed after.
ORIGINAL_USAGE = (
    "tuninetd -i <ifname> -c <path> [-a] [-d] [-f <filter>] [-n <nflog-group>] [-t <ttl>]"
    " [-w <path>]\n"
    "       tuninetd -n <nflog-group> -c <path> [-a] [-d] [-i <ifname> [-f <filter>]]"
    " [-t <ttl>] [-w <path>]"
)
CLIENT_USAGE = (
    "       tuninetd status [NAME] [--json] [--control PATH]\n"
    "       tuninetd up|down [NAME] [--control PATH]"
)

Check = Callable[[str, Any], Any]  # (how to name the option, given value) -> typed value


@dataclass(frozen=True, slots=True)
class Option:
    """One option. ``key`` is its config file key and argparse dest; ``field``
    the Settings field that holds the checked value (the key when empty)."""

    key: str
    flags: tuple[str, ...]  # on the command line; () for a config-file-only key
    kind: str  # TOML type: str, int, number, bool, strings, ints, argv
    help: str  # "{default}" in it is replaced by the default
    metavar: str | None = None
    default: Any = None  # typed; None: not set
    check: Check | None = None  # None: taken as given, or checked in configure.py
    field: str = ""
    # The value --check-config prints, from the Settings (default: the field).
    show: Callable[[Settings], Any] | None = None
    in_file: bool = True  # False: the command line alone (--config, --check-config)

    @property
    def flag(self) -> str:
        """How messages name it when it comes from the command line."""
        return self.flags[-1] if self.flags else self.key

    def shown(self, cfg: Settings) -> Any:
        if self.show is not None:
            return self.show(cfg)
        value = getattr(cfg, self.field or self.key)
        return value if value != () else None


def _ttl(option: str, given: Any) -> int:
    return values.whole_seconds(option, given, values.MAX_TTL)


def _timeout(option: str, given: Any) -> float:
    return values.seconds(option, given, 0.1, values.MAX_TIMEOUT, zero_ok=True)


def _beat(option: str, given: Any) -> float:
    return values.seconds(option, given, 0.1, 60, zero_ok=False)


def _retry(option: str, given: Any) -> float:
    return values.seconds(option, given, 0.1, 86400, zero_ok=False)


def _hold_max(option: str, given: Any) -> float:
    # Checked against --command-timeout in configure.py.
    return values.seconds(option, given, 0.1, values.MAX_TIMEOUT, zero_ok=False)


def _hold_fail(option: str, given: Any) -> str:
    return values.choice(option, given, ("accept", "drop"))
def _start_packets(option: str, given: Any) -> int:
    return values.whole(option, given, 1, values.MAX_START_PACKETS, "packets")


def _start_window(option: str, given: Any) -> float:
    return values.seconds(option, given, 0.01, 3600, zero_ok=False)


def _name(option: str, given: Any) -> str:
    from tuninetd.supervisor import instance

    if (why := instance.problem(given)) is not None:
        raise UsageError(f"{option} {given!r}: {why}")
    return str(given)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


OPTIONS: tuple[Option, ...] = (
    Option("ack_only", ("-a",), "bool", "use only tcp[ack] packets to zero TTL timer (see -t)",
           default=False),
    Option("command", ("-c",), "str", "executable, run with 'start' and 'stop' as its argument "
           "(one path: arguments go in start_command and stop_command in a --config file)",
           metavar="<path>", show=lambda cfg: cfg.command or None),
    Option("daemon", ("-d",), "bool", "daemonize; log to syslog as tuninetd (exit 1 if "
           "nothing listens on /dev/log)", default=False),
    Option("filter", ("-f",), "str", "packet filter for the pcap sensors, as tcpdump takes it",
           metavar="<filter>", field="pcap_filter"),
    Option("interfaces", ("-i",), "strings",
           "network interface for a pcap sensor (repeatable)", metavar="<ifname>", default=[],
           show=lambda cfg: [s.name for s in cfg.sensors if s.kind == "pcap"]),
    Option("groups", ("-n",), "ints",
           "netfilter NFLOG group 0..65535 for an nflog sensor (repeatable)",
           metavar="<nflog-group>", default=[],
           show=lambda cfg: [s.group for s in cfg.sensors if s.kind == "nflog"]),
    Option("ttl", ("-t",), "int", "seconds without matching packets before 'stop' is run "
           "(default {default})", metavar="<ttl>", default=600, check=_ttl),
    Option("pcap_file", ("-w",), "str", "append each start-event packet to this pcap savefile",
           metavar="<path>"),
    Option("user", ("--user",), "str", "account the sensors drop to after opening their "
           "capture (default " + " if that account exists, else ".join(SENSOR_ACCOUNTS) + ")",
           metavar="NAME", field="sensor_user", show=lambda cfg: cfg.sensor_user.name),
    Option("exec_user", ("--exec-user",), "str",
           "account the commands run as (default: the daemon's own)", metavar="NAME",
           show=lambda cfg: cfg.exec_user.name if cfg.exec_user else None),
    Option("command_timeout", ("--command-timeout",), "number",
           "kill a start/stop command and its process tree after SEC seconds "
           "(default {default:g}; 0 means never)", metavar="SEC", default=300.0,
           check=_timeout),
    Option("beat", ("--beat",), "number",
           "heartbeat interval of the workers (default {default:g}; at least 0.1)",
           metavar="SEC", default=1.0, check=_beat),
    Option("config", ("--config",), "str", "read options from this TOML file (the package's "
           "commented sample: /etc/tuninetd/tuninetd.toml; its keys: man 5 tuninetd.toml); "
           "the command line overrides it", metavar="FILE",
           in_file=False),
    Option("check_config", ("--check-config",), "bool", "check the configuration, print it "
           "as TOML and exit (0: valid, 2: not, 1: its name is held by a running daemon)",
           in_file=False),
    Option("name", ("--name",), "str", "this daemon's name, for status, up and down "
           "(default: its sensors', e.g. eth0, nflog-1, eth0+nflog-1, made unique)",
           metavar="NAME", check=_name),
    Option("control", ("--control",), "str", "control socket for status, up and down "
           f"(default {RUN_DIR}/NAME.sock)", metavar="PATH", check=probes.socket_path),
    Option("pidfile", ("--pidfile",), "str", "write the daemon's pid here; removed at exit",
           metavar="PATH", check=probes.file_path),
    Option("metrics", ("--metrics",), "str", "serve Prometheus metrics at "
           "http://HOST:PORT/metrics (needs prometheus-client)", metavar="HOST:PORT",
           check=probes.metrics,
           show=lambda cfg: f"{_host(cfg.metrics[0])}:{cfg.metrics[1]}" if cfg.metrics
           else None),
    Option("stop_on_exit", ("--stop-on-exit",), "bool", "on SIGTERM/SIGINT run stop first if "
           "the state is up (within --command-timeout); without it, exiting leaves the "
           "service as it is, as the original does", default=False),
    Option("retry_start", ("--retry-start",), "number", "a start that fails puts the daemon "
           "back in standby (stop is not run); the sensors are armed again after SEC seconds "
           "(default: a warning, the state stays up)", metavar="SEC", check=_retry),
    Option("wait_for_interface", ("--wait-for-interface",), "bool", "an -i interface that "
           "does not exist yet is waited for (capture starts when it appears) instead of "
           "exit 2", default=False),
    Option("hold", ("--hold",), "int", "hold the packets your rule queues to NFQUEUE QUEUE "
           "(0..65535) until start is done, so the first connection is served, not lost "
           "(see docs/on-demand.md); a sensor must see the same packets", metavar="QUEUE",
           check=values.queue),
    Option("hold_max", ("--hold-max",), "number", "let the held packets go after SEC "
           "seconds even if start still runs (default {default:g}; at most "
           "--command-timeout)", metavar="SEC", default=10.0, check=_hold_max),
    Option("hold_fail", ("--hold-fail",), "str", "what a failed or timed-out start does "
           "with the held packets (default {default}: a TCP client is refused at once; "
           "drop: nothing passes until a start succeeds)", metavar="accept|drop",
           default="accept", check=_hold_fail),
    Option("start_packets", ("--start-packets",), "int", "start only when N matching packets "
           "come within --start-window of the first: stray packets (a router solicitation, "
           "an ARP) then start nothing (default {default}: the first packet starts)",
           metavar="N", default=1, check=_start_packets),
    Option("start_window", ("--start-window",), "number", "seconds from the first matching "
           "packet in which the --start-packets must come (default: one --beat)",
           metavar="SEC", check=_start_window,
           show=lambda cfg: cfg.start_span if cfg.start_packets > 1 else None),
    Option("keep_filter", ("--keep-filter",), "str", "while up, only packets matching this "
           "filter (as tcpdump takes it) keep the pcap sensors' service up; -a is the TCP "
           "ACK filter", metavar="<filter>"),
    Option("keep_group", ("--keep-group",), "int", "while up, only packets logged to this "
           "NFLOG group keep the nflog sensors' service up (bound as well when it is not "
           "an -n group)", metavar="<nflog-group>", check=values.group_number),
    Option("timestamps", ("--timestamps",), "bool", "begin each line logged on stderr with "
           "the local date and time (not on the journal, which keeps its own, nor with -d)",
           default=False),
    Option("start_command", (), "argv", "argv list run for start, instead of [command, start]"),
    Option("stop_command", (), "argv", "argv list run for stop, instead of [command, stop]"),
)

BY_KEY = {o.key: o for o in OPTIONS}
# The config file's keys and their TOML types.
KEYS = {o.key: o.kind for o in OPTIONS if o.in_file}
DEFAULTS = {o.key: o.default for o in OPTIONS if o.default is not None}
# A key a user may write as its flag: "t" or "-t" for ttl.
BY_FLAG = {f.lstrip("-"): o.key for o in OPTIONS if o.in_file for f in o.flags}


def _usage_line(o: Option) -> str:
    return f"[{o.flags[-1]} {o.metavar}]" if o.metavar else f"[{o.flags[-1]}]"


def _usage() -> str:
    ours = [_usage_line(o) for o in OPTIONS if o.flags and o.flags[-1].startswith("--")]
    lines, line = [], "      "
    for part in ours:
        if len(line) + len(part) > 90:
            lines.append(line)
            line = "      "
        line += " " + part
    return "\n".join([ORIGINAL_USAGE, *lines, line, CLIENT_USAGE])


USAGE = _usage()


def _key_list() -> str:
    keys = [o.key for o in OPTIONS if o.in_file and o.flags]
    text, line = [], " "
    for key in keys:
        if len(line) + len(key) > 74:
            text.append(line.rstrip())
            line = " "
        line += f" {key},"
    text.append(line.rstrip(","))
    return "\n".join(text)


EPILOG = f"""\
options beyond the original:
  -i and -n may be given several times: one sensor process each.
  Every option has a key of the same name in the --config file:
{_key_list()}
  plus start_command and stop_command (argv lists); the command line
  overrides the file.

state:
  The daemon keeps its state in /run/tuninetd/NAME.state. Restarted within
  the same boot with the same commands, it resumes "up" without running start
  again; stop runs after ttl without a matching packet.

names:
  Each daemon has a name: --name, or its sensors' (eth0, nflog-1,
  eth0+nflog-1), with -2, -3... added when a running daemon has it already.
  Its control socket is {RUN_DIR}/NAME.sock unless --control is given.

status and control (need root):
  tuninetd status [NAME] [--json] [--control PATH]
      state, ttl, idle time, last trigger, commands run and one row per
      process: of every daemon running on the host, or of the one named
      (--json: an array of objects; exit 3: no daemon running or no such
      name, exit 4: permission denied)
  tuninetd down [NAME]   run "stop" now, as SIGHUP does
  tuninetd up [NAME]     run "start" now, as if matching traffic came
      (NAME may be left out when one daemon runs; exit 3: no such name)

signals:
  SIGHUP   don't wait for ttl, run "stop" now
  SIGUSR1  log the configuration and the current state
  SIGTERM, SIGINT  exit (a running command may finish within its timeout);
           stop is not run, unless --stop-on-exit

examples:
  tuninetd -n 1 -c /path/to/toggletunnel.sh -w /path/to/pcap-savefile
  tuninetd -i tap0 -c /path/to/toggleservice.sh -a
  tuninetd -i tun0 -f "! host 1.2.3.4" -c /path/to/somebinary -t 3600 -d
  tuninetd -i enp3s0 -f "arp and host 4.3.2.1" -n 1 -c /path/to/run.py
  tuninetd --config /etc/tuninetd/tuninetd.toml --check-config
  tuninetd --config /etc/tuninetd/tuninetd.toml --metrics 127.0.0.1:9101
  tuninetd status --json
  tuninetd down tun0
"""


def parser() -> argparse.ArgumentParser:
    p = usage.parser("tuninetd", USAGE, "Network event emitter: runs <path> start when "
                     "matching traffic appears and <path> stop after <ttl> idle seconds.", EPILOG)
    for o in OPTIONS:
        if not o.flags:
            continue
        text = o.help.format(default=o.default)
        if o.kind == "bool":
            # None when not given, so that a config file's value shows through.
            p.add_argument(*o.flags, dest=o.key, action="store_true", default=None, help=text)
        else:
            p.add_argument(*o.flags, dest=o.key, metavar=o.metavar, help=text,
                           action="append" if o.kind in ("strings", "ints") else "store")
    p.add_argument("-h", "--help", action="help", help="print this help")
    p.add_argument("-v", "--version", action="version", version=f"tuninetd {__version__}",
                   help="print version")
    return p
