"""``tuntapd -i <ifname> [-m tun|tap] [-d] [--pidfile PATH]``: hold a tun/tap device open.

A tun/tap device has carrier only while a process has it open; without one,
the kernel drops whatever is routed into it before a capture socket sees it,
and a non-persistent device does not even exist. tuntapd is that process
while the device's real user (a VPN, ``ssh -w``...) is down: it creates the
device, or attaches to a persistent one of the same mode, brings the link up,
and reads and discards what the kernel writes to it so its queue never fills.
tuninetd's pcap sensor on the device then sees the traffic that should bring
the real user back; the start command stops tuntapd (SIGTERM releases the
device), the stop command starts it again.

Errors are one line on stderr: exit status 2 for bad usage, 1 when the device
cannot be held or, with ``-d``, nothing listens on /dev/log (as ``tuninetd
-d``: its log would be lost). Every check happens before ``-d`` detaches, so
``tuntapd -d`` exits 0 only once the daemon holds the device and has written
its pidfile; the daemon then logs to syslog as ``tuntapd`` (facility daemon).
Its process title, ``tuntapd: IFNAME MODE``, and ``--pidfile`` let a stop
script find it.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from tuninetd.common import __version__, daemon, ifname, logs, pidfile, signals, usage, worker
from tuninetd.common.ifname import IFNAMSIZ
from tuninetd.common.usage import UsageError

PROG = "tuntapd"
CLONE_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
MODES = {"tun": IFF_TUN, "tap": IFF_TAP}
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then flags in the union
# One read takes one packet; a tap frame without a virtio header is at most
# MTU + 18 bytes, and the largest MTU a tun device accepts is 65535.
READ_SIZE = 65536 + 64
READS_PER_WAKEUP = 256

log = logging.getLogger(PROG)

USAGE = "tuntapd -i <ifname> [-m tun|tap] [-d] [--pidfile PATH]"
DESCRIPTION = (
    "Stub for a tun/tap device to keep it alive: creates the device (or attaches "
    "to a persistent one of the same mode), brings it up, and reads and discards "
    "what the kernel sends to it, so it has carrier and pcap can capture on it "
    "while its real user is down."
)
EPILOG = """\
signals:
  SIGTERM, SIGINT  release the device and exit 0 (a non-persistent device disappears)
  SIGHUP   ignored
  SIGUSR1  log the device, its mode and how many packets were discarded

exit status: 0 released on a signal; 1 the device could not be held (in use by
another process, no /dev/net/tun, no permission, wrong mode) or was deleted;
2 bad usage.

