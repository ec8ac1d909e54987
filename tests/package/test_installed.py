"""The installed Debian package, end to end (run by .ci/package between
``apt-get install ./tuninetd_*.deb`` and the purge; the main suite ignores
this folder): /usr/bin/tuninetd on Debian's python3 starts and stops a
command for real traffic in a network namespace, its sensor runs as the
package's ``tuninetd`` account, ``tuninetd status`` answers, and bash
completion offers every option that --help lists."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.package.conftest import TUNINETD
from tests.support.netlab import Netns, events, gone, recorder, wait_for
from tests.support.timing import BEAT

pytestmark = pytest.mark.root

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
              / IP(src="10.57.0.1", dst="10.57.0.2") / UDP(sport=4000, dport=5353))


def test_runs_on_debians_python3() -> None:
    first = Path(TUNINETD).read_text().splitlines()[0]
    assert first == "#!/usr/bin/python3"
    r = subprocess.run(["/usr/bin/python3", "-c", "import tuninetd.supervisor.main as m;"
                        "print(m.__file__)"], capture_output=True, text=True, cwd="/")
    assert r.stdout.startswith("/usr/lib/python3/dist-packages/tuninetd/"), r.stderr


def test_start_stop_sensor_account_and_status(veth: Netns, tmp_path: Path) -> None:
    script, record = recorder(tmp_path)
    control = tmp_path / "ctl.sock"
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            veth.exec_argv(TUNINETD, "-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1",
                           "--beat", str(BEAT), "--control", str(control)),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        def armed_sensor() -> psutil.Process | None:
            assert daemon.poll() is None, log.read_text()
            for child in psutil.Process(daemon.pid).children():
                try:
                    if re.match(r"tuninetd: sensor pcap tap0 armed", " ".join(child.cmdline())):
                        return child
                except psutil.Error:
                    continue
            return None

        sensor = wait_for("the pcap sensor armed", armed_sensor, 20)
        assert sensor.username() == "tuninetd"
        assert sensor.uids().effective == pwd.getpwnam("tuninetd").pw_uid
        assert psutil.Process(daemon.pid).exe() == os.path.realpath("/usr/bin/python3")

        veth.sender().send(FRAME)
        wait_for("start and stop", lambda: [e[0] for e in events(record)] == ["start", "stop"],
                 20)
        status = subprocess.run([TUNINETD, "status", "--control", str(control)],
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert "pcap:tap0" in status.stdout and "tuninetd" in status.stdout, status.stdout
        workers = [c.pid for c in psutil.Process(daemon.pid).children()]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert daemon.returncode == 0, log.read_text()
    wait_for("workers gone", lambda: all(gone(p) for p in workers))
    assert "PCAP: start command done" in log.read_text()


def completions(line: str) -> set[str]:
    """What bash completion offers for ``line`` (the cursor at its end)."""
    script = ("source /usr/share/bash-completion/bash_completion;"
              "source /usr/share/bash-completion/completions/tuninetd;"
              'COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; read -ra COMP_WORDS <<< "$1";'
              '[[ $1 == *" " ]] && COMP_WORDS+=(""); COMP_CWORD=$((${#COMP_WORDS[@]} - 1));'
              '_tuninetd; printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "-c", script, "bash", line], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_bash_completion(tmp_path: Path) -> None:
    help_text = subprocess.run([TUNINETD, "--help"], capture_output=True, text=True).stdout
    options = set(re.findall(r"^  (-[\w-]+)", help_text, re.M))
    options |= set(re.findall(r"^  -\w, (--[\w-]+)", help_text, re.M))
    assert {"-i", "--user", "--version"} <= options
    assert options <= completions("tuninetd -"), options - completions("tuninetd -")
    assert completions("tuninetd ") == {"status", "up", "down"}
    assert completions("tuninetd status --") == {"--json", "--control", "--help"}
    assert completions("tuninetd down --") == {"--control", "--help"}


def test_completes_the_running_daemons_names_and_sockets() -> None:
    folder = Path("/run/tuninetd")
    folder.mkdir(mode=0o755, exist_ok=True)
    path = folder / f"test-{uuid.uuid4().hex[:8]}.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        try:
            assert str(path) in completions("tuninetd status --control ")
            for verb in ("status", "up", "down"):
                assert path.stem in completions(f"tuninetd {verb} ")
        finally:
            path.unlink()
    assert str(path) not in completions("tuninetd status --control ")
