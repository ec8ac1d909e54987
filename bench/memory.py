"""4. Memory: RSS, PSS and USS of each process of the tree, and their sums,
for daemons with 1 sensor (pcap), 2 (one of each kind), 4 and 16 (half pcap
on tap0..tapN, half nflog on consecutive groups). Read once the daemon is up
(a trigger went through and the start command ran): the steady state, with
the packet decoder loaded in the sensor that fired.

The sensors' seccomp sandbox counts in the budget: a sensor that runs without
a filter (``Seccomp: 0`` in /proc/PID/status) is charged what importing the
binding and making a filter costs a sensor-like ``python -S`` process
(``seccomp_binding``, measured here in the same run).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from typing import Any

from bench.lab import FILTER, GROUP, Lab, memory, running
from bench.settings import Settings

# A sensor's imports (ctypes, socket, select, json), then the binding's.
BINDING_PROBE = """
import sys,time
sys.path.append(sys.argv[1])
import ctypes,socket,select,json
def pss():
    with open('/proc/self/smaps_rollup') as f:
        return next(int(x.split()[1]) for x in f if x.startswith('Pss:'))
before=pss();t=time.perf_counter()
import pyseccomp
pyseccomp.SyscallFilter(pyseccomp.ALLOW)
print((pss()-before)/1024,(time.perf_counter()-t)*1000)
"""


def seccomp_binding(rounds: int = 3) -> dict[str, Any] | None:
    """MiB of PSS and ms that ``import pyseccomp`` and one filter object add to
    a process that already holds a sensor's imports (median of ``rounds``)."""
    spec = importlib.util.find_spec("pyseccomp")
    if spec is None or spec.origin is None:
        return None
    folder = os.path.dirname(spec.origin)
    runs = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-S", "-c", BINDING_PROBE, folder],
                             capture_output=True, text=True, check=True).stdout.split()
        runs.append((float(out[0]), float(out[1])))
    runs.sort()
    mib, ms = runs[len(runs) // 2][0], sorted(r[1] for r in runs)[len(runs) // 2]
    return {"module": "pyseccomp", "pss_mib": mib, "import_ms": ms}


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
    binding = seccomp_binding()
    trees = []
    for pcap, nflog in cfg.memory_trees:
        tree = _tree(lab, pcap, nflog, cfg)
        tree["tree_pss_sandboxed"] = tree["tree_pss"] + (
            tree["sensors_without_seccomp"] * binding["pss_mib"] if binding else 0.0)
        trees.append(tree)
        cfg.progress(f"memory {pcap}+{nflog} sensors: tree {tree['tree_pss']:.1f} MiB PSS, "
                     f"sensor ≤ {tree['sensor_rss_max']:.1f} MiB RSS")
    return {"unit": "MiB", "trees": trees, "seccomp_binding": binding}
