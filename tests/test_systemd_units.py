"""conf/tuninetd.service and conf/tuninetd@.service pass ``systemd-analyze
verify`` as shipped, with nothing to say.

The units name /usr/bin/tuninetd, where the Debian package puts it, and verify
insists that ExecStart's program exists. Where no package is installed, the
test runs verify in a private mount namespace whose /usr/bin is overlaid with
this interpreter's tuninetd, so the unit files are checked unchanged and
nothing outside that namespace changes: a unit naming any other path fails.
verify exits 0 even on directives it ignores, so any output fails the test too.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.netlab import Daemon, Lab, Netns, need
from tests.support.repo import REPO
from tests.support.timing import BEAT

CONF = REPO / "conf"
SHIPPED = "/usr/bin/tuninetd"
CAPS = {"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP",
        "CAP_SYS_CHROOT", "CAP_KILL"}
UNITS = [("tuninetd.service", "tuninetd.service"), ("tuninetd@.service", "tuninetd@demo.service")]


def installed_tuninetd() -> str:
    """The console script of this interpreter's tuninetd (a pyenv shim resolved)."""
    script = Path(sys.executable).parent / "tuninetd"
    found = str(script) if script.exists() else shutil.which("tuninetd")
    if found is None:
        pytest.fail("the tuninetd console script is not installed (pip install -e .)")
    return os.path.realpath(found)


