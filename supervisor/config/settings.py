"""The validated configuration: what the command line asked for, checked and resolved."""

from __future__ import annotations

import pwd
from dataclasses import dataclass

# Sensors drop to the account the Debian package makes, where there is one:
# nothing else runs as it, unlike nobody.
SENSOR_ACCOUNTS = ("tuninetd", "nobody")


def default_sensor_user() -> str:
    """The first of SENSOR_ACCOUNTS that exists here (nobody if none does)."""
    for name in SENSOR_ACCOUNTS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return SENSOR_ACCOUNTS[-1]


Program = tuple[tuple[int, int, int, int], ...]  # classic BPF, as SO_ATTACH_FILTER takes it


@dataclass(frozen=True, slots=True)
class SensorSpec:
    kind: str  # "pcap" or "nflog"
    name: str  # interface name, or the group number as text
    link: str = "raw"  # pcap: "ether" or "raw" (how packets start)
    bpf: Program = ()
    # pcap: while up, the program whose packets keep the state up (-a's ACK
    # test, --keep-filter), on a second socket; None: bpf's packets do.
    bpf_keep: Program | None = None
    group: int | None = None
    # nflog, --keep-group: the group whose packets keep the state up while
    # up, when it is not this sensor's own (it binds that one too); with
    # ``keeps`` false, none of this sensor's packets do (another sensor
    # binds the keep group).
    keep_group: int | None = None
    keeps: bool = True
    # --wait-for-interface, the interface missing at startup (link ""): the
    # programs for each link type it may turn out to have, (link, bpf, bpf_keep).
    candidates: tuple[tuple[str, Program, Program | None], ...] = ()

    @property
    def waiting(self) -> bool:
        return self.kind == "pcap" and not self.link

    @property
    def count_group(self) -> int | None:
        """nflog: the group counted while up; None: none."""
        if not self.keeps:
            return None
        return self.group if self.keep_group is None else self.keep_group

    @property
    def label(self) -> str:
        """As in TUNINETD_SENSOR and the logs: ``pcap:eth0``, ``nflog:1``."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """One field per option of options.OPTIONS (which holds the defaults),
    checked and resolved; the sensors stand for -i and -n."""

    command: str  # "" when start_command and stop_command replace it
    sensors: tuple[SensorSpec, ...]
    sensor_user: Account
    ttl: int
    ack_only: bool
    daemon: bool
    pcap_filter: str | None
    pcap_file: str | None
    exec_user: Account | None
    command_timeout: float
    beat: float
    name: str | None  # None: derived from the sensors at start
    control: str | None  # None: /run/tuninetd/NAME.sock
    pidfile: str | None
    metrics: tuple[str, int] | None  # (host, port) of the /metrics endpoint
    # Whole argv lists from the config file; either one replaces [command, event].
    start_command: tuple[str, ...]
    stop_command: tuple[str, ...]
    stop_on_exit: bool  # run stop (if up) before a SIGTERM exit
    retry_start: float | None  # a failed start: standby, re-armed after this long
    wait_for_interface: bool  # an -i interface missing at startup is waited for
    hold: int | None  # the NFQUEUE new connections wait in until start is done
    hold_max: float  # released after this long, even if start still runs
    hold_fail: str  # what a failed start does with the held packets: accept or drop
    # The start threshold: start_packets matching packets within start_window
    # seconds (None: one beat) of the first.
    start_packets: int
    start_window: float | None
    keep_filter: str | None  # pcap: while up, only its packets reset the ttl
    keep_group: int | None  # nflog: while up, only this group's packets do
    timestamps: bool  # stderr lines (not the journal's) begin with the time

    @property
    def start_span(self) -> float:
        return self.beat if self.start_window is None else self.start_window

    def argv(self, event: str) -> list[str]:
        """What the executor runs for ``event`` ("start" or "stop")."""
        explicit = self.start_command if event == "start" else self.stop_command
        return list(explicit) if explicit else [self.command, event]
