"""docs/on-demand.md's recipes, run as written: their command blocks are
read from the page and run line by line in namespaces of the test's own
(the daemon's side, and a client or LAN side), with two substitutions only:
the scripts' install path is the checkout's examples/, and the documentation
address of the server is the lab's. ``tuninetd`` is this checkout's.

The VPN recipe runs openvpn-dispatcher.sh with a stand-in for openvpn (none
is installed here): it takes the tun device, adds the far network's route
through it as OpenVPN's configuration would, and records what the kernel
routes into it. tuntapd is the real one."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.holdlab import SERVER_IP, Pair
from tests.support.netlab import Netns, send_udp, sh, title, wait_for
from tests.support.repo import REPO
from tests.support.tuntapd import console_script

pytestmark = pytest.mark.root

PAGE = REPO / "docs" / "on-demand.md"
INSTALLED = "/usr/local/sbin/"
DOC_SERVER = "192.0.2.10"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def block_after(text: str) -> list[str]:
    """The lines of the first ```sh block after ``text`` in the page."""
    page = PAGE.read_text()
    found = re.search(re.escape(text) + r".*?```sh\n(.*?)```", page, re.S)
    assert found, f"docs/on-demand.md: no sh block after {text!r}"
    return [line for line in found.group(1).splitlines() if line.strip()]


class Recipe:
    """Runs a block's lines in a namespace: a ``tuninetd`` line in the
    background (this checkout's, found first on PATH), the others to the end."""

    def __init__(self, ns: Netns, folder: Path, env: dict[str, str]) -> None:
        self.ns = ns
        self.folder = folder
        bin_dir = folder / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "tuninetd"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tuninetd.supervisor.main "$@"\n')
        wrapper.chmod(0o755)
        # The system's PATH, as a unit's: a user's shims (pyenv) are no part of it.
        self.env = {**os.environ, **env, "PATH": f"{bin_dir}:{SYSTEM_PATH}"}
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.log = folder / "daemon.log"

    def run(self, line: str) -> subprocess.CompletedProcess[str] | None:
        line = line.replace(INSTALLED, f"{REPO}/examples/")
        argv = self.ns.exec_argv("sh", "-c", line)
        if not re.match(r"(\w+=\S+ )*tuninetd ", line):
            return subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                  timeout=60)
        with open(self.log, "ab") as log:
            self.daemons.append(subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                                 stdout=log, stderr=subprocess.STDOUT))
        self.wait_log("CORE: holding new connections in queue")
        # Before its sensor is armed, a packet would be held with nothing to
        # start the service: until --hold-max, or a TCP retransmit.
        wait_for("the sensor armed", lambda: any(
            title(pid).startswith("tuninetd: sensor nflog") and title(pid).endswith("armed")
            for pid in self.ns.pids()))
        return None

    def run_all(self, lines: list[str]) -> None:
        for line in lines:
            done = self.run(line)
            assert done is None or done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"

    def wait_log(self, needle: str, timeout: float = 15.0) -> str:
        def probe() -> str | None:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            if any(d.poll() is not None for d in self.daemons):
                raise AssertionError(f"daemon exited:\n{text}")
            return text if needle in text else None

        return wait_for(f"{needle!r} in the daemon's log", probe, timeout)

    def supervisors(self) -> dict[int, str]:
        """pid -> name of the daemons in the namespace, from their titles
        (``tuninetd: supervisor NAME ...``)."""
        out = {}
        for pid in self.ns.pids():
            words = title(pid).split()
            if words[:2] == ["tuninetd:", "supervisor"]:
                out[pid] = words[2]
        return out

    def close(self) -> None:
        daemons = self.supervisors()
        for pid in daemons:
            os.kill(pid, signal.SIGTERM)
        for d in self.daemons:
            d.wait(20)
        for name in daemons.values():
            for suffix in (".state", ".lock"):
                Path(f"/run/tuninetd/{name}{suffix}").unlink(missing_ok=True)


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("hello from on-demand-web\n")
    return root


@pytest.fixture
def recipe_lab(netns: Netns) -> Iterator[Pair]:
    pair = Pair(netns)
    yield pair
    pair.close()


def test_the_web_recipe_serves_the_first_request(recipe_lab: Pair, tmp_path: Path,
                                                web_root: Path) -> None:
    recipe = Recipe(recipe_lab.server, tmp_path,
                    {"WEB_ROOT": str(web_root), "WEB_PIDFILE": str(tmp_path / "web.pid")})
    try:
        recipe.run_all(block_after("The rules, iptables form"))
        curl, = block_after("From another machine, the first request is answered")
        done = subprocess.run(recipe_lab.client.exec_argv(
            *shlex.split(curl.replace(DOC_SERVER, SERVER_IP))), capture_output=True,
            text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("200 after "), done.stdout
        recipe.wait_log("start done: released")
        recipe.wait_log("start: web: listening on port 8080")
    finally:
        recipe.close()


def test_the_nft_form_runs_up_to_the_queue_statement(netns: Netns) -> None:
    """Every line runs; the queue rule too where the kernel has
    CONFIG_NFT_QUEUE, and otherwise fails as the page says."""
    lines = block_after("The same rules in nft form")
    for line in lines:
        done = subprocess.run(netns.exec_argv("sh", "-c", line), capture_output=True,
                              text=True, timeout=30)
        if " queue num " in line and done.returncode != 0:
            assert "No such file or directory" in done.stderr, done.stderr
        else:
            assert done.returncode == 0, f"{line}\n{done.stderr}"


FAKE_OPENVPN = """#!{python}
# A stand-in for openvpn --daemon: takes the tun device, routes the far
# network through it, records what comes in.
import fcntl, os, struct, subprocess, sys
args = sys.argv[1:]
dev, pidfile = args[args.index("--dev") + 1], args[args.index("--writepid") + 1]
if os.fork():
    sys.exit(0)
os.setsid()
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", dev.encode(), 0x0001 | 0x1000))
subprocess.run(["ip", "link", "set", dev, "up"], check=True)
subprocess.run(["ip", "route", "add", "192.168.50.0/24", "dev", dev], check=True)
with open(pidfile, "w") as f:
    f.write(str(os.getpid()))
with open(os.environ["FAKE_CAPTURE"], "ab", buffering=0) as out:
    while True:
        out.write(os.read(fd, 65536).hex().encode() + b"\\n")
"""


def test_the_vpn_recipe_routes_the_held_packets_through_the_tunnel(
        netns: Netns, tmp_path: Path) -> None:
    lan = Pair(netns, inside="lan0")
    try:
        lan.client.ip("route", "add", "192.168.50.0/24", "via", SERVER_IP)
        sh(*netns.exec_argv("sysctl", "-qw", "net.ipv4.ip_forward=1"))
        bin_dir = tmp_path / "fake"
        bin_dir.mkdir()
        fake = bin_dir / "openvpn"
        fake.write_text(FAKE_OPENVPN.format(python=sys.executable))
        fake.chmod(0o755)
        capture = tmp_path / "tun0.capture"
        config = tmp_path / "site.conf"
        config.write_text("# the stand-in reads no configuration\n")
        recipe = Recipe(netns, tmp_path, {
            "OPENVPN": str(fake), "FAKE_CAPTURE": str(capture), "VPN_CONFIG": str(config),
            "PIDFILE": str(tmp_path / "openvpn.pid"), "TUN_PIDFILE": str(tmp_path / "tun.pid"),
            "TUNTAPD": console_script(), "HOLD_TUN": "yes"})
        try:
            recipe.run_all(block_after("makes a dispatcher"))

            def arrived(payload: bytes) -> Callable[[], bool]:
                return lambda: capture.exists() and payload.hex() in capture.read_text()

            for cycle, payload in enumerate((b"first-datagram", b"after-a-stop"), 1):
                send_udp(lan.client, "192.168.50.1", 5000 + cycle, data=payload)
                wait_for("the held datagram routed into tun0", arrived(payload))
                log = recipe.wait_log("start done: released 1 held packet")
                assert log.count("start done: released 1 held packet") == cycle
                for pid in recipe.supervisors():  # SIGHUP: stop; openvpn goes, tuntapd holds tun0
                    os.kill(pid, signal.SIGHUP)
                recipe.wait_log("stop: openvpn-site: down")
                wait_for("tuntapd holding tun0", lambda: (tmp_path / "tun.pid").exists())
        finally:
            recipe.close()
    finally:
        lan.close()
