"""``--config FILE`` and ``--check-config``, run for real: every key of the
command line, the command line winning over the file, refusals naming the
key and its line (exit 2, nothing started), the effective configuration
printed as TOML that reads back the same; conf/tuninetd.toml documents every
key; start_command and stop_command argv lists run by a real daemon.
"""

from __future__ import annotations

import pwd
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.netlab import Daemon, Netns, as_nobody, public_folder, ready, wait_for
from tests.support.repo import REPO
from tests.support.timing import BEAT
from tuninetd.supervisor.config import configfile

EXAMPLE = REPO / "conf" / "tuninetd.toml"


def tuninetd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", *argv],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    s = tmp_path / "toggle.sh"
    s.write_text("#!/bin/sh\nexit 0\n")
    s.chmod(0o755)
    return s


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for key in configfile.KEYS:
        assert re.search(rf"^(# )?{key} = ", text, re.M), f"{key} missing from {EXAMPLE.name}"
    # Every commented example, once uncommented, is a known key of the right type.
    for line in text.splitlines():
        m = re.match(r"^# ([a-z_]+) = (.*)$", line)
        if m:
            data = tomllib.loads(f"{m[1]} = {m[2]}\n")
            assert configfile._convert(configfile.KEYS[m[1]], data[m[1]]) is not None, line


def test_example_with_overrides_checks(script: Path) -> None:
    r = tuninetd("--config", str(EXAMPLE), "-i", "lo", "-c", str(script), "--check-config")
    assert r.returncode == 0, r.stderr
    out = tomllib.loads(r.stdout)
    assert out["interfaces"] == ["lo"] and out["command"] == str(script)
    assert out["ttl"] == 600


def test_effective_configuration_round_trips(tmp_path: Path, script: Path) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text(
        'interfaces = ["lo"]\n'
        "groups = [7, 8]\n"
        'filter = "udp"\n'
        f'start_command = ["{script}", "up", "with space"]\n'
        'stop_command = ["true"]\n'
        "ttl = 30\n"
        "ack_only = true\n"
        "daemon = true\n"
        f'pcap_file = "{tmp_path}/start.pcap"\n'
        'user = "nobody"\n'
        'exec_user = "root"\n'
        "command_timeout = 12.5\n"
        "beat = 0.5\n"
        f'control = "{tmp_path}/ctl.sock"\n'
        f'pidfile = "{tmp_path}/pid"\n'
        'metrics = "127.0.0.1:9101"\n'
        "stop_on_exit = true\n"
        "retry_start = 5\n"
        "wait_for_interface = true\n"
        "hold = 3\n"
        "hold_max = 4\n"
        'hold_fail = "drop"\n'
        "start_packets = 3\n"
        "start_window = 1.5\n"
        'keep_filter = "udp and port 53"\n'
        "keep_group = 9\n"
        "timestamps = true\n"
    )
    r = tuninetd("--config", str(conf), "--check-config", "-t", "45", "--beat", "2")
    assert r.returncode == 0, r.stderr
    out = tomllib.loads(r.stdout)
    assert out == {
        "interfaces": ["lo"], "groups": [7, 8], "filter": "udp",
        "start_command": [str(script), "up", "with space"],
        "stop_command": [shutil.which("true")],
        "ttl": 45, "ack_only": True, "daemon": True, "pcap_file": f"{tmp_path}/start.pcap",
        "user": "nobody", "exec_user": "root", "command_timeout": 12.5, "beat": 2.0,
        "control": f"{tmp_path}/ctl.sock", "pidfile": f"{tmp_path}/pid",
        "stop_on_exit": True, "retry_start": 5, "wait_for_interface": True,
        "metrics": "127.0.0.1:9101", "hold": 3, "hold_max": 4.0, "hold_fail": "drop",
        "start_packets": 3, "start_window": 1.5,
        "keep_filter": "udp and port 53", "keep_group": 9,
        "timestamps": True,
    }
    again = tmp_path / "again.toml"
    again.write_text(r.stdout)
    r2 = tuninetd("--config", str(again), "--check-config")
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == r.stdout
    # -c replaces the file's start and stop commands.
    r3 = tuninetd("--config", str(conf), "-c", str(script), "--check-config")
    out3 = tomllib.loads(r3.stdout)
    assert out3["command"] == str(script)
    assert "start_command" not in out3 and "stop_command" not in out3


