"""The command line, run for real (``python -m tuninetd.supervisor.main``):
every bad value ends the program at once with exit status 2 and one line on
stderr naming the option and the value, before anything is spawned; missing
privileges end it with exit status 1 and the capability named; -h and -v.

The checks need no privilege (a bad value is refused before the privilege
check), so only the capability cases need root to drop capabilities from.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version

import psutil
import pytest

from tests.support.netlab import Netns, need_root

MODULE = "tuninetd.supervisor.main"
# A worker before and after it sets its title.
WORKERS = ("tuninetd.executor", "tuninetd.sensors.", "tuninetd: ")
EXIT_WITHIN = 15.0  # generous: the filter checks load libpcap


@dataclass
class Result:
    status: int
    out: str
    err: str
    spawned: list[str]


def run_cli(argv: list[str], prefix: tuple[str, ...] = ()) -> Result:
    """Run the real CLI; watch its process tree until it exits. ``spawned``
    lists the workers seen in it (loading libpcap may fork ``ldconfig -p``
    to find the library: that is no worker)."""
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", MODULE, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    spawned: set[str] = set()
    deadline = time.monotonic() + EXIT_WITHIN
    with contextlib.suppress(psutil.Error):
        me = psutil.Process(proc.pid)
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                for child in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        seen = " ".join(child.cmdline()).strip() or child.name()
                        if any(w in seen for w in WORKERS):
                            spawned.add(seen)
            time.sleep(0.005)  # sampling the tree, not synchronising
    try:
        out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{argv} did not exit within {EXIT_WITHIN} s, spawned {sorted(spawned)}:"
                    f"\n{out}{err}")
    return Result(proc.returncode, out, err, sorted(spawned))


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("cli")
    cmd = folder / "toggle.sh"
    cmd.write_text("#!/bin/sh\nexit 0\n")
    cmd.chmod(0o755)
    plain = folder / "plain.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")
    plain.chmod(0o644)
    # A directory -w cannot write to: for root, only a read-only mount is.
    ro = folder / "ro"
    ro.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=4k", "tnd-ro", str(ro)], check=False,
    ).returncode == 0
    if not mounted:
        ro.chmod(0o555)
    try:
        yield {"cmd": str(cmd), "plain": str(plain), "dir": str(folder), "ro": str(ro)}
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=False)


# (id, argv with {cmd}/{plain}/{dir}, the option, the value (None: there is
# none), what the line says is wrong or expected)
BAD = [
    ("ttl-not-a-number", ["-i", "lo", "-c", "{cmd}", "-t", "abc"], "-t", "abc", "whole number"),
    ("ttl-zero", ["-i", "lo", "-c", "{cmd}", "-t", "0"], "-t", "0", "whole number"),
    ("ttl-negative", ["-i", "lo", "-c", "{cmd}", "-t", "-5"], "-t", "-5", "whole number"),
    ("ttl-huge", ["-i", "lo", "-c", "{cmd}", "-t", "99999999999999"], "-t", "99999999999999",
     "whole number"),
    ("command-missing", ["-i", "lo"], "-c", None, "required"),
    ("command-not-found", ["-i", "lo", "-c", "/nonexistent"], "-c", "/nonexistent",
     "no such file"),
    ("command-with-arguments", ["-i", "lo", "-c", "/bin/true --verbose"], "-c",
     "/bin/true --verbose", "-c takes one executable path, run as PATH start and PATH stop: "
     "for arguments use start_command and stop_command in the config file"),
    ("command-directory", ["-i", "lo", "-c", "{dir}"], "-c", "{dir}", "directory"),
    ("command-not-executable", ["-i", "lo", "-c", "{plain}"], "-c", "{plain}",
     "not executable"),
    ("command-empty", ["-i", "lo", "-c", ""], "-c", "''", "empty"),
    ("filter-syntax", ["-i", "lo", "-c", "{cmd}", "-f", "tcp porrt 80"], "-f", "tcp porrt 80",
     "syntax error"),
    ("filter-rejects-all", ["-i", "lo", "-c", "{cmd}", "-f", "ip and not ip"], "-f",
     "ip and not ip", "rejects all packets"),
    ("keep-filter-syntax", ["-i", "lo", "-c", "{cmd}", "--keep-filter", "udp porrt 53"],
     "--keep-filter", "udp porrt 53", "syntax error"),
    ("start-packets-zero", ["-i", "lo", "-c", "{cmd}", "--start-packets", "0"],
     "--start-packets", "0", "whole number of packets"),
    ("interface-missing", ["-i", "nosuch0", "-c", "{cmd}"], "-i", "nosuch0",
     "no such network interface"),
    ("interface-name-too-long", ["-i", "abcdefghijklmnop", "-c", "{cmd}"], "-i",
     "abcdefghijklmnop", "15 bytes"),
    ("interface-twice", ["-i", "lo", "-i", "lo", "-c", "{cmd}"], "-i", "lo", "twice"),
    ("user-missing", ["-i", "lo", "-c", "{cmd}", "--user", "nosuchuser"], "--user",
     "nosuchuser", "no such user"),
    ("user-root", ["-i", "lo", "-c", "{cmd}", "--user", "root"], "--user", "root",
     "unprivileged account"),
    ("exec-user-missing", ["-i", "lo", "-c", "{cmd}", "--exec-user", "nosuchuser"],
     "--exec-user", "nosuchuser", "no such user"),
    ("no-sensor", ["-c", "{cmd}"], "-i", None, "-n"),
    ("nflog-group-too-big", ["-i", "lo", "-n", "70000", "-c", "{cmd}"], "-n", "70000",
     "0 to 65535"),
    ("nflog-group-not-a-number", ["-i", "lo", "-n", "abc", "-c", "{cmd}"], "-n", "abc",
     "0 to 65535"),
    ("beat-too-small", ["-i", "lo", "-c", "{cmd}", "--beat", "0.01"], "--beat", "0.01", "0.1"),
    ("beat-not-a-number", ["-i", "lo", "-c", "{cmd}", "--beat", "abc"], "--beat", "abc", "0.1"),
    ("command-timeout-negative", ["-i", "lo", "-c", "{cmd}", "--command-timeout", "-1"],
     "--command-timeout", "-1", "seconds"),
    ("pcap-file-no-directory", ["-i", "lo", "-c", "{cmd}", "-w", "/nonexistent-dir/x.pcap"],
     "-w", "/nonexistent-dir/x.pcap", "does not exist"),
    ("pcap-file-is-directory", ["-i", "lo", "-c", "{cmd}", "-w", "{dir}"], "-w", "{dir}",
     "directory"),
    ("pcap-file-unwritable-directory", ["-i", "lo", "-c", "{cmd}", "-w", "{ro}/x.pcap"], "-w",
     "{ro}/x.pcap", "not writable"),
    ("ttl-fraction", ["-i", "lo", "-c", "{cmd}", "-t", "1.5"], "-t", "1.5", "whole number"),
    ("nflog-group-negative", ["-n", "-1", "-c", "{cmd}"], "-n", "-1", "0 to 65535"),
    ("interface-empty", ["-i", "", "-c", "{cmd}"], "-i", "''", "15 bytes"),
    ("beat-zero", ["-i", "lo", "-c", "{cmd}", "--beat", "0"], "--beat", "0", "0.1"),
    ("beat-negative", ["-i", "lo", "-c", "{cmd}", "--beat", "-1"], "--beat", "-1", "0.1"),
    ("beat-huge", ["-i", "lo", "-c", "{cmd}", "--beat", "99999999999999"], "--beat",
     "99999999999999", "0.1"),
    ("command-timeout-not-a-number", ["-i", "lo", "-c", "{cmd}", "--command-timeout", "abc"],
     "--command-timeout", "abc", "seconds"),
    ("command-timeout-huge", ["-i", "lo", "-c", "{cmd}", "--command-timeout", "99999999999999"],
     "--command-timeout", "99999999999999", "seconds"),
    ("command-timeout-infinite", ["-i", "lo", "-c", "{cmd}", "--command-timeout", "inf"],
     "--command-timeout", "inf", "seconds"),
    ("hold-without-sensor", ["-c", "{cmd}", "--hold", "5"], "--hold", "5",
     "a sensor decides when start runs"),
    ("hold-queue-too-big", ["-n", "1", "-c", "{cmd}", "--hold", "70000"], "--hold", "70000",
     "0 to 65535"),
    ("hold-queue-not-a-number", ["-n", "1", "-c", "{cmd}", "--hold", "q1"], "--hold", "q1",
     "NFQUEUE number"),
    ("hold-max-zero", ["-n", "1", "-c", "{cmd}", "--hold", "5", "--hold-max", "0"],
     "--hold-max", "0", "seconds"),
    ("hold-max-past-the-command-timeout", ["-n", "1", "-c", "{cmd}", "--hold", "5",
     "--command-timeout", "30", "--hold-max", "31"], "--hold-max", "31", "command timeout"),
    ("hold-fail-unknown", ["-n", "1", "-c", "{cmd}", "--hold", "5", "--hold-fail", "reject"],
     "--hold-fail", "reject", "accept or drop"),
]


@pytest.mark.parametrize(("argv", "option", "value", "says"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_value_is_one_line_and_exit_2(paths: dict[str, str], argv: list[str], option: str,
                                         value: str | None, says: str) -> None:
    argv = [a.format(**paths) for a in argv]
    r = run_cli(argv)
    everything = r.out + r.err
    assert r.status == 2, everything
    assert "Traceback" not in everything
    assert r.out == ""
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    line = lines[0]
    assert line.startswith("tuninetd: "), line
    assert option in line, line
    if value is not None:
        assert value.format(**paths) in line, line
    assert says in line, line
    assert r.spawned == [], f"spawned {r.spawned}"


@pytest.mark.root
@pytest.mark.parametrize(("flt", "says"), [
    ("arp", "rejects all packets"),
    ("ether host 1:2:3:4:5:6", "ethernet addresses supported only"),
])
def test_filter_refused_for_the_link_type_of_a_tun_device(paths: dict[str, str], netns: Netns,
                                                          flt: str, says: str) -> None:
    """A tun device has no link header (raw IP): a filter that could only
    match Ethernet frames is refused there, though fine on an Ethernet link."""
    fd = netns.tun("tun0")
    try:
        r = run_cli(["-i", "tun0", "-c", paths["cmd"], "-f", flt], tuple(netns.exec_argv()))
    finally:
        os.close(fd)
    assert r.status == 2, r.out + r.err
    assert "Traceback" not in r.out + r.err
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith(f"tuninetd: -f {flt!r}: "), lines[0]
    assert says in lines[0] and "tun0" in lines[0], lines[0]
    assert r.spawned == [], f"spawned {r.spawned}"


def libpcap_and_a_stand_in(stand_in: str) -> tuple[str, str]:
    """The real file behind libpcap.so.0.8, and what to mount over it: nothing
    (/dev/null), or zlib from the same folder, a library that loads but has
    none of libpcap's functions."""
    found = sorted(glob.glob("/usr/lib/*/libpcap.so.0.8") + glob.glob("/lib/*/libpcap.so.0.8"))
    if not found:
        pytest.fail("libpcap0.8 is not installed")
    real = os.path.realpath(found[0])
    if stand_in == "nothing":
        return real, "/dev/null"
    return real, os.path.realpath(os.path.join(os.path.dirname(found[0]), "libz.so.1"))


