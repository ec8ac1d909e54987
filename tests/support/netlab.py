"""Real network parts for the integration tests: namespaces, veth pairs, tun
devices, frames sent into them, the daemon running inside, and waiting with
deadlines instead of sleeping."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TypeVar

import pytest

T = TypeVar("T")
# Title prefixes of a daemon's processes (its name and a state follow).
SUPERVISOR = "tuninetd: supervisor"
EXECUTOR = "tuninetd: executor"
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def missing(problem: str) -> NoReturn:
    """Skip; in CI a skip would hide a broken machine, so fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {problem}")
    pytest.skip(problem)


def need_root() -> None:
    if os.geteuid() != 0:
        missing("needs root for network namespaces and capture sockets")
    elif shutil.which("ip") is None:
        missing("needs iproute2 (ip)")


def need(tool: str, package: str) -> str:
    """The path of ``tool``, which ``package`` installs."""
    found = shutil.which(tool)
    if found is None:
        missing(f"needs {tool} (apt-get install {package})")
    return found


def default_sensor_account() -> pwd.struct_passwd:
    """The account sensors drop to without --user: tuninetd where the Debian
    package made it (it stays after a purge), else nobody."""
    try:
        return pwd.getpwnam("tuninetd")
    except KeyError:
        return pwd.getpwnam("nobody")


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 10.0,
             every: float = 0.02) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class TapAddresses(NamedTuple):
    """tap0's MAC and own addresses, and the peer addresses with the MAC they
    resolve to (``Netns.address_tap``)."""

    mac: str
    own: tuple[str, ...]
    peer_mac: str
    peers: tuple[str, ...]


