"""The control socket and ``tuninetd status`` against local attackers: a
socket path swapped for a symlink while the daemon binds, a fake daemon run
by an unprivileged user, and a root-side answer full of terminal escapes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netlab import need_root
from tests.support.stand_in_daemon import answer

SYSTEM_PYTHON = "/usr/bin/python3"  # nobody may not reach the venv's interpreter
ESC = "\x1b"
NASTY = f"{ESC}[2J{ESC}]0;owned\x07\r\x9b2J\x7f\u202e"


def as_nobody(code: str, *args: str) -> subprocess.Popen[bytes]:
    nobody = pwd.getpwnam("nobody")
    return subprocess.Popen(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         SYSTEM_PYTHON, "-c", code, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")


def status_client(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "status", *args],
                          capture_output=True, timeout=20)


# Waits for the socket file to appear, says the mode it found it with, then
# renames a symlink over it.
SWAPPER = """
import os, stat, sys
path, victim = sys.argv[1], sys.argv[2]
tmp = path + ".swap"
print("ready", flush=True)
while True:
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode):
            print(oct(stat.S_IMODE(st.st_mode)), flush=True)
            os.symlink(victim, tmp)
            os.rename(tmp, path)
    except OSError:
        pass
"""

# The daemon's side, as root, in a process of its own (an audit hook stays
# for the life of its process). The attacker wins every round at the worst
# moment: whatever the binding code does by name at the path once the
# socket is there (a chmod, a chown, an unlink, an open), the symlink has
# been swapped in first; once bind returns, it is swapped in before the
# round goes on. Then a bind with the symlink there is refused.
BINDER = """
import json, os, sys, time
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.ops import control
path, rounds = sys.argv[1], int(sys.argv[2])
BY_NAME = {"os.chmod", "os.chown", "os.remove", "os.rename", "open"}

def swapped_in():
    deadline = time.monotonic() + 60  # a hang guard: the attacker swaps at once
    while not os.path.islink(path):
        if time.monotonic() > deadline:
            sys.exit("the attacker never swapped")
        time.sleep(0.0005)

def hook(event, args):
    if event in BY_NAME and args and args[0] == path and os.path.lexists(path):
        swapped_in()

sys.addaudithook(hook)
bound = refused = 0
for _ in range(rounds):
    if os.path.lexists(path):
        os.unlink(path)
    sock, ident = control.bind(path)
    bound += 1
    swapped_in()
    control.unlink(path, ident)  # leaves the attacker's symlink alone
    try:
        control.bind(path)
    except StartupError:
        refused += 1
    sock.close()
print(json.dumps({"bound": bound, "refused": refused,
                  "left": os.path.islink(path)}), flush=True)
"""


def test_bind_never_chmods_what_was_swapped_in(sockdir: Path) -> None:
    """nobody swaps a symlink to its own file in at the socket's path while
    the daemon binds there again and again, and wins every round: before
    anything the binding code does by name at the path, and at the latest
    once bind returns. The file the symlink points at keeps its mode, every
    socket the daemon made was 0600 from birth, and a bind with the symlink
    in place is refused."""
    need_root()
    open_dir = sockdir
    open_dir.chmod(0o777)  # nobody works here (sticky bit off)
    victim = open_dir / "victim"
    victim.write_text("nobody's\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(victim, nobody.pw_uid, nobody.pw_gid)
    victim.chmod(0o644)
    path = open_dir / "control.sock"
    rounds = 50
    attacker = as_nobody(SWAPPER, str(path), str(victim))
    try:
        assert attacker.stdout is not None and attacker.stdout.readline() == b"ready\n"
        binder = subprocess.run([sys.executable, "-c", BINDER, str(path), str(rounds)],
                                capture_output=True, timeout=300)
    finally:
        attacker.kill()
        seen, _ = attacker.communicate()
    assert binder.returncode == 0, binder.stderr.decode(errors="replace")
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert victim.stat().st_uid == nobody.pw_uid
    assert victim.read_text() == "nobody's\n"
    got = json.loads(binder.stdout)
    assert got == {"bound": rounds, "refused": rounds, "left": True}, got
    # The mode of each socket as the attacker found it, before it swapped.
    modes = seen.split()
    assert len(modes) >= rounds and set(modes) == {b"0o600"}, seen
    print(f"\n[figure] {rounds} binds against an attacker that swapped a symlink in at the "
          f"path each time, before any by-name step after the socket was there: each socket "
          f"0600 from birth, each bind over the symlink refused, the victim's mode unchanged")


FAKE_DAEMON = """
import json, os, socket, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
server.listen(1)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(5)
try:
    got = conn.recv(1024)
except OSError:
    got = b""
print("asked" if got else "not asked", flush=True)
try:
    conn.sendall(json.dumps({"state": "up", "ttl": 1, "processes": []}).encode() + b"\\n")
