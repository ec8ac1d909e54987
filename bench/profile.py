"""Profile a sensor's counting under load, for where a cost target is missed.

``python3 -m bench.profile {pcap,nflog} [--seconds S] [--beat B] [--rate PPS] [--shrink]``
``python3 -m bench.profile nflog-flush``

py-spy cannot read a running sensor: it is chrooted into an empty directory
and not dumpable. So this runs the sensor's own capture class
(``tuninetd.sensors.pcap.PcapCapture`` / ``tuninetd.sensors.nflog.NflogCapture``)
in this process, in the bench namespace, with the configuration the
supervisor would send, and calls ``take_count`` once a beat while the
generator sends flat out: the work the sensor does while counting, and
nothing else. It prints the CPU seconds that work took (per second and per
million packets) and, under ``py-spy record -f raw -o FILE -- python3 -m
bench.profile ...``, gives the profile. ``--shrink`` forces the minimal receive
buffer that the nflog sensor now uses while counting without -a (the kernel
drops the messages instead of the sensor walking them; take_count reads the
socket's queued bytes and drop counter). ``nflog-flush`` measures the kernel's
batching delay behind the nflog start latency, batched (as with -a) and
flushed per message (as without).
"""

from __future__ import annotations

import argparse
import select
import socket
import time
from typing import Any

from bench.lab import FILTER, GROUP, Lab, gen_result

RECV = 256 * 1024


def _capture(kind: str, lab: Lab) -> Any:
    """The sensor's capture object, opened as the sensor opens it."""
    if kind == "pcap":
        from scapy.arch.common import compile_filter

        from tuninetd.sensors.pcap import PcapCapture

        program = compile_filter(FILTER, linktype=1)  # DLT_EN10MB
        insns = [[i.code, i.jt, i.jf, i.k] for i in program.bf_insns[: program.bf_len]]
        cfg: dict[str, Any] = {"name": "tap0", "link": "ether", "want_packet": False,
                               "bpf": insns, "bpf_keep": None}
        with lab.ns.entered():
            return PcapCapture(cfg)
    from tuninetd.sensors.nflog import NflogCapture

    lab.rules(log_tap0=True)
    cfg = {"group": GROUP, "want_packet": False, "ack_only": False}
    with lab.ns.entered():
        return NflogCapture(cfg)


def nflog_flush(lab: Lab, seconds: float) -> None:
    """How the nflog group's batching settings (bound as the sensor binds it)
    decide the delay from a frame sent to its message readable, and what the
    kernel's per-packet work costs the sender flat out while a counting
    sensor's minimal receive buffer makes it drop the messages."""
    from tuninetd.common import netlink

    lab.rules(log_tap0=True)
    configs = (("now: qthresh 4096, nlbufsiz 64 KiB, timeout 0", 4096, 64 * 1024),
               ("proposed: qthresh 1, nlbufsiz 4 KiB", 1, 4096))
    for name, qthresh, nlbufsiz in configs:
        with lab.ns.entered():
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER)
        sock.bind((0, 0))
        sock.send(netlink.nflog_config(
            GROUP, seq=1, cmd=netlink.NFULNL_CFG_CMD_BIND,
            mode=(128, netlink.NFULNL_COPY_PACKET), nlbufsiz=nlbufsiz, qthresh=qthresh,
            timeout=0))
        sock.recv(65536)
        delays = []
        for _ in range(50):
            time.sleep(0.02)
            sent = time.monotonic_ns()
            lab.send(0)
            select.select([sock], [], [], 1.0)
            delays.append((time.monotonic_ns() - sent) / 1e6)
            sock.recv(RECV)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        flat_out = gen_result(lab.generator(0, 0, seconds))["pps"]
        delays.sort()
        print(f"{name}: frame -> message readable p50 {delays[25]:.2f} ms, "
              f"p90 {delays[45]:.2f} ms, max {delays[-1]:.2f} ms; "
              f"generator flat out {flat_out:,.0f} pps")
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.profile")
    parser.add_argument("kind", choices=("pcap", "nflog", "nflog-flush"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--beat", type=float, default=1.0)
    parser.add_argument("--rate", type=int, default=0, help="packets per second; 0: flat out")
    parser.add_argument("--shrink", action="store_true",
                        help="nflog: after count(), shrink the receive buffer to the minimum "
                             "(what the pcap sensor does), to try the proposed fix")
    args = parser.parse_args(argv)
    lab = Lab()
    try:
        if args.kind == "nflog-flush":
            nflog_flush(lab, min(args.seconds, 3.0))
            return
        cap = _capture(args.kind, lab)
        cap.count()
        if args.shrink:
            cap.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        rx = lab.rx_packets()
        gen = lab.generator(0, args.rate, args.seconds)
        cpu = 0.0
        counted = 0
        end = time.monotonic() + args.seconds + args.beat
        while time.monotonic() < end:
            time.sleep(args.beat)
            t = time.process_time()
            counted += cap.take_count()
            cpu += time.process_time() - t
        sent = gen_result(gen)
        packets = lab.rx_packets() - rx
        print(f"{args.kind}: {sent['pps']:,.0f} pps, {packets:,} packets, counted {counted:,}; "
              f"take_count CPU {cpu:.4f} s = {cpu / (args.seconds + args.beat) * 1000:.2f} "
              f"ms/s = {cpu / max(packets, 1) * 1e6:.4f} CPU-s per million packets")
    finally:
        lab.close()


if __name__ == "__main__":
    main()
