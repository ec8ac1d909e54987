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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netlab import need

CONF = Path(__file__).resolve().parent.parent / "conf"
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
