"""The bench's network and processes: a namespace with veth pairs, the nftables
rules that feed NFLOG, the frames, the daemon and its recording command,
tcpdump, the generator, and readings of a process tree's CPU and memory.

Every packet stays inside the namespace the bench creates.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.support.netlab import Daemon, Netns, title, wait_for

REPO = Path(__file__).resolve().parent.parent
PORT = 9999
GROUP = 7  # the NFLOG group the nflog sensor and tcpdump listen on
KEEP_GROUP = 8  # a second group tap0's traffic goes to, for --keep-group
FILTER = f"udp dst port {PORT}"
VETHS = 8  # tap0..tap7 (peer0..peer7): enough pcap sensors for the 16-sensor tree


def ipv4_udp_frame(dst_mac: bytes, src_mac: bytes, src: str, dst: str) -> bytes:
    """An Ethernet/IPv4/UDP frame of the minimum size, checksums right."""
    payload = b"tuninetd-bench" + bytes(4)
    udp = struct.pack("!HHHH", 40000, PORT, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    words = sum(struct.unpack("!10H", header))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    header = header[:10] + struct.pack("!H", ~words & 0xFFFF) + header[12:]
    return dst_mac + src_mac + b"\x08\x00" + header + udp


@dataclass
class Veth:
    """One way into the namespace's IP stack: frames sent on ``peer`` arrive
    on ``tap`` addressed to it, pass the prerouting hook and are dropped there."""

    tap: str
    peer: str
    frame: bytes


class Lab:
    """The namespace, its veths (``tapN``, frames injected on ``peerN``) and
    the nftables table. tap0 carries the cost traffic and the pcap triggers;
    tap1's traffic is logged to GROUP (the nflog triggers)."""

    def __init__(self) -> None:
        self.ns = Netns()
        self.dir = Path(tempfile.mkdtemp(prefix="tuninetd-bench-"))
        os.chmod(self.dir, 0o755)
        self.paths: list[Veth] = []
        try:
            for i in range(VETHS):
                tap, peer = f"tap{i}", f"peer{i}"
                self.ns.add_veth(tap, peer)
                self.ns.ip("addr", "add", f"10.201.{i}.1/24", "dev", tap)
                frame = ipv4_udp_frame(
                    self._mac(tap), self._mac(peer), f"10.201.{i}.2", f"10.201.{i}.1"
                )
                self.paths.append(Veth(tap, peer, frame))
            self.rules(log_tap0=False)
        except BaseException:
            self.close()
            raise
        self._senders: dict[str, socket.socket] = {}

    def _mac(self, dev: str) -> bytes:
        info = json.loads(self.ns.ip("-j", "link", "show", dev).stdout)[0]
        return bytes.fromhex(info["address"].replace(":", ""))

    def rules(self, log_tap0: bool, keep_group: bool = False) -> None:
        """tap0's matching traffic dropped at prerouting, logged to GROUP first
        when ``log_tap0`` (and to KEEP_GROUP too with ``keep_group``); tap1's
        always logged. Same kernel path either way, save the log statements."""
        logs = f"log group {GROUP} " + (f"log group {KEEP_GROUP} " if keep_group else "")
        tap0 = f"{logs}drop" if log_tap0 else "drop"
        script = (
            "table inet tnbench\n"
            "delete table inet tnbench\n"
            "table inet tnbench {\n"
            "  chain pre {\n"
            "    type filter hook prerouting priority 0; policy accept;\n"
            f'    iifname "tap0" udp dport {PORT} {tap0}\n'
            f'    iifname "tap1" udp dport {PORT} log group {GROUP} drop\n'
            f"    udp dport {PORT} drop\n"
            "  }\n"
            "}\n"
        )
        subprocess.run(self.ns.exec_argv("nft", "-f", "-"), input=script, text=True,
                       check=True, capture_output=True)

    def rx_packets(self, dev: str = "tap0") -> int:
        info = json.loads(self.ns.ip("-j", "-s", "link", "show", dev).stdout)[0]
        return int(info["stats64"]["rx"]["packets"])

    def send(self, i: int) -> int:
        """One frame on peer ``i``; returns CLOCK_REALTIME ns just before it left."""
        path = self.paths[i]
        sock = self._senders.get(path.peer)
        if sock is None:
            sock = self._senders[path.peer] = self.ns.sender(path.peer)
        t = time.time_ns()
        sock.send(path.frame)
        return t

    def generator(self, i: int, rate: int, seconds: float) -> subprocess.Popen[str]:
        path = self.paths[i]
        argv = [sys.executable, "-m", "bench.gen", path.peer, path.frame.hex(),
                "--rate", str(rate), "--seconds", str(seconds)]
        return subprocess.Popen(self.ns.exec_argv(*argv), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def close(self) -> None:
        for sock in getattr(self, "_senders", {}).values():
            sock.close()
        self.ns.delete()
        for item in sorted(self.dir.rglob("*"), reverse=True):
            with contextlib.suppress(OSError):
                item.rmdir() if item.is_dir() else item.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def gen_result(proc: subprocess.Popen[str], timeout: float = 120.0) -> dict[str, float]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"generator failed ({proc.returncode}): {err.strip()}")
    result: dict[str, float] = json.loads(out)
    return result


