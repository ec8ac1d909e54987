"""The fault matrix ("Faults survived" in docs/reliability.md), and the sensors' sandbox.

Each row is proved by one test. Rows an earlier test already proves with the
row's full wording are not repeated here; the map:

 1. sensor kill -9, each kind, capturing again within 1 s ... here:
    test_killed_sensor_captures_again[pcap|nflog] (the delay: bench restart)
 2. sensor SIGSTOP, found silent within 10 beats, replaced ... test_processes.py:
    test_sensor_frozen_is_killed_after_ten_silent_beats
 3. executor kill -9 while a command runs ... test_processes.py:
    test_executor_killed_while_a_command_runs; idle (while up) ... here:
    test_executor_killed_while_idle_and_up_keeps_the_state
    (idle while down: test_processes.py test_executor_killed_while_idle_is_replaced)
 4. hung start with a TERM-ignoring child and a setsid grandchild ...
    test_processes.py: test_hung_start_neither_stalls_capture_nor_the_ttl_clock
 5. interface deleted while up / down, re-created ... test_interface.py:
    test_capture_resumes_after_the_interface_is_recreated[while-down|while-up],
    test_interface_flapping_does_not_flood_the_log; here: the replacement of a
    sensor killed while its interface is gone waits too, quietly
    (test_sensor_killed_while_its_interface_is_gone), and a sensor that fails
    at every start is restarted with doubling backoff, two lines per attempt
    (test_crash_loop_is_rate_limited)
 6. NFLOG rule removed and re-added ... here:
    test_nflog_rule_removed_and_added_again[nft|iptables]
 7. supervisor SIGKILL: no worker after 2 s (test_processes.py:
    test_supervisor_killed_takes_every_worker_along[idle|running]); with both
    sensor kinds, and a new daemon at once on the same interface and group ...
    here: test_supervisor_killed_then_a_new_daemon_at_once
 8. -w on a full filesystem ... here: test_pcap_file_on_a_full_filesystem
 9. flapping, 200 cycles ... here: test_flapping_200_cycles
10. a sensor sending malformed, oversized, out-of-order messages ... here:
    test_garbage_from_a_sensor_is_refused_and_changes_nothing (hypothesis, a
    fake sensor run by the real supervisor: tests/support/fake_sensor.py; the
    strategies: tests/support/garbage.py), and tests/unit/test_wire_fuzz.py
    (hypothesis, wire.parse alone)

Sandbox: test_sensors_run_in_an_empty_jail_and_are_not_dumpable,
test_another_nobody_process_cannot_ptrace_a_sensor.

Every test runs the daemon in its own network namespace: veth tap0/peer0,
tap0 holding V4_LOCAL, and V4_PEER a neighbour with a MAC nobody has, so what
the namespace sends to it leaves through tap0 and goes no further. The pcap
sensor sees frames sent into peer0 (UDP to PCAP_PORT); the nflog sensor sees
what an nft rule logs on output (UDP to NFLOG_PORT, sent on a raw socket so
that the source address can number the packets). Every wait polls with a
deadline; sleeps only pace packets or let time pass where the point is that
nothing happens.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import pwd
import re
import resource
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from tests.support.fake_sensor_harness import FakeSensors, Plan
from tests.support.garbage import (
    AFTER_PARSE,
    BEFORE_HELLO,
    HARMLESS,
    HELLO_AGAIN,
    IP_FACTS,
    MALFORMED,
    obj,
)
from tests.support.netlab import (
    EXECUTOR,
    SUPERVISOR,
    Daemon,
    Lab,
    LabSetup,
    TapAddresses,
    as_nobody,
    events,
    gone,
    kinds,
    need_root,
    proc_status,
    ready,
    sh,
    title,
    wait_for,
    wait_gone,
    wait_title,
    worker,
    workers,
)
from tests.support.nft_rules import TABLE, log_rules, nft
from tests.support.timing import BACKOFF_FIRST, BEAT, SLACK
from tuninetd.common import wire
from tuninetd.supervisor.ops import client

V4_LOCAL, V4_PEER = "10.78.0.1", "10.78.0.2"
MAC_LOCAL, MAC_PEER = "02:00:00:00:78:01", "02:00:00:00:78:02"
PCAP_PORT = 9101  # the pcap sensor's filter
NFLOG_PORT = 9102  # logged to GROUP by the nft rule
GROUP = 31
NFLOG_RULE = f"udp dport {NFLOG_PORT} log group {GROUP}"
PCAP_ARGS = ("-i", "tap0", "-f", f"udp dst port {PCAP_PORT}")
NFLOG_ARGS = ("-n", str(GROUP))

PCAP = "tuninetd: sensor pcap tap0"
NFLOG = f"tuninetd: sensor nflog {GROUP}"
LABEL = {PCAP: "pcap:tap0", NFLOG: f"nflog:{GROUP}"}


# -- the lab -----------------------------------------------------------------------


def seq_ip(seq: int) -> str:
    """Packet number ``seq`` as a source address: the start command's
    TUNINETD_SRC then tells which packet fired."""
    return f"10.77.{seq >> 8 & 255}.{seq & 255}"


def ip_seq(addr: str) -> int:
    parts = addr.split(".")
    assert parts[:2] == ["10", "77"], addr
    return int(parts[2]) << 8 | int(parts[3])


def frame(seq: int = 1, size: int = 0) -> bytes:
    pkt = (Ether(src=MAC_PEER, dst=MAC_LOCAL)
           / IP(src=seq_ip(seq), dst=V4_LOCAL)
           / UDP(sport=40000, dport=PCAP_PORT))
    head = len(pkt)
    return bytes(pkt / (b"p" * max(1, size - head)))


def send_pcap(lab: Lab, seq: int = 1, size: int = 0) -> bytes:
    """A frame into peer0: it arrives on tap0, where the pcap sensor listens."""
    data = frame(seq, size)
    lab.send_frame(data)
    return data


def send_nflog(lab: Lab, seq: int = 1) -> None:
    """A datagram sent by the namespace itself: logged to GROUP on output."""
    lab.send_ip(bytes(IP(src=seq_ip(seq), dst=V4_PEER) / UDP(sport=40000, dport=NFLOG_PORT)
                      / b"n"), V4_PEER)


@pytest.fixture
def lab_setup() -> LabSetup:
    return LabSetup(tap=TapAddresses(MAC_LOCAL, (V4_LOCAL,), MAC_PEER, (V4_PEER,)),
                    log_rules=(NFLOG_RULE,))


def wait_kinds(d: Daemon, record: Path, want: list[str], timeout: float = 10.0) -> None:
    def probe() -> bool:
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited:\n{d.text()}")
        return kinds(record) == want

    try:
        wait_for(f"commands {want}", probe, timeout, every=0.01)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; have {kinds(record)}\n--- log ---\n{d.text()}") from None


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def report(text: str) -> None:
    """A measured figure, for the table in docs/reliability.md (pytest -s shows it)."""
    print(f"\n[figure] {text}")


# -- 1. a sensor killed ------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [PCAP, NFLOG], ids=["pcap", "nflog"])
def test_killed_sensor_captures_again(lab: Lab, prefix: str) -> None:
    """kill -9, then a numbered packet every 10 ms: the first one that fires
    the start was sent when the replacement was capturing at the latest. How
    soon that is (row 1 promises 1 s) is bench's restart section's figure."""
    kind = "pcap" if prefix == PCAP else "nflog"
    run = lab.run(*(PCAP_ARGS if kind == "pcap" else NFLOG_ARGS), ttl=600)
    d, record = run.daemon, run.record
    send = send_pcap if kind == "pcap" else send_nflog
    old = worker(d, prefix, "armed")
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    sent: dict[int, float] = {}
    seq = 0
    while not events(record) and time.monotonic() - killed < 5:
        seq += 1
        sent[seq] = time.monotonic()
        send(lab, seq)
        time.sleep(0.01)  # paces the numbered packets
    got = wait_for("the start command", lambda: events(record), 5)
    first = ip_seq(got[0][3])
    capturing_after = sent[first] - killed
    new = worker(d, prefix, not_pid=old)
    assert got[0][2] == LABEL[prefix], got
    d.wait_log(f"CORE: {prefix.removeprefix('tuninetd: ')} (pid {old}) killed by signal 9 "
               f"(SIGKILL); restarting it in {BACKOFF_FIRST:.1f} s")
    d.wait_log(f"CORE: {prefix.removeprefix('tuninetd: ')} is back (pid {new})")
    assert proc_status(new)["CapEff"] == "0000000000000000"  # the replacement dropped too
    d.wait_log(f"{kind.upper()}: start command done")
    report(f"row 1 {kind}: capturing again {capturing_after:.3f} s after kill -9 "
           f"(packet #{first} fired the start)")
    # Correctness: not before the restart backoff (the replacement waits it out).
    assert capturing_after >= BACKOFF_FIRST - 0.02, f"{capturing_after:.3f} s"
    assert kinds(record) == ["start"]


# -- 3. the executor killed while idle, the state up ------------------------------------

SERVICE = """\
D={d}
if [ "$1" = start ]; then
  setsid sleep 1000 </dev/null >/dev/null 2>&1 &
  echo $! > $D/service.pid
