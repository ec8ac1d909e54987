"""The example start/stop scripts and the rsyslog snippet.

shellcheck on every script; then what can run here without any network
outside namespaces this test makes: the idempotence logic of the systemd and
WireGuard scripts against stand-in commands that record their calls and keep
a state, the Wake-on-LAN packet captured on the far end of a veth pair, the
ssh tunnel's hand-over of its tun device between tuntapd and (a stand-in for)
``ssh -w`` on a real persistent tun device, and the rsyslog snippet loaded by
a real rsyslogd listening on a socket of ours.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.links import has_carrier, holders
from tests.support.netlab import Netns, need, wait_for
from tests.support.repo import REPO
from tests.support.syslogd import Syslog, private_dev_log
from tests.support.tuntapd import console_script

EXAMPLES = REPO / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.sh"))
START_STOP = ["ssh-tunnel.sh", "wireguard.sh", "systemd-service.sh", "wake-on-lan.sh",
              "on-demand-web.sh", "openvpn-dispatcher.sh"]


def fake(bin_dir: Path, name: str, body: str) -> Path:
    """A stand-in command in ``bin_dir`` (put first in PATH)."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def run(script: str, action: str, env: dict[str, str], bin_dir: Path | None = None,
        ns: Netns | None = None, prefix: list[str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``prefix``: an argv the script runs under (inside ``ns``)."""
    full = dict(os.environ, **env)
    if bin_dir is not None:
        full["PATH"] = f"{bin_dir}:{full['PATH']}"
    argv = [*(prefix or []), str(EXAMPLES / script), action]
    if ns is not None:
        argv = ns.exec_argv(*argv)
    return subprocess.run(argv, env=full, capture_output=True, text=True, timeout=30)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# -- lint and documentation --------------------------------------------------------


def test_every_start_stop_example_is_there() -> None:
    assert [s.name for s in SCRIPTS if s.name in START_STOP] == sorted(START_STOP)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = need("shellcheck", "shellcheck")
    out = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True,
                         timeout=60, cwd=EXAMPLES)
    assert out.returncode == 0, out.stdout + out.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("name", START_STOP)
def test_documented_at_the_top_and_usage(name: str, tmp_path: Path) -> None:
    head = (EXAMPLES / name).read_text().split("\nset -u\n")[0]
    for part in ("What it does", "What to set", "from tuninetd", "tuninetd -"):
        assert part in head, f"{name}: no {part!r} in its header"
    bad = run(name, "restart", {})
    assert bad.returncode == 2 and "usage:" in bad.stderr, bad


# -- systemd-service.sh: systemctl is-active decides -------------------------------


FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> {log}
state=$(cat {state} 2>/dev/null || echo inactive)
case $1 in
is-active) echo "$state"; [ "$state" = active ] ;;
start) [ "$state" = broken ] && exit 1; echo active > {state} ;;
stop) echo inactive > {state} ;;
esac
"""


def test_systemd_service_is_idempotent(tmp_path: Path) -> None:
    log, state = tmp_path / "calls", tmp_path / "state"
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "systemctl", FAKE_SYSTEMCTL.format(log=log, state=state))
    env = {"UNIT": "demo.service"}

    def step(action: str) -> list[str]:
        before = len(calls(log))
        out = run("systemd-service.sh", action, env, bin_dir)
        assert out.returncode == 0, out
        return calls(log)[before:]

    assert step("start") == ["is-active demo.service", "start demo.service"]
    assert step("start") == ["is-active demo.service"]  # already active
    assert step("stop") == ["is-active demo.service", "stop demo.service"]
    assert step("stop") == ["is-active demo.service"]  # already stopped
    state.write_text("failed\n")
    assert step("stop") == ["is-active demo.service"]
    state.write_text("activating\n")
    assert step("stop") == ["is-active demo.service", "stop demo.service"]
    state.write_text("activating\n")
    assert step("start") == ["is-active demo.service", "start demo.service"]
    # A failing systemctl start is the script's failure.
    state.write_text("broken\n")
    assert run("systemd-service.sh", "start", env, bin_dir).returncode == 1


# -- wireguard.sh: wg show decides -------------------------------------------------


