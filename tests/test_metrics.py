"""``--metrics HOST:PORT``, scraped over the loopback of the daemon's
namespace after a real start, stop and worker restart; and the clear exit 2
when the optional extra (prometheus-client) is not installed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.fake_prometheus import MISSING, fake_library
from tests.support.netlab import (
    Daemon,
    Netns,
    Samples,
    events,
    ready,
    recorder,
    samples,
    scrape,
    wait_for,
    worker,
)
from tests.support.timing import BEAT

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
              / IP(src="10.57.0.1", dst="10.57.0.2") / UDP(sport=4000, dport=5353))

@pytest.mark.root
def test_scrape_after_start_stop_and_restart(
    veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    script, record = recorder(tmp_path)
    d = start_daemon(veth, "-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1",
                     "--beat", str(BEAT), "--metrics", "127.0.0.1:0")
    ready(d)
    line = d.wait_log("Metrics on http://127.0.0.1:")[0]
    m = re.search(r":(\d+)/metrics", line)
    assert m, line
    port = int(m[1])

    head, body = scrape(veth, port)
    assert head.startswith("HTTP/1.0 200 OK"), head
    assert "text/plain" in head
    got = samples(body)
    assert got[("tuninetd_state", (("state", "down"),))] == 1
    assert got[("tuninetd_state", (("state", "up"),))] == 0
    assert got[("tuninetd_starts_total", ())] == 0
    assert got[("tuninetd_idle_seconds", ())] != got[("tuninetd_idle_seconds", ())]  # NaN

    tx = veth.sender()
    tx.send(FRAME)
    wait_for("start", lambda: len(events(record)) >= 1)
    for _ in range(3):
        tx.send(FRAME)  # counted by the beats while up
    wait_for("stop", lambda: [e[0] for e in events(record)] == ["start", "stop"])
    sensor = worker(d, "tuninetd: sensor pcap tap0")
    os.kill(sensor, signal.SIGKILL)
    d.wait_log("is back")

    def settled() -> Samples | None:
        got = samples(scrape(veth, port)[1])
        return got if got.get(("tuninetd_stops_total", ())) == 1 else None

    got = wait_for("the stop counted", settled)
    assert got[("tuninetd_state", (("state", "down"),))] == 1
    assert got[("tuninetd_starts_total", ())] == 1
    assert not [name for name, _ in got if name.endswith("_created")]
    assert got[("tuninetd_matching_packets_total", (("sensor", "pcap:tap0"),))] >= 4
    assert 0 <= got[("tuninetd_idle_seconds", ())] < 30
    for event in ("start", "stop"):
        key = ("tuninetd_command_duration_seconds_count", (("event", event),))
        assert got[key] == 1, event
        inf = ("tuninetd_command_duration_seconds_bucket", (("event", event), ("le", "+Inf")))
        assert got[inf] == 1
    restart = ("tuninetd_worker_restarts_total",
               (("reason", "killed by signal 9 (SIGKILL)"), ("role", "pcap:tap0")))
    assert got[restart] == 1, {k: v for k, v in got.items() if "restart" in k[0]}

    assert scrape(veth, port, "/nothing")[0].startswith("HTTP/1.0 404")
    # A client that connects and says nothing does not hold up the next one.
    with veth.entered():
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        assert scrape(veth, port)[0].startswith("HTTP/1.0 200 OK")
    finally:
        idle.close()


def with_library(tmp_path: Path, init: str, version: str | None, *args: str
                 ) -> subprocess.CompletedProcess[str]:
    """tuninetd with --metrics, that prometheus_client first on the path."""
    script, _ = recorder(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(fake_library(tmp_path / "lib", init, version))}
    return subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "-i", "lo", "-c",
                           str(script), "--metrics", "127.0.0.1:9101", *args],
                          capture_output=True, text=True, env=env, timeout=30)


VENV_PIP = f"{sys.prefix}/bin/pip install 'prometheus-client>=0.16' (the metrics extra)"


@pytest.mark.parametrize("args", [(), ("--check-config",)])
def test_without_the_library_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    """prometheus-client missing: exit 2 and the command that installs it
    into this venv, at start and at --check-config, before any privilege check."""
    r = with_library(tmp_path, MISSING, None, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        f"tuninetd: --metrics '127.0.0.1:9101': prometheus-client is not installed: {VENV_PIP}"]


@pytest.mark.parametrize("args", [(), ("--check-config",)])
def test_too_old_library_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Older than Debian bookworm's 0.16: refused with what to install."""
    r = with_library(tmp_path, "", "0.15.2", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "tuninetd: --metrics '127.0.0.1:9101': prometheus-client 0.15.2 is too old "
        f"(at least 0.16): {VENV_PIP}"]


