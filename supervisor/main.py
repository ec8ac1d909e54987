"""``tuninetd``: check everything, detach if asked, run the arbiter."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

from tuninetd.common import cgroup, daemon, logs, procstatus
from tuninetd.supervisor import instance, wording
from tuninetd.supervisor.arbiter import build
from tuninetd.supervisor.config import configfile, configure
from tuninetd.supervisor.errors import StartupError

# Capabilities the daemon itself needs: open capture sockets (CAP_NET_RAW for
# AF_PACKET, CAP_NET_ADMIN for NFLOG), then hand sensors to another account.
NEEDED_CAPS = {"CAP_NET_RAW": 13, "CAP_NET_ADMIN": 12, "CAP_SETUID": 7, "CAP_SETGID": 6}


def missing_privileges() -> list[str]:
    return [name for name, bit in NEEDED_CAPS.items() if not procstatus.has_capability(bit)]


def daemonize() -> int:
    """Into the background. The original process waits until the daemon's
    workers have all said hello (or one failed), so ``tuninetd -d`` reports
    a broken start with exit status 1 instead of a silent death. Returns the
    write end of that readiness pipe in the daemon."""
    return daemon.detach(_started)


def _started(answer: str) -> NoReturn:
    if answer.startswith("ok"):
        sys.exit(0)
    print(f"tuninetd: {answer or 'the daemon died while starting'}", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["status"], ["up"], ["down"]):  # the client: tuninetd status [NAME] ...
        from tuninetd.supervisor.ops import client

        sys.exit(client.main(args[0], args[1:]))
    cfg, check_only = configure.parse_or_exit(args)
    if check_only:
        print(configfile.render(cfg), end="")
        if held := instance.held(cfg.name, cfg.control):
            print(f"tuninetd: {held}", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    missing = missing_privileges()
    if missing:
        print(f"tuninetd: not enough privilege: missing {', '.join(missing)} "
              "(run as root)", file=sys.stderr)
        sys.exit(1)
    ready_fd = None
    if cfg.daemon:
        if refusal := logs.daemon_refusal("tuninetd"):
            print(refusal, file=sys.stderr)
            sys.exit(1)
        logs.to_syslog()
        ready_fd = daemonize()
    else:
        logs.to_stderr(timestamps=cfg.timestamps)
        wording.started(os.getpid(), daemon=False)
    arbiter = None
    me = None
    try:
        # The name first: whatever else this daemon takes, it takes as NAME.
        me = instance.claim(cfg.name, cfg.sensors, cfg.control)
        arbiter = build(cfg, me, ready_fd)
        code = arbiter.run()
    except StartupError as exc:
        wording.startup_failed(str(exc))
        if ready_fd is not None:
            with contextlib.suppress(OSError):  # the waiting parent may be gone
                os.write(ready_fd, str(exc).encode())
        sys.exit(1)
    finally:
        if arbiter is not None:
            arbiter.observers.close()
            cgroup.remove_daemon_group(os.getpid())
        if me is not None:
            me.release()
    sys.exit(code)


if __name__ == "__main__":
    main()