def stop_generator(proc: subprocess.Popen[str]) -> dict[str, float]:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    return gen_result(proc, 10)


# -- the daemon ----------------------------------------------------------------


class FileWatch:
    """Blocks until a file is written to (inotify): the bench
    waits for the recorder's line without polling, so it takes no CPU from
    the processes it times, on the daemon's path as on the command alone's."""

    IN_MODIFY = 0x2
    IN_CLOSE_WRITE = 0x8

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(
                self.fd, bytes(path), self.IN_MODIFY | self.IN_CLOSE_WRITE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")

    def wait(self, timeout: float) -> None:
        """Until the next write, or ``timeout`` seconds."""
        if select.select([self.fd], [], [], timeout)[0]:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.fd, 4096):
                    pass


class Recorder:
    """A start/stop command whose first line records ``<event> <realtime ns>
    <sensor>``: one fork and exec of date(1) from /bin/sh."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"{name}.log"
        self.script = folder / f"{name}.sh"
        self.script.write_text(
            "#!/bin/sh\n"
            f'date "+$1 %s%N $TUNINETD_SENSOR" >> {self.path}\n'
        )
        self.script.chmod(0o755)
        self.path.touch()
        self.watch = FileWatch(self.path)
        self.size = 0
        self.seen: list[tuple[str, int, str]] = []

    def events(self) -> list[tuple[str, int, str]]:
        # Read again only when the file grew: right after a trigger the bench
        # shares the CPUs with what it times, and parsing the whole log is
        # a tenth of a millisecond by the end of a run.
        size = os.stat(self.path).st_size
        if size != self.size:
            self.size, self.seen = size, []
            for line in self.path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    self.seen.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""))
        return self.seen

    def wait(self, count: int, timeout: float = 10.0) -> tuple[str, int, str]:
        """The ``count``-th event (1-based) once it is there."""
        deadline = time.monotonic() + timeout
        while len(events := self.events()) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {count} events in {self.path.name} "
                                     f"after {timeout:g} s: {events}")
            self.watch.wait(min(left, 0.5))  # and look again: a write may race the watch
        return events[count - 1]


class Bench:
    """A daemon under test: started in the lab's namespace with a recorder."""

    def __init__(self, lab: Lab, name: str, args: list[str], sensors: int) -> None:
        self.lab = lab
        self.rec = Recorder(lab.dir, name)
        self.sensors = sensors
        self.daemon = Daemon(lab.ns, [*args, "-c", str(self.rec.script)],
                             lab.dir / f"{name}.daemon.log")
        self.ready()

    @property
    def pid(self) -> int:
        return self.daemon.pid

    def titles(self) -> dict[int, str]:
        """pid -> ps title of each worker."""
        out: dict[int, str] = {}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                out[child.pid] = title(child.pid)
        return out

    def sensor_pids(self, kind: str = "") -> list[int]:
        return [pid for pid, t in self.titles().items()
                if t.startswith(f"tuninetd: sensor {kind}")]

    def ready(self, mode: str = "armed", timeout: float = 20.0) -> None:
        """Every sensor shows ``mode`` and the executor is idle."""

        def probe() -> bool:
            if self.daemon.proc.poll() is not None:
                raise AssertionError(f"daemon exited:\n{self.daemon.text()}")
            titles = list(self.titles().values())
            sensors = [t for t in titles if t.startswith("tuninetd: sensor") and t.endswith(mode)]
            idle = [t for t in titles if t.startswith("tuninetd: executor") and t.endswith(" idle")]
            return len(sensors) >= self.sensors and len(idle) == 1

        try:
            wait_for(f"workers {mode}", probe, timeout, every=0.002)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.daemon.text()}") from None

    def up(self, path: int = 0, packets: int = 1) -> None:
        """Trigger (``packets`` frames: a start threshold), wait for the start
        command and for every sensor counting."""
        count = len(self.rec.events())
        for _ in range(packets):
            self.lab.send(path)
        self.rec.wait(count + 1)
        self.ready("counting")

    def down(self) -> None:
        """SIGHUP: stop now; wait for the stop command and the sensors armed."""
        count = len(self.rec.events())
        os.kill(self.pid, signal.SIGHUP)
        self.rec.wait(count + 1)
        self.ready("armed")

    def stop(self) -> None:
        self.daemon.stop()


