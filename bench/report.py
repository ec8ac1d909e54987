"""The targets checked against the figures, and the printed table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.cost import KEEP_CONSUMER, RATES


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    unit: str
    ok: bool

    @property
    def mark(self) -> str:
        return "pass" if self.ok else "MISS"


def _at_most(name: str, value: float | None, limit: float, unit: str) -> Target:
    return Target(name, value, limit, unit, value is not None and value <= limit)


def _window(results: dict[str, Any], consumer: str, sensor: str, rate: int) -> dict[str, Any]:
    return next(w for w in results["cost"]["windows"]
                if (w["consumer"], w["sensor"], w["rate"]) == (consumer, sensor, rate))


def _stop_runs(stop: dict[str, Any]) -> list[dict[str, Any]]:
    """The judged configuration first, then the others (e.g. ttl = beat)."""
    return [stop, *(v for v in stop.values() if isinstance(v, dict) and "pcap" in v)]


def targets(results: dict[str, Any]) -> list[Target]:
    out: list[Target] = []
    idle = results.get("idle")
    if idle:
        for state, what in (("armed", "armed (down)"), ("up_quiet", "up and quiet")):
            out.append(_at_most(f"idle tree CPU, {what}, ratio to the floor",
                                idle[state]["ratio"], 3.0, "x"))
    cost = results.get("cost")
    if cost:
        for sensor, limit in (("pcap", 0.005), ("nflog", 0.025)):
            ours = _window(results, "tuninetd", sensor, 0)
            out.append(_at_most(f"cost {sensor} at max rate (CPU-s per million packets)",
                                ours["per_million"], limit, "CPU-s/M"))
            out.append(_at_most(f"cost {sensor} at max rate relative to tcpdump, net of idle",
                                cost["ratio_net_to_tcpdump"][sensor]["max"] * 100, 3.0, "%"))
            keep = _window(results, KEEP_CONSUMER, sensor, 0)
            out.append(_at_most(f"cost {sensor} at max rate, keep-alive source of its own "
                                "and a start threshold (CPU-s per million packets)",
                                keep["per_million"], limit, "CPU-s/M"))
    start = results.get("start_latency")
    if start:
        alone = start["command_alone"]
        for sensor in ("pcap", "nflog"):
            out.append(_at_most(f"start overhead {sensor} p50 (minus the command alone)",
                                start[sensor]["p50"] - alone["p50"], 1.0, "ms"))
            out.append(_at_most(f"start overhead {sensor} p99 (minus the command alone)",
                                start[sensor]["p99"] - alone["p99"], 2.0, "ms"))
    stop = results.get("stop")
    if stop:
        for run in _stop_runs(stop):
            beat_ms = run["beat"] * 1000
            where = f"ttl {run['ttl']} s, beat {run['beat']:g} s"
            for sensor in ("pcap", "nflog"):
                early = run[sensor]["min"]
                out.append(Target(f"stop {sensor} never early, {where} (min late)", early,
                                  0.0, "ms", early >= 0))
                out.append(_at_most(f"stop {sensor} at most one beat late, {where} (max late)",
                                    run[sensor]["max"], beat_ms, "ms"))
    memory = results.get("memory")
    if memory:
        trees = memory["trees"]
        out.append(_at_most("memory: largest sensor RSS (any tree)",
                            max(t["sensor_rss_max"] for t in trees), 15.0, "MiB"))
        out.append(_at_most("memory: executor RSS (largest)",
                            max(t["executor_rss"] for t in trees), 15.0, "MiB"))
        one = next((t for t in trees if (t["pcap"], t["nflog"]) == (1, 0)), None)
        # The sandbox's cost is part of the budget: a tree measured with a
        # sensor running unconfined does not pass, whatever its size.
        pss = one["tree_pss"] if one else None
        confined = one is not None and one["sensors_without_seccomp"] == 0
        out.append(Target("memory: tree PSS, one pcap sensor, seccomp sandbox included", pss,
                          28.0, "MiB", confined and pss is not None and pss <= 28.0))
        pair = next((t for t in trees if (t["pcap"], t["nflog"]) == (1, 1)), None)
        out.append(_at_most("memory: tree PSS, one pcap + one nflog sensor",
                            pair["tree_pss"] if pair else None, 60.0, "MiB"))
    hold = results.get("hold")
    if hold:
        held = hold["with_hold"]
        out.append(_at_most("hold: first connection, first byte after start ended, p50",
                            held["after_start_ms"]["p50"] if "after_start_ms" in held
                            else None, 20.0, "ms"))
        out.append(_at_most("hold: first connections lost (refused or reset)",
                            held["lost"], 0.0, ""))
        out.append(_at_most("hold: supervisor CPU per new connection while up",
                            hold["while_up"]["per_connection_us"], 5.0, "us"))
    restart = results.get("restart")
    if restart:
        for sensor in ("pcap", "nflog"):
            for key, what in (("hello", "kill -> hello of the replacement"),
                              ("first_trigger", "kill -> first packet, armed (trigger)"),
                              ("first_count", "kill -> first count reported, up")):
                figures = restart[sensor][key]
                out.append(_at_most(f"restart {sensor}: {what} (max)",
                                    figures["max"] if figures else None, 1000.0, "ms"))
    return out


# -- the table -------------------------------------------------------------------


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return ["  " + fmt.format(*header), *("  " + fmt.format(*r) for r in rows)]


def _role_median(windows: list[dict[str, Any]], name: str) -> float:
    """Median over the windows of the ms/s of the processes whose role starts with ``name``."""
    values = sorted(float(sum(v for k, v in w["by_role_ms_per_s"].items() if k.startswith(name)))
                    for w in windows)
    return values[len(values) // 2]


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _cost_row(label: str, rate: int, ours: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """One row of the cost table: our window against tcpdump's at that rate."""

    def share(part: float, whole: float) -> str:
        return f"{part / whole * 100:.2f}%" if whole > 0 else "n/a"

    return [label, f"{rate:,}" if rate else "max", f"{ours['pps']:,.0f} / {ref['pps']:,.0f}",
            f"{ours['packets']:,}", _num(ours["per_million"], 4),
            _num(ours["per_million_net"], 4), _num(ref["per_million"], 3),
            share(ours["per_million"], ref["per_million"]),
            share(ours["per_million_net"], ref["per_million_net"]),
            f"{ours['idle_cpu_per_s'] * 1000:.2f}"]