example: a tuninetd stop command runs "tuntapd -i tun0 -d" once the tunnel is
down, and its start command stops that tuntapd before bringing the tunnel up.
"""


class DeviceError(Exception):
    """The device cannot be held: one line on stderr, exit status 1."""


@dataclass(frozen=True)
class Options:
    ifname: str
    mode: str
    daemon: bool
    pidfile: str | None


def _ifname(text: str) -> str:
    why = ifname.problem(text)
    if why is not None:
        raise argparse.ArgumentTypeError(why)
    return text


def _mode(text: str) -> str:
    if text not in MODES:
        raise argparse.ArgumentTypeError(f"bad mode {text!r}: expected tun or tap")
    return text


def _pidfile(text: str) -> str:
    path = os.path.abspath(text)
    if not text or os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a file path")
    if not os.path.isdir(os.path.dirname(path)):
        raise argparse.ArgumentTypeError(
            f"{text!r}: directory {os.path.dirname(path)} does not exist")
    return path


def _parser() -> argparse.ArgumentParser:
    p = usage.parser(PROG, USAGE, DESCRIPTION, EPILOG)
    a = p.add_argument
    a("-i", dest="ifname", metavar="<ifname>", type=_ifname,
      help="the tun/tap device to hold (created if it does not exist)")
    a("-m", dest="mode", metavar="<iftype>", type=_mode, default="tun",
      help="'tun' or 'tap' (default tun)")
    a("-d", dest="daemon", action="store_true",
      help="detach once the device is held; log to syslog as tuntapd (exit 1 if nothing "
      "listens on /dev/log)")
    a("--pidfile", metavar="PATH", type=_pidfile,
      help="write the pid of the process holding the device here; removed at exit")
    a("-h", "--help", action="help", help="print this help")
    a("-v", "--version", action="version", version=f"{PROG} {__version__}",
      help="print version")
    return p


def parse(argv: Sequence[str]) -> Options:
    ns = _parser().parse_args(list(argv))
    if ns.ifname is None:
        raise UsageError("-i <ifname> is required: the tun/tap device to hold")
    return Options(ns.ifname, ns.mode, ns.daemon, ns.pidfile)


# -- the device ----------------------------------------------------------------


def _sysfs_tun_flags(ifname: str) -> int | None:
    """The flags of an existing tun/tap device (None: not one, or no such device).
    Only consulted to explain or retry a refused TUNSETIFF."""
    try:
        with open(f"/sys/class/net/{ifname}/tun_flags") as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return None


def _exists(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def holders(ifname: str) -> list[str]:
    """``pid N comm`` of the processes in this network namespace that have
    ``ifname`` open (the kernel names a tun file's device in its fdinfo)."""
    try:
        own_ns = os.stat("/proc/self/ns/net").st_ino
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    found = []
    wanted = f"iff:\t{ifname}\n"
    for pid in pids:
        try:
            if pid == str(os.getpid()) or os.stat(f"/proc/{pid}/ns/net").st_ino != own_ns:
                continue
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    if wanted in f.read():
                        with open(f"/proc/{pid}/comm") as c:
                            found.append(f"pid {pid} {c.read().strip()}")
                        break
        except OSError:
            continue
    return found


def _explain(exc: OSError, ifname: str, mode: str) -> str:
    code = exc.errno
    if code == errno.EBUSY:
        who = holders(ifname)
        return f"{ifname} is in use: another process holds it" + (
            f" ({', '.join(who)})" if who else "")
    if code in (errno.EPERM, errno.EACCES):
        return (f"permission denied: creating or attaching {ifname} needs CAP_NET_ADMIN "
                "(run as root), or a persistent device owned by this user")
    if code == errno.EINVAL:
        flags = _sysfs_tun_flags(ifname)
        if flags is not None:
            actual = "tun" if flags & IFF_TUN else "tap"
            if actual != mode:
                return f"{ifname} is a {actual} device, not {mode} (use -m {actual})"
        elif _exists(ifname):
            return f"{ifname} exists and is not a tun/tap device"
    return f"cannot hold {ifname} as a {mode} device: {exc.strerror or exc}"


def _setiff(fd: int, ifname: str, flags: int) -> str:
    answer = fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(ifname.encode(), flags))
    return bytes(answer[:IFNAMSIZ]).split(b"\0", 1)[0].decode(errors="replace")


