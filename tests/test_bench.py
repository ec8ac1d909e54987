"""The benchmark keeps working: ``python3 -m bench --quick`` runs every
section on real traffic and writes every figure (the figures themselves are
not judged here: they are noisy on a shared machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import need_root

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("idle", "cost", "start_latency", "stop", "memory", "restart")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.root
def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    need_root()
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        # Under a minute on a quiet machine (the documented bound; the run prints
        # its own duration); the limit here only catches a hang, since a
        # shared 2-core machine can be much slower.
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    assert "\nTargets\n" in run.stdout
    results = json.loads(out.read_text())
    assert results["meta"]["quick"] is True
    for section in SECTIONS:
        assert results.get(section), f"no {section} section"

    # The floor runs beside the daemon in every idle window, in both states.
    for state in ("armed", "up_quiet"):
        idle = results["idle"][state]
        assert idle["windows"], state
        for window in idle["windows"]:
            assert window["floor_ms_per_s"] > 0 and window["tree_ms_per_s"] > 0, window
            assert _number(window["ratio"]), window

    windows = results["cost"]["windows"]
    assert {(w["consumer"], w["sensor"]) for w in windows} == {
        (c, s) for c in ("tuninetd", "tcpdump") for s in ("pcap", "nflog")
    }
    for w in windows:
        for key in ("pps", "packets", "cpu_s", "per_million", "idle_cpu_per_s"):
            assert _number(w[key]), (key, w)
        assert w["packets"] > 0, w

    for section, kinds in (("start_latency", ("pcap", "nflog", "command_alone")),
                           ("stop", ("pcap", "nflog"))):
        for kind in kinds:
            figures = results[section][kind]
            assert figures["n"] > 0
            for key in ("min", "p50", "p90", "p99", "max"):
                assert _number(figures[key]), (section, kind, key)

    trees = results["memory"]["trees"]
    assert [t["sensors"] for t in trees] == [1, 2, 4, 16]
    for tree in trees:
        assert len(tree["processes"]) == tree["sensors"] + 2
        for key in ("tree_rss", "tree_pss", "sensor_rss_max",
                    "executor_rss"):
            assert _number(tree[key]) and tree[key] > 0, (key, tree)
        assert tree["sensors_without_seccomp"] == 0, tree["processes"]

    restart = results["restart"]
    for kind in ("pcap", "nflog"):
        keys = ["hello", "first_trigger"] + (["first_count"] if restart["strace"] else [])
        for key in keys:
            assert _number(restart[kind][key]["max"]), (kind, key)

    assert results["targets"], "no targets checked"
    for target in results["targets"]:
        assert isinstance(target["pass"], bool)
