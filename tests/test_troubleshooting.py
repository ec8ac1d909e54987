"""docs/troubleshooting.md quotes the messages as the daemon writes them:
each quoted line here comes from the real program (or, for status, from
its renderer), and the page must hold it word for word."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netlab import need_root
from tests.support.repo import REPO
from tests.support.syslogd import private_dev
from tuninetd.supervisor.ops import client

PAGE = REPO / "docs" / "troubleshooting.md"
TRUE = "/bin/true"
DAEMON = [sys.executable, "-m", "tuninetd.supervisor.main"]


def quoted() -> set[str]:
    """The lines of the page's ```text blocks."""
    lines: set[str] = set()
    block = False
    for line in PAGE.read_text().splitlines():
        if line.startswith("```"):
            block = line == "```text"
        elif block:
            lines.add(line)
    return lines


def said(*args: str, prefix: tuple[str, ...] = ()) -> str:
    r = subprocess.run([*prefix, *DAEMON, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode in (1, 2) and r.stdout == "", r
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("args", [
    ["-i", "lo", "-c", f"{TRUE} --verbose"],
    ["-i", "lo", "-c", TRUE, "-f", "tcp dport 8080"],
    ["-i", "lo", "-c", TRUE, "-t", "0"],
    ["-i", "lo", "-c", TRUE, "-t", "10m"],
    ["-i", "tun9", "-c", TRUE],
], ids=["command-with-arguments", "filter", "ttl-0", "ttl-10m", "no-interface"])
def test_refusals_are_quoted_as_written(args: list[str]) -> None:
    line = said(*args)
    assert line in quoted(), line


def test_a_short_key_in_the_config_file_is_quoted_as_written(tmp_path: Path) -> None:
    config = tmp_path / "tuninetd.toml"
    config.write_text('i = ["lo"]\n')
    line = said("--config", str(config), "--check-config")
    assert line.replace(str(config), "/etc/tuninetd/tuninetd.toml") in quoted(), line


def test_daemon_mode_without_syslog_is_quoted_as_written(tmp_path: Path) -> None:
    need_root()  # -d is checked after the privileges
    line = said("-n", "5", "-c", TRUE, "-d", prefix=tuple(private_dev(tmp_path)))
    assert line in quoted(), line


def test_status_without_a_packet_is_quoted_as_written() -> None:
    lines = client.render({"name": "eth0", "state": "up", "idle_seconds": None}).splitlines()
    assert next(line for line in lines if "idle:" in line) in quoted()
