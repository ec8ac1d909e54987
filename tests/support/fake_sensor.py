"""A fake sensor for the fault tests, and the supervisor that runs it.

No hook in the product: ``python -m tests.support.fake_sensor supervise SETTINGS``
builds the real ``Arbiter`` from ``Settings`` and, before ``run()``, points its
one sensor ``Worker`` at this module instead of ``tuninetd.sensors.nflog``,
with a quick restart backoff. Everything else is the daemon's own code: the
spawn, the socketpair, the schema checks, the kill and the replacement.
Workers import from the supervisor's import path, and the test runs this
supervisor with the repository on PYTHONPATH, so the worker finds
``tests.support.fake_sensor`` the way it finds any module.

Each fake sensor process (``python -m tests.support.fake_sensor <fd> <ppid>``, the way
the supervisor starts every worker) connects to the test's control socket,
reports its pid, and receives its plan: say hello or not, send a trigger or
not, then a list of raw records, sent on the socketpair exactly as given.
Then it drops privileges and enters the seccomp sandbox the way real sensors
do (chroot into the jail, not dumpable, unprivileged: the tests that use it
run as root) and runs the plan, and beats (``n`` = 0) until the
supervisor kills it or hangs up.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import socket
import sys
from typing import Any, NoReturn

from tuninetd.common import wire, worker
from tuninetd.sensors import sandbox

CONTROL_VAR = "TUNINETD_TEST_FAKE_SENSOR_CONTROL"
# Room for an oversized record (MAX_MESSAGE is 128 KiB) in one datagram.
SNDBUF = 1 << 20
SO_SNDBUFFORCE = 32  # not in the socket module


def _plan(control: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.connect(control)
        ctl.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = ctl.recv(1 << 20)
            if not chunk:
                os._exit(3)  # the test went away
            data += chunk
    plan: dict[str, Any] = json.loads(data)
    return plan


def sensor() -> None:
    sock, ppid = worker.channel_from_argv()
    worker.die_with_parent(ppid)
    worker.ignore_terminal_signals()
    cfg = wire.decode(wire.recv(sock))
    plan = _plan(cfg[CONTROL_VAR])
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
    worker.drop_privileges(cfg["uid"], cfg["gid"], ppid, cfg.get("jail"))
    sandbox.limit()
    sandbox.confine(cfg["seccomp"])
    # OSError: the supervisor hung up on us (it does, after a bad record).
    with contextlib.suppress(OSError):
        _follow(sock, plan, float(cfg["beat"]))
    os._exit(0)


def _follow(sock: socket.socket, plan: dict[str, Any], beat: float) -> None:
    if plan["hello"]:
        wire.send(sock, "hello", pid=os.getpid())
    if plan["trigger"]:
        wire.send(sock, "trigger", link="raw", ip=4, src="192.0.2.1", dst="192.0.2.2", proto=17)
    for record in plan["records"]:
        sock.send(base64.b64decode(record))
    poller = select.poll()  # select(2) is not in the sandbox's allow-list
    poller.register(sock, select.POLLIN)
    while True:
        if poller.poll(beat * 1000) and not sock.recv(wire.MAX_MESSAGE):
            return
        wire.send(sock, "beat", n=0, mode="counting")


def supervise(settings: dict[str, Any]) -> None:
    """The real arbiter with the fake sensor in place of the nflog sensor.

    The fake's restart backoff is short (the doubling is tested in
    tests/unit/test_backoff.py and the daemon tests): a fake killed dozens of
    times in a row must come back in a tenth of a second, not in 30.
    """
    from tests.support import configs
    from tuninetd.supervisor.config.settings import Account, SensorSpec
    cfg = configs.settings(
        command=settings["command"],
        sensors=(SensorSpec("nflog", "1", group=1),),
        sensor_user=Account(settings["user"], settings["uid"], settings["gid"]),
        ttl=settings["ttl"],
        beat=settings["beat"],
        control=settings["control"],  # a status socket of its own, not /run's
        name=settings["name"],
    )
    # Sensors start with a minimal environment: the socket's path goes in
    # the config record instead.
    run_with_sensor(cfg, "tests.support.fake_sensor", {CONTROL_VAR: os.environ[CONTROL_VAR]})


def run_with_sensor(cfg: Any, module: str, config: dict[str, Any]) -> NoReturn:
    """The real arbiter for ``cfg``, its sensors started from ``module`` (of
    this repository) with ``config`` added to their config records."""
    from tuninetd.common import logs
    from tuninetd.supervisor import arbiter, instance, wording
    from tuninetd.supervisor.children import Backoff
    from tuninetd.supervisor.errors import StartupError

    logs.to_stderr()
    me = instance.claim(cfg.name, cfg.sensors, cfg.control)
    arb = arbiter.build(cfg, me)
    for w in arb.sensors:
        w.config.update(config)
        w.module = module
        w.backoff = Backoff(first=0.1, longest=0.1)
    try:
        code = arb.run()
    except StartupError as exc:
        wording.startup_failed(str(exc))
        code = 1
    finally:
        me.release()
    sys.exit(code)


main = sensor  # what a worker's bootstrap runs


if __name__ == "__main__":
    if sys.argv[1:2] == ["supervise"]:
        supervise(json.loads(sys.argv[2]))
    else:
        sensor()
