"""4. Memory: RSS, PSS and USS of each process of the tree, and their sums,
for daemons with 1 sensor (pcap), 2 (one of each kind), 4 and 16 (half pcap
on tap0..tapN, half nflog on consecutive groups). Read once the daemon is up
(a trigger went through and the start command ran): the steady state, with
the packet decoder loaded in the sensor that fired.

The sensors' seccomp sandbox counts in the budget: every sensor runs
confined (the daemon refuses to start without libseccomp), and the count of
sensors without a filter (``Seccomp:`` other than 2 in /proc/PID/status) is
kept with each tree, so a tree measured without its sandbox cannot pass.
"""

from __future__ import annotations

import time
from typing import Any

from bench.lab import FILTER, GROUP, Lab, memory, running
from bench.settings import Settings


def sandboxed(pid: int) -> bool:
    """A seccomp filter is installed (mode 2)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split() == ["Seccomp:", "2"] for line in f)
    except OSError:
        return False


def _tree(lab: Lab, pcap: int, nflog: int, cfg: Settings) -> dict[str, Any]:
    args = ["-f", FILTER, "-t", "600", "--beat", str(cfg.beat)]
    for i in range(pcap):
        args += ["-i", f"tap{i}"]
    for j in range(nflog):
        args += ["-n", str(GROUP + j)]
    with running(lab, f"memory-{pcap}-{nflog}", args, sensors=pcap + nflog) as bench:
        bench.up(0)
        time.sleep(2 * cfg.beat)
        rows = memory(bench.pid)
        unsandboxed = sum(1 for r in rows if str(r["role"]).startswith("sensor")
                          and not sandboxed(int(r["pid"])))
    sensors = [r for r in rows if str(r["role"]).startswith("sensor")]
    executor = [r for r in rows if r["role"] == "executor"]
    supervisor = [r for r in rows if r["role"] == "supervisor"]

    def biggest(group: list[dict[str, float | str]], key: str) -> float:
        return max(float(r[key]) for r in group) if group else 0.0

    return {
        "sensors": pcap + nflog,
        "pcap": pcap,
        "nflog": nflog,
        "processes": rows,
        "supervisor_rss": biggest(supervisor, "rss"),
        "supervisor_pss": biggest(supervisor, "pss"),
        "executor_rss": biggest(executor, "rss"),
        "executor_pss": biggest(executor, "pss"),
        "sensor_rss_max": biggest(sensors, "rss"),
        "sensor_pss_max": biggest(sensors, "pss"),
        "tree_rss": sum(float(r["rss"]) for r in rows),
        "tree_pss": sum(float(r["pss"]) for r in rows),
        "tree_uss": sum(float(r["uss"]) for r in rows),
        "sensors_without_seccomp": unsandboxed,
    }


def measure(lab: Lab, cfg: Settings) -> dict[str, Any]:
    trees = []
    for pcap, nflog in cfg.memory_trees:
        tree = _tree(lab, pcap, nflog, cfg)
        trees.append(tree)
        cfg.progress(f"memory {pcap}+{nflog} sensors: tree {tree['tree_pss']:.1f} MiB PSS, "
                     f"sensor ≤ {tree['sensor_rss_max']:.1f} MiB RSS")
    return {"unit": "MiB", "trees": trees}