@pytest.mark.root
@pytest.mark.parametrize(("stand_in", "says"), [
    ("nothing", "libpcap not found"),
    ("wrong-library", "undefined symbol: pcap_"),
])
def test_filter_compiler_that_cannot_run_is_one_line_and_exit_2(
        paths: dict[str, str], stand_in: str, says: str) -> None:
    """libpcap missing or broken, for real: in a mount namespace of the test's
    own, /dev/null or another library is bind-mounted over libpcap's file. The
    forked compiler's reason reaches the line; no traceback, nothing spawned."""
    need_root()
    real, over = libpcap_and_a_stand_in(stand_in)
    shell = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", shell, "sh", over, real)
    r = run_cli(["-i", "lo", "-c", paths["cmd"], "-f", "udp"], prefix)
    assert (r.status, r.out) == (2, ""), r.err
    assert "Traceback" not in r.err
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("tuninetd: cannot compile the packet filters of the -i "
                               "sensors: "), lines[0]
    assert says in lines[0] and "libpcap0.8" in lines[0], lines[0]
    assert r.spawned == [], f"spawned {r.spawned}"


@pytest.mark.root
def test_without_libseccomp_the_daemon_does_not_start_unconfined(paths: dict[str, str]) -> None:
    """libseccomp hidden for real (/dev/null bind-mounted over it in a mount
    namespace of the test's own): the sensors' allow-list cannot be built, so
    no sensor is started without it. The original's startup error (its
    "Started with pid" line, then one Error line), exit 1, nothing spawned."""
    need_root()
    found = sorted(glob.glob("/usr/lib/*/libseccomp.so.2") + glob.glob("/lib/*/libseccomp.so.2"))
    if not found:
        pytest.fail("libseccomp2 is not installed")
    shell = 'mount --bind /dev/null "$1" && shift && exec "$@"'
    prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", shell, "sh",
              os.path.realpath(found[0]))
    r = run_cli(["-i", "lo", "-c", paths["cmd"], "-f", "udp"], prefix)
    assert (r.status, r.out) == (1, ""), r.err
    lines = r.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Started with pid "), r.err
    assert lines[1].startswith("Error: cannot build the sensors' seccomp allow-list: "), r.err
    assert "libseccomp2 and python3-seccomp are installed" in lines[1], lines[1]
    assert r.spawned == [], f"spawned {r.spawned}"


