"""``tuninetd``: check everything, detach if asked, run the arbiter."""

from __future__ import annotations

import os
import sys

from tuninetd.executor import cgroup
from tuninetd.supervisor import cli, configfile, logs, pidfile
from tuninetd.supervisor.arbiter import Arbiter, StartupError
from tuninetd.supervisor.logs import log

# Capabilities the daemon itself needs: open capture sockets (CAP_NET_RAW for
# AF_PACKET, CAP_NET_ADMIN for NFLOG), then hand sensors to another account.
NEEDED_CAPS = {"CAP_NET_RAW": 13, "CAP_NET_ADMIN": 12, "CAP_SETUID": 7, "CAP_SETGID": 6}


def missing_privileges() -> list[str]:
    with open("/proc/self/status") as f:
        caps = next((int(line.split()[1], 16) for line in f if line.startswith("CapEff:")), 0)
    return [name for name, bit in NEEDED_CAPS.items() if not caps >> bit & 1]


def daemonize() -> int:
    """Fork into the background. The parent waits until the daemon's workers
    have all said hello (or one failed), so ``tuninetd -d`` reports a broken
    start with exit status 1 instead of a silent death. Returns the write end
    of that readiness pipe in the daemon."""
    rfd, wfd = os.pipe()
    if child := os.fork():
        os.close(wfd)
        os.waitpid(child, 0)  # the first child exits as soon as it has forked
        with os.fdopen(rfd, "rb") as r:
            answer = r.read().decode(errors="replace")
        if answer.startswith("ok"):
            sys.exit(0)
        print(f"tuninetd: {answer or 'the daemon died while starting'}", file=sys.stderr)
        sys.exit(1)
    os.close(rfd)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return wfd


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["status"]:  # the client: tuninetd status [--json] [--control PATH]
        from tuninetd.supervisor import status

        sys.exit(status.main(args[1:]))
    cfg = cli.parse_or_exit(args)
    if cli.wants_check(args):
        print(configfile.render(cfg), end="")
        sys.exit(0)
    missing = missing_privileges()
    if missing:
        print(f"tuninetd: not enough privilege: missing {', '.join(missing)} "
              "(run as root)", file=sys.stderr)
        sys.exit(1)
    ready_fd = None
    if cfg.daemon:
        if problem := logs.syslog_unreachable():
            print(f"tuninetd: -d logs to syslog, but {problem}: start a syslog daemon "
                  "(e.g. rsyslog), or run in the foreground (under systemd the journal "
                  "keeps the lines)", file=sys.stderr)
            sys.exit(1)
        logs.to_syslog()
        ready_fd = daemonize()
    else:
        logs.to_stderr()
        log.info("Started with pid %d", os.getpid())
    arbiter = None
    try:
        if cfg.pidfile is not None:
            try:
                pidfile.write(cfg.pidfile)
            except OSError as exc:
                raise StartupError(f"cannot write the pidfile {cfg.pidfile}: "
                                   f"{exc.strerror or exc}") from None
        arbiter = Arbiter(cfg, ready_fd)
        code = arbiter.run()
    except StartupError as exc:
        log.error("Error: %s. Abort", exc)
        if ready_fd is not None:
            os.write(ready_fd, str(exc).encode())
        sys.exit(1)
    finally:
        if arbiter is not None:
            arbiter.ops.close()
            cgroup.remove_daemon_group(os.getpid())
        if cfg.pidfile is not None:
            pidfile.remove(cfg.pidfile)
    sys.exit(code)


if __name__ == "__main__":
    main()