fi
if [ "$1" = stop ]; then kill "$(cat $D/service.pid)"; fi
exit 0
"""


def test_executor_killed_while_idle_and_up_keeps_the_state(lab: Lab) -> None:
    """Up, the start done (it left its service running, as a tunnel script
    would), the executor idle: kill -9 it. The loss is logged, the state
    stays up with its ttl clock, nothing is re-run or lost, later commands
    run on the replacement."""
    ttl = 3
    run = lab.run(*PCAP_ARGS, ttl=ttl, body=SERVICE.format(d=lab.folder))
    d, record = run.daemon, run.record
    exe = worker(d, f"{EXECUTOR} {d.name}", "idle")
    send_pcap(lab)
    wait_kinds(d, record, ["start"])
    d.wait_log("PCAP: start command done")
    service = int(wait_for("service pid", lambda: (lab.folder / "service.pid").read_text()
                           .strip() if (lab.folder / "service.pid").exists() else None))
    wait_title(exe, rf"{EXECUTOR} {d.name} idle")
    assert title(d.pid).startswith(f"{SUPERVISOR} {d.name} up idle ")

    os.kill(exe, signal.SIGKILL)
    d.wait_log(f"CORE: executor (pid {exe}) killed by signal 9 (SIGKILL); "
               f"restarting it in {BACKOFF_FIRST:.1f} s")
    new = worker(d, f"{EXECUTOR} {d.name}", "idle", not_pid=exe, timeout=5)
    d.wait_log(f"CORE: executor is back (pid {new})")
    # The state is kept: still up, the ttl clock untouched, no command lost
    # or repeated. No command was running: nothing to kill; the daemon the
    # finished start left running on purpose (the service) lives on.
    assert title(d.pid).startswith(f"{SUPERVISOR} {d.name} up idle "), title(d.pid)
    assert "executor died while running" not in d.text()
    assert not gone(service)
    assert kinds(record) == ["start"]

    # ttl after the trigger the stop runs, on the new executor; then a new start.
    wait_kinds(d, record, ["start", "stop"], timeout=ttl + 3)
    start, stop = (float(e[1]) for e in events(record))
    assert ttl - SLACK <= stop - start <= ttl + BEAT + 1.0, stop - start
    wait_gone([service], 5)
    worker(d, PCAP, "armed")
    send_pcap(lab, 2)
    wait_kinds(d, record, ["start", "stop", "start"])
    d.wait_log("PCAP: start command done", count=2)
    assert d.text().count("CORE: executing STOP command...") == 1
    # The service, adopted by the supervisor when its executor died, is reaped.
    wait_for("no zombie child of the supervisor",
             lambda: not [p for p in psutil.Process(d.pid).children() if gone(p.pid)])


def test_no_cgroup_is_said_once_per_daemon_with_what_to_do(lab: Lab) -> None:
    """Without cgroup2 each executor finds no cgroup for the commands; the
    daemon says so once, with what to do, and a replaced executor does not
    repeat it."""
    run = lab.run(*PCAP_ARGS, cgroup2=False)
    d = run.daemon
    line = ("CORE: executor: no cgroup for the commands (no cgroup2 file system mounted, and "
            "mounting one in this mount namespace failed (Operation not permitted)): a "
            "timed-out command is killed through its TUNINETD_RUN_ID marker, and processes "
            "that drop it may survive; to kill the whole tree, run under systemd (the units "
            "delegate a cgroup) or mount cgroup2 on /sys/fs/cgroup (Linux 5.14 or later)")
    d.wait_log(line)
    exe = worker(d, f"{EXECUTOR} {d.name}", "idle")
    os.kill(exe, signal.SIGKILL)
    new = worker(d, f"{EXECUTOR} {d.name}", "idle", not_pid=exe, timeout=5)
    d.wait_log(f"CORE: executor is back (pid {new})")
    # The replacement's hello and its report come in one burst; a beat later
    # whatever it said has been logged.
    wait_title(new, rf"{EXECUTOR} {d.name} idle")
    send_pcap(lab)
    wait_kinds(d, run.record, ["start"])
    assert d.lines().count(line) == 1, d.text()


# -- 5. the interface gone for a while, a crash loop -------------------------------------


def test_sensor_killed_while_its_interface_is_gone(lab: Lab) -> None:
    """The replacement starts without its interface: it waits like the first
    one did, no restart loop; the log stays quiet however long it lasts."""
    run = lab.run(*PCAP_ARGS)
    d, record = run.daemon, run.record
    old = worker(d, PCAP, "armed")
    lab.ns.ip("link", "del", "tap0")
    d.wait_log("waiting for interface")
    os.kill(old, signal.SIGKILL)
    new = worker(d, PCAP, "waiting for interface", not_pid=old)
    d.wait_log(f"CORE: sensor pcap tap0 is back (pid {new})")
    d.wait_log("waiting for interface", count=2)
    quiet_from = len(d.lines())
    time.sleep(20 * BEAT)  # twenty beats without the interface: nothing to log
    assert d.lines()[quiet_from:] == [], d.text()
    assert worker(d, PCAP) == new

    lab.ns.add_veth()
    lab.ns.ip("link", "set", "tap0", "address", MAC_LOCAL)
    d.wait_log("CORE: sensor pcap tap0: capturing again")
    worker(d, PCAP, "armed")
    send_pcap(lab)
    wait_kinds(d, record, ["start"])
    log = d.text()
    assert log.count("restarting it in") == 1, log
    assert log.count("waiting for interface") == 2, log
    assert len(d.lines()) < 15, log


def test_crash_loop_is_rate_limited(lab: Lab) -> None:
    """A replacement that fails at every start (its NFLOG group taken by
    another process meanwhile): retried with doubling backoff, two log lines
    per attempt (why, and when the next one is), not a line every 0.5 s."""
    from tuninetd.sensors.nflog import NflogCapture

    run = lab.run(*NFLOG_ARGS)
    d, record = run.daemon, run.record
    old = worker(d, NFLOG, "armed")
    os.kill(old, signal.SIGKILL)
    wait_gone([old], 2)

    def take_group() -> NflogCapture | None:
        try:
            with lab.ns.entered():
                return NflogCapture({"group": GROUP, "want_packet": False, "ack_only": False})
        except OSError:
            return None  # the killed sensor's socket is not released yet

    thief = wait_for("the group taken", take_group, timeout=BACKOFF_FIRST, every=0.005)
    try:
        taken = time.monotonic()
        d.wait_log("restarting it in 4.0 s", timeout=10)
        watched = time.monotonic() - taken
    finally:
        thief.trigger.sock.close()
    d.wait_log(f"CORE: sensor nflog {GROUP} is back", timeout=10)
    lines = d.lines()
    first = next(i for i, line in enumerate(lines) if f"(pid {old}) killed" in line)
    back = next(i for i, line in enumerate(lines) if "is back" in line)
    loop = lines[first + 1 : back]
    assert len(loop) == 6, lines  # three failed starts, two lines each
    for i, delay in enumerate(("1.0", "2.0", "4.0")):
        assert re.fullmatch(rf"CORE: sensor nflog {GROUP}: .*nflog group {GROUP} is already "
                            "bound by another process", loop[2 * i]), loop
        assert re.fullmatch(rf"CORE: sensor nflog {GROUP} \(pid \d+\) exited with status 1 "
                            rf"\(its last error: .*nflog group {GROUP} is already bound by "
                            rf"another process\); restarting it in {delay} s",
                            loop[2 * i + 1]), loop
    said = client.query(d.control)
    last_exit = loop[-1].partition(") ")[2].partition("; restarting")[0]
    assert [r.get("last_exit") for r in said["processes"]
            if r["role"] == f"nflog:{GROUP}"] == [last_exit], said["processes"]
    assert f"  last exit of nflog:{GROUP}: {last_exit}\n" in client.render(said)
    report(f"row 5 crash loop: {len(loop)} lines in {watched:.1f} s of failing starts "
           "(retries after 0.5, 1, 2, 4 s)")
    send_nflog(lab)
    wait_kinds(d, record, ["start"])


def test_a_replacement_that_cannot_be_spawned_is_retried(lab: Lab) -> None:
    """The supervisor out of descriptors (EMFILE, its RLIMIT_NOFILE lowered
    from outside) when a killed sensor is due to be replaced: it says why and
    tries again with the backoff, rather than exiting. Once descriptors are
    there again, the sensor is back and fires the start."""
    run = lab.run(*PCAP_ARGS, ttl=600)
    d, record = run.daemon, run.record
    old = worker(d, PCAP, "armed")
    limits = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
    # The sensor's channel closes at its reap: one descriptor free, and a
    # replacement needs two (its socketpair).
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (fd_count(d.pid), limits[1]))
    try:
        os.kill(old, signal.SIGKILL)
        d.wait_log("CORE: cannot start the sensor pcap tap0: Too many open files; "
                   "trying again in 1.0 s")
        d.wait_log("CORE: cannot start the sensor pcap tap0: Too many open files; "
                   "trying again in 2.0 s")
        assert d.proc.poll() is None
    finally:
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, limits)
    new = worker(d, PCAP, "armed", not_pid=old)
    d.wait_log(f"CORE: sensor pcap tap0 is back (pid {new})")
    send_pcap(lab)
    wait_kinds(d, record, ["start"])


# -- 6. the NFLOG rule removed and re-added -----------------------------------------------


@pytest.mark.parametrize("tool", ["nft", "iptables"])
def test_nflog_rule_removed_and_added_again(lab: Lab, tool: str) -> None:
    if tool == "nft":
        def remove() -> None:
            nft(lab.ns, "delete", "table", "inet", TABLE)

        def add() -> None:
            log_rules(lab.ns, NFLOG_RULE)
    else:
        nft(lab.ns, "delete", "table", "inet", TABLE)
        rule = ["OUTPUT", "-p", "udp", "--dport", str(NFLOG_PORT), "-j", "NFLOG",
                "--nflog-group", str(GROUP)]

        def add() -> None:
            sh(*lab.ns.exec_argv("iptables", "-A", *rule))

        def remove() -> None:
            sh(*lab.ns.exec_argv("iptables", "-D", *rule))

        add()
    run = lab.run(*NFLOG_ARGS, ttl=1)
    d, record = run.daemon, run.record
    sensor = worker(d, NFLOG, "armed")
    send_nflog(lab, 1)
    wait_kinds(d, record, ["start"])
    worker(d, NFLOG, "counting")

    # Removed while up: what is sent is logged no more, the ttl runs out.
    remove()
    deadline = time.monotonic() + 1 + BEAT + 3
    while kinds(record) != ["start", "stop"] and time.monotonic() < deadline:
        send_nflog(lab, 2)
        time.sleep(0.1)  # paces the packets
    wait_kinds(d, record, ["start", "stop"], timeout=0.1)
    worker(d, NFLOG, "armed")
    for _ in range(5):  # down, and the rule still gone: nothing fires
        send_nflog(lab, 3)
        time.sleep(0.1)
    assert kinds(record) == ["start", "stop"]

    # Back: the next packet triggers; the same sensor, never in trouble.
    add()
    send_nflog(lab, 4)
    wait_kinds(d, record, ["start", "stop", "start"])
    assert events(record)[2][2:4] == [f"nflog:{GROUP}", seq_ip(4)]
    assert worker(d, NFLOG) == sensor
    trouble = [line for line in d.lines()
               if "rror" in line or "arning" in line
               or line.startswith(f"CORE: sensor nflog {GROUP}")]
    assert trouble == [], d.text()


# -- 7. the supervisor killed, a new daemon at once ----------------------------------------


def test_supervisor_killed_then_a_new_daemon_at_once(lab: Lab) -> None:
    old_run = lab.run(*PCAP_ARGS, *NFLOG_ARGS, sensors=2)
    old, old_record = old_run.daemon, old_run.record
    pids = list(workers(old.pid))
    assert len(pids) == 3, workers(old.pid)
    os.kill(old.pid, signal.SIGKILL)
    killed = time.monotonic()
    new_run = lab.run(*PCAP_ARGS, *NFLOG_ARGS, name="second.sh", wait=False)
    new, record = new_run.daemon, new_run.record
    old.proc.wait(5)
    all_gone = wait_gone(pids, 2.0) - killed
    ready(new, sensors=2)
    up = time.monotonic() - killed
    send_nflog(lab)
    wait_kinds(new, record, ["start"])
    wait_kinds(new, record, ["start", "stop"])
    worker(new, PCAP, "armed")
    send_pcap(lab)
    wait_kinds(new, record, ["start", "stop", "start"])
    assert [e[2] for e in events(record)] == [f"nflog:{GROUP}", f"nflog:{GROUP}", "pcap:tap0"]
    assert kinds(old_record) == []
    assert "rror" not in new.text(), new.text()
    report(f"row 7: old workers gone {all_gone:.3f} s after SIGKILL; the new daemon "
           f"ready {up:.2f} s after it")


# -- 8. -w on a full filesystem --------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tnd-full", str(where))
    try:
        yield where
    finally:
        sh("umount", str(where), check=False)


def test_pcap_file_on_a_full_filesystem(lab: Lab) -> None:
    """Two pages of tmpfs. Full: nothing can be written (ENOSPC). One page
    freed: three records fit, then every one is a short write (cut back,
    the file stays whole). Each episode is logged once; starts and stops
    go on throughout."""
    with small_tmpfs(lab.folder / "small", "8k") as mnt:
        filler = mnt / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            f.write(b"\0" * 8192)
        assert filler.stat().st_size == 8192
        dump = mnt / "starts.pcap"
        run = lab.run(*PCAP_ARGS, "-w", str(dump), ttl=600)
        d, record = run.daemon, run.record
        sizes = [600, 700, 800, 1000, 1100, 1200, 1300, 1050, 1250]
        written: list[bytes] = []
        for n, size in enumerate(sizes):
            if n == 3:
                os.truncate(filler, 4096)  # one page free again
            worker(d, PCAP, "armed")
            frame = send_pcap(lab, n + 1, size)
            wait_kinds(d, record, ["start", "stop"] * n + ["start"])
            d.proc.send_signal(signal.SIGHUP)
            wait_kinds(d, record, ["start", "stop"] * (n + 1))
            if n >= 3:
                written.append(frame)
        assert d.proc.poll() is None
        errors = [line for line in d.lines() if "can't write packet to pcap file" in line]
        assert len(errors) == 2, d.text()
        assert errors[0].endswith(": No space left on device"), errors
        assert re.search(r": short write \(\d+ of \d+ bytes\), record dropped$", errors[1]), errors
        assert d.text().count(f"Logger: writing packets to pcap file {dump} again") == 1
        assert d.text().count("PCAP: start command done") == len(sizes)
        records = [bytes(p) for p in rdpcap(str(dump))]
        assert records == written[:3], [len(r) for r in records]
        assert dump.stat().st_size <= 4096
        d.stop()


# -- 9. flapping ---------------------------------------------------------------------------


def test_flapping_200_cycles(lab: Lab) -> None:
    """Up and down as fast as the daemon goes, ttl 1 s, until 200 start and
    200 stop commands have run: a frame brings it up; SIGHUP brings it down
    the moment the supervisor shows up (it does not wait for the ttl), except
    in the last 5 cycles, where the ttl does. A start still queued when its
    stop comes (or a stop when the next start comes) cancels out, so there
    are more state cycles than commands; what runs strictly alternates, and
    every command pushed is accounted for: run, or cancelled in a pair.

    One frame a cycle, sent once the sensor is armed again: a second one
    would be counted while up and fire at the next arm (a packet the
    supervisor had not heard of when it went down, by design), an up and
    down of its own that watching the title can miss. The sensor fires
    hundreds of triggers in one window of its message allowance: not one of
    them may get it killed."""
    want, by_ttl = 200, 5
    run = lab.run(*PCAP_ARGS, ttl=1)
    d, record = run.daemon, run.record
    sup = d.pid
    exe = worker(d, f"{EXECUTOR} {d.name}", "idle")
    sen = worker(d, PCAP, "armed")
    fds_before = fd_count(sup), fd_count(exe)
    kids_before = sorted(p.pid for p in psutil.Process(sup).children(recursive=True))

    def cycle(n: int, hangup: bool) -> None:
        # Down, and the sensor's arm taken (its title follows its mode): the
        # frame is its trigger.
        wait_title(sen, rf"{PCAP} armed", every=0.002)
        send_pcap(lab, n % 60000 + 1)
        wait_title(sup, rf"{SUPERVISOR} {d.name} up idle \d+s", every=0.002)
        # Counting after its trigger, before the arm the way down orders.
        wait_title(sen, rf"{PCAP} counting", every=0.002)
        if hangup:
            d.proc.send_signal(signal.SIGHUP)
        wait_title(sup, rf"{SUPERVISOR} {d.name} down", every=0.002)

    def settled() -> bool:
        return (title(exe) == f"{EXECUTOR} {d.name} idle"
                and title(sup) == f"{SUPERVISOR} {d.name} down"
                and kinds(record)[-1:] == ["stop"])

    started = time.monotonic()
    cycles = 0
    while kinds(record).count("start") < want - by_ttl:
        cycle(cycles, hangup=True)
        cycles += 1
    wait_for("the executor idle after the last stop", settled, 10)
    hups = cycles
    for _ in range(by_ttl):
        cycle(cycles, hangup=False)
        cycles += 1
        wait_for("the stop run", settled, 10)
    flapped = time.monotonic() - started

    ran = kinds(record)
    assert ran == ["start", "stop"] * (len(ran) // 2), ran
    assert len(ran) >= 2 * want
    log = d.text()
    cancelled = log.count("start cancelled") + log.count("stop cancelled")
    assert len(ran) + 2 * cancelled == 2 * cycles, (len(ran), cancelled, cycles)
    assert log.count("SIGHUP caught, switch to standby mode") == hups
    assert "already in standby" not in log
    assert "restarting" not in log, log
    assert (fd_count(sup), fd_count(exe)) == fds_before
    kids_after = sorted(p.pid for p in psutil.Process(sup).children(recursive=True))
    assert kids_after == kids_before == sorted([exe, sen])
    report(f"row 9: {cycles} up/down cycles ({hups} ended by SIGHUP, {by_ttl} by the ttl of "
           f"1 s) in {flapped:.1f} s; {len(ran) // 2} start and {len(ran) // 2} stop commands "
           f"run, alternating; {cancelled} start/stop pairs cancelled out; supervisor "
           f"{fds_before[0]} fds and {len(kids_before)} children before and after")


# -- 10. a sensor sending garbage ------------------------------------------------------------


# Each kind of refusal at least once, before hypothesis draws its own.
EXAMPLES = [
    (False, obj("trigger", link="raw", **IP_FACTS)),  # valid, but before hello
    (False, obj("beat", n=5, mode="armed")),
    (True, obj("hello", pid=1)),  # hello twice
    (True, b"\xff\x00 not json"),
    (True, b"[" * 50_000 + b"]" * 50_000),  # nested too deep
    (True, obj("beat", n=0, mode="m" * wire.MAX_MESSAGE)),  # oversized
    (True, json.dumps({"v": 2, "t": "beat", "n": 0}).encode()),
    (True, obj("beat", n=-1)),
    (True, obj("beat", n=0, mode="sideways")),  # not a sensor's mode
    (True, obj("beat", n=0, extra=1)),
    (True, obj("trigger", link="ppp")),
    (True, obj("trigger", link="raw", pkt="!!not base64!!")),
    (True, obj("trigger", link="raw", ip=4, src="192.0.2.1; reboot", dst="192.0.2.2", proto=6)),
    (True, b""),  # an empty record: to the supervisor, the sensor hung up
]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    hello = draw(st.booleans())
    prefix = draw(st.lists(HARMLESS, max_size=3)) if hello else []
    out_of_order = st.just(HELLO_AGAIN) if hello else BEFORE_HELLO
    bad = draw(st.one_of(MALFORMED, AFTER_PARSE, out_of_order))
    tail = draw(st.lists(st.one_of(MALFORMED, HARMLESS), max_size=2))
    return Plan(hello, [*prefix, bad, *tail], hangup=bad == b"")


def test_garbage_from_a_sensor_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    need_root()  # the fake sensor drops privileges the way the real ones do
    fake = FakeSensors(tmp_path)
    healthy = json.dumps({"hello": True, "trigger": False, "records": []}).encode() + b"\n"
    try:
        # Up, with a start command run: the state every example must leave alone.
        first = fake.next_sensor(json.dumps({"hello": True, "trigger": True,
                                             "records": []}).encode() + b"\n")
        wait_for("the start", lambda: kinds(fake.record) == ["start"])
        wait_for("NFLOG: start command done",
                 lambda: "NFLOG: start command done" in fake.lines())
        executor = [p for p, t in workers(fake.proc.pid).items() if t.startswith(EXECUTOR)]
        os.kill(first, signal.SIGKILL)
        wait_for("the kill logged",
                 lambda: any(f"(pid {first}) killed by signal 9" in line for line in fake.lines()))
        reasons: collections.Counter[str] = collections.Counter()

        def check(plan: Plan) -> None:
            before = len(fake.lines())
            pid = fake.next_sensor(plan.json())
            # Events that come: the bounds are the suite's hang guards, not
            # how fast a loaded machine kills and reaps.
            wait_for(f"fake sensor {pid} killed", lambda: gone(pid), every=0.01)
            # After a hang-up (an empty record) the fake may see its channel
            # closed and exit before the kill a beat later: either reason.
            restart = (re.compile(rf"CORE: sensor nflog 1 \(pid {pid}\) (closed its channel|"
                                  r"exited with status 0); restarting it in 0\.\d s")
                       if plan.hangup else
                       re.compile(rf"CORE: sensor nflog 1 \(pid {pid}\) sent a bad message; "
                                  r"restarting it in 0\.\d s"))
            wait_for(restart.pattern,
                     lambda: any(restart.fullmatch(line) for line in fake.lines()))
            fake.alive()
            new = [line for line in fake.lines()[before:] if " is back (pid " not in line]
            if plan.hangup:
                assert len(new) == 1, new
                reasons["hang-up (empty record)"] += 1
            else:
                assert len(new) == 2, new
                said = re.fullmatch(r"CORE: sensor nflog 1 sent a bad message \(([ -~]*)\): "
                                    "killing it", new[0])
                assert said, new
                why = said.group(1)
                if why.startswith("not JSON") and "nested" not in why:
                    why = "not JSON"
                reasons[re.sub(r"\d+|'.*'", "N", why)] += 1
            assert restart.fullmatch(new[-1]), new
            assert title(fake.proc.pid).startswith(f"{SUPERVISOR} {fake.name} up idle "), \
                title(fake.proc.pid)
            assert kinds(fake.record) == ["start"]

        for hello, record in EXAMPLES:
            check(Plan(hello, [record], hangup=record == b""))

        @settings(max_examples=40, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])
        @given(plan=plans())
        def generated(plan: Plan) -> None:
            check(plan)

        generated()
        # Well behaved again: back, and the state machine goes on from where it was.
        pid = fake.next_sensor(healthy)
        wait_for("the last fake back",
                 lambda: any(f"is back (pid {pid})" in line for line in fake.lines()))
        fake.proc.send_signal(signal.SIGHUP)
        wait_for("the stop", lambda: kinds(fake.record) == ["start", "stop"])
        fake.alive()
        # The other workers never noticed.
        assert len(executor) == 1 and not gone(executor[0])
        assert not any("executor" in line for line in fake.lines()), fake.lines()
        report(f"row 10: {sum(reasons.values())} bad records, each refused, logged once, the "
               f"sensor replaced, the state (up, one start run) unchanged: {dict(reasons)}")
        fake.proc.send_signal(signal.SIGTERM)
        assert fake.proc.wait(10) == 0, "\n".join(fake.lines())
    finally:
        fake.stop()


# -- the sandbox -------------------------------------------------------------------------------

PTRACE = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
    print(ctypes.get_errno())
    sys.exit(0)
os.waitpid(pid, 0)
libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
print(0)
"""


