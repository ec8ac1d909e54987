"""tuntapd run by a test: in the foreground in a namespace (its output in a
file), once to completion, or the installed console script's path."""

from __future__ import annotations

import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.netlab import Netns, wait_for

TUNTAPD = [sys.executable, "-m", "tuninetd.tuntapd"]


class Tuntapd:
    """tuntapd in the foreground in a namespace, its stderr in a file."""

    def __init__(self, ns: Netns, log: Path, *args: str) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(ns.exec_argv(*TUNTAPD, *args), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str) -> str:
        def probe() -> str | None:
            found = next((line for line in self.text().splitlines() if needle in line), None)
            if found is None and self.proc.poll() is not None:
                raise AssertionError(f"tuntapd exited ({self.proc.returncode}):\n{self.text()}")
            return found

        return wait_for(f"tuntapd log line {needle!r}", probe)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def run_tuntapd(ns: Netns, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ns.exec_argv(*TUNTAPD, *args), capture_output=True, text=True,
                          timeout=10)


def console_script() -> str:
    path = Path(sysconfig.get_path("scripts")) / "tuntapd"
    if not path.exists():
        pytest.fail(f"no console script at {path}: run pip install -e .")
    return str(path)