# -- missing privileges --------------------------------------------------------------


ALL_CAPS = ("CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID")


def nobody_can_run_us() -> bool:
    """The interpreter and the package may live where nobody cannot read."""
    probe = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-c", "import tuninetd.supervisor.main"],
        capture_output=True, check=False, cwd="/",
    )
    return probe.returncode == 0


def privilege_prefix(drop: str) -> tuple[str, ...]:
    """How to run the CLI without ``drop`` ("net_raw" or "all")."""
    if os.geteuid() != 0:
        if drop == "all":
            return ()  # we are the unprivileged user already
        reason = "dropping a single capability needs root to start from"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    if shutil.which("setpriv") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("needs setpriv (util-linux)")
        pytest.skip("needs setpriv (util-linux)")
    if drop == "all" and nobody_can_run_us():
        return ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    # Root with the capability gone from the bounding and inheritable sets:
    # the exec of python then leaves it out of the permitted and effective sets.
    return ("setpriv", f"--bounding-set=-{drop}", f"--inh-caps=-{drop}")


@pytest.fixture
def public_cmd() -> Iterator[str]:
    """A command that an unprivileged user can reach too (pytest's tmp_path
    is root's 0700): the check under test is the privilege one, not -c's."""
    folder = tempfile.mkdtemp(prefix="tnd-cli-")
    os.chmod(folder, 0o755)
    cmd = os.path.join(folder, "toggle.sh")
    with open(cmd, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(cmd, 0o755)
    try:
        yield cmd
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("drop", ["net_raw", "all"])
def test_missing_privilege_is_exit_1_and_named(public_cmd: str, drop: str) -> None:
    prefix = privilege_prefix(drop)
    r = run_cli(["-i", "lo", "-c", public_cmd], prefix)
    everything = r.out + r.err
    assert r.status == 1, everything
    assert "Traceback" not in everything
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    missing = ("CAP_NET_RAW",) if drop == "net_raw" else ALL_CAPS
    for cap in ALL_CAPS:
        assert (cap in lines[0]) == (cap in missing), lines[0]
    assert "privilege" in lines[0]
    assert r.spawned == [], f"spawned {r.spawned}"


def test_bad_value_beats_missing_privilege(public_cmd: str) -> None:
    """Values are checked first: an unprivileged user still learns what is wrong."""
    prefix = () if os.geteuid() != 0 else privilege_prefix("all")
    r = run_cli(["-i", "lo", "-c", public_cmd, "-t", "abc"], prefix)
    assert r.status == 2, r.err
    assert r.err.splitlines() == ["tuninetd: -t 'abc': expected a whole number of "
                                  "seconds from 1 to 315360000"]


# -- help and version ----------------------------------------------------------------


# Every option the daemon takes (README's usage, conf/tuninetd.toml's keys),
# as the help shows it.
EVERY_OPTION = ["-a", "-c <path>", "-d", "-f <filter>", "-i <ifname>", "-n <nflog-group>",
                "-t <ttl>", "-w <path>", "--user NAME", "--exec-user NAME",
                "--command-timeout SEC", "--beat SEC", "--config FILE", "--check-config",
                "--name NAME", "--control PATH", "--pidfile PATH", "--metrics HOST:PORT",
                "--stop-on-exit", "--retry-start SEC", "--wait-for-interface", "--hold QUEUE",
                "--hold-max SEC", "--hold-fail accept|drop", "--start-packets N",
                "--start-window SEC", "--keep-filter <filter>", "--keep-group <nflog-group>",
                "--timestamps", "-h, --help", "-v, --version"]


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_every_option(flag: str) -> None:
    r = run_cli([flag])
    assert r.status == 0, r.err
    assert r.err == ""
    assert r.out.startswith("usage: tuninetd -i <ifname> -c <path>")
    options = r.out.partition("\noptions:\n")[2].partition("\n\n")[0]
    # An option's line starts with two spaces and a dash; its help may follow
    # on the same line or the next ones, indented further.
    listed = [line.strip().partition("  ")[0] for line in options.splitlines()
              if line.startswith("  -")]
    assert listed == EVERY_OPTION
    assert r.spawned == []


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version(flag: str) -> None:
    r = run_cli([flag])
    assert r.status == 0, r.err
    assert r.out == f"tuninetd {version('tuninetd')}\n"
    assert r.err == ""


def test_help_names_the_installed_configuration() -> None:
    """Where the package puts the sample configuration, not the checkout's conf/."""
    r = run_cli(["--help"])
    config = re.search(r"^  --config FILE\s+(.*?)\n  -", r.out, re.M | re.S)
    assert config, r.out
    assert "/etc/tuninetd/tuninetd.toml" in " ".join(config[1].split()), config[1]
    assert "conf/" not in r.out


def test_help_ignores_the_missing_rest(paths: dict[str, str]) -> None:
    """-h wins over everything else on the line, as with the original."""
    r = run_cli(["-c", paths["cmd"], "-t", "abc", "-h"])
    assert r.status == 0, r.err
    assert "usage: tuninetd" in r.out