class Netns:
    """A throwaway network namespace with a veth pair ``tap0``/``peer0``
    (both ends inside, so frames sent on ``peer0`` arrive on ``tap0``)."""

    def __init__(self) -> None:
        self.name = f"tnd-{uuid.uuid4().hex[:8]}"
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def add_veth(self, name: str = "tap0", peer: str = "peer0") -> None:
        self.ip("link", "add", name, "type", "veth", "peer", "name", peer)
        for dev in (name, peer):
            self.ip("link", "set", dev, "up")

    def address_tap(self, tap: TapAddresses) -> None:
        """Give tap0 ``tap.mac`` and its addresses (IPv4 /24, IPv6 /64); the
        peer addresses resolve to ``tap.peer_mac``, nobody's, so what the
        namespace sends to them crosses to peer0 and is dropped there."""
        self.ip("link", "set", "tap0", "address", tap.mac)
        for own in tap.own:
            if ":" in own:
                self.ip("addr", "add", f"{own}/64", "dev", "tap0", "nodad")
            else:
                self.ip("addr", "add", f"{own}/24", "dev", "tap0")
        for peer in tap.peers:
            self.ip("neigh", "add", peer, "lladdr", tap.peer_mac, "dev", "tap0", "nud",
                    "permanent")

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body inside the namespace (sockets made there stay there)."""
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            yield
        finally:
            _libc.setns(own, CLONE_NEWNET)
            os.close(own)
            os.close(target)

    def sender(self, dev: str = "peer0") -> socket.socket:
        """An AF_PACKET socket on ``dev``: whole frames out, as they are."""
        with self.entered():
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind((dev, 0))
        return s

    def tun(self, name: str = "tun0") -> int:
        """Create and hold a tun device; writing IP packets to the returned fd
        makes them arrive on the interface."""
        with self.entered():
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        self.ip("link", "set", name, "up")
        return fd

    def pids(self) -> list[int]:
        """Every process living in the namespace."""
        return [int(p) for p in sh("ip", "netns", "pids", self.name, check=False).stdout.split()]

    def delete(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "delete", self.name, check=False)


def recorder(folder: Path, name: str = "record.sh", body: str = "") -> tuple[Path, Path]:
    """A command that appends ``<event> <monotonic-ish time> <env...>`` per call."""
    record = folder / f"{name}.log"
    script = folder / name
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s %s %s %s %s %s\\n" "$1" "$(date +%s.%N)" "$TUNINETD_SENSOR" '
        f'"$TUNINETD_SRC" "$TUNINETD_DST" "$TUNINETD_PROTO" >> {record}\n'
        f"{body}\n"
    )
    script.chmod(0o755)
    return script, record


def events(record: Path) -> list[list[str]]:
    if not record.exists():
        return []
    return [line.split(" ") for line in record.read_text().splitlines() if line]


def kinds(record: Path) -> list[str]:
    """The events of ``record``, ``start`` or ``stop`` each, in order."""
    return [e[0] for e in events(record)]


def epoch(event: list[str]) -> float:
    """When the recorded event ran (the command's own clock, in seconds)."""
    return float(event[1])


class Daemon:
    """tuninetd running in a namespace, its stderr log in a file."""

    def __init__(self, ns: Netns, args: list[str], log: Path, cgroup2: bool = True,
                 plain: bool = False, enter: tuple[str, ...] = (),
                 wrap: tuple[str, ...] = (), can_mount: bool = False) -> None:
        """``ip netns exec`` mounts a fresh /sys without the cgroup
        hierarchies; with ``cgroup2`` the daemon gets the cgroup v2 one back
        at /sys/fs/cgroup, as on a systemd host. Without, the daemon would
        mount one itself in the mount namespace ``ip netns exec`` gave it;
        unless ``can_mount``, it runs without CAP_SYS_ADMIN (as the systemd
        units do), cannot, and its executor runs on the fallback. ``enter``:
        a command that runs the rest in other namespaces (nsenter into a
        mount namespace of the test's). ``wrap``:
        a command that runs the daemon's command line inside the network
        namespace (restrictions of a test's, as a unit's)."""
        self.log = log
        # Each daemon its own control socket and a name of its own, known to
        # the test (for its process titles), unique on the host: other test
        # runs start daemons at the same time. ``plain``: the args as given.
        self.control = str(log.with_suffix(".sock"))
        self.name = args[args.index("--name") + 1] if "--name" in args else None
        if not plain and "--control" not in args and "--config" not in args:
            args = [*args, "--control", self.control]
        self.generated = not plain and self.name is None and "--config" not in args
        if self.generated:
            self.name = f"test-{uuid.uuid4().hex[:12]}"
            args = [*args, "--name", self.name]
        self.logf = open(log, "wb")  # noqa: SIM115 - closed in stop()
        argv = [*wrap, sys.executable, "-m", "tuninetd.supervisor.main", *args]
        if cgroup2:  # the same pid: sh execs the daemon
            argv = ["sh", "-c", 'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@"', "sh",
                    *argv]
        elif not can_mount:
            argv = ["setpriv", "--bounding-set=-sys_admin", *argv]
        self.proc = subprocess.Popen(
            [*enter, *ns.exec_argv(*argv)],
            stdin=subprocess.DEVNULL,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def wait_log(self, needle: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        def probe() -> list[str] | None:
            found = [line for line in self.lines() if needle in line]
            if self.proc.poll() is not None and len(found) < count:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.text()}")
            return found if len(found) >= count else None

        try:
            return wait_for(f"log line {needle!r} x{count}", probe, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.text()}") from None

    def stop(self) -> int:
        terminate(self.proc, 15)
        self.logf.close()
        if self.generated:
            forget_name(str(self.name))
        return self.proc.returncode


def forget_name(name: str) -> None:
    """What a daemon called ``name`` keeps in /run/tuninetd for its next run
    (its state when it exited up, its lock when it was killed): a test's
    daemon has no next run. Only for names the test made its own."""
    for suffix in (".state", ".lock"):
        Path(f"/run/tuninetd/{name}{suffix}").unlink(missing_ok=True)


def ready(daemon: Daemon, sensors: int = 1, timeout: float = 15.0) -> None:
    """Every sensor and the executor have said hello (their titles show it)."""

    def probe() -> bool:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited:\n{daemon.text()}")
        titles = workers(daemon.pid).values()
        armed = [t for t in titles if t.startswith("tuninetd: sensor") and "armed" in t]
        execs = [t for t in titles if re.fullmatch(rf"{EXECUTOR} (\S+ )?idle", t)]
        return len(armed) >= sensors and len(execs) == 1

    try:
        wait_for("all workers ready", probe, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- log ---\n{daemon.text()}") from None


def proc_status(pid: int) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def title(pid: int) -> str:
    """What ``ps`` shows as the command line of ``pid`` ("" once it is gone);
    the padding setproctitle leaves is dropped."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def wait_gone(pids: list[int], timeout: float) -> float:
    """Poll until every pid has exited; returns when that was seen."""
    wait_for(f"pids {pids} to exit (left: {[p for p in pids if not gone(p)]})",
             lambda: all(gone(p) for p in pids), timeout, every=0.01)
    return time.monotonic()


def wait_title(pid: int, pattern: str, timeout: float = 10.0,
               every: float = 0.02) -> re.Match[str]:
    """Poll until the whole title of ``pid`` matches ``pattern``; the match."""
    return wait_for(f"title of {pid} matching {pattern!r} (is {title(pid)!r})",
                    lambda: re.fullmatch(pattern, title(pid)), timeout, every)


def workers(parent: int) -> dict[int, str]:
    """The live children of ``parent`` (a supervisor: its workers), pid ->
    title; a zombie is not one."""
    import psutil

    try:
        kids = psutil.Process(parent).children()
    except psutil.Error:
        return {}
    return {k.pid: t for k in kids if not gone(k.pid) and (t := title(k.pid))}


def worker(d: Daemon, prefix: str, state: str = "", not_pid: int = 0,
           timeout: float = 10.0) -> int:
    """The pid of the live worker whose title is ``prefix state...`` (and not
    ``not_pid``), once there is one. ``prefix``: ``"tuninetd: executor"``,
    ``"tuninetd: sensor pcap tap0"``..., a state follows it."""

    def probe() -> int | None:
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited:\n{d.text()}")
        return next((pid for pid, t in workers(d.pid).items() if pid != not_pid
                     and t.startswith(prefix + " ") and t.startswith(f"{prefix} {state}")),
                    None)

    try:
        return wait_for(f"{prefix} {state}", probe, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- log ---\n{d.text()}") from None


def sensors(d: Daemon) -> dict[str, int]:
    """The live sensors by name, without their state ("tuninetd: sensor nflog 5") -> pid."""
    return {" ".join(t.split()[:4]): pid for pid, t in workers(d.pid).items()
            if t.startswith("tuninetd: sensor ")}


@dataclass
class Run:
    """A daemon and the record of the commands it ran."""

    daemon: Daemon
    script: Path
    record: Path

    def events(self) -> list[list[str]]:
        return events(self.record)

    def kinds(self) -> list[str]:
        return kinds(self.record)

    def wait_events(self, n: int, timeout: float = 10.0) -> list[list[str]]:
        def probe() -> list[list[str]] | None:
            if self.daemon.proc.poll() is not None:
                raise AssertionError(f"daemon exited:\n{self.daemon.text()}")
            got = self.events()
            return got if len(got) >= n else None

        try:
            return wait_for(f"{n} recorded event(s)", probe, timeout)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nrecorded: {self.events()}\n--- log ---\n{self.daemon.text()}"
            ) from None

    def after(self, needle: str, nth: int = 1, lines: int = 2) -> list[str]:
        """The ``lines`` log lines that follow the nth line containing ``needle``."""
        log = self.daemon.lines()
        at = [i for i, line in enumerate(log) if needle in line][nth - 1]
        return log[at + 1 : at + 1 + lines]


@dataclass
class Sent:
    """When a packet left: ``time.time()`` just before the send and just after."""

    before: float
    after: float


@dataclass
class Lab:
    """A namespace (veth tap0/peer0), a folder, and the daemon started there
    with a recording command; frames and packets sent into the namespace."""

    ns: Netns
    folder: Path
    start_daemon: Callable[..., Daemon]
    beat: float
    args: tuple[str, ...] = ()  # options every daemon of this lab gets
    _frames: socket.socket | None = None
    _raw: socket.socket | None = None

    def run(self, *args: str, body: str = "", name: str = "record.sh", sensors: int = 1,
            ttl: int | None = 1, wait: bool = True, cgroup2: bool = True) -> Run:
        """The daemon with ``args``, recording its commands in a script of
        ``name`` that also runs ``body``; returns once every worker has said
        hello (unless ``wait`` is false)."""
        script, record = recorder(self.folder, name=name, body=body)
        argv = ["-c", str(script), "--beat", str(self.beat), *self.args, *args]
        if ttl is not None:
            argv += ["-t", str(ttl)]
        daemon = self.start_daemon(self.ns, *argv, cgroup2=cgroup2)
        if wait:
            ready(daemon, sensors=sensors)
        return Run(daemon, script, record)

    def send_frame(self, frame: bytes) -> Sent:
        """A whole frame into peer0: it arrives on tap0."""
        if self._frames is None:
            self._frames = self.ns.sender()
        before = time.time()
        self._frames.send(frame)
        return Sent(before, time.time())

    def send_ip(self, packet: bytes, dst: str) -> Sent:
        """An IPv4 packet as it is, sent by the namespace itself (a raw socket:
        through output, where NFLOG rules see it)."""
        if self._raw is None:
            with self.ns.entered():
                self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        before = time.time()
        self._raw.sendto(packet, (dst, 0))
        return Sent(before, time.time())

    def close(self) -> None:
        for s in (self._frames, self._raw):
            if s is not None:
                s.close()


@dataclass(frozen=True)
class LabSetup:
    """What the ``lab`` fixture (tests/conftest.py) sets up on top of the veth
    pair; a test module overrides the ``lab_setup`` fixture to ask for more."""

    args: tuple[str, ...] = ()  # options every daemon of the lab gets
    tap: TapAddresses | None = None  # tap0's addresses and its peers'
    log_rules: tuple[str, ...] = ()  # nftables rules on output logging to NFLOG groups


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(ns: Netns, port: int, path: str = "/metrics") -> tuple[str, str]:
    with ns.entered():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    with s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head, body


def samples(body: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def send_udp(ns: Netns, dst: str, port: int, count: int = 1, data: bytes = b"x") -> Sent:
    """``count`` datagrams sent by the namespace itself to ``dst``; from just
    before the first to just after the last."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with ns.entered():
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        before = time.time()
        for _ in range(count):
            sock.sendto(data, (dst, port))
        return Sent(before, time.time())


@contextlib.contextmanager
def public_folder(prefix: str, mode: int = 0o755) -> Iterator[Path]:
    """A root-owned folder in /tmp that nobody can reach (pytest's tmp_path
    is root's 0700), removed afterwards."""
    need_root()
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(mode)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def enter_mount_namespace(pid: int) -> None:
    """Into the mount namespace of ``pid`` (a private /run/tuninetd, say)."""
    ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    try:
        if _libc.setns(ns, CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(ns)


def become_nobody() -> None:
    """This process, for good: nobody, with nobody's group and no others."""
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


def as_nobody(body: Callable[[], int] | list[str],
              mount_ns_of: int | None = None) -> tuple[int, str]:
    """Run ``body`` (a function, or an argv to exec) in a fork of this process
    that became nobody, with no supplementary groups, in /: its exit status
    and what it wrote on stdout and stderr. A fork, not a new interpreter: the
    test's interpreter may sit where nobody cannot execute it. With
    ``mount_ns_of``, it first enters that process's mount namespace."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(rfd)
            os.dup2(wfd, 1)
            os.dup2(wfd, 2)
            # pytest's capture objects stay with the parent.
            sys.stdout = sys.stderr = os.fdopen(1, "w", closefd=False)
            if mount_ns_of is not None:
                enter_mount_namespace(mount_ns_of)
            os.chdir("/")
            become_nobody()
            if isinstance(body, list):
                os.execv(body[0], body)
            code = body()
            sys.stdout.flush()
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, errors="replace") as r:
        out = r.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def stop_delta(run: Run, stop_index: int, last: Sent, ttl: float, *, beat: float,
               slack: float) -> tuple[float, float]:
    """Seconds from the last packet to the recorded stop, checked against
    [ttl, ttl + beat + slack]; the lower bound counts from before the send,
    the upper from after it."""
    ev = run.events()[stop_index]
    assert ev[0] == "stop", ev
    early, late = epoch(ev) - last.before, epoch(ev) - last.after
    assert early >= ttl, f"stop {early:.3f} s after the last packet, before ttl {ttl}"
    assert late <= ttl + beat + slack, (
        f"stop {late:.3f} s after the last packet, later than ttl {ttl} + beat {beat} + {slack}"
    )
    return early, late