FAKE_WG = """#!/bin/sh
echo "wg $*" >> {log}
[ "$1" = show ] && [ -e {state}/"$2" ] && echo "interface: $2" && exit 0
echo "Unable to access interface: No such device" >&2
exit 1
"""
FAKE_WG_QUICK = """#!/bin/sh
echo "wg-quick $*" >> {log}
case $1 in
up) [ -e {state}/"$2" ] && echo "wg-quick: \\`$2' already exists" >&2 && exit 1
    touch {state}/"$2" ;;
down) [ -e {state}/"$2" ] || {{ echo "wg-quick: \\`$2' is not a WireGuard interface" >&2; exit 1; }}
    rm {state}/"$2" ;;
esac
"""


def test_wireguard_is_idempotent(tmp_path: Path) -> None:
    log, state = tmp_path / "calls", tmp_path / "state"
    state.mkdir()
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "wg", FAKE_WG.format(log=log, state=state))
    fake(bin_dir, "wg-quick", FAKE_WG_QUICK.format(log=log, state=state))
    env = {"WG_IFACE": "wg7"}

    def step(action: str) -> list[str]:
        before = len(calls(log))
        out = run("wireguard.sh", action, env, bin_dir)
        assert out.returncode == 0, out
        return calls(log)[before:]

    assert step("start") == ["wg show wg7", "wg-quick up wg7"]
    assert (state / "wg7").exists()
    assert step("start") == ["wg show wg7"]
    assert step("stop") == ["wg show wg7", "wg-quick down wg7"]
    assert not (state / "wg7").exists()
    assert step("stop") == ["wg show wg7"]


# -- wake-on-lan.sh: the magic packet on the wire ------------------------------------


MAC = "02:12:34:56:78:9a"
ETH_P_ALL = 0x0003


