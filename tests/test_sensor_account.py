"""Sensors drop to ``tuninetd`` when that account exists (the Debian package
makes it), else to ``nobody``; ``--user`` and the config file's ``user``
override both.

Each case runs the real CLI (``--check-config`` prints the account it
resolved) in a private mount namespace whose /etc/passwd is a copy with or
without a ``tuninetd`` line, so the machine's accounts are not touched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netlab import need_root

pytestmark = pytest.mark.root

ACCOUNT = "tuninetd:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"


def passwd(folder: Path, with_account: bool) -> Path:
    lines = [line for line in Path("/etc/passwd").read_text().splitlines(keepends=True)
             if not line.startswith("tuninetd:")]
    uids = {int(line.split(":")[2]) for line in lines}
    if with_account:
        lines.append(ACCOUNT.format(uid=next(u for u in range(990, 100, -1) if u not in uids)))
    path = folder / ("passwd-with" if with_account else "passwd-without")
    path.write_text("".join(lines))
    return path


def resolved_user(tmp_path: Path, with_account: bool, *extra: str) -> str:
    need_root()
    script = tmp_path / "toggle.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$1" /etc/passwd && shift && exec "$@"', "sh",
            str(passwd(tmp_path, with_account)), sys.executable, "-m",
            "tuninetd.supervisor.main", "-n", "5", "-c", str(script), "--check-config", *extra]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    users = [line for line in r.stdout.splitlines() if line.startswith("user = ")]
    assert len(users) == 1, r.stdout
    return users[0]


def test_nobody_without_the_account(tmp_path: Path) -> None:
    assert resolved_user(tmp_path, False) == 'user = "nobody"'


def test_tuninetd_when_the_account_exists(tmp_path: Path) -> None:
    assert resolved_user(tmp_path, True) == 'user = "tuninetd"'


def test_user_option_overrides(tmp_path: Path) -> None:
    assert resolved_user(tmp_path, True, "--user", "nobody") == 'user = "nobody"'


def test_config_file_user_overrides(tmp_path: Path) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text('user = "nobody"\n')
    assert resolved_user(tmp_path, True, "--config", str(conf)) == 'user = "nobody"'