def directives(unit: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def verify(folder: Path, unit: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of ``folder``/``unit``; /usr/bin gets this
    interpreter's tuninetd (in a private mount namespace) if it has none."""
    analyze = need("systemd-analyze", "systemd")
    # The man pages the units name are there once the package is installed
    # (the package CI verifies the installed units with them).
    argv = [analyze, "verify", "--man=no", str(folder / unit)]
    if not os.path.exists(SHIPPED):
        if os.geteuid() != 0:
            if os.environ.get("CI") == "true":
                pytest.fail("CI=true: needs root (a private mount namespace)")
            pytest.skip(f"needs root: no {SHIPPED}, and overlaying /usr/bin needs a mount")
        upper, work = tmp_path / "upper", tmp_path / "work"
        upper.mkdir()
        work.mkdir()
        (upper / "tuninetd").symlink_to(installed_tuninetd())
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                "mount -t overlay overlay -o lowerdir=/usr/bin,upperdir=$1,workdir=$2 /usr/bin"
                ' && shift 2 && exec "$@"', "sh", str(upper), str(work), *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=folder)


@pytest.mark.parametrize(("unit", "instance"), UNITS)
def test_systemd_analyze_verify(tmp_path: Path, unit: str, instance: str) -> None:
    # The template is verified through an instance: a copy under that name.
    folder = CONF if unit == instance else tmp_path / "units"
    if folder != CONF:
        folder.mkdir()
        shutil.copy(CONF / unit, folder / unit)
    r = verify(folder, instance, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout + r.stderr == "", r.stdout + r.stderr


def test_a_wrong_execstart_path_fails_verify(tmp_path: Path) -> None:
    """The check above can fail: the same unit naming a path where nothing is
    installed (the old /usr/local/bin) does not pass."""
    folder = tmp_path / "units"
    folder.mkdir()
    text = (CONF / "tuninetd.service").read_text()
    (folder / "tuninetd.service").write_text(
        text.replace(f"ExecStart={SHIPPED} ", "ExecStart=/usr/local/bin/tuninetd-nowhere "))
    r = verify(folder, "tuninetd.service", tmp_path)
    assert "/usr/local/bin/tuninetd-nowhere" in r.stdout + r.stderr
    assert r.returncode != 0


@pytest.mark.parametrize("unit", ["tuninetd.service", "tuninetd@.service"])
def test_unit_settings(unit: str) -> None:
    d = directives(CONF / unit)
    assert d["Type"] == "notify"
    assert d["Restart"] == "on-failure"
    assert d["WatchdogSec"]
    assert set(d["CapabilityBoundingSet"].split()) == CAPS
    assert d["ProtectSystem"] in ("full", "strict")
    assert d["ProtectHome"] in ("yes", "read-only")
    assert d["PrivateTmp"] == "yes"
    # The commands' cgroups live below the unit's: delegated and writable.
    assert d["Delegate"] == "yes"
    assert "ProtectControlGroups" not in d
    if "@" in unit:
        # Named after the instance: tuninetd status %i reaches it (tests/test_names.py).
        assert d["ExecStart"] == f"{SHIPPED} --config /etc/tuninetd/%i.toml --name %i"
    else:
        assert d["ExecStart"] == f"{SHIPPED} --config /etc/tuninetd/tuninetd.toml"


HARDENING = {"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
             "ProtectKernelLogs": "yes", "ProtectHostname": "yes", "RestrictSUIDSGID": "yes",
             "SystemCallArchitectures": "native", "UMask": "0077", "RestrictNamespaces": "yes"}


@pytest.mark.parametrize("unit", ["tuninetd.service", "tuninetd@.service"])
def test_units_are_hardened_to_5_5_or_lower(unit: str, tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the unit files as shipped; never
    ProtectProc=invisible or ProcSubset=pid, which would hide the sensors'
    /proc entries (and /proc/net) from the supervisor's checks."""
    analyze = need("systemd-analyze", "systemd")
    d = directives(CONF / unit)
    assert {k: d.get(k) for k in HARDENING} == HARDENING
    assert "ProtectProc" not in d and "ProcSubset" not in d
    r = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(CONF / unit)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert level is not None, r.stdout + r.stderr
    print(f"\n[figure] systemd-analyze security {unit}: {level[1]}")
    assert float(level[1]) <= 5.5, r.stdout


# What the start command tries under the restrictions, one line each.
PROBES = """
umask > {out}/umask
echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null && echo sysctl-written >> {out}/probes
unshare -n true 2>/dev/null && echo namespace-made >> {out}/probes
touch {out}/f && chmod u+s {out}/f 2>/dev/null && echo setuid-set >> {out}/probes
timeout 2 dd if=/dev/kmsg of=/dev/null bs=8192 count=1 2>/dev/null && echo kmsg-read >> {out}/probes
hostname tnd-unit-test 2>/dev/null && echo hostname-set >> {out}/probes
grep ^Seccomp: /proc/self/status > {out}/seccomp
"""


def unit_wrapper(folder: Path) -> tuple[str, ...]:
    """Inside the daemon's network namespace, what the units' settings do,
    in a mount and UTS namespace of its own: ProtectKernelTunables (/proc/sys
    and /sys read-only, /sys/fs/cgroup left writable as systemd leaves it
    with Delegate=), ProtectKernelLogs (/dev/kmsg and /proc/kmsg out of
    reach), ProtectHostname (a UTS namespace), UMask=0077, the capability
    bounding set (no CAP_SYS_MODULE, CAP_SYSLOG or CAP_SYS_ADMIN: what
    ProtectKernelModules and ProtectKernelLogs drop too), and the seccomp
    side (tests/support/unit_restrictions.py, loaded first: it needs CAP_SYS_ADMIN)."""
    blocked = folder / "inaccessible"
    blocked.touch(mode=0o000)
    blocked.chmod(0o000)
    caps = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(CAPS))
    setup = ("mount -t cgroup2 cgroup2 /sys/fs/cgroup"
             " && mount -o remount,bind,ro /sys"
             " && mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys"
             f" && mount --bind {blocked} /dev/kmsg && mount --bind {blocked} /proc/kmsg"
             ' && umask 0077 && exec "$@"')
    return ("unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", setup, "sh",
            sys.executable, str(Path(__file__).parent / "support" / "unit_restrictions.py"),
            "setpriv", f"--bounding-set=-all,{caps}", "--")


@pytest.mark.root
def test_the_daemon_works_under_the_units_restrictions(
        veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    """The real daemon under an equivalent of the units' restrictions (no
    systemd runs here as PID 1): it starts, its sensor and executor come up,
    a packet runs start and the ttl stop, `tuninetd status` answers over its
    socket, and SIGTERM ends it cleanly. Its start command finds each
    restriction in force: no sysctl written, no namespace made, no set-user-ID
    bit set, no kernel log read, the host's name unchanged, umask 0077."""
    need("setpriv", "util-linux")
    out = tmp_path / "probes"
    out.mkdir()
    hostname = socket.gethostname()

    def restricted(ns: Netns, *args: str, cgroup2: bool) -> Daemon:
        return start_daemon(ns, *args, cgroup2=False, can_mount=True, wrap=unit_wrapper(tmp_path))

    lab = Lab(veth, tmp_path, restricted, BEAT)
    probes = PROBES.format(out=out)
    run = lab.run("-i", "tap0", "-f", "udp", body=f'[ "$1" = start ] && {{ {probes} }}; exit 0')
    try:
        lab.send_frame(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                             / IP(src="10.57.0.1", dst="10.57.0.2") / UDP(dport=9)))
        run.wait_events(2)
        assert run.kinds()[:2] == ["start", "stop"]
        status = subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "status",
                                 "--control", run.daemon.control],
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and f"{run.daemon.name}: down (" in status.stdout, status
    finally:
        lab.close()
    assert run.daemon.stop() == 0, run.daemon.text()
    assert "Traceback" not in run.daemon.text() and "Warning" not in run.daemon.text()
    assert not (out / "probes").exists(), (out / "probes").read_text()
    assert (out / "umask").read_text().strip() == "0077"
    assert (out / "seccomp").read_text().split() == ["Seccomp:", "2"]
    assert socket.gethostname() == hostname