# (id, file body, what the one line must contain)
BAD = [
    ("unknown-key", 'interfaces = ["lo"]\ncommand = "{script}"\n\nttll = 30\n',
     ["line 4", "unknown key 'ttll'", "did you mean 'ttl'"]),
    ("wrong-type", 'interfaces = ["lo"]\ncommand = "{script}"\nttl = "30"\n',
     ["line 3", "ttl: expected an integer, got a string"]),
    ("bool-is-no-int", 'interfaces = ["lo"]\ncommand = "{script}"\nttl = true\n',
     ["line 3", "ttl: expected an integer, got a boolean"]),
    ("bad-value", 'interfaces = ["lo"]\ncommand = "{script}"\n\n\nttl = 0\n',
     ["line 5", "ttl '0'", "whole number of seconds"]),
    ("bad-group", 'groups = [70000]\ncommand = "{script}"\n',
     ["line 1", "groups '70000'", "0 to 65535"]),
    ("groups-as-strings", 'groups = ["1"]\ncommand = "{script}"\n',
     ["line 1", "groups: expected a list of integers, got an array"]),
    ("bad-interface", 'command = "{script}"\ninterfaces = ["nosuch0"]\n',
     ["line 2", "interfaces 'nosuch0'", "no such network interface"]),
    ("bad-filter", 'interfaces = ["lo"]\ncommand = "{script}"\nfilter = "tcp porrt 80"\n',
     ["line 3", "filter 'tcp porrt 80'", "syntax error"]),
    ("bad-user", 'interfaces = ["lo"]\ncommand = "{script}"\nuser = "root"\n',
     ["line 3", "user 'root'", "unprivileged"]),
    ("command-missing", 'interfaces = ["lo"]\ncommand = "/nonexistent"\n',
     ["line 2", "command '/nonexistent'", "no such file"]),
    ("start-alone", 'interfaces = ["lo"]\nstart_command = ["true"]\n',
     ["line 2", "stop_command is missing"]),
    ("argv-empty", 'interfaces = ["lo"]\nstart_command = []\nstop_command = ["true"]\n',
     ["line 2", "start_command: expected a non-empty list of strings"]),
    ("argv-not-in-path", 'interfaces = ["lo"]\nstart_command = ["no-such-prog-x"]\n'
     'stop_command = ["true"]\n', ["line 2", "'no-such-prog-x': not found in PATH"]),
    ("table", 'interfaces = ["lo"]\ncommand = "{script}"\n[sensors]\nx = 1\n',
     ["line 3", "unknown key 'sensors'"]),
    ("metrics-bad", 'interfaces = ["lo"]\ncommand = "{script}"\nmetrics = "nope"\n',
     ["line 3", "metrics 'nope'", "HOST:PORT"]),
    ("control-dir", 'interfaces = ["lo"]\ncommand = "{script}"\ncontrol = "/nonexistent/x"\n',
     ["line 3", "control '/nonexistent/x'", "does not exist"]),
    ("syntax", 'interfaces = ["lo"]\ncommand = "{script}"\nttl = \n',
     ["not valid TOML", "line 3"]),
]


