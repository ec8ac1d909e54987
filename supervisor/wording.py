"""The text users' scripts and filters depend on, in one place: the original
daemon's log lines byte for byte, the words for a command's outcome, and the
``TUNINETD_*`` values a command gets.

Every function takes typed values and writes (or returns) the text; no other
module of the supervisor words these.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from tuninetd.common.cgroup import RUN_ID_VAR
from tuninetd.common.logs import log
from tuninetd.supervisor.config import bpf
from tuninetd.supervisor.config.settings import SensorSpec, Settings
from tuninetd.supervisor.events import HoldView, Outcome
from tuninetd.supervisor.facts import Facts


def started(pid: int, daemon: bool) -> None:
    """In the foreground at once; with -d once every worker said hello, so
    that a failed start never says it."""
    if daemon:
        log.info("Success! Tuninetd has been started with PID: %d", pid)
    else:
        log.info("Started with pid %d", pid)


def startup_failed(reason: str) -> None:
    log.error("Error: %s. Abort", reason)


def listening(spec: SensorSpec) -> None:
    if spec.kind == "pcap":
        log.info("Binding to interface %s", spec.name)
    else:
        log.info("Start listening nflog-group %s", spec.name)


PROTOCOLS: dict[int, str] = {
    1: "ICMP",
    2: "IGMP",
    3: "GGP",
    4: "IP-in-IP",
    6: "TCP",
    17: "UDP",
    41: "IPv6",
    43: "IPv6-Route",
    44: "IPv6-Frag",
    47: "GRE",
    50: "ESP",
    52: "I-NLSP",
    55: "MOBILE",
    56: "TLSP",
    58: "IPv6-ICMP",
    59: "IPv6-NoNxt",
    60: "IPv6-Opts",
    66: "RVD",
    88: "EIGRP",
    89: "OSPF",
    97: "ETHERIP",
    98: "ENCAP",
    108: "IPComp",
    111: "IPX-in-IP",
    115: "L2TP",
    124: "IS-IS-over-IPv4",
    129: "IPLT",
    132: "SCTP",
    136: "UDPLite",
    137: "MPLS-in-IP",
    143: "Ethernet",
}

ETHERTYPES: dict[int, str] = {
    0x0800: "IPv4",
    0x0806: "ARP",
    0x0842: "Wake-on-LAN",
    0x8035: "RARP",
    0x809B: "AppleTalk",
    0x80F3: "AppleTalk ARP",
    0x8100: "802.1Q",
    0x8137: "IPX",
    0x86DD: "IPv6",
    0x8808: "Ethernet-Flowcontrol",
    0x8847: "MPLS-unicast",
    0x8848: "MPLS-multicast",
    0x8863: "PPPoE-Discovery",
    0x8864: "PPPoE-Session",
    0x88BF: "MikroTik-RoMON",
    0x88CC: "LLDP",
}

UNRESOLVED = "unresolved"
NOT_IP_LINE = "|- Not IPv4/6 protocol, L3 info not available"
PREFIX_SHOWN = 64  # characters of an NFLOG prefix the summary shows


def summary(facts: Facts) -> tuple[str, ...]:
    """The trigger summary: ``|- IPv4 ...`` (or the not-IP line), ``|- MAC ...``
    when the frame had an Ethernet header, and the NFLOG prefix when the rule
    set one, from facts already checked (supervisor/facts.py)."""
    net, eth = facts.network, facts.ethernet
    if net is None:
        lines = [NOT_IP_LINE]
    else:
        lines = [f"|- IPv{net.version} {net.src} > {net.dst}, "
                 f"NXT_HDR: 0x{net.proto:02X} ({PROTOCOLS.get(net.proto, UNRESOLVED)})"]
    if eth is not None:
        vlan = "" if eth.vid is None else f", 802.1Q VID: {eth.vid}"
        lines.append(f"|- MAC: {eth.src} > {eth.dst}{vlan}, EtherType: "
                     f"0x{eth.ethertype:04X} ({ETHERTYPES.get(eth.ethertype, UNRESOLVED)})")
    if facts.prefix is not None:
        lines.append(f"|- NFLOG prefix: {quoted(facts.prefix[:PREFIX_SHOWN])}")
    return tuple(lines)


def quoted(text: str) -> str:
    """``text`` in double quotes, on one line whatever it holds: printable
    ASCII as it is, a quote or backslash escaped, anything else as ``\\xNN``
    or ``\\uNNNN``, so no terminal or log reader takes it for more."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
    return '"' + "".join(out) + '"'


