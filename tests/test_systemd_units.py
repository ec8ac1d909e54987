"""conf/tuninetd.service and conf/tuninetd@.service pass ``systemd-analyze
verify`` with nothing to say.

verify insists that ExecStart's program exists. The units name
/usr/local/bin/tuninetd (where ``pip install`` as root puts it on Debian);
the test checks a copy in which that one path is the tuninetd installed for
this interpreter, rather than putting anything into /usr/local/bin. verify
exits 0 even on directives it ignores, so any output fails the test too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parent.parent / "conf"
SHIPPED = "/usr/local/bin/tuninetd"
CAPS = {"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP",
        "CAP_SYS_CHROOT", "CAP_KILL"}


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


@pytest.mark.parametrize(("unit", "instance"), [("tuninetd.service", "tuninetd.service"),
                                                ("tuninetd@.service", "tuninetd@demo.service")])
def test_systemd_analyze_verify(tmp_path: Path, unit: str, instance: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: needs systemd-analyze (apt-get install systemd)")
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    text = (CONF / unit).read_text()
    assert text.count(f"ExecStart={SHIPPED} ") == 1
    (tmp_path / unit).write_text(text.replace(f"ExecStart={SHIPPED} ",
                                              f"ExecStart={installed_tuninetd()} "))
    r = subprocess.run([analyze, "verify", str(tmp_path / instance)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout + r.stderr == "", r.stdout + r.stderr


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
    if "@" in unit:
        assert d["ExecStart"] == (f"{SHIPPED} --config /etc/tuninetd/%i.toml "
                                  "--control /run/tuninetd-%i.sock")
    else:
        assert d["ExecStart"] == f"{SHIPPED} --config /etc/tuninetd/tuninetd.toml"
