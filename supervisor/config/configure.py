"""The configuration, built once: the command line over the config file
over the defaults, every value checked and typed before anything is
spawned. A bad value is one line on stderr and exit 2."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, NamedTuple

from tuninetd.supervisor.config import bpf, configfile, options, probes, values
from tuninetd.supervisor.config.settings import (
    Account,
    SensorSpec,
    Settings,
    default_sensor_user,
)
from tuninetd.supervisor.errors import UsageError

Argv = tuple[str, ...]


class Request(NamedTuple):
    settings: Settings
    check_only: bool  # --check-config: print the settings instead of starting


class _Given:
    """Every option's value, from wherever it came, and where that was, for
    messages: the option on the command line, or the key and line in the
    config file."""

    def __init__(self, argv: dict[str, Any], file: configfile.ConfigFile | None) -> None:
        self.file = file
        self.values = {k: v for k, v in argv.items() if v is not None}
        self.from_file: set[str] = set()
        if file is not None:
            from_file = dict(file.values)
            if "command" in self.values:  # -c replaces the file's commands, all of them
                from_file.pop("start_command", None)
                from_file.pop("stop_command", None)
            for key, value in from_file.items():
                if key not in self.values:
                    self.values[key] = value
                    self.from_file.add(key)
        # Options nobody gave: a default may yield to another option's value.
        self.defaulted = set(options.DEFAULTS) - set(self.values)
        for key, value in options.DEFAULTS.items():
            self.values.setdefault(key, value)

    def __getitem__(self, key: str) -> Any:
        return self.values.get(key)

    def label(self, key: str, option: str) -> str:
        if self.file is not None and key in self.from_file:
            return f"{self.file.where(key)}: {key}"
        return option


def _commands(given: _Given, exec_user: Account | None) -> tuple[str, Argv, Argv]:
    """-c / command, and the file's start_command and stop_command argv lists."""
    o = given.label
    start = probes.argv(o("start_command", "start_command"), given["start_command"],
                        exec_user) if given["start_command"] else ()
    stop = probes.argv(o("stop_command", "stop_command"), given["stop_command"],
                       exec_user) if given["stop_command"] else ()
    if given["command"] is None and start and stop:
        return "", start, stop
    if given["command"] is None and (start or stop):
        name, missing = ("start_command", "stop_command") if start else ("stop_command",
                                                                       "start_command")
        raise UsageError(f"{o(name, name)}: {missing} is missing: give both, "
                         "or command (-c) for the other")
    return probes.command(given["command"], o("command", "-c"), exec_user), start, stop


def parse(argv: list[str]) -> Request:
    ns = vars(options.parser().parse_args(argv))
    check_only = bool(ns.pop("check_config"))
    path = ns.pop("config")
    given = _Given(ns, configfile.load(path) if path is not None else None)
    return Request(_settings(given), check_only)


def _checked(given: _Given) -> dict[str, Any]:
    """Every option that its table row checks alone, as a Settings field."""
    out = {}
    for o in options.OPTIONS:
        if o.in_file and o.check is not None:
            value = given[o.key]
            out[o.field or o.key] = (o.check(given.label(o.key, o.flag), value)
                                     if value is not None else None)
    return out


def _hold_max(given: _Given, timeout: float, hold_max: float) -> float:
    """At most the command timeout (0: none): a start's end releases by then."""
    if not timeout or hold_max <= timeout:
        return hold_max
    if "hold_max" in given.defaulted:
        return timeout
    raise UsageError(f"{given.label('hold_max', '--hold-max')} {hold_max:g}: longer than "
                     f"the command timeout ({timeout:g} s), when start is over anyway; give "
                     "less, or a longer --command-timeout")


