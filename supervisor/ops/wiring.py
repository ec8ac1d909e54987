"""What operators see of the running daemon, wired up: the control socket
(``tuninetd status``, ``up``, ``down``), the systemd notify protocol,
Prometheus metrics. Each is an observer of the arbiter's events and
snapshot; the control socket's verbs are the arbiter's to run."""

from __future__ import annotations

import selectors
from collections.abc import Callable

from tuninetd.common.logs import log
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.events import Observers, Snapshot
from tuninetd.supervisor.instance import Instance
from tuninetd.supervisor.ops.control import ControlServer, Verb
from tuninetd.supervisor.ops.history import History
from tuninetd.supervisor.ops.notify import Notifier, SystemdNotify
from tuninetd.supervisor.ops.pidfile import PidFile
from tuninetd.supervisor.ops.report import StatusReport


def open_observers(cfg: Settings, me: Instance, selector: selectors.BaseSelector,
                   view: Callable[[], Snapshot], observers: Observers,
                   verbs: dict[str, Verb]) -> None:
    """Bind the control socket (and the metrics port): before any worker
    starts, so a second daemon on the same socket stops right here. The
    notify variables are taken out of the environment, so that neither the
    workers nor the commands inherit them."""
    if cfg.pidfile is not None:  # first: written before systemd hears READY=1
        observers.add(PidFile(cfg.pidfile))
    history = History(cfg.command_timeout)
    observers.add(history)
    observers.add(SystemdNotify(Notifier.from_environment(), view, cfg.beat))
    report = StatusReport(me.name, view, history, cfg)
    observers.add(ControlServer(me.control, me.name, selector, report.record, verbs))
    if cfg.metrics is not None:
        from tuninetd.supervisor.ops.metrics import Metrics

        host, port = cfg.metrics
        metrics = Metrics(host, port, selector, view, cfg)
        observers.add(metrics)
        bound = metrics.address
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        log.info("Metrics on http://%s:%d/metrics", shown, bound[1])
        if not metrics.loopback():
            log.warning("Warning! Metrics listen on %s, not on loopback: anyone who can reach "
                        "port %d reads them (no authentication); firewall it, or give "
                        "--metrics 127.0.0.1:%d", shown, bound[1], bound[1])