def command_env(event: str, sensor: str, ttl: int, facts: Facts | None = None) -> dict[str, str]:
    """``TUNINETD_*`` for a command: the event, the sensor that brought the
    state up, the ttl, and for start the trigger's ``src``, ``dst``, ``proto``
    when it was IP."""
    env = {"TUNINETD_EVENT": event, "TUNINETD_SENSOR": sensor, "TUNINETD_TTL": str(ttl)}
    net = facts.network if facts is not None else None
    if net is not None:
        env["TUNINETD_SRC"] = net.src
        env["TUNINETD_DST"] = net.dst
        env["TUNINETD_PROTO"] = PROTOCOLS.get(net.proto, UNRESOLVED)
    return env


def start_done(sensor_kind: str, lines: Sequence[str]) -> None:
    log.info("%s: start command done", sensor_kind.upper())
    for line in lines:
        log.info("%s", line)


def stop_cancelled(sensor_kind: str, lines: Sequence[str]) -> None:
    log.info("%s: new activity while stop was still queued: stop cancelled, "
             "service stays up", sensor_kind.upper())
    for line in lines:
        log.info("%s", line)


def start_cancelled() -> None:
    log.info("CORE: idle again before the start command could run: start cancelled")


def executor_lost(event: str, killed: str) -> None:
    log.error("CORE: executor died while running the %s command; %s; the command "
              "counts as failed", event, killed)


def executing_stop() -> None:
    log.info("CORE: executing STOP command...")


def command_output(event: str, line: str) -> None:
    log.info("%s: %s", event, line)


def command_warning(outcome: Outcome, argv: Sequence[str], timeout: float) -> None:
    """The original's warning for a command that did not end well."""
    shown = " ".join(argv)
    if outcome.error:
        log.warning("Warning! Executable command could not be run (%s): %s", shown, outcome.error)
    elif outcome.timeout and outcome.cgroup:
        log.warning("Warning! Executable command timed out after %g s and was killed "
                    "with its process tree, through its cgroup (%s)", timeout, shown)
    elif outcome.timeout:
        log.warning("Warning! Executable command timed out after %g s and was killed "
                    "with the processes that kept its %s; any that dropped it may "
                    "survive (%s)", timeout, RUN_ID_VAR, shown)
    elif outcome.signal is not None:
        log.warning("Warning! Executable command was killed by signal %d (%s)",
                    outcome.signal, shown)
    elif outcome.exit_code != 0:
        log.warning("Warning! Executable command doesn't return 0 code (%s), exit code %d",
                    shown, outcome.exit_code)


def outcome(result: Outcome, timeout: float) -> str:
    """How a command ended, in a few words (``tuninetd status``)."""
    if result.lost:
        return "the executor died while it ran"
    if result.error:
        return f"could not be run: {result.error[:120]}"
    if result.timeout:
        return f"timed out after {timeout:g} s and was killed"
    if result.signal is not None:
        return f"killed by signal {result.signal}"
    return f"exit status {result.exit_code}"


def resumed(since: float) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    log.info("CORE: resuming the up state of the previous run (started %s); "
             "start not run again", when)


def start_failed(retry: float) -> None:
    log.warning("CORE: start failed; standby again, next start allowed in %g s", retry)


def retry_allowed() -> None:
    log.info("CORE: sensors armed again after the failed start")


def stop_on_exit() -> None:
    log.info("CORE: running stop before exiting (--stop-on-exit)")


def already_down() -> None:
    log.warning("Warning! Tuninetd is already in standby mode")


def forced_down() -> None:
    log.info("SIGHUP caught, switch to standby mode")


# TUNINETD_SENSOR and the last trigger when ``tuninetd up`` brought the state up.
CONTROL_SENSOR = "control"


def requested(verb: str) -> None:
    """``tuninetd up`` / ``tuninetd down``, before what it does."""
    log.info("CORE: %s requested over the control socket", verb)