def _settings(given: _Given) -> Settings:
    """The checks of one option that need another, then the Settings."""
    o = given.label
    interfaces, groups, flt = given["interfaces"], given["groups"], given["filter"]
    if given["hold"] is not None and not interfaces and not groups:
        raise UsageError(f"{o('hold', '--hold')} {given['hold']}: the hold only gates, a "
                         "sensor decides when start runs: add -n GROUP (a rule logging the "
                         "packets it queues) or -i IFNAME")
    if not interfaces and not groups:
        raise UsageError("no sensor: give -i <ifname> and/or -n <nflog-group> "
                         "(interfaces or groups in a config file)")
    for option, sources in ((o("interfaces", "-i"), interfaces), (o("groups", "-n"), groups)):
        seen = set()
        for v in sources:
            if v in seen:
                raise UsageError(f"{option} {str(v)!r} given twice: one sensor per source")
            seen.add(v)
    if flt is not None and not interfaces:
        raise UsageError(f"{o('filter', '-f')} {flt!r}: a filter applies to -i sensors, "
                         "and there is none")
    checked = _checked(given)
    checked["hold_max"] = _hold_max(given, checked["command_timeout"], checked["hold_max"])
    user = default_sensor_user() if given["user"] is None else given["user"]
    sensor_user = probes.account(o("user", "--user"), user)
    if sensor_user.uid == 0:
        raise UsageError(f"{o('user', '--user')} {user!r}: sensors must drop to an "
                         "unprivileged account")
    exec_user = (probes.account(o("exec_user", "--exec-user"), given["exec_user"])
                 if given["exec_user"] is not None else None)
    command, start_command, stop_command = _commands(given, exec_user)
    pcap_file = (probes.pcap_file(given["pcap_file"], o("pcap_file", "-w"))
                 if given["pcap_file"] is not None else None)
    _threshold(given)
    pcap = [probes.interface(i, o("interfaces", "-i"), given["wait_for_interface"])
            for i in interfaces]
    nflog = [values.group(g, o("groups", "-n")) for g in groups]
    keep, keep_option = _keep_filter(given)
    sensors = (probes.with_filters(pcap, flt, keep, o("filter", "-f"), keep_option)
               + _keep_group(nflog, checked["keep_group"], o("keep_group", "--keep-group")))
    typed = {
        **checked,
        "command": command,
        "sensors": tuple(sensors),
        "sensor_user": sensor_user,
        "ack_only": given["ack_only"],
        "daemon": given["daemon"],
        "pcap_filter": flt,
        "pcap_file": pcap_file,
        "exec_user": exec_user,
        "start_command": start_command,
        "stop_command": stop_command,
        "stop_on_exit": given["stop_on_exit"],
        "wait_for_interface": given["wait_for_interface"],
        "keep_filter": given["keep_filter"],
        "timestamps": given["timestamps"],
    }
    return Settings(**typed)


def _threshold(given: _Given) -> None:
    o = given.label
    if given["start_window"] is not None and given["start_packets"] == 1:
        raise UsageError(f"{o('start_window', '--start-window')} {given['start_window']}: "
                         "a start window needs --start-packets 2 or more (the first packet "
                         "starts otherwise)")


def _keep_filter(given: _Given) -> tuple[str | None, str]:
    """The pcap sensors' keep-alive expression, and how to name it: the
    --keep-filter, or -a's ACK test of the filter; None: the filter's packets."""
    o = given.label
    keep, ack = given["keep_filter"], given["ack_only"]
    if keep is not None and not given["interfaces"]:
        raise UsageError(f"{o('keep_filter', '--keep-filter')} {keep!r}: a keep-alive filter "
                         "applies to -i sensors, and there is none (--keep-group is the -n "
                         "sensors' one)")
    if keep is not None and ack and not given["groups"]:
        raise UsageError(f"{o('keep_filter', '--keep-filter')} {keep!r} and "
                         f"{o('ack_only', '-a')}: -a is the ACK keep-alive filter; give one "
                         "(with both, write the ACK test into the keep-alive filter)")
    shown = o("keep_filter", "--keep-filter") if keep is not None else o("ack_only", "-a")
    return bpf.keep_expression(keep, given["filter"], ack), shown


def _keep_group(nflog: list[SensorSpec], keep: int | None, option: str) -> list[SensorSpec]:
    """--keep-group: the one nflog sensor that counts it while up (its own,
    or the first one, which binds it beside its group); the others count
    nothing while up."""
    if keep is None:
        return nflog
    if not nflog:
        raise UsageError(f"{option} {keep}: a keep-alive group applies to -n sensors, "
                         "and there is none (--keep-filter is the -i sensors' one)")
    holder = next((s for s in nflog if s.group == keep), nflog[0])
    return [replace(s, keep_group=keep if s is holder and s.group != keep else None,
                    keeps=s is holder) for s in nflog]


def parse_or_exit(argv: list[str]) -> Request:
    try:
        return parse(argv)
    except UsageError as exc:
        print(f"tuninetd: {exc}", file=sys.stderr)
        sys.exit(2)