except OSError:
    pass
"""


def test_status_refuses_a_daemon_that_is_not_root(sockdir: Path) -> None:
    need_root()
    sockdir.chmod(0o777)  # where nobody may bind
    path = sockdir / "tuninetd.sock"
    fake = as_nobody(FAKE_DAEMON, str(path))
    try:
        assert fake.stdout is not None
        assert fake.stdout.readline() == b"ready\n"
        r = status_client("--control", str(path))
        assert r.returncode == 1, r
        assert r.stdout == b""
        nobody = pwd.getpwnam("nobody").pw_uid
        assert r.stderr.decode().splitlines() == [
            f"tuninetd status: not asking the process on {path}: it runs as uid {nobody}, "
            "not root, so it is not tuninetd"]
        out, _ = fake.communicate(timeout=10)
        assert out == b"not asked\n"  # the request never went out
    finally:
        with contextlib.suppress(OSError):
            fake.kill()
        fake.wait()


def test_status_prints_no_terminal_escapes(tmp_path: Path) -> None:
    """A root-side answer with clear-screen, set-title, CR, CSI (8-bit), DEL
    and a right-to-left override in values and keys, and a NaN: the text is
    printable ASCII lines, the JSON is valid JSON with the strings cleaned."""
    need_root()
    process = {"role": f"executor{NASTY}", "pid": 7, "user": NASTY, "state": NASTY,
               "restarts": 0, "cpu_percent": float("nan"), "rss_bytes": 1,
               "uptime_seconds": 1.0, NASTY: NASTY}
    record = {"state": f"up{NASTY}", "ttl": 5, "idle_seconds": 1.0, "version": NASTY,
              "last_trigger": {"sensor": NASTY, "lines": [f"|- {NASTY}"], "seconds_ago": 1.0,
                               "time": 0.0},
              "commands": {"starts": 1, "stops": 0, "failed": 0,
                           "last": {"event": NASTY, "result": NASTY, "duration": 1.0,
                                    "seconds_ago": 1.0, "time": 0.0}},
              "processes": [process]}
    path = tmp_path / "control.sock"
    server = answer(path, record, times=3)
    text = status_client("--control", str(path))
    as_json = status_client("--json", "--control", str(path))
    server.join(5)
    for r in (text, as_json):
        assert r.returncode == 0, r
        assert all(0x20 <= b < 0x7F or b == 0x0A for b in r.stdout), r.stdout
    [parsed] = json.loads(as_json.stdout)  # an array, one object per daemon
    shown = "".join(c if " " <= c <= "~" else "?" for c in NASTY)
    assert shown == "?[2J?]0;owned???2J??"
    assert parsed["state"] == f"up{shown}"
    assert parsed["processes"][0]["cpu_percent"] is None
    assert f": up{shown}".encode() in text.stdout
    # And the error path: a root-side daemon whose refusal carries escapes.
    path.unlink()
    server = answer(path, {"error": NASTY}, times=1)
    r = status_client("--control", str(path))
    server.join(5)
    assert r.returncode == 1
    assert all(0x20 <= b < 0x7F or b == 0x0A for b in r.stderr), r.stderr


# Takes the socket's name first and answers as a daemon would be expected to.
SQUATTER = """
import os, socket, sys, time
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
server.listen(8)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("folder", ["sticky-1777", "nobodys"])
def test_control_in_a_folder_others_can_write_is_refused(sockdir: Path, tmp_path: Path,
                                                         folder: str) -> None:
    """nobody binds a socket at the --control path before the daemon starts.
    A daemon that accepted the folder (as before) is kept from starting by
    nobody's socket ("in use": nobody chooses whether root's daemon runs);
    now the folder itself is refused, with one line, before anything runs."""
    need_root()
    nobody = pwd.getpwnam("nobody")
    if folder == "sticky-1777":
        sockdir.chmod(0o1777)
    else:
        os.chown(sockdir, nobody.pw_uid, nobody.pw_gid)
    path = sockdir / "control.sock"
    squatter = as_nobody(SQUATTER, str(path))
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == b"ready\n"
        cmd = tmp_path / "cmd.sh"
        cmd.write_text("#!/bin/sh\n")
        cmd.chmod(0o755)
        r = subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "-i", "lo",
                            "-c", str(cmd), "--control", str(path)],
                           capture_output=True, text=True, timeout=60)
    finally:
        squatter.kill()
        squatter.wait()
    who = ("is writable by its group and others (mode 1777)" if folder == "sticky-1777"
           else f"is owned by nobody (uid {nobody.pw_uid})")
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr == (f"tuninetd: --control {str(path)!r}: directory {sockdir} {who}: "
                        "another user could take the socket's name first; use a folder only "
                        "root can write\n"), r.stderr