@contextlib.contextmanager
def running(lab: Lab, name: str, args: list[str], sensors: int) -> Iterator[Bench]:
    bench = Bench(lab, name, args, sensors)
    try:
        yield bench
    finally:
        bench.stop()


# -- tcpdump -------------------------------------------------------------------


class Tcpdump:
    """``tcpdump -w /dev/null`` in the namespace, ready once it listens."""

    def __init__(self, lab: Lab, args: list[str]) -> None:
        self.log = lab.dir / f"tcpdump-{random.randrange(1 << 30)}.log"
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            lab.ns.exec_argv("tcpdump", "-n", "-w", "/dev/null", *args),
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT,
        )
        try:
            wait_for("tcpdump listening", self._listening, 10.0)
        except AssertionError:
            self.stop()
            raise

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"tcpdump exited: {self.log.read_text(errors='replace')}")
        return "listening on" in self.log.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> dict[str, int]:
        """SIGINT; its closing counts (captured, received by filter, dropped)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        counts: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) >= 3 and words[0].isdigit() and words[1] == "packets":
                counts[" ".join(words[2:])] = int(words[0])
        return counts


# -- readings of a process tree ------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _sched_ns(pid: int) -> int:
    """Nanoseconds on a CPU (user and system) of all threads of ``pid``."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError), \
                    open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


@dataclass
class Cpu:
    """CPU time per pid: nanoseconds on CPU (schedstat) and psutil's
    user+system (in clock ticks of 10 ms)."""

    sched_ns: dict[int, int]
    ticks_s: dict[int, float]

    @classmethod
    def of_tree(cls, pid: int) -> Cpu:
        sched: dict[int, int] = {}
        ticks: dict[int, float] = {}
        for proc in tree(pid):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                ticks[proc.pid] = times.user + times.system
                sched[proc.pid] = _sched_ns(proc.pid)
        return cls(sched, ticks)

    def since(self, before: Cpu) -> tuple[float, float]:
        """Seconds of CPU between the two readings: (schedstat, psutil). A process
        that appeared in between counts from zero."""
        sched = sum(self.by_pid(before).values())
        ticks = sum(s - before.ticks_s.get(pid, 0.0) for pid, s in self.ticks_s.items())
        return sched, ticks

    def by_pid(self, before: Cpu) -> dict[int, float]:
        """Seconds on CPU (schedstat) of each process between the two readings."""
        return {pid: (ns - before.sched_ns.get(pid, 0)) / 1e9
                for pid, ns in self.sched_ns.items()}


def role(title_text: str) -> str:
    """'supervisor', 'executor', 'sensor pcap tap0', ... from a ps title."""
    words = title_text.split()
    if len(words) >= 2 and words[0] == "tuninetd:":
        if words[1] == "sensor" and len(words) >= 4:
            return " ".join(words[1:4])
        return words[1]
    return words[0] if words else "?"


def memory(pid: int) -> list[dict[str, float | str]]:
    """RSS, PSS and USS (MiB) of each process of the tree, with its role."""
    rows: list[dict[str, float | str]] = []
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rows.append({
                "pid": proc.pid,
                "role": role(title(proc.pid)),
                "rss": info.rss / 2**20,
                "pss": info.pss / 2**20,
                "uss": info.uss / 2**20,
            })
    return rows
