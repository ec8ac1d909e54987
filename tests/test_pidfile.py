"""``--pidfile``, attacked for real: a local user (nobody) who can write the
pidfile's directory plants the temporary names a daemon would have used,
and gains nothing; a second daemon that fails to start (its control socket
or its NFLOG group is the first one's) leaves the first one's pidfile in
place.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.netlab import Daemon, Netns, as_nobody, public_folder, ready, recorder, wait_for

pytestmark = pytest.mark.root

PLANTED = 3000  # temporary names planted: one per pid the daemon may get


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory like /tmp (root's, 1777): nobody can create files in it."""
    with public_folder("tnd-pid-", 0o1777) as folder:
        yield folder


def last_pid() -> int:
    with open("/proc/sys/kernel/ns_last_pid") as f:
        return int(f.read())


def test_planted_temporary_names_gain_nothing(veth: Netns, tmp_path: Path, shared_dir: Path,
                                               start_daemon: Callable[..., Daemon]) -> None:
    """The old temporary name was ``PATH.<pid>.tmp``, opened without O_EXCL:
    nobody planted it for every pid the daemon could get, the daemon wrote
    into nobody's file and renamed it into place, and nobody owned the
    pidfile. Planted here as nobody, for the next PLANTED pids."""
    pidfile = shared_dir / "tuninetd.pid"
    first = last_pid() + 1
    code, out = as_nobody(["/bin/sh", "-c",
                           'i=$1; while [ "$i" -lt "$2" ]; do echo 1 > "$3.$i.tmp"; '
                           'i=$((i + 1)); done', "sh", str(first), str(first + PLANTED),
                           str(pidfile)])
    assert code == 0, out
    nobody = pwd.getpwnam("nobody").pw_uid
    script, _ = recorder(tmp_path)
    # A filter: a new link's own IPv6 chatter would fire an unfiltered daemon.
    d = start_daemon(veth, "-i", "tap0", "-f", "udp", "-c", str(script), "--pidfile",
                     str(pidfile))
    ready(d)
    wait_for("the pidfile", pidfile.exists)
    # The attack was really in place: the daemon's own old name was planted.
    planted = Path(f"{pidfile}.{d.pid}.tmp")
    assert first <= d.pid < first + PLANTED, (first, d.pid)
    assert planted.stat().st_uid == nobody and planted.read_text() == "1\n"

    st = os.lstat(pidfile)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert pidfile.read_text() == f"{d.pid}\n"
    assert d.stop() == 0
    assert not pidfile.exists()
    assert planted.read_text() == "1\n"  # never opened: still nobody's
    # No temporary file of the daemon left behind: only what nobody planted.
    leftovers = [p.name for p in shared_dir.iterdir() if p.stat().st_uid != nobody]
    assert leftovers == []


@pytest.mark.parametrize("conflict", ["control-socket", "nflog-group"])
def test_second_daemon_that_fails_leaves_the_first_ones_pidfile(
        netns: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon],
        conflict: str) -> None:
    """The second daemon used to write the pidfile first, fail, and remove
    it (it named its own pid by then): the first daemon ran on without one.
    Now a pidfile is written once every worker said hello."""
    netns.ip("link", "set", "lo", "up")
    pidfile = tmp_path / "tuninetd.pid"
    script, _ = recorder(tmp_path)
    first = start_daemon(netns, "-n", "3", "-c", str(script), "--pidfile", str(pidfile))
    ready(first)
    wait_for("the pidfile", pidfile.exists)
    assert pidfile.read_text() == f"{first.pid}\n"

    # The same NFLOG group, or the same control socket with another group.
    args = ["-n", "3"] if conflict == "nflog-group" else ["-n", "4", "--control", first.control]
    second = start_daemon(netns, *args, "-c", str(script), "--pidfile", str(pidfile))
    try:
        status = second.proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the second daemon runs:\n{second.text()}")
    assert status == 1, second.text()
    assert pidfile.read_text() == f"{first.pid}\n", second.text()
    assert first.proc.poll() is None
    assert first.stop() == 0
    assert not pidfile.exists()