def open_device(ifname: str, mode: str) -> tuple[int, str]:
    """Create or attach to the device; returns the fd and the name the kernel
    gave (the same unless a template like ``tun%d`` was asked for)."""
    try:
        fd = os.open(CLONE_DEVICE, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DeviceError(f"no {CLONE_DEVICE}: the tun driver is missing (modprobe tun)") from None
    except PermissionError:
        raise DeviceError(f"permission denied opening {CLONE_DEVICE} (run as root)") from None
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            raise DeviceError(
                f"{CLONE_DEVICE}: no tun driver in this kernel (modprobe tun)"
            ) from None
        raise DeviceError(f"cannot open {CLONE_DEVICE}: {exc.strerror or exc}") from None
    flags = MODES[mode] | IFF_NO_PI
    try:
        try:
            return fd, _setiff(fd, ifname, flags)
        except OSError as exc:
            # A persistent multi-queue device takes only multi-queue attachments.
            existing = _sysfs_tun_flags(ifname)
            if (exc.errno != errno.EINVAL or existing is None
                    or not existing & IFF_MULTI_QUEUE or not existing & MODES[mode]):
                raise
            return fd, _setiff(fd, ifname, flags | IFF_MULTI_QUEUE)
    except OSError as exc:
        os.close(fd)
        raise DeviceError(_explain(exc, ifname, mode)) from None


def bring_up(ifname: str) -> bool:
    """Set the link up (a link that is down shows no carrier and routes into it
    are dead). Returns whether it was down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        answer = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, IFREQ.pack(ifname.encode(), 0))
        flags = IFREQ.unpack(answer[:IFREQ.size])[1]
        if flags & IFF_UP:
            return False
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, IFREQ.pack(ifname.encode(), flags | IFF_UP))
        return True


# -- detaching ------------------------------------------------------------------


def detach(pidfile_path: str | None) -> None:
    """Into the background; the original process prints the daemon's pid
    and exits 0 once the daemon wrote its pidfile, or says why it could not
    and exits 1."""
    wfd = daemon.detach(_detached)
    answer = str(os.getpid())
    if pidfile_path is not None:
        try:
            pidfile.write(pidfile_path)
        except OSError as exc:
            answer = f"cannot write the pidfile {pidfile_path}: {exc.strerror or exc}"
    os.write(wfd, answer.encode())
    os.close(wfd)
    if not answer.isdecimal():
        os._exit(1)


def _detached(answer: str) -> NoReturn:
    if not answer.strip():
        print(f"{PROG}: the daemon died while detaching", file=sys.stderr)
        os._exit(1)
    if not answer.isdecimal():
        print(f"{PROG}: {answer}", file=sys.stderr)
        os._exit(1)
    log.info("detached, daemon pid %s", answer)
    sys.stderr.flush()
    os._exit(0)


# -- holding ---------------------------------------------------------------------


class Holder:
    def __init__(self, fd: int, ifname: str, mode: str) -> None:
        self.fd = fd
        self.ifname = ifname
        self.mode = mode
        self.packets = 0
        self.buf = bytearray(READ_SIZE)
        # Signals are caught from here on (before "holding" is logged, so one
        # sent on seeing that line is never met by the default action) and
        # handled from the wake-up pipe in the loop.
        self.wake_r = signals.wakeup_fd(
            (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1))

    def drain(self) -> bool:
        """Read and drop what is queued; False once the device is gone."""
        for _ in range(READS_PER_WAKEUP):
            try:
                if os.readv(self.fd, [self.buf]) <= 0:
                    return False
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EBADFD, errno.EIO, errno.ENODEV):
                    return False
                raise
            self.packets += 1
        return True

    def run(self) -> int:
        wake_r = self.wake_r
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            for fd, ev in poller.poll():
                if fd == self.fd:
                    if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) or not self.drain():
                        log.error("%s has been deleted. Abort", self.ifname)
                        return 1
                    continue
                for signum in signals.pending(wake_r):
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        log.info("%s caught. Releasing %s and shutting down...",
                                 signal.Signals(signum).name, self.ifname)
                        os.close(self.fd)
                        return 0
                    if signum == signal.SIGHUP:
                        log.warning("SIGHUP caught. NoOp")
                    elif signum == signal.SIGUSR1:
                        log.info("SIGUSR1 caught. Holding %s, mode %s, %d packets discarded",
                                 self.ifname, self.mode, self.packets)


def main(argv: Sequence[str] | None = None) -> None:
    logs.use(logs.StderrHandler(), log, f"{PROG}: %(message)s")
    try:
        opts = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROG}: {exc} (usage: {USAGE})", file=sys.stderr)
        sys.exit(2)
    if opts.daemon and (refusal := logs.daemon_refusal(PROG)):
        print(refusal, file=sys.stderr)
        sys.exit(1)
    try:
        fd, ifname = open_device(opts.ifname, opts.mode)
    except DeviceError as exc:
        log.error("%s", exc)
        sys.exit(1)
    try:
        was_down = bring_up(ifname)
    except OSError as exc:
        log.warning("holding %s, but cannot bring it up: %s", ifname, exc.strerror or exc)
        was_down = False
    # Signals are caught before the pidfile names this process.
    holder = Holder(fd, ifname, opts.mode)
    if opts.daemon:
        detach(opts.pidfile)
        logs.use(logs.SyslogHandler(PROG), log)
    elif opts.pidfile is not None:
        try:
            pidfile.write(opts.pidfile)
        except OSError as exc:
            log.error("cannot write the pidfile %s: %s", opts.pidfile, exc.strerror or exc)
            sys.exit(1)
    worker.Title(f"{PROG}: {ifname} {opts.mode}", PROG).set("")
    log.info("holding %s (mode %s)%s, pid %d", ifname, opts.mode,
             ", link set up" if was_down else "", os.getpid())
    try:
        status = holder.run()
    finally:
        if opts.pidfile is not None:
            pidfile.remove(opts.pidfile)
    sys.exit(status)


if __name__ == "__main__":
    main()
