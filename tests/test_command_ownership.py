"""Commands root runs that someone else can change are refused, as OpenSSH's
StrictModes and sudo do: exit 2, one line naming what is wrong. Each refused
case is first attacked for real: a process running as nobody changes the
command (or replaces it) and succeeds, so root would have run nobody's code.
Each accepted case is attacked too, and the attack fails.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.netlab import as_nobody, public_folder

NOBODY = pwd.getpwnam("nobody")
SCRIPT = "#!/bin/sh\nexit 0\n"


@pytest.fixture
def base() -> Iterator[Path]:
    """Root's and 0755, as /usr/local/bin is, in /tmp (root's, sticky)."""
    with public_folder("tnd-own-") as folder:
        yield folder


def script(path: Path, mode: int = 0o755, owner: int = 0) -> Path:
    path.write_text(SCRIPT)
    path.chmod(mode)
    os.chown(path, owner, -1)
    return path


def folder(path: Path, mode: int = 0o755, owner: int = 0, group: int = 0) -> Path:
    path.mkdir()
    path.chmod(mode)
    os.chown(path, owner, group)
    return path


def tuninetd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "-i", "lo",
                           *argv, "--check-config"], capture_output=True, text=True, timeout=60)


def nobody_sh(command: str, *args: str) -> int:
    return as_nobody(["/bin/sh", "-c", command, "sh", *args])[0]


# Each case: what the command is, and the attack nobody performs on it.
# (id, setup(base) -> the -c path, attack shell command on $1 = the path)
Setup = Callable[[Path], Path]


def owned_by_nobody(b: Path) -> Path:
    return script(b / "cmd", owner=NOBODY.pw_uid)


def world_writable(b: Path) -> Path:
    return script(b / "cmd", 0o777)


def group_writable(b: Path) -> Path:
    staff = folder(b / "d", 0o775, group=NOBODY.pw_gid)
    return script(staff / "cmd")


def in_nobodys_folder(b: Path) -> Path:
    return script(folder(b / "d", owner=NOBODY.pw_uid) / "cmd")


def in_world_writable_folder(b: Path) -> Path:
    return script(folder(b / "d", 0o777) / "cmd")


def above_in_world_writable_folder(b: Path) -> Path:
    inner = folder(folder(b / "d", 0o777) / "inner")
    return script(inner / "cmd")


def symlink_to_nobodys_folder(b: Path) -> Path:
    real = script(folder(b / "d", owner=NOBODY.pw_uid) / "cmd")
    (b / "link").symlink_to(real)
    return b / "link"


def through_symlink_in_nobodys_folder(b: Path) -> Path:
    safe = folder(b / "safe")
    script(safe / "cmd")
    theirs = folder(b / "d", owner=NOBODY.pw_uid)
    (theirs / "via").symlink_to(safe)
    os.lchown(theirs / "via", NOBODY.pw_uid, -1)
    return theirs / "via" / "cmd"


REFUSED: list[tuple[str, Setup, str, str]] = [
    ("owned-by-nobody", owned_by_nobody, 'echo "id" >> "$1"', "owned by nobody"),
    ("mode-0777", world_writable, 'echo "id" >> "$1"', "writable by its group and others"),
    ("group-writable-folder", group_writable,
     'echo id > "$1.new" && mv "$1.new" "$1"', "writable by its group (mode 0775)"),
    ("in-nobodys-folder", in_nobodys_folder,
     'echo id > "$1.new" && mv -f "$1.new" "$1"', "owned by nobody"),
    ("in-world-writable-folder", in_world_writable_folder,
     'echo id > "$1.new" && mv -f "$1.new" "$1"', "writable by its group and others"),
    ("folder-above-world-writable", above_in_world_writable_folder,
     'd=$(dirname "$(dirname "$1")"); mv "$d/inner" "$d/old" && mkdir "$d/inner" '
     '&& echo id > "$d/inner/cmd"', "writable by its group and others"),
    ("symlink-to-nobodys-folder", symlink_to_nobodys_folder,
     'r=$(readlink "$1"); echo id > "$r.new" && mv -f "$r.new" "$r"', "owned by nobody"),
    ("through-symlink-in-nobodys-folder", through_symlink_in_nobodys_folder,
     'l=$(dirname "$1"); mkdir "$l.evil" && echo id > "$l.evil/cmd" && rm "$l" '
     '&& ln -s "$l.evil" "$l"', "owned by nobody"),
]


@pytest.mark.parametrize(("setup", "attack", "says"), [c[1:] for c in REFUSED],
                         ids=[c[0] for c in REFUSED])
def test_command_others_can_change_is_refused(base: Path, setup: Setup, attack: str,
                                              says: str) -> None:
    path = setup(base)
    r = tuninetd("-c", str(path))
    assert (r.returncode, r.stdout) == (2, ""), r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"tuninetd: -c {str(path)!r}: "), lines[0]
    assert says in lines[0] and lines[0].endswith(
        "only root may be able to change a command or a directory on its path"), lines[0]
    # Why: nobody can make it run something else.
    assert nobody_sh(attack, str(path)) == 0
    assert Path(os.path.realpath(path)).read_text() != SCRIPT


def test_root_command_in_root_folders_is_accepted(base: Path) -> None:
    """As /usr/local/bin/cmd: root's, 0755, every folder root's 0755, and
    /tmp (root's, sticky) above."""
    path = script(folder(base / "bin") / "cmd")
    r = tuninetd("-c", str(path))
    assert r.returncode == 0, r.stderr
    assert nobody_sh('echo id >> "$1"', str(path)) != 0
    assert nobody_sh('mv "$1" "$1.old"', str(path)) != 0
    assert path.read_text() == SCRIPT


def test_sticky_root_folder_is_accepted_above_a_command(base: Path) -> None:
    """A folder like /tmp (root's, 1777): others cannot rename or remove
    root's file in it."""
    sticky = folder(base / "tmp", 0o1777)
    path = script(sticky / "cmd")
    assert tuninetd("-c", str(path)).returncode == 0
    assert nobody_sh('echo id > "$1.new"; mv -f "$1.new" "$1"', str(path)) != 0
    assert path.read_text() == SCRIPT


def test_exec_user_may_own_the_command(base: Path) -> None:
    """The commands run as --exec-user: its own files are no one else's."""
    path = owned_by_nobody(base)
    r = tuninetd("-c", str(path), "--exec-user", "nobody")
    assert r.returncode == 0, r.stderr
    loose = script(base / "loose", 0o777)
    r = tuninetd("-c", str(loose), "--exec-user", "nobody")
    assert r.returncode == 2
    assert r.stderr.rstrip().endswith("only root or nobody may be able to change a command "
                                      "or a directory on its path"), r.stderr


def test_start_command_program_is_checked_too(base: Path) -> None:
    path = in_nobodys_folder(base)
    conf = base / "c.toml"
    conf.write_text(f'start_command = ["{path}", "up"]\nstop_command = ["true"]\n')
    r = subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "--config", str(conf),
                        "-i", "lo", "--check-config"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"tuninetd: {conf}, line 1: start_command {str(path)!r}: "
                               f"directory {path.parent} is owned by nobody"), r.stderr
    assert len(r.stderr.splitlines()) == 1
