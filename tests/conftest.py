from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.netlab import Daemon, Netns, need_root


@pytest.fixture
def netns() -> Iterator[Netns]:
    need_root()
    ns = Netns()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def veth(netns: Netns) -> Netns:
    netns.add_veth()
    return netns


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    running: list[Daemon] = []

    def start(ns: Netns, *args: str, cgroup2: bool = True, plain: bool = False,
              enter: tuple[str, ...] = ()) -> Daemon:
        d = Daemon(ns, list(args), tmp_path / f"daemon{len(running)}.log", cgroup2,
                   plain, enter)
        running.append(d)
        return d

    yield start
    for d in running:
        d.stop()
