"""The real supervisor running fake sensors (tests/support/fake_sensor.py),
and the plan each fake sensor is handed: what it sends the supervisor."""

from __future__ import annotations

import base64
import json
import os
import pwd
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.fake_sensor import CONTROL_VAR
from tests.support.netlab import forget_name, recorder, terminate
from tests.support.repo import REPO
from tests.support.timing import BEAT


@dataclass
class Plan:
    """What a fake sensor does: say hello or not, then send ``records`` as they are."""

    hello: bool
    records: list[bytes]
    hangup: bool  # the first bad record is an empty one: the same as EOF

    def json(self) -> bytes:
        return json.dumps({"hello": self.hello, "trigger": False, "records": [
            base64.b64encode(r).decode() for r in self.records]}).encode() + b"\n"


class FakeSensors:
    """The real supervisor with a fake sensor (tests/support/fake_sensor.py), and the
    control socket each fake sensor asks for its plan."""

    def __init__(self, folder: Path, command_body: str = "") -> None:
        self.folder = folder
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = folder / "control.sock"
        self.control.bind(str(path))
        self.control.listen(4)
        self.script, self.record = recorder(folder, body=command_body)
        self.name = f"test-{uuid.uuid4().hex[:12]}"
        nobody = pwd.getpwnam("nobody")
        setup = {"command": str(self.script), "user": "nobody", "uid": nobody.pw_uid,
                 "gid": nobody.pw_gid, "ttl": 600, "beat": BEAT,
                 "control": str(folder / "status.sock"), "name": self.name}
        self.log = folder / "supervisor.log"
        self.logf = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, CONTROL_VAR: str(path),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_sensor", "supervise", json.dumps(setup)],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self.logf,
            stderr=subprocess.STDOUT,
        )

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def alive(self) -> None:
        assert self.proc.poll() is None, "\n".join(self.lines())
        assert not any("Traceback" in line for line in self.lines()), "\n".join(self.lines())

    def next_sensor(self, plan: bytes, timeout: float = 15.0) -> int:
        """Wait for the next fake sensor to ask; hand it ``plan``; its pid."""
        self.control.settimeout(timeout)
        try:
            conn, _ = self.control.accept()
        except TimeoutError:
            raise AssertionError("no fake sensor asked for a plan\n"
                                 + "\n".join(self.lines())) from None
        with conn:
            conn.settimeout(timeout)
            pid = int(json.loads(conn.makefile().readline())["pid"])
            conn.sendall(plan)
        return pid

    def stop(self) -> None:
        terminate(self.proc, 10)
        self.logf.close()
        self.control.close()
        forget_name(self.name)
