"""The installed package's tests run only where .ci/package installed it."""

from __future__ import annotations

import os
import subprocess

import pytest

TUNINETD = "/usr/bin/tuninetd"


@pytest.fixture(autouse=True)
def installed() -> None:
    owner = subprocess.run(["dpkg", "-S", TUNINETD], capture_output=True, text=True)
    if owner.returncode != 0 or not owner.stdout.startswith("tuninetd:"):
        message = f"{TUNINETD} is not installed by the tuninetd package (run .ci/package)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)