def ptrace_errno(pid: int) -> int:
    """PTRACE_ATTACH to ``pid`` from a process running as nobody: 0 or the errno."""
    code, out = as_nobody(["/usr/bin/python3", "-c", PTRACE, str(pid)])
    assert code == 0, out
    return int(out)


def need_nobody_tools() -> None:
    if not Path("/usr/bin/python3").exists() or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs /usr/bin/python3 and setpriv to act as another nobody process")


def test_sensors_run_in_an_empty_jail_and_are_not_dumpable(lab: Lab) -> None:
    need_nobody_tools()
    # As nobody explicitly: the control case is another nobody process.
    run = lab.run(*PCAP_ARGS, *NFLOG_ARGS, "--user", "nobody", sensors=2)
    d, record = run.daemon, run.record
    nobody = pwd.getpwnam("nobody")
    for prefix in (PCAP, NFLOG):
        pid = worker(d, prefix, "armed")
        assert proc_status(pid)["Uid"].split() == [str(nobody.pw_uid)] * 4
        # The root: an empty directory of root's, which nobody cannot write.
        root = os.readlink(f"/proc/{pid}/root")
        assert root != "/", root
        jail = os.stat(f"/proc/{pid}/root")
        assert os.readlink(f"/proc/{pid}/cwd") == root
        assert (os.stat(root).st_dev, os.stat(root).st_ino) == (jail.st_dev, jail.st_ino)
        assert stat.S_ISDIR(jail.st_mode) and jail.st_uid == 0 and jail.st_gid == 0
        assert jail.st_mode & 0o022 == 0, oct(jail.st_mode)
        assert os.listdir(f"/proc/{pid}/root") == []
        assert as_nobody(["/usr/bin/test", "-w", root])[0] == 1
        code, said = as_nobody(["/usr/bin/touch", f"{root}/x"])
        assert code != 0 and "Permission denied" in said, said
        # Not dumpable: its /proc files are root's although it runs as nobody.
        for name in ("mem", "environ", "status"):
            assert os.stat(f"/proc/{pid}/{name}").st_uid == 0, name
    report(f"sandbox: sensors' root {root}, empty, root's, mode {stat.S_IMODE(jail.st_mode):o}")
    # And they still work.
    send_nflog(lab)
    wait_kinds(d, record, ["start"])
    wait_kinds(d, record, ["start", "stop"])
    worker(d, PCAP, "armed")
    send_pcap(lab)
    wait_kinds(d, record, ["start", "stop", "start"])
    assert [e[2] for e in events(record)] == [f"nflog:{GROUP}", f"nflog:{GROUP}", "pcap:tap0"]


def yama_ptrace_scope() -> int:
    try:
        return int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except FileNotFoundError:
        return 0  # no Yama: the classic rules, same uid may attach


def test_another_nobody_process_cannot_ptrace_a_sensor(lab: Lab) -> None:
    need_nobody_tools()
    if yama_ptrace_scope() > 0:
        pytest.skip("Yama forbids ptrace between non-relatives here, so a nobody process "
                    "could not attach to a dumpable one either: the test would prove nothing")
    run = lab.run(*PCAP_ARGS, *NFLOG_ARGS, sensors=2)
    d = run.daemon
    # The control case: a dumpable process of the same uid, which nobody can
    # attach to. Without it, the sensors' EPERM could come from anything.
    control = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup",
                                "--clear-groups", "sleep", "30"], cwd="/")
    try:
        wait_for("setpriv to exec sleep", lambda: psutil.Process(control.pid).name() == "sleep")
        assert ptrace_errno(control.pid) == 0
    finally:
        control.kill()
        control.wait()
    for prefix in (PCAP, NFLOG):
        assert ptrace_errno(worker(d, prefix, "armed")) == errno.EPERM, prefix