@pytest.mark.parametrize("bad", ["9101", "127.0.0.1:", "127.0.0.1:99999", ":80"])
def test_bad_address_exit_2(tmp_path: Path, bad: str) -> None:
    script, _ = recorder(tmp_path)
    r = subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "-i", "lo", "-c",
                        str(script), "--metrics", bad],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.startswith(f"tuninetd: --metrics {bad!r}: expected HOST:PORT"), r.stderr


# Holds HOLD idle connections to the port, opening a new one whenever the
# daemon drops one, and trickles a request one byte at a time on another
# (slow loris); counts the connections it had dropped.
HOARDER = """
import selectors, socket, sys, time
port, hold = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
def connect(trickle):
    s = socket.create_connection(("127.0.0.1", port))
    sel.register(s, selectors.EVENT_READ, trickle)
    return s
conns = [connect(False) for _ in range(hold)]
loris = connect(True)
request, sent, dropped = b"GET /metrics HTTP/1.0\\r\\nX-Slow: " + b"x" * 4000, 0, 0
print("ready", flush=True)
while True:
    for key, _ in sel.select(0.05):
        if not key.fileobj.recv(65536):
            sel.unregister(key.fileobj)
            key.fileobj.close()
            dropped += 1
            print(dropped, flush=True)
            new = connect(key.data)
            if key.data:
                loris, sent = new, 0
    try:
        loris.send(request[sent:sent + 1])
        sent += 1
    except OSError:
        pass
    time.sleep(0.01)
"""


@pytest.mark.root
def test_a_local_hoarder_does_not_starve_the_scraper(
    veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    """An unprivileged local process holds 40 connections (and opens a new one
    for each the daemon drops) plus a slow-loris request, while a scraper
    scrapes 20 times: every scrape gets its 200."""
    nobody = pwd.getpwnam("nobody")
    d = start_daemon(veth, "-i", "tap0", "-f", "udp", "-c", "/bin/true", "--beat", str(BEAT),
                     "--metrics", "127.0.0.1:0")
    ready(d)
    m = re.search(r":(\d+)/metrics", d.wait_log("Metrics on http://127.0.0.1:")[0])
    assert m
    port = int(m[1])
    assert not any("not on loopback" in line for line in d.lines())
    hoarder = subprocess.Popen(
        veth.exec_argv("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                       "--clear-groups", "/usr/bin/python3", "-c", HOARDER, str(port), "40"),
        stdout=subprocess.PIPE, cwd="/")
    try:
        assert hoarder.stdout is not None and hoarder.stdout.readline() == b"ready\n"
        ok, took = 0, []
        for _ in range(20):
            t0 = time.monotonic()
            with contextlib.suppress(OSError):
                ok += scrape(veth, port)[0].startswith("HTTP/1.0 200 OK")
            took.append(time.monotonic() - t0)
            time.sleep(0.1)  # scrapes spread over the hoarder's reconnects
        assert hoarder.poll() is None, "the hoarder gave up"
    finally:
        hoarder.kill()
        out = hoarder.communicate()[0].split()
    print(f"\n[figure] 20 scrapes against 40 held connections and a slow loris: {ok} "
          f"answered (slowest {max(took):.3f} s); the hoarder had {len(out) - 1} "
          "connections dropped and reopened them")
    assert ok == 20


@pytest.mark.root
def test_metrics_off_loopback_are_warned_of(
    veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    d = start_daemon(veth, "-i", "tap0", "-f", "udp", "-c", "/bin/true", "--beat", str(BEAT),
                     "--metrics", "0.0.0.0:0")
    ready(d)
    line = d.wait_log("not on loopback")[0]
    assert re.search(r"Warning! Metrics listen on 0\.0\.0\.0, not on loopback: anyone who can "
                     r"reach port (\d+) reads them \(no authentication\); firewall it, or give "
                     r"--metrics 127\.0\.0\.1:\1$", line), line
