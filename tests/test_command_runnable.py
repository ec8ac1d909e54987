"""A command the kernel cannot run is refused at the start and by
--check-config (exit 2, one line naming what is wrong, the interpreter by
name), not found out when the first packet comes: no #! line and not ELF
(Exec format error), a #! interpreter that does not exist (a script saved
with Windows line endings asks for '/bin/sh\\r') or cannot be run, and with
--exec-user a command that user cannot reach."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netlab import public_folder


@pytest.fixture
def base() -> Iterator[Path]:
    """Root's and 0755, in /tmp (root's, sticky): nothing to refuse about who
    may change the command."""
    with public_folder("tnd-run-") as folder:
        yield folder


def tuninetd(*argv: str, check: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "-i", "lo",
                           *argv, *(["--check-config"] if check else [])],
                          capture_output=True, text=True, timeout=60)


def command(path: Path, body: bytes) -> Path:
    path.write_bytes(body)
    path.chmod(0o755)
    return path


REFUSED = [
    ("no-shebang", b"echo start\n",
     "neither an ELF executable nor a script starting with #!: the kernel cannot run it "
     "(Exec format error); add a #! line, e.g. #!/bin/sh"),
    ("crlf", b"#!/bin/sh\r\nexit 0\r\n",
     "its #! line names the interpreter '/bin/sh\\r', which does not exist (the file has "
     "Windows line endings, CRLF: convert it, e.g. with dos2unix)"),
    ("no-interpreter", b"#!/usr/bin/no-such-interpreter -e\nexit 0\n",
     "its #! line names the interpreter '/usr/bin/no-such-interpreter', which does not exist"),
    ("interpreter-not-executable", b"#!{base}/interp\nexit 0\n",
     "its #! line names the interpreter '{base}/interp', and it is not executable"),
]


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "start"])
@pytest.mark.parametrize(("body", "says"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_command_the_kernel_cannot_run_is_refused(base: Path, body: bytes, says: str,
                                                    check: bool) -> None:
    (base / "interp").write_text("not a program\n")  # 0644
    path = command(base / "cmd", body.replace(b"{base}", bytes(base)))
    r = tuninetd("-c", str(path), check=check)
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr == f"tuninetd: -c '{path}': {says.replace('{base}', str(base))}\n"


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "start"])
def test_a_command_the_exec_user_cannot_reach_is_refused(base: Path, check: bool) -> None:
    """A script in a folder only root may enter: root could run it, nobody cannot."""
    private = base / "private"
    private.mkdir(mode=0o700)
    path = command(private / "cmd", b"#!/bin/sh\nexit 0\n")
    r = tuninetd("-c", str(path), "--exec-user", "nobody", check=check)
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr == (f"tuninetd: -c '{path}': nobody cannot execute it (permission denied: "
                        "the file's mode, or a folder on its path that it cannot enter)\n")
    r = tuninetd("-c", str(path), check=True)  # as root it runs
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("body", [b"#!/bin/sh\nexit 0\n", b"#! /usr/bin/env sh\nexit 0\n",
                                  Path("/bin/true").read_bytes()], ids=["sh", "env", "elf"])
def test_what_the_kernel_runs_is_accepted(base: Path, body: bytes) -> None:
    path = command(base / "cmd", body)
    for user in ((), ("--exec-user", "nobody")):
        r = tuninetd("-c", str(path), *user, check=True)
        assert r.returncode == 0, r.stderr