@pytest.mark.parametrize(("body", "says"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
@pytest.mark.parametrize("check", [False, True], ids=["start", "check"])
def test_refused_naming_key_and_line(tmp_path: Path, script: Path, body: str,
                                     says: list[str], check: bool) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(body.replace("{script}", str(script)))
    r = tuninetd("--config", str(conf), *(["--check-config"] if check else []))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"tuninetd: {conf}"), lines[0]
    for needle in says:
        assert needle in lines[0], lines[0]


# Every key whose TOML type holds strings, found from the schema, so that a
# key added later is covered too.
STRING_KEYS = [k for k, kind in configfile.KEYS.items() if kind in ("str", "strings", "argv")]


@pytest.mark.parametrize("key", STRING_KEYS)
@pytest.mark.parametrize("check", [False, True], ids=["start", "check"])
def test_nul_byte_in_any_string_is_refused(tmp_path: Path, key: str, check: bool) -> None:
    """The C library would cut each of these at the NUL: a user name, a path,
    a filter that is not the one written. The last element of a list is the
    one spoiled, so that a check of the first alone would miss it."""
    kind = configfile.KEYS[key]
    spoiled = '"x\\u0000y"'
    value = spoiled if kind == "str" else f'["true", {spoiled}]'
    conf = tmp_path / "nul.toml"
    conf.write_text(f"# a NUL in {key}\n{key} = {value}\n")
    r = tuninetd("--config", str(conf), *(["--check-config"] if check else []))
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr == f"tuninetd: {conf}, line 2: {key}: contains a NUL byte (\\0); remove it\n"


def test_unreadable_config(tmp_path: Path) -> None:
    r = tuninetd("--config", str(tmp_path / "missing.toml"), "--check-config")
    assert r.returncode == 2
    assert r.stderr == f"tuninetd: --config '{tmp_path}/missing.toml': no such file or directory\n"


@pytest.mark.root
def test_start_and_stop_argv_lists_run(veth: Netns, tmp_path: Path,
                                       start_daemon: Callable[..., Daemon]) -> None:
    record = tmp_path / "argv.log"
    prog = tmp_path / "say.sh"
    prog.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done >> {record}\n'
                    f"echo >> {record}\n")
    prog.chmod(0o755)
    control = tmp_path / "ctl.sock"
    conf = tmp_path / "t.toml"
    conf.write_text(
        'interfaces = ["tap0"]\n'
        'filter = "udp"\n'
        f'start_command = ["{prog}", "bring up", "--fast"]\n'
        f'stop_command = ["{prog}", "take down"]\n'
        f"ttl = 1\nbeat = {BEAT}\n"
        f'control = "{control}"\n'
        # A name of its own: /run/tuninetd is the host's, other tests run there too.
        f'name = "test-{uuid.uuid4().hex[:12]}"\n'
    )
    d = start_daemon(veth, "--config", str(conf))
    ready(d)
    assert control.exists()
    veth.sender().send(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                             / IP(src="10.58.0.1", dst="10.58.0.2") / UDP(dport=9)))

    def lines() -> list[str] | None:
        got = record.read_text().splitlines() if record.exists() else []
        return got if len(got) >= 2 else None

    assert wait_for("start and stop", lines) == ["[bring up][--fast]", "[take down]"]


@pytest.mark.root
@pytest.mark.parametrize("loose", ["file-0666", "folder-1777"])
def test_a_config_others_can_change_is_refused(veth: Netns, tmp_path: Path,
                                               start_daemon: Callable[..., Daemon],
                                               loose: str) -> None:
    """The admin left the config writable (the file 0666, or its folder the
    sticky 1777 /tmp-like, where nobody can replace it): nobody rewrites it
    with a start_command of its own. Read as it was, one packet later that
    command ran as root; now the daemon refuses the file, exit 2, one line."""
    with public_folder("tnd-conf-") as folder:
        conf_dir = folder / "etc"
        conf_dir.mkdir(mode=0o1777 if loose == "folder-1777" else 0o755)
        conf_dir.chmod(0o1777 if loose == "folder-1777" else 0o755)
        conf = conf_dir / "tuninetd.toml"
        out = folder / "owned"
        control = tmp_path / "ctl.sock"
        if loose == "file-0666":
            conf.write_text("# the admin's\n")
            conf.chmod(0o666)
        evil = (f'interfaces = ["tap0"]\nttl = 1\nbeat = {BEAT}\n'
                f'start_command = ["/bin/sh", "-c", "id > {out}"]\n'
                'stop_command = ["/bin/true"]\n'
                f'control = "{control}"\n')
        code, said = as_nobody(["/bin/sh", "-c", 'printf %s "$1" > "$2"', "sh", evil, str(conf)])
        assert code == 0, said
        if loose == "folder-1777":
            assert conf.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        d = start_daemon(veth, "--config", str(conf))

        def settled() -> str | None:
            if d.proc.poll() is not None:
                return "exited"
            return "running" if control.exists() else None

        if wait_for("the daemon to exit or listen", settled, 30) == "running":
            veth.sender().send(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                                     / IP(src="10.58.0.1", dst="10.58.0.2") / UDP(dport=9)))
            ran = wait_for("nobody's command", lambda: out.exists() and out.read_text())
            pytest.fail(f"nobody's start_command ran as root: {ran}")
        problem = ("is writable by its group and others (mode 0666)" if loose == "file-0666"
                   else f"is owned by nobody (uid {pwd.getpwnam('nobody').pw_uid})")
        assert d.proc.returncode == 2, d.text()
        assert d.text() == (f"tuninetd: --config {str(conf)!r}: file {conf} {problem}; only "
                            "root may be able to change the configuration or a directory on "
                            "its path\n")
        assert not out.exists()
