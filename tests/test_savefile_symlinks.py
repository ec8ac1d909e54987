"""``-w`` against a local user with symlinks, for real: the review had a
packet's payload land as a root-owned authorized_keys in a 0700 directory,
through a symlink that nobody planted at the -w path in a folder nobody
could write. Here nobody plants it, and nothing is written through it:

- at start, a -w folder anyone but root can write is refused (exit 2, one
  line), and so is a symlink at the path, whoever put it there;
- while the daemon runs, the path renamed, removed or swapped for a symlink
  is noticed on the next trigger, logged, and opened anew only under the
  same checks.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from tests.support.netlab import Lab, Run, as_nobody, public_folder

pytestmark = pytest.mark.root

SECRET = b"ssh-ed25519 AAAA root's own key\n"


def frame(n: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="10.66.0.1", dst="10.66.0.2") / UDP(sport=4000 + n, dport=5353)
                 / b"ssh-rsa planted-by-an-attacker\n")


@pytest.fixture
def base() -> Iterator[Path]:
    """Root's 0755 in /tmp, so that nobody can reach what is inside; a
    root-only 0700 folder with a file in it, the attack's target."""
    with public_folder("tnd-w-") as folder:
        secret = folder / "root-only"
        secret.mkdir(mode=0o700)
        (secret / "authorized_keys").write_bytes(SECRET)
        yield folder


def target(base: Path) -> Path:
    return base / "root-only" / "authorized_keys"


def new_target(base: Path) -> Path:
    """As in the review: a file that does not exist yet, which root would create."""
    return base / "root-only" / "authorized_keys2"


def nobody_sh(command: str, *args: str) -> None:
    code, out = as_nobody(["/bin/sh", "-c", command, "sh", *args])
    assert code == 0, out


def tuninetd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", *argv],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("folder_mode", ["sticky-1777", "nobodys"])
def test_symlink_planted_before_the_start_is_refused(base: Path, tmp_path: Path,
                                                      folder_mode: str) -> None:
    shared = base / "shared"
    shared.mkdir()
    if folder_mode == "sticky-1777":  # as /tmp
        shared.chmod(0o1777)
    else:
        os.chown(shared, int(subprocess.check_output(["id", "-u", "nobody"])), -1)
    dump = shared / "starts.pcap"
    nobody_sh('ln -s "$1" "$2"', str(new_target(base)), str(dump))
    cmd = tmp_path / "cmd"
    cmd.write_text("#!/bin/sh\nexit 0\n")
    cmd.chmod(0o755)
    r = tuninetd("-i", "lo", "-c", str(cmd), "-w", str(dump))
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"tuninetd: -w {str(dump)!r}: directory {shared} is "), lines[0]
    assert lines[0].endswith("use a folder only root can write"), lines[0]
    assert not new_target(base).exists()


def test_symlink_in_a_root_folder_is_refused_too(base: Path, tmp_path: Path) -> None:
    """Whoever made it: root never writes through a symlink at -w."""
    dump = base / "starts.pcap"
    dump.symlink_to(target(base))
    cmd = tmp_path / "cmd"
    cmd.write_text("#!/bin/sh\nexit 0\n")
    cmd.chmod(0o755)
    r = tuninetd("-i", "lo", "-c", str(cmd), "-w", str(dump))
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr == (f"tuninetd: -w {str(dump)!r}: is a symbolic link, refusing to "
                        "follow it\n")
    assert target(base).read_bytes() == SECRET


@pytest.fixture
def running(lab: Lab, base: Path) -> tuple[Lab, Run, Path]:
    """A daemon writing -w into base/dumps (root's, 0755), one trigger done."""
    dumps = base / "dumps"
    dumps.mkdir(mode=0o755)
    dump = dumps / "starts.pcap"
    run = lab.run("-i", "tap0", "-f", "udp", "-w", str(dump))
    trigger(lab, run, 1)
    assert len(rdpcap(str(dump))) == 1
    return lab, run, dump


def trigger(lab: Lab, run: Run, n: int) -> None:
    """The nth start, and the -w write that comes with it (done before the
    supervisor logs that the start command is done)."""
    lab.send_frame(frame(n))
    run.daemon.wait_log("PCAP: start command done", count=n)
    run.wait_events(2 * n)  # its stop too (ttl 1): the next frame triggers again


def test_symlink_swapped_in_by_nobody_while_running(running: tuple[Lab, Run, Path],
                                                     base: Path) -> None:
    """The folder made writable by mistake while the daemon runs: nobody
    moves the file away and puts a symlink to root's authorized_keys in its
    place, to a file root would create. The next trigger notices, logs it,
    and refuses to open it anew."""
    lab, run, dump = running
    dump.parent.chmod(0o777)
    nobody_sh('mv "$1" "$1.moved" && ln -s "$2" "$1"', str(dump), str(new_target(base)))
    trigger(lab, run, 2)
    run.daemon.wait_log(f"Logger: pcap file {dump} was moved, removed or replaced: "
                        "opening it again")
    failed = run.daemon.wait_log(f"Logger: can't write packet to pcap file {dump}: ")
    assert f"directory {dump.parent} is writable by its group and others" in failed[0], failed
    assert not new_target(base).exists()
    assert len(rdpcap(f"{dump}.moved")) == 1  # the old file got nothing either


def test_symlink_swapped_in_a_root_folder_is_not_followed(running: tuple[Lab, Run, Path],
                                                          base: Path) -> None:
    lab, run, dump = running
    dump.rename(f"{dump}.1")
    dump.symlink_to(target(base))
    trigger(lab, run, 2)
    run.daemon.wait_log(f"Logger: pcap file {dump} was moved, removed or replaced")
    run.daemon.wait_log(f"Logger: can't write packet to pcap file {dump}: is a symbolic "
                        "link, refusing to follow it")
    assert target(base).read_bytes() == SECRET
    # Once the symlink is gone, a fresh file, root's.
    dump.unlink()
    trigger(lab, run, 3)
    run.daemon.wait_log(f"Logger: writing packets to pcap file {dump} again")
    st = os.lstat(dump)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert len(rdpcap(str(dump))) == 1


def test_trigger_packets_are_not_readable_by_others(running: tuple[Lab, Run, Path]) -> None:
    """The file the daemon made is root's 0600 whatever the umask: nobody
    cannot read the packets of others from it. A file that existed keeps its
    mode (the admin chose it)."""
    lab, run, dump = running
    assert stat.S_IMODE(os.stat(dump).st_mode) == 0o600
    code, out = as_nobody(["/bin/cat", str(dump)])
    assert code != 0 and "Permission denied" in out, out
    dump.chmod(0o640)
    trigger(lab, run, 2)
    assert stat.S_IMODE(os.stat(dump).st_mode) == 0o640 and len(rdpcap(str(dump))) == 2


def test_rotated_file_is_opened_anew(running: tuple[Lab, Run, Path]) -> None:
    """logrotate's way: renamed; the next packet goes to a new file, and the
    daemon's descriptor does not keep writing into the old one."""
    lab, run, dump = running
    dump.rename(f"{dump}.1")
    trigger(lab, run, 2)
    run.daemon.wait_log(f"Logger: pcap file {dump} was moved, removed or replaced")
    assert len(rdpcap(f"{dump}.1")) == 1
    assert [bytes(p) for p in rdpcap(str(dump))] == [frame(2)]
    assert not any("can't write" in line for line in run.daemon.lines()), run.daemon.text()
