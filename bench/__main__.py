"""``python3 -m bench [--quick] [--json PATH] [--only SECTION ...]``

Runs the daemon on real traffic in a network namespace it creates, measures
cost per packet (against tcpdump in the same run), start latency, stop
precision, memory, restart time and the hold's first connection, prints a table with each target
marked pass or MISS, and writes every figure as JSON. Needs root,
iproute2, nftables and tcpdump (strace for one restart figure, iptables-nft
for the hold).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import cost, hold, idle, memory, restart, timing
from bench.lab import Lab
from bench.report import as_json, table, targets
from bench.settings import Settings

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
Section = Callable[[Lab, Settings], dict[str, Any]]
SECTIONS: dict[str, Section] = {
    "idle": idle.measure,
    "cost": cost.measure,
    "start_latency": timing.start_latency,
    "stop": timing.stop_precision,
    "memory": memory.measure,
    "restart": restart.measure,
    "hold": hold.measure,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m bench",
        description="Benchmark tuninetd on real traffic in a network namespace.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer packets and cycles, same code paths (under a minute)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH",
                        help=f"where the figures go (default {DEFAULT_JSON})")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, capture sockets)", file=sys.stderr)
        return 1
    missing = [tool for tool in ("ip", "nft", "tcpdump") if shutil.which(tool) is None]
    if missing:
        print(f"bench: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    cfg = Settings.fast() if args.quick else Settings.full()
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "quick": cfg.quick,
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "beat": cfg.beat,
            "generator": "bench.gen: AF_PACKET + PACKET_QDISC_BYPASS + sendmmsg (ctypes)",
        }
    }
    lab = Lab()
    try:
        for name, section in SECTIONS.items():
            if args.only and name not in args.only:
                continue
            cfg.progress(f"{name} ...")
            results[name] = section(lab, cfg)
    finally:
        lab.close()
    checked = targets(results)
    results["targets"] = as_json(checked)
    results["meta"]["seconds"] = round(cfg.elapsed(), 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results, checked))
    print(f"\n{sum(t.ok for t in checked)} of {len(checked)} targets met; "
          f"figures in {args.json}; {cfg.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
