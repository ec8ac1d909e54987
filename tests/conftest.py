from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.netlab import Daemon, Lab, LabSetup, Netns, need_root
from tests.support.nft_rules import log_rules
from tests.support.timing import BEAT

# Speed is measured in bench/, not asserted here: hypothesis' per-example
# deadline (200 ms) would fail a parser test on a busy shared machine.
settings.register_profile("tuninetd", deadline=None)
settings.load_profile("tuninetd")


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
def lab_setup() -> LabSetup:
    """The veth pair and nothing more; a test module overrides this fixture
    for its daemons' options, tap0's addresses or NFLOG rules."""
    return LabSetup()


@pytest.fixture
def lab(veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon],
        lab_setup: LabSetup) -> Iterator[Lab]:
    """The veth namespace, a folder, and daemons started there on the tests'
    beat, set up as ``lab_setup`` says."""
    if lab_setup.tap is not None:
        veth.address_tap(lab_setup.tap)
    lab = Lab(veth, tmp_path, start_daemon, BEAT, args=lab_setup.args)
    if lab_setup.log_rules:
        log_rules(veth, *lab_setup.log_rules)
    yield lab
    lab.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    running: list[Daemon] = []

    def start(ns: Netns, *args: str, cgroup2: bool = True, plain: bool = False,
              enter: tuple[str, ...] = (), wrap: tuple[str, ...] = (),
              can_mount: bool = False) -> Daemon:
        d = Daemon(ns, list(args), tmp_path / f"daemon{len(running)}.log", cgroup2,
                   plain, enter, wrap, can_mount)
        running.append(d)
        return d

    yield start
    for d in running:
        d.stop()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A directory anyone may traverse (pytest's tmp_path is root's alone), so
    that what stops an unprivileged caller is the socket's own mode."""
    folder = Path(tempfile.mkdtemp(prefix="tnd-ctl-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
