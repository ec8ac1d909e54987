"""The command line as argparse reads it: the original's flags plus ours,
the usage text and ``--help``. Values come out as given (text); checking
them is configure.py's job."""

from __future__ import annotations

import argparse

from tuninetd.common import __version__, usage
from tuninetd.supervisor.instance import RUN_DIR

USAGE = (
    "tuninetd -i <ifname> -c <path> [-a] [-d] [-f <filter>] [-n <nflog-group>] [-t <ttl>]"
    " [-w <path>]\n"
    "       tuninetd -n <nflog-group> -c <path> [-a] [-d] [-i <ifname> [-f <filter>]]"
    " [-t <ttl>] [-w <path>]\n"
    "       [--user NAME] [--exec-user NAME] [--command-timeout SEC] [--beat SEC]\n"
    "       [--name NAME] [--config FILE] [--check-config] [--control PATH] [--pidfile PATH]"
    " [--metrics HOST:PORT]\n"
    "       [--stop-on-exit] [--retry-start SEC] [--wait-for-interface]\n"
    "       tuninetd status [NAME] [--json] [--control PATH]\n"
    "       tuninetd up|down [NAME] [--control PATH]"
)

EPILOG = f"""\
options beyond the original:
  -i and -n may be given several times: one sensor process each.
  Every option has a key of the same name in the --config file (interfaces,
  groups, filter, command, ttl, ack_only, daemon, pcap_file, user, exec_user,
  command_timeout, beat, name, control, pidfile, metrics, stop_on_exit, retry_start,
  wait_for_interface), plus start_command and stop_command (argv lists); the
  command line overrides the file.

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
    a = p.add_argument
    a("-a", dest="ack_only", action="store_true", default=None,
      help="use only tcp[ack] packets to zero TTL timer (see -t)")
    a("-c", dest="command", metavar="<path>",
      help="executable, run with 'start' and 'stop' as its argument")
    a("-d", dest="daemon", action="store_true", default=None,
      help="daemonize; log to syslog as tuninetd (exit 1 if nothing listens on /dev/log)")
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
      help="account the sensors drop to after opening their capture "
      "(default tuninetd if that account exists, else nobody)")
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
    a("--name", metavar="NAME",
      help="this daemon's name, for status, up and down (default: its sensors', "
      "e.g. eth0, nflog-1, eth0+nflog-1, made unique)")
    a("--control", metavar="PATH",
      help=f"control socket for status, up and down (default {RUN_DIR}/NAME.sock)")
    a("--pidfile", metavar="PATH", help="write the daemon's pid here; removed at exit")
    a("--metrics", metavar="HOST:PORT",
      help="serve Prometheus metrics at http://HOST:PORT/metrics "
      "(needs: pip install tuninetd[metrics])")
    a("--stop-on-exit", action="store_true", default=None,
      help="on SIGTERM/SIGINT run stop first if the state is up (within --command-timeout); "
      "without it, exiting leaves the service as it is, as the original does")
    a("--retry-start", metavar="SEC",
      help="a start that fails puts the daemon back in standby (stop is not run); the "
      "sensors are armed again after SEC seconds (default: a warning, the state stays up)")
    a("--wait-for-interface", action="store_true", default=None,
      help="an -i interface that does not exist yet is waited for (capture starts when "
      "it appears) instead of exit 2")
    a("-h", "--help", action="help", help="print this help")
    a("-v", "--version", action="version", version=f"tuninetd {__version__}",
      help="print version")
    return p
