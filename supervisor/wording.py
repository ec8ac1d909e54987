"""The text users' scripts and filters depend on, in one place: the original
daemon's log lines byte for byte, the words for a command's outcome, and the
``TUNINETD_*`` values a command gets.

Every function takes typed values and writes (or returns) the text; no other
module of the supervisor words these.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuninetd.common.logs import log
from tuninetd.executor.reap import RUN_ID_VAR
from tuninetd.supervisor.config import SensorSpec, Settings
from tuninetd.supervisor.events import Outcome


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


def summary(lines: Sequence[str], nflog_prefix: str | None) -> tuple[str, ...]:
    """The trigger summary (``|- IPv4 ...``, ``|- MAC ...``): the sensor's
    decoded lines, and the NFLOG prefix when the rule set one."""
    if nflog_prefix is None:
        return tuple(lines)
    return (*lines, f'|- NFLOG prefix: "{nflog_prefix}"')


def command_env(event: str, sensor: str, ttl: int,
                trigger: dict[str, str] | None = None) -> dict[str, str]:
    """``TUNINETD_*`` for a command: the event, the sensor that brought the
    state up, the ttl, and for start the trigger's ``src``, ``dst``, ``proto``."""
    env = {"TUNINETD_EVENT": event, "TUNINETD_SENSOR": sensor, "TUNINETD_TTL": str(ttl)}
    for name, value in (trigger or {}).items():
        env[f"TUNINETD_{name.upper()}"] = value
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


def already_down() -> None:
    log.warning("Warning! Tuninetd is already in standby mode")


def forced_down() -> None:
    log.info("SIGHUP caught, switch to standby mode")


# TUNINETD_SENSOR and the last trigger when ``tuninetd up`` brought the state up.
CONTROL_SENSOR = "control"


def requested(verb: str) -> None:
    """``tuninetd up`` / ``tuninetd down``, before what it does."""
    log.info("CORE: %s requested over the control socket", verb)


def configuration(cfg: Settings, up: bool, idle: float) -> None:
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
    if cfg.pcap_file:
        log.info("- file to dump start event packets (pcap format): %s", cfg.pcap_file)
    if cfg.command:
        log.info("- event path: %s", cfg.command)
    for event, argv in (("start", cfg.start_command), ("stop", cfg.stop_command)):
        if argv:
            log.info("- %s command: %s", event, " ".join(argv))
    log.info("- TTL: %d sec.", cfg.ttl)
    if up:
        log.info("- current status: up (ON), time since last captured packet: %d sec.",
                 int(idle))
    else:
        log.info("- current status: standby (OFF)")


def dump_failed(path: str, why: str) -> None:
    log.error("Logger: can't write packet to pcap file %s: %s", path, why)


def dump_works_again(path: str) -> None:
    log.info("Logger: writing packets to pcap file %s again", path)
