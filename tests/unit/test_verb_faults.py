"""A verb of the control socket that fails: the daemon's log says so (not
only the client's screen), and ``tuninetd up`` or ``down`` changes nothing
when the command queue refuses its command. The control server is the real
one, on a real unix socket, asked by the real client; the queue's refusal is
the queue's own check (two starts, or two stops, in a row)."""

from __future__ import annotations

import logging
import os
import selectors
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import settings
from tuninetd.common import wire
from tuninetd.supervisor.children import Worker
from tuninetd.supervisor.config.settings import Account
from tuninetd.supervisor.events import Observers
from tuninetd.supervisor.executor_link import ExecutorLink
from tuninetd.supervisor.ops import client
from tuninetd.supervisor.ops.control import ControlServer
from tuninetd.supervisor.sensor_link import SensorLink
from tuninetd.supervisor.service import Service
from tuninetd.supervisor.statefile import StateFile


def test_a_verb_that_raises_is_logged_and_answered(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("the queue is on fire")

    selector = selectors.DefaultSelector()
    path = str(tmp_path / "c.sock")
    server = ControlServer(path, "t", selector, lambda: {}, {"up": broken})
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            client.query(path, cmd="up")
        except client.StatusError as exc:
            answer["error"] = str(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    with caplog.at_level(logging.ERROR, logger="tuninetd"):
        while asker.is_alive():
            for key, events in selector.select(0.05):
                key.data(events)
    asker.join()
    server.close()
    assert "up failed: RuntimeError: the queue is on fire" in answer["error"]
    assert [r.getMessage() for r in caplog.records] == [
        "CORE: up failed: RuntimeError: the queue is on fire over the control socket"]


def service_of(folder: Path) -> Service:
    cfg = settings(command="/bin/true", sensors=(), sensor_user=Account("nobody", 65534, 65534))
    executor = Worker("executor", "m", {}, wire.EXECUTOR_MESSAGES, "executor")
    return Service(cfg, SensorLink(cfg, []), ExecutorLink(cfg, executor, Observers()),
                   Observers(), StateFile(str(folder / "t.state"), cfg))


def test_up_refused_by_the_queue_changes_nothing(tmp_path: Path) -> None:
    service = service_of(tmp_path)
    service.executor.queue.last_event = "start"  # a start the queue still counts as last
    with pytest.raises(ValueError, match="two start commands in a row"):
        service.force_up(100.0)
    assert not service.machine.up
    assert service.trigger_sensor == ""
    assert not os.path.exists(tmp_path / "t.state")


def test_down_refused_by_the_queue_changes_nothing(tmp_path: Path) -> None:
    service = service_of(tmp_path)
    service.machine.trigger(100.0)
    service.executor.queue.last_event = "stop"  # a stop the queue still counts as last
    with pytest.raises(ValueError, match="two stop commands in a row"):
        service.force_down(lambda: None)
    assert service.machine.up
    assert not os.path.exists(tmp_path / "t.state")
