"""The original's command lines, as the README shows them, are accepted as
they are: each passes ``--check-config`` (interfaces exist, filters compile
for the link type, commands are executable) in a namespace that has the
interfaces they name, with ``/path/to/...`` standing for real files."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netlab import Netns
from tests.support.repo import REPO

INTRO = "The original's command lines work unchanged:"


def readme_command_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(re.escape(INTRO) + r"\s*```sh\n(.*?)```", text, re.S)
    assert block, f"README.md has no code block after {INTRO!r}"
    return [line for line in block.group(1).splitlines() if line.startswith("tuninetd ")]


def test_the_readme_shows_the_original_command_lines() -> None:
    # As the original's README wrote them (sections 1.1 to 1.3 and 4).
    assert readme_command_lines() == [
        'tuninetd -i tun0 -f "! host 1.2.3.4" -c /path/to/launcher -t 3600',
        "tuninetd -n 1 -c /path/to/launcher",
        'tuninetd -i enp3s0 -f "arp and host 4.3.2.1" -n 1 -c /path/to/executable/toggletunnel.sh',
        "tuninetd -n 1 -c /path/to/executable/toggletunnel.sh -w /path/to/pcap-savefile",
        "tuninetd -i tap0 -c /path/to/executable/toggleservice.sh -a",
        'tuninetd -i tun0 -f "! host 1.2.3.4" -c /path/to/executable/somebinary -t 3600 -d',
        'tuninetd -i enp3s0 -f "arp and host 4.3.2.1" -n 1 -c /path/to/executable/run.py',
    ]


@pytest.mark.root
@pytest.mark.parametrize("line", readme_command_lines())
def test_original_command_line_passes_check_config(line: str, netns: Netns,
                                                   tmp_path: Path) -> None:
    netns.add_veth("tap0", "peer0")
    netns.add_veth("enp3s0", "peer1")
    fd = netns.tun("tun0")
    argv = shlex.split(line)[1:]
    for i, arg in enumerate(argv):
        if arg.startswith("/path/to/"):
            real = tmp_path / arg.removeprefix("/path/to/")
            real.parent.mkdir(parents=True, exist_ok=True)
            if argv[i - 1] == "-c":
                real.write_text("#!/bin/sh\nexit 0\n")
                real.chmod(0o755)
            argv[i] = str(real)
    try:
        run = subprocess.run(
            [*netns.exec_argv(), sys.executable, "-m", "tuninetd.supervisor.main",
             *argv, "--check-config"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
    finally:
        os.close(fd)
    assert run.returncode == 0, f"{line}\n{run.stdout}{run.stderr}"