def magic_frames(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """The UDP payload of the first IPv4 UDP frame to port 9 seen on ``sock``."""
    sock.settimeout(0.05)

    def probe() -> bytes | None:
        try:
            frame = sock.recv(65536)
        except TimeoutError:
            return None
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:
            return None
        ihl = (frame[14] & 0x0F) * 4
        udp = frame[14 + ihl:]
        if int.from_bytes(udp[2:4], "big") != 9:
            return None
        assert frame[:6] == b"\xff" * 6, frame[:6].hex()  # Ethernet broadcast
        assert socket.inet_ntoa(frame[30:34]) == "10.98.0.255"  # the interface's broadcast
        return udp[8:int.from_bytes(udp[4:6], "big")]

    return wait_for("the magic packet on peer0", probe, timeout, every=0)


@pytest.mark.root
def test_wake_on_lan_sends_a_magic_packet(veth: Netns, tmp_path: Path) -> None:
    veth.ip("addr", "add", "10.98.0.1/24", "brd", "+", "dev", "tap0")
    with veth.entered():
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        capture.bind(("peer0", ETH_P_ALL))
    with capture:
        out = run("wake-on-lan.sh", "start",
                  {"WOL_MAC": MAC, "WOL_IFACE": "tap0", "WOL_TOOL": "python3"}, ns=veth)
        assert out.returncode == 0, out
        assert out.stdout == f"wake-on-lan: magic packet sent to {MAC}\n"
        payload = magic_frames(capture)
    assert len(payload) == 102
    assert payload == b"\xff" * 6 + bytes.fromhex(MAC.replace(":", "")) * 16


@pytest.mark.root
def test_wake_on_lan_tool_choice_and_checks(veth: Netns, tmp_path: Path) -> None:
    veth.ip("addr", "add", "10.98.0.1/24", "brd", "+", "dev", "tap0")
    log, bin_dir = tmp_path / "calls", tmp_path / "bin"
    for tool in ("wakeonlan", "etherwake"):
        fake(bin_dir, tool, f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
    ping = fake(bin_dir, "ping", f'#!/bin/sh\necho "ping $*" >> {log}\nexit 1\n')
    env = {"WOL_MAC": MAC, "WOL_IFACE": "tap0"}

    def step(action: str, **extra: str) -> list[str]:
        before = len(calls(log))
        out = run("wake-on-lan.sh", action, {**env, **extra}, bin_dir, ns=veth)
        assert out.returncode == 0, out
        return calls(log)[before:]

    # auto: wakeonlan first, to the interface's broadcast address.
    assert step("start") == [f"wakeonlan -i 10.98.0.255 -p 9 {MAC}"]
    assert step("start", WOL_TOOL="etherwake") == [f"etherwake -i tap0 -b {MAC}"]
    # A host that does not answer a ping is woken; one that answers is left alone.
    assert step("start", WOL_HOST="10.98.0.7") == [
        "ping -c 1 -W 1 10.98.0.7", f"wakeonlan -i 10.98.0.255 -p 9 {MAC}"]
    ping.write_text(f'#!/bin/sh\necho "ping $*" >> {log}\nexit 0\n')
    assert step("start", WOL_HOST="10.98.0.7") == ["ping -c 1 -W 1 10.98.0.7"]
    assert step("stop") == []
    for bad in ({"WOL_MAC": "02:12:34:56:78"}, {"WOL_MAC": ""}, {"WOL_PORT": "nine"},
                {"WOL_TOOL": "magic"}):
        out = run("wake-on-lan.sh", "start", {**env, **bad}, bin_dir, ns=veth)
        assert out.returncode == 2, (bad, out)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("wake-on-lan: "), out


# -- ssh-tunnel.sh: the device handed between tuntapd and ssh -w ----------------------


# Behaves like ssh where the script relies on it: -M -f -w L:R opens tunL
# (TUNSETIFF, as ssh does: EBUSY while another process holds it) and only then
# goes to the background; -O check/exit reach it through the control path;
# anything else is a remote command. Every call is recorded.
FAKE_SSH = """#!{python}
import fcntl, os, signal, socket, struct, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
def opt(flag):
    return args[args.index(flag) + 1] if flag in args else None
ctl = opt("-S")
pidfile = ctl + ".pid"
def master():
    try:
        pid = int(open(pidfile).read())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None
if opt("-O") == "check":
    sys.exit(0 if os.path.exists(ctl) and master() else 255)
if opt("-O") == "exit":
    pid = master()
    if pid:
        os.kill(pid, signal.SIGTERM)
    sys.exit(0 if pid else 255)
if "-M" not in args:
    sys.exit(0)
r, w = os.pipe()
if os.fork():
    os.close(w)
    answer = os.read(r, 200).decode()
    if answer != "ok":
        print("ssh: " + (answer or "died"), file=sys.stderr)
    sys.exit(0 if answer == "ok" else 255)
os.close(r)
os.setsid()
try:
    tun = os.open("/dev/net/tun", os.O_RDWR)
    name = "tun" + opt("-w").split(":")[0]
    fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH22x", name.encode(), 0x1001))
    s = socket.socket(socket.AF_UNIX)
    s.bind(ctl)
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
except OSError as exc:
    os.write(w, str(exc).encode())
    os._exit(1)
def leave(*_):
    os.unlink(ctl)
    os._exit(0)
signal.signal(signal.SIGTERM, leave)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
os.write(w, b"ok")
os.close(w)
while True:
    signal.pause()
"""


def names(pids: list[int]) -> list[str]:
    return [psutil.Process(p).name() for p in pids]


@pytest.fixture
def dev_log(tmp_path: Path) -> Iterator[tuple[Syslog, list[str]]]:
    """tuntapd -d logs to syslog, and refuses to start without one: a
    /dev/log of the test's own, for the script run under the prefix and
    for what it starts."""
    with private_dev_log(tmp_path, "tuntapd") as receiver_and_prefix:
        yield receiver_and_prefix


@pytest.mark.root
def test_ssh_tunnel_hands_the_device_between_tuntapd_and_ssh(
    netns: Netns, tmp_path: Path, dev_log: tuple[Syslog, list[str]]
) -> None:
    dev = "tun5"
    log, bin_dir = tmp_path / "calls", tmp_path / "bin"
    fake(bin_dir, "ssh", FAKE_SSH.format(python=sys.executable, log=str(log)))
    env = {"SSH_HOST": "tunnel.invalid", "TUN_LOCAL": "5", "TUN_REMOTE": "3",
           "CONTROL": str(tmp_path / "ctl"), "TUNTAPD": console_script()}
    # The documented set-up: a persistent device with its addresses.
    netns.ip("tuntap", "add", dev, "mode", "tun")
    netns.ip("addr", "add", "10.10.10.1", "peer", "10.10.10.2", "dev", dev)

    syslog, prefix = dev_log

    def step(action: str, says: str) -> None:
        out = run("ssh-tunnel.sh", action, env, bin_dir, ns=netns, prefix=prefix)
        assert out.returncode == 0, out
        assert out.stdout.endswith(f"ssh-tunnel: {says}\n"), out

    # Down: stop makes tuntapd hold the device, once.
    step("stop", "tunnel to tunnel.invalid already down")
    held = holders(netns, dev)
    assert names(held) == ["tuntapd"]
    assert has_carrier(netns, dev)
    assert syslog.wait(f"holding {dev} (mode tun)")[1] == held[0]
    step("stop", "tunnel to tunnel.invalid already down")
    assert holders(netns, dev) == held

    # Up: tuntapd lets go, "ssh -w" takes the device, both ends configured.
    step("start", f"tunnel to tunnel.invalid up on {dev}")
    ssh = holders(netns, dev)
    assert len(ssh) == 1 and ssh != held
    assert not psutil.pid_exists(held[0]) or psutil.Process(held[0]).status() == "zombie"
    masters = [c for c in calls(log) if " -M " in c]
    assert masters == [f"-S {tmp_path}/ctl -M -f -N -w 5:3 -o ExitOnForwardFailure=yes "
                       "-o BatchMode=yes -o ServerAliveInterval=10 -o ServerAliveCountMax=3 "
                       "tunnel.invalid"], calls(log)
    assert calls(log)[-1] == (f"-S {tmp_path}/ctl tunnel.invalid ip addr replace 10.10.10.2 "
                              "peer 10.10.10.1 dev tun3 && ip link set tun3 up")
    addr = netns.ip("-4", "-o", "addr", "show", "dev", dev).stdout
    assert "inet 10.10.10.1 peer 10.10.10.2/32" in addr, addr
    assert has_carrier(netns, dev)
    step("start", "tunnel to tunnel.invalid already up")
    assert len([c for c in calls(log) if " -M " in c]) == 1
    assert holders(netns, dev) == ssh

    # Down again: ssh gone, tuntapd back.
    step("stop", "tunnel to tunnel.invalid down")
    assert not (tmp_path / "ctl").exists()
    again = holders(netns, dev)
    assert names(again) == ["tuntapd"] and again != ssh
    assert has_carrier(netns, dev)


# -- the rsyslog snippet --------------------------------------------------------------


def test_rsyslog_snippet_routes_both_programs(tmp_path: Path) -> None:
    rsyslogd = need("rsyslogd", "rsyslog")
    snippet = (REPO / "conf" / "rsyslog.d" / "tuninetd.conf").read_text()
    assert "/var/log/tuninetd.log" in snippet
    ours, other = tmp_path / "tuninetd.log", tmp_path / "other.log"
    (tmp_path / "snippet.conf").write_text(snippet.replace("/var/log/tuninetd.log", str(ours)))
    (tmp_path / "work").mkdir()
    sock = tmp_path / "log"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{tmp_path}/work")\n'
        'module(load="imuxsock" SysSock.Use="off")\n'
        f'input(type="imuxsock" Socket="{sock}")\n'
        f'include(file="{tmp_path}/snippet.conf")\n'
        f"*.* {other}\n"
    )
    check = subprocess.run([rsyslogd, "-N1", "-f", str(conf)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stderr
    daemon = subprocess.Popen([rsyslogd, "-n", "-f", str(conf), "-i", str(tmp_path / "pid")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for("rsyslogd's socket", sock.exists)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for tag in ("tuninetd[10]", "tuntapd[11]", "other[12]"):
                s.sendto(f"<30>Nov 26 12:00:00 {tag}: hello from {tag}".encode(), str(sock))

        def routed() -> bool:
            text = ours.read_text() if ours.exists() else ""
            rest = other.read_text() if other.exists() else ""
            return "other[12]" in rest and "tuntapd[11]" in text and "tuninetd[10]" in text

        wait_for("the three lines written", routed)
        # `& stop`: our programs' lines go to their file only.
        assert "tuninetd[10]" not in other.read_text(), other.read_text()
        assert "tuntapd[11]" not in other.read_text(), other.read_text()
        assert "other[12]" not in ours.read_text(), ours.read_text()
    finally:
        daemon.terminate()
        daemon.wait(10)
        assert daemon.stderr is not None
        daemon.stderr.close()
