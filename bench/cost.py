"""1. Cost per packet while up.

The same frames (Ethernet/IPv4/UDP to tap0, port 9999) at 10,000 and
100,000 packets per second and flat out, first to the daemon with a pcap
sensor on tap0, then to tcpdump on tap0; then, with tap0's traffic logged to
the NFLOG group by an nftables prerouting rule, to the daemon with an nflog
sensor and to tcpdump on nflog:GROUP. One consumer at a time. The daemon is
brought up by a trigger first (long ttl), so every window is spent counting.
Flat out, each sensor once more with a start threshold and a keep-alive
source of its own (--keep-filter, --keep-group): what counting a second
socket costs.

A window: read the CPU time of the consumer's whole process tree, send for a
fixed time, wait one beat and a bit (the sensor reports, tcpdump catches up),
read again. Packets: what tap0 received in the window (its rx counter).
CPU time is read from /proc/PID/task/*/schedstat (nanoseconds on a CPU,
user and system together); psutil's user+system comes in 10 ms ticks, too
coarse for a daemon that spends milliseconds per window, and is kept in the
JSON beside it. Before the windows, the consumer's CPU over a quiet spell
gives its idle cost per second; "net" figures subtract that.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.lab import FILTER, GROUP, KEEP_GROUP, Cpu, Lab, Tcpdump, gen_result, role, running
from bench.settings import Settings
from tests.support.netlab import title

RATES = (10_000, 100_000, 0)  # 0: as fast as the generator goes
# The windows of a daemon with --start-packets and a keep-alive source of its own.
KEEP_CONSUMER = "tuninetd, keep source"
KEEP_START_PACKETS = 3


@dataclass
class Window:
    consumer: str  # "tuninetd" or "tcpdump"
    sensor: str  # "pcap" or "nflog"
    rate: int  # asked for; 0 = flat out
    pps: float  # what the generator reached
    packets: int  # received on tap0 in the window
    seconds: float  # length of the window (sending + settling)
    cpu_s: float  # CPU seconds of the tree, schedstat (ns resolution)
    cpu_s_psutil: float  # the same from psutil user+system (10 ms ticks)
    per_million: float  # cpu_s per million packets
    per_million_psutil: float
    idle_cpu_per_s: float  # the same consumer with no traffic, CPU seconds per second
    per_million_net: float  # per_million less what the window would have cost idle
    by_role: dict[str, float]  # cpu_s of each process ("supervisor", "sensor pcap tap0", ...)


def _idle(pid: int, seconds: float) -> float:
    before = Cpu.of_tree(pid)
    time.sleep(seconds)
    return Cpu.of_tree(pid).since(before)[0] / seconds


def _windows(lab: Lab, pid: int, consumer: str, sensor: str, cfg: Settings,
             rates: tuple[int, ...] = RATES) -> list[Window]:
    idle = _idle(pid, cfg.cost_idle_seconds)
    out = []
    for rate in rates:
        rx = lab.rx_packets()
        t = time.monotonic()
        before = Cpu.of_tree(pid)
        gen = gen_result(lab.generator(0, rate, cfg.cost_seconds))
        time.sleep(cfg.beat + 0.3)
        after = Cpu.of_tree(pid)
        cpu, cpu_psutil = after.since(before)
        seconds = time.monotonic() - t
        packets = lab.rx_packets() - rx
        million = max(packets, 1) / 1e6
        roles: dict[str, float] = {}
        for proc_pid, spent in after.by_pid(before).items():
            name = role(title(proc_pid)) if consumer == "tuninetd" else consumer
            roles[name] = roles.get(name, 0.0) + spent
        out.append(Window(consumer, sensor, rate, gen["pps"], packets, seconds, cpu,
                          cpu_psutil, cpu / million, cpu_psutil / million, idle,
                          max(0.0, cpu - idle * seconds) / million, roles))
        cfg.progress(f"cost {consumer} {sensor} {rate or 'max'}: {gen['pps']:,.0f} pps, "
                     f"{cpu / million:.4f} CPU-s/M")
    return out


def _daemon(lab: Lab, sensor: str, cfg: Settings) -> list[Window]:
    args = ["-i", "tap0", "-f", FILTER] if sensor == "pcap" else ["-n", str(GROUP)]
    with running(lab, f"cost-{sensor}",
                 [*args, "-t", "600", "--beat", str(cfg.beat)], sensors=1) as bench:
        bench.up(0)
        return _windows(lab, bench.pid, "tuninetd", sensor, cfg)


def _keep_source(lab: Lab, sensor: str, cfg: Settings) -> list[Window]:
    """Flat out, to a daemon with a start threshold and a keep-alive source
    of its own: pcap counts a second socket (--keep-filter, here the filter
    itself), nflog a second group bound beside its own (--keep-group, which
    the rule logs the same traffic to), each with its trigger socket emptied
    once a beat."""
    args = (["-i", "tap0", "-f", FILTER, "--keep-filter", FILTER] if sensor == "pcap"
            else ["-n", str(GROUP), "--keep-group", str(KEEP_GROUP)])
    with running(lab, f"cost-keep-{sensor}",
                 [*args, "--start-packets", str(KEEP_START_PACKETS), "-t", "600",
                  "--beat", str(cfg.beat)], sensors=1) as bench:
        bench.up(0, packets=KEEP_START_PACKETS)
        return _windows(lab, bench.pid, KEEP_CONSUMER, sensor, cfg, rates=(0,))


def _tcpdump(lab: Lab, sensor: str, cfg: Settings) -> tuple[list[Window], dict[str, int]]:
    args = ["-i", "tap0", FILTER] if sensor == "pcap" else ["-i", f"nflog:{GROUP}"]
    dump = Tcpdump(lab, args)
    try:
        windows = _windows(lab, dump.pid, "tcpdump", sensor, cfg)
    finally:
        counts = dump.stop()
    return windows, counts


def measure(lab: Lab, cfg: Settings) -> dict[str, Any]:
    windows: list[Window] = []
    tcpdump_counts: dict[str, dict[str, int]] = {}
    for sensor in ("pcap", "nflog"):
        lab.rules(log_tap0=sensor == "nflog")
        windows += _daemon(lab, sensor, cfg)
        lab.rules(log_tap0=sensor == "nflog", keep_group=True)
        windows += _keep_source(lab, sensor, cfg)
        lab.rules(log_tap0=sensor == "nflog")
        more, tcpdump_counts[sensor] = _tcpdump(lab, sensor, cfg)
        windows += more
    lab.rules(log_tap0=False)
    ratios: dict[str, dict[str, float]] = {}
    net: dict[str, dict[str, float]] = {}
    for sensor in ("pcap", "nflog"):
        ratios[sensor] = {}
        net[sensor] = {}
        for rate in RATES:
            ours = next(w for w in windows
                        if (w.consumer, w.sensor, w.rate) == ("tuninetd", sensor, rate))
            ref = next(w for w in windows
                       if (w.consumer, w.sensor, w.rate) == ("tcpdump", sensor, rate))
            ratios[sensor][str(rate or "max")] = (
                ours.per_million / ref.per_million if ref.per_million > 0 else float("inf")
            )
            net[sensor][str(rate or "max")] = (
                ours.per_million_net / ref.per_million_net
                if ref.per_million_net > 0 else float("inf")
            )
    return {
        "windows": [asdict(w) for w in windows],
        "ratio_to_tcpdump": ratios,
        "ratio_net_to_tcpdump": net,  # both net of their idle cost
        "tcpdump_counts": tcpdump_counts,
    }

