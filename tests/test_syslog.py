"""-d against a real rsyslogd that this test starts with its own
configuration: the lines land in rsyslog's output file with programname
tuninetd, facility daemon and the daemon's pid, at the right severity; the
--pidfile holds the daemon's pid while it runs and is gone after SIGTERM.

rsyslogd listens on a socket of its own (imuxsock, not the system one). The
daemon sees it as /dev/log through a bind mount in a private mount
namespace; on a machine without /dev/log the socket is /dev/log itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.netlab import (
    Netns,
    as_nobody,
    events,
    gone,
    need,
    public_folder,
    recorder,
    sh,
    wait_for,
)
from tests.support.repo import REPO
from tests.support.timing import BEAT

pytestmark = pytest.mark.root

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
              / IP(src="10.59.0.1", dst="10.59.0.2") / UDP(sport=4000, dport=5353))
TEMPLATE = "%programname%|%syslogfacility-text%|%syslogseverity-text%|%procid%|%msg%\\n"


@dataclass
class Rsyslog:
    out: Path
    prefix: list[str]  # runs a command that sees rsyslog's socket as /dev/log

    def records(self) -> list[tuple[str, str, str, str, str]]:
        if not self.out.exists():
            return []
        got = []
        for line in self.out.read_text(errors="replace").splitlines():
            fields = line.split("|", 4)
            if len(fields) == 5:
                got.append((fields[0], fields[1], fields[2], fields[3], fields[4].strip()))
        return got

    def wait(self, needle: str, timeout: float = 15.0) -> tuple[str, str, str, str, str]:
        def probe() -> tuple[str, str, str, str, str] | None:
            return next((r for r in self.records() if needle in r[4]), None)

        try:
            return wait_for(f"rsyslog line {needle!r}", probe, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- rsyslog output ---\n"
                                 + "\n".join("|".join(r) for r in self.records())) from None


def start_rsyslogd(folder: Path, rules: str = "", annotate: bool = False) -> Iterator[Rsyslog]:
    """rsyslogd on a socket of its own, writing every line it gets to
    ``folder``/out.log after ``rules``; ``annotate``: with the sender's
    credentials, as the system socket's SysSock.Annotate and ParseTrusted."""
    rsyslogd = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd"
                                            if os.path.exists("/usr/sbin/rsyslogd") else None)
    if rsyslogd is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: needs rsyslogd (apt-get install rsyslog)")
        pytest.skip("needs rsyslogd (apt-get install rsyslog)")
    own_dev_log = not os.path.exists("/dev/log")
    sock = Path("/dev/log") if own_dev_log else folder / "log"
    out = folder / "out.log"
    conf = folder / "rsyslog.conf"
    trusted = ' Annotate="on" ParseTrusted="on"' if annotate else ""
    conf.write_text(
        f'global(workDirectory="{folder}")\n'
        'module(load="imuxsock" SysSock.Use="off")\n'
        f'input(type="imuxsock" Socket="{sock}" CreatePath="off"{trusted})\n'
        f'template(name="fields" type="string" string="{TEMPLATE}")\n'
        f"{rules}\n"
        f'*.* action(type="omfile" file="{out}" template="fields")\n'
    )
    proc = subprocess.Popen([rsyslogd, "-n", "-f", str(conf), "-i", str(folder / "pid")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_for("rsyslogd listening", lambda: sock.exists() or proc.poll() is not None)
        if proc.poll() is not None:
            assert proc.stdout is not None
            pytest.fail(f"rsyslogd exited: {proc.stdout.read().decode(errors='replace')}")
        prefix = [] if own_dev_log else [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind {sock} /dev/log && exec "$@"', "sh"]
        yield Rsyslog(out, prefix)
    finally:
        proc.terminate()
        proc.wait(10)
        if own_dev_log and sock.is_socket():
            sock.unlink()


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    folder = tmp_path / "rsyslog"
    folder.mkdir()
    yield from start_rsyslogd(folder)


def test_daemon_logs_to_rsyslog_and_keeps_a_pidfile(veth: Netns, tmp_path: Path,
                                                   rsyslog: Rsyslog) -> None:
    script, record = recorder(tmp_path, body='[ "$1" = stop ] && exit 1; exit 0')
    pidfile = tmp_path / "run" / "tuninetd.pid"
    pidfile.parent.mkdir()
    control = tmp_path / "ctl.sock"
    argv = [*rsyslog.prefix, *veth.exec_argv(
        sys.executable, "-m", "tuninetd.supervisor.main", "-i", "tap0", "-f", "udp",
        "-c", str(script), "-t", "1", "--beat", str(BEAT), "-d", "--pidfile", str(pidfile),
        "--control", str(control))]
    parent = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert parent.returncode == 0, parent.stderr
    assert parent.stderr == ""

    # The parent returned once the workers said hello: the pidfile is there.
    pid = int(pidfile.read_text())
    daemon = psutil.Process(pid)
    assert daemon.cmdline()[0].startswith("tuninetd: supervisor")
    assert daemon.cwd() == "/"
    assert oct(pidfile.stat().st_mode & 0o777) == oct(0o644)

    prog, facility, severity, procid, _ = rsyslog.wait(
        f"Success! Tuninetd has been started with PID: {pid}")
    assert (prog, facility, severity, procid) == ("tuninetd", "daemon", "info", str(pid))
    rsyslog.wait("Binding to interface tap0")
    workers = [c.pid for c in daemon.children()]

    veth.sender().send(FRAME)
    wait_for("start and stop", lambda: [e[0] for e in events(record)] == ["start", "stop"])
    assert rsyslog.wait("PCAP: start command done")[2] == "info"
    assert rsyslog.wait("|- IPv4 10.59.0.1 > 10.59.0.2, NXT_HDR: 0x11 (UDP)")[2] == "info"
    warning = rsyslog.wait("Executable command doesn't return 0 code")
    assert warning[2] == "warning"

    os.kill(pid, signal.SIGTERM)
    wait_for("daemon and workers gone", lambda: all(gone(p) for p in (pid, *workers)))
    rsyslog.wait("CORE: all workers have exited, bye")
    assert not pidfile.exists(), "the pidfile outlives the daemon"
    assert not control.exists()
    ours = [r for r in rsyslog.records() if r[0] == "tuninetd"]
    assert {r[1] for r in ours} == {"daemon"}
    assert {r[3] for r in ours} == {str(pid)}


def test_pidfile_that_cannot_be_written_fails_the_start(veth: Netns, tmp_path: Path,
                                                        rsyslog: Rsyslog) -> None:
    """Found out only after -d forked (/proc takes no files): the parent
    reports it, exit status 1, and the daemon logs why before it goes."""
    script, _ = recorder(tmp_path)
    argv = [*rsyslog.prefix, *veth.exec_argv(
        sys.executable, "-m", "tuninetd.supervisor.main", "-i", "tap0", "-c", str(script),
        "-d", "--pidfile", "/proc/tuninetd-test.pid", "--control", str(tmp_path / "c.sock"))]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "cannot write the pidfile /proc/tuninetd-test.pid" in lines[0]
    rsyslog.wait("cannot write the pidfile")
    assert not [r for r in rsyslog.records() if "Success!" in r[4]], rsyslog.records()
    assert not (tmp_path / "c.sock").exists()


SHIPPED_RULE = REPO / "conf" / "rsyslog.d" / "tuninetd.conf"


@pytest.mark.parametrize("annotate", [True, False], ids=["annotated", "plain"])
def test_a_users_line_under_the_daemons_name_stays_out_of_its_log(annotate: bool) -> None:
    """The shipped rule, in an rsyslogd of the test's: root logs as
    ``tuninetd[4242]``, and so does nobody, with the same text. With the
    local socket annotated (the kernel's credentials of the sender), only
    root's line lands in tuninetd.log and nobody's goes to the general log;
    without, both land there, which the rule's comment says."""
    logger = need("logger", "bsdutils")
    with public_folder("tnd-rsyslog-") as folder:
        daemons_log = folder / "tuninetd.log"
        rules = SHIPPED_RULE.read_text().replace("/var/log/tuninetd.log", str(daemons_log))
        for rs in start_rsyslogd(folder, rules, annotate):
            sock = str(folder / "log") if rs.prefix else "/dev/log"
            text = "PCAP: start command done"
            sh(logger, "-u", sock, "-t", "tuninetd[4242]", f"{text} (root)")
            code, out = as_nobody([logger, "-u", sock, "-t", "tuninetd[4242]", f"{text} (nobody)"])
            assert code == 0, out
            sh(logger, "-u", sock, "-t", "other", "flush")  # after both, in order
            rs.wait("flush")

            def holds(path: Path, line: str) -> bool:
                return path.exists() and line in path.read_text()

            root, nobody = f"{text} (root)", f"{text} (nobody)"
            assert holds(daemons_log, root) and not holds(rs.out, root)
            if annotate:
                assert holds(rs.out, nobody), rs.out.read_text()
                assert not holds(daemons_log, nobody), daemons_log.read_text()
            else:
                assert holds(daemons_log, nobody), daemons_log.read_text()