def configuration(cfg: Settings, up: bool, idle: float, hold: HoldView | None) -> None:
    """The SIGUSR1 block."""
    log.info("SIGUSR1 caught:")
    for spec in cfg.sensors:
        if spec.kind == "pcap":
            log.info("- capture engine: pcap, %s", spec.name)
            if cfg.pcap_filter is not None:
                log.info('-- pcap filter: "%s"', cfg.pcap_filter)
        else:
            log.info("- capture engine: nflog group %s", spec.name)
    if cfg.ack_only:
        log.info("- using packets with tcp[ack] flag to reset TTL timer")
    if cfg.keep_filter is not None:
        log.info("- using packets matching %s to reset TTL timer (pcap)", quoted(cfg.keep_filter))
    if cfg.keep_group is not None:
        log.info("- using packets of nflog group %d to reset TTL timer", cfg.keep_group)
    if cfg.start_packets > 1:
        log.info("- start threshold: %d packets within %g sec.", cfg.start_packets,
                 cfg.start_span)
    if cfg.pcap_file:
        log.info("- file to dump start event packets (pcap format): %s", cfg.pcap_file)
    if cfg.command:
        log.info("- event path: %s", cfg.command)
    for event, argv in (("start", cfg.start_command), ("stop", cfg.stop_command)):
        if argv:
            log.info("- %s command: %s", event, " ".join(argv))
    log.info("- TTL: %d sec.", cfg.ttl)
    if hold is not None:
        log.info("- hold: queue %d, %s, %d held now, %d released, %d overflowed "
                 "(at most %g s, then %s)", hold.queue, hold.state, hold.held, hold.released,
                 hold.overflowed, cfg.hold_max, cfg.hold_fail)
    if up:
        log.info("- current status: up (ON), time since last captured packet: %d sec.",
                 int(idle))
    else:
        log.info("- current status: standby (OFF)")


def released(queue: int, why: str, verdict: str, held: int, waited: float, lost: int,
             full: bool) -> None:
    """One line per release of the hold."""
    log.info("CORE: queue %d: %s: %s %d held packet%s after %.3f s%s%s", queue, why,
             "released" if verdict == "accept" else "dropped", held, "s" * (held != 1), waited,
             f", {lost} passed unheld for want of buffer room" if lost else "",
             " (the queue was full: later ones passed unheld)" if full else "")
def start_threshold(cfg: Settings) -> str:
    """What starts, in a few words (status, metrics, --check-config)."""
    if cfg.start_packets <= 1:
        return "the first matching packet"
    return f"{cfg.start_packets} matching packets within {cfg.start_span:g} s"


def keep_alive(spec: SensorSpec, cfg: Settings) -> str:
    """What keeps the state up through this sensor, in a few words."""
    ack = "tcp[ack] packets, " if cfg.ack_only else ""
    if spec.kind == "pcap":
        if cfg.keep_filter is not None:
            return f"keep filter {quoted(cfg.keep_filter)}"
        if cfg.pcap_filter:
            return f"{ack}filter {quoted(cfg.pcap_filter)}"
        return "tcp[ack] packets" if cfg.ack_only else "every packet"
    if spec.count_group is None:
        return f"nothing (nflog group {cfg.keep_group} keeps it up)"
    return f"{ack}nflog group {spec.count_group}"


def sensing_lines(cfg: Settings) -> list[str]:
    """--check-config's account of what starts and what keeps the state up,
    with the expressions libpcap compiled for each pcap sensor."""
    lines = [f"start: {start_threshold(cfg)}"]
    keep = bpf.keep_expression(cfg.keep_filter, cfg.pcap_filter, cfg.ack_only)
    for spec in cfg.sensors:
        lines.append(f"{spec.label} keeps it up with: {keep_alive(spec, cfg)}")
        compiled = [(spec.link, spec.bpf, spec.bpf_keep)] if spec.link else spec.candidates
        for link, prog, keep_prog in compiled if spec.kind == "pcap" else ():
            flt = quoted(cfg.pcap_filter) if cfg.pcap_filter else "(none: every packet)"
            shown = f"  {link}: filter {flt}, {_instructions(len(prog))}"
            if keep is not None and keep_prog is not None:
                shown += f"; keep-alive {quoted(keep)}, {_instructions(len(keep_prog))}"
            lines.append(shown)
    return lines


def _instructions(n: int) -> str:
    return f"{n} BPF instruction{'s' * (n != 1)}"


def dump_failed(path: str, why: str) -> None:
    log.error("Logger: can't write packet to pcap file %s: %s", path, why)


def dump_replaced(path: str) -> None:
    log.warning("Logger: pcap file %s was moved, removed or replaced: opening it again", path)


def dump_works_again(path: str) -> None:
    log.info("Logger: writing packets to pcap file %s again", path)