def table(results: dict[str, Any], checked: list[Target]) -> str:
    lines: list[str] = []
    meta = results["meta"]
    lines.append(f"tuninetd benchmark ({'quick' if meta['quick'] else 'full'} run) "
                 f"on {meta['cpus']} CPUs, kernel {meta['kernel']}, Python {meta['python']}")
    idle = results.get("idle")
    if idle:
        lines.append("")
        lines.append("0. Idle: CPU of the whole tree (one pcap sensor) with no traffic, "
                     "against the floor (ms per second)")
        lines.append(f"   floor: python3 -S waking once per beat ({idle['beat'] * 1000:.0f} ms) "
                     "and sending one beat-sized record")
        names = {"armed": "armed (down)", "up_quiet": "up and quiet"}
        lines += _grid(["state", "windows", "tree", "floor", "ratio", "ratio range",
                        "supervisor", "executor", "sensor"], [
            [names[state], str(len(idle[state]["windows"])),
             _num(idle[state]["tree_ms_per_s"], 3), _num(idle[state]["floor_ms_per_s"], 3),
             f"{idle[state]['ratio']:.2f}x",
             f"{idle[state]['ratio_min']:.2f} .. {idle[state]['ratio_max']:.2f}",
             *(_num(_role_median(idle[state]["windows"], r), 3)
               for r in ("supervisor", "executor", "sensor"))]
            for state in names
        ])
    cost = results.get("cost")
    if cost:
        lines.append("")
        lines.append("1. Cost per packet while up: CPU seconds of the whole process tree "
                     "per million matching packets")
        rows = [_cost_row(sensor, rate, _window(results, "tuninetd", sensor, rate),
                          _window(results, "tcpdump", sensor, rate))
                for sensor in ("pcap", "nflog") for rate in RATES]
        rows += [_cost_row(f"{sensor} {option}", 0, _window(results, KEEP_CONSUMER, sensor, 0),
                           _window(results, "tcpdump", sensor, 0))
                 for sensor, option in (("pcap", "--keep-filter"), ("nflog", "--keep-group"))]
        lines += _grid(["sensor", "rate", "reached pps (ours / tcpdump)", "packets",
                        "tuninetd", "net of idle", "tcpdump", "ratio", "ratio net",
                        "idle CPU-ms/s"], rows)
    start = results.get("start_latency")
    if start:
        lines.append("")
        lines.append("2. Start latency: trigger frame sent -> first line of the start "
                     "command (ms)")
        names = {"pcap": "pcap", "nflog": "nflog",
                 "command_alone": "the command alone (posix_spawn, no daemon)"}
        lines += _grid(["sensor", "cycles", "min", "p50", "p90", "p99", "max"], [
            [names[s], str(start[s]["n"]), *(_num(start[s][k], 2)
                                             for k in ("min", "p50", "p90", "p99", "max"))]
            for s in names
        ])
        alone = start["command_alone"]
        lines.append("  overhead (the daemon's share, minus the command alone): " + ", ".join(
            f"{s} p50 {start[s]['p50'] - alone['p50']:.2f} / p99 "
            f"{start[s]['p99'] - alone['p99']:.2f}" for s in ("pcap", "nflog")))
    stop = results.get("stop")
    if stop:
        lines.append("")
        lines.append("3. Stop precision: stop command - last matching packet - ttl (ms; "
                     "negative = early)")
        lines += _grid(["sensor", "ttl", "beat", "cycles", "min", "p50", "max",
                        "fired again"], [
            [s, f"{run['ttl']} s", f"{run['beat'] * 1000:.0f} ms", str(run[s]["n"]),
             *(_num(run[s][k], 1) for k in ("min", "p50", "max")), str(run[s]["fired_again"])]
            for run in _stop_runs(stop) for s in ("pcap", "nflog")
        ])
    memory = results.get("memory")
    if memory:
        lines.append("")
        lines.append("4. Memory (MiB), the daemon up: RSS / PSS")
        rows = [[
            f"{t['sensors']} ({t['pcap']} pcap + {t['nflog']} nflog)",
            f"{t['supervisor_rss']:.1f} / {t['supervisor_pss']:.1f}",
            f"{t['executor_rss']:.1f} / {t['executor_pss']:.1f}",
            f"{t['sensor_rss_max']:.1f} / {t['sensor_pss_max']:.1f}",
            f"{t['tree_rss']:.1f} / {t['tree_pss']:.1f}",
            f"{t['sensors'] - t['sensors_without_seccomp']} of {t['sensors']}",
        ] for t in memory["trees"]]
        lines += _grid(["sensors", "supervisor", "executor", "largest sensor", "tree",
                        "sensors confined"], rows)
    restart = results.get("restart")
    if restart:
        lines.append("")
        lines.append(f"5. Restart after SIGKILL of a sensor (ms, p50 / max); beat "
                     f"{restart['beat'] * 1000:.0f} ms, first respawn after "
                     f"{restart['backoff_first_s'] * 1000:.0f} ms")

        def cell(figures: dict[str, Any] | None) -> str:
            return "n/a" if not figures else f"{figures['p50']:.0f} / {figures['max']:.0f}"

        lines += _grid(["sensor", "rounds", "-> hello", "-> first count (up)",
                        "-> first trigger (armed)"], [
            [s, str((restart[s]["hello"] or {}).get("n", 0)), cell(restart[s]["hello"]),
             cell(restart[s]["first_count"]), cell(restart[s]["first_trigger"])]
            for s in ("pcap", "nflog")
        ])
    hold = results.get("hold")
    if hold:
        lines.append("")
        lines.append("6. Hold: the first connection to a service start launches, first byte "
                     "minus the start command's own duration (ms)")
        rows = []
        for key, name in (("with_hold", "with --hold"), ("without_hold", "without"),
                          ("without_hold_dropped", "without, SYN dropped while down")):
            run = hold[key]
            after = run.get("after_start_ms")
            rows.append([name, str(run["cycles"]), str(run["lost"]),
                         *(_num(after[k], 1) if after else "n/a"
                           for k in ("min", "p50", "p99", "max"))])
        lines += _grid(["", "cycles", "lost", "min", "p50", "p99", "max"], rows)
        up = hold["while_up"]
        lines.append(f"  while up: supervisor {up['busy_ms_per_s']:.3f} ms/s during "
                     f"{up['connections']} new connections in {up['seconds']:.1f} s, "
                     f"{up['idle_ms_per_s']:.3f} ms/s idle: "
                     f"{up['per_connection_us']:.2f} us per connection")
    lines.append("")
    lines.append("Targets")
    for t in checked:
        value = _num(t.value, 4 if t.unit == "CPU-s/M" else 2)
        sign = ">=" if t.name.endswith("(min late)") else "<="
        lines.append(f"  [{t.mark}] {t.name}: {value} {t.unit} ({sign} {t.limit:g})")
    return "\n".join(lines)


def as_json(checked: list[Target]) -> list[dict[str, Any]]:
    return [{**asdict(t), "pass": t.ok} for t in checked]
