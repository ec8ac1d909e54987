"""What an operator meets on the installed package, on Debian's own
libraries (python3-prometheus-client 0.16, libpcap0.8, python3-psutil):
--metrics scraped for real, a bad filter refused with libpcap's reason,
--check-config, where the units' documentation points, and prerm stopping
the daemons started by hand on any init."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.package.conftest import TUNINETD
from tests.support.fake_prometheus import MISSING, fake_library
from tests.support.netlab import Netns, gone, recorder, terminate, wait_for
from tests.support.syslogd import private_dev_log

pytestmark = pytest.mark.root

DEBIAN_PYTHON = "/usr/bin/python3"
PRERM = "/var/lib/dpkg/info/tuninetd.prerm"


def debian_version(module: str) -> str:
    """The version of ``module`` that Debian's python3 imports, and from where."""
    r = subprocess.run([DEBIAN_PYTHON, "-c", f"import {module} as m, importlib.metadata as d;"
                        f"print(d.version({module!r}), m.__file__)"],
                       capture_output=True, text=True, cwd="/", check=True)
    version, path = r.stdout.split()
    assert path.startswith("/usr/lib/python3/dist-packages/"), path
    return version


class Running:
    """/usr/bin/tuninetd (or another program) in the foreground, its output in a file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)

    def wait_log(self, pattern: str) -> re.Match[str]:
        def probe() -> re.Match[str] | None:
            assert self.proc.poll() is None, self.log.read_text()
            return re.search(pattern, self.log.read_text())

        return wait_for(f"log line {pattern!r}", probe, 30)

    def stop(self) -> None:
        terminate(self.proc, 30)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.stop()


def test_metrics_scraped_on_debians_prometheus_client(
        netns: Netns, tmp_path: Path, running: list[Running]) -> None:
    """Debian bookworm's python3-prometheus-client (0.16, which has no
    disable_created_metrics): the daemon starts and answers a real scrape."""
    assert debian_version("prometheus_client").startswith("0.16"), "not bookworm's library"
    script, _ = recorder(tmp_path)
    d = Running(netns.exec_argv(TUNINETD, "-n", "5", "-c", str(script), "--metrics",
                                "127.0.0.1:0", "--control", str(tmp_path / "ctl.sock")),
                tmp_path / "daemon.log")
    running.append(d)
    port = int(d.wait_log(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics")[1])
    with netns.entered():
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    with s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200 OK"), head
    names = {s.name for f in text_string_to_metric_families(body) for s in f.samples}
    assert {"tuninetd_state", "tuninetd_starts_total", "tuninetd_idle_seconds"} <= names
    assert not [n for n in names if n.endswith("_created")], names


@pytest.mark.parametrize(("init", "version", "says"), [
    (MISSING, None, "prometheus-client is not installed"),
    ("", "0.15.2", "prometheus-client 0.15.2 is too old (at least 0.16)"),
])
@pytest.mark.parametrize("check", [True, False], ids=["check-config", "start"])
def test_metrics_without_a_usable_library_names_the_debian_package(
        tmp_path: Path, init: str, version: str | None, says: str, check: bool) -> None:
    """Missing or too old, at --check-config and at start: exit 2 with the
    apt-get line (pip would be refused on Debian's python3, PEP 668)."""
    script, _ = recorder(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(fake_library(tmp_path / "lib", init, version))}
    r = subprocess.run([TUNINETD, "-n", "5", "-c", str(script), "--metrics", "127.0.0.1:9101",
                        *(["--check-config"] if check else [])],
                       capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.splitlines() == [
        f"tuninetd: --metrics '127.0.0.1:9101': {says}: "
        "apt-get install python3-prometheus-client"]


def test_bad_filter_says_libpcaps_reason(tmp_path: Path) -> None:
    """Debian's own libpcap0.8 says why; the line carries it (not -1)."""
    script, _ = recorder(tmp_path)
    r = subprocess.run([TUNINETD, "-i", "lo", "-c", str(script), "-f", "tcp dport 8080"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.splitlines() == [
        "tuninetd: -f 'tcp dport 8080': can't parse filter expression: syntax error "
        "(on lo, link type ether)"]


def test_check_config_of_a_file(tmp_path: Path) -> None:
    """A configuration with a filter and metrics: valid (exit 0), printed as
    TOML that reads back to the same values."""
    script, _ = recorder(tmp_path)
    config = tmp_path / "tuninetd.toml"
    config.write_text(f'interfaces = ["lo"]\nfilter = "udp port 53"\ncommand = "{script}"\n'
                      'ttl = 120\nmetrics = "127.0.0.1:9101"\n')
    r = subprocess.run([TUNINETD, "--config", str(config), "--check-config"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shown = tomllib.loads(r.stdout)
    assert (shown["interfaces"], shown["filter"], shown["command"], shown["ttl"],
            shown["metrics"]) == (["lo"], "udp port 53", str(script), 120, "127.0.0.1:9101")


def test_units_point_to_the_installed_documentation() -> None:
    """Documentation= of both units: man pages that man finds, files that exist."""
    for unit in ("tuninetd.service", "tuninetd@.service"):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(f"/lib/systemd/system/{unit}")
        links = parser["Unit"]["Documentation"].split()
        assert links, unit
        for link in links:
            kind, _, rest = link.partition(":")
            if kind == "man":
                page, section = re.fullmatch(r"(.+)\((\d)\)", rest).groups()  # type: ignore[union-attr]
                found = subprocess.run(["man", "-w", section, page], capture_output=True)
                assert found.returncode == 0, link
            else:
                assert kind == "file" and Path(rest).is_file(), link


def test_prerm_stops_the_daemons_started_by_hand(
        netns: Netns, tmp_path: Path, running: list[Running]) -> None:
    """No systemd here: prerm finds a foreground daemon, a -d one and tuntapd
    of this package, stops them and says so; the same programs from the
    checkout's venv (the same /usr/bin/python3) are not the package's and
    keep running."""
    script, _ = recorder(tmp_path)
    foreground = Running(netns.exec_argv(TUNINETD, "-n", "6", "-c", str(script)),
                         tmp_path / "foreground.log")
    running.append(foreground)
    venv = Running(netns.exec_argv(sys.executable, "-m", "tuninetd.supervisor.main", "-n", "7",
                                   "-c", str(script)), tmp_path / "venv.log")
    running.append(venv)
    tuntapd = Running(netns.exec_argv("/usr/bin/tuntapd", "-i", "tun7"), tmp_path / "tun.log")
    running.append(tuntapd)
    with private_dev_log(tmp_path, "tuninetd") as (syslog, prefix):
        detached = subprocess.run([*prefix, *netns.exec_argv(TUNINETD, "-n", "8", "-c",
                                                             str(script), "-d")],
                                  capture_output=True, text=True, timeout=60)
        assert detached.returncode == 0, detached.stderr
        background = syslog.wait("Success! Tuninetd has been started with PID:")[1]
    for d in (foreground, venv):
        d.wait_log("Start listening nflog-group")
    tuntapd.wait_log("holding tun7")

    r = subprocess.run(["sh", PRERM, "remove"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    said = dict(re.findall(r"^tuninetd: stopping pid (\d+): (.*)$", r.stdout, re.M))
    ours = {str(foreground.proc.pid), str(background), str(tuntapd.proc.pid)}
    assert set(said) == ours, r.stdout
    assert said[str(tuntapd.proc.pid)].startswith("tuntapd"), r.stdout
    assert "killed" not in r.stdout, r.stdout
    for d in (foreground, tuntapd):
        assert d.proc.wait(30) == 0, d.log.read_text()
    wait_for("the -d daemon gone", lambda: gone(background), 30)
    assert venv.proc.poll() is None, venv.log.read_text()
    assert psutil.Process(venv.proc.pid).cmdline()[0].startswith("tuninetd: supervisor"), \
        shlex.join(psutil.Process(venv.proc.pid).cmdline())
