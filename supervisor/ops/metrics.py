"""``--metrics HOST:PORT``: Prometheus metrics, served from the supervisor's loop.

prometheus-client is optional (the ``metrics`` extra; Debian's
python3-prometheus-client), 0.16 or later, imported only when --metrics is
given. Its own HTTP server would be a thread;
instead the text format is produced with ``generate_latest`` and served by the
same non-blocking one-request server as the control socket, so the supervisor
stays single-threaded and the metric objects are only ever touched from it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import selectors
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from tuninetd.supervisor import wording
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.events import (
    CommandEnded,
    Counted,
    Event,
    Observer,
    Released,
    Snapshot,
    Triggered,
    WorkerRestarted,
)
from tuninetd.supervisor.ops.serve import Server

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

STATES = ("starting", "down", "up", "stopping")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MAX_REQUEST = 8192
# A scraper sends its request at once; a connection lives this long at most.
CLIENT_TIMEOUT = 2.0
MAX_CLIENTS = 32


def listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise StartupError(f"--metrics {host}:{port}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise StartupError(f"--metrics {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class Metrics(Observer):
    def __init__(self, host: str, port: int, selector: selectors.BaseSelector,
                 view: Callable[[], Snapshot], cfg: Settings) -> None:
        import prometheus_client as prom

        self.registry: CollectorRegistry = prom.CollectorRegistry(auto_describe=True)
        reg = self.registry
        prom.ProcessCollector(registry=reg)
        self.state = prom.Gauge("tuninetd_state", "1 for the state the daemon is in",
                                ["state"], registry=reg)
        for state in STATES:
            self.state.labels(state).set(1 if state == "starting" else 0)
        self.current_state = "starting"
        self.starts = prom.Counter("tuninetd_starts", "start commands run", registry=reg)
        self.stops = prom.Counter("tuninetd_stops", "stop commands run", registry=reg)
        self.failures = prom.Counter(
            "tuninetd_command_failures", "commands that did not exit with status 0",
            ["event"], registry=reg)
        self.packets = prom.Counter(
            "tuninetd_matching_packets", "matching packets counted, per sensor "
            "(triggers plus the counts of every beat)", ["sensor"], registry=reg)
        self.idle = prom.Gauge(
            "tuninetd_idle_seconds", "seconds since the last matching packet (NaN: none yet)",
            registry=reg)
        self.idle.set_function(lambda: _nan(view().idle))
        self.view = view
        self.duration = prom.Histogram(
            "tuninetd_command_duration_seconds", "how long start and stop commands ran",
            ["event"], buckets=DURATION_BUCKETS, registry=reg)
        self.held = prom.Gauge(
            "tuninetd_hold_held_packets", "packets waiting in the --hold queue now",
            registry=reg)
        self.held.set_function(lambda: _held(view()))
        self.released = prom.Counter(
            "tuninetd_hold_released_packets", "held packets let go, by verdict",
            ["verdict"], registry=reg)
        self.overflowed = prom.Counter(
            "tuninetd_hold_overflowed_packets",
            "packets that passed unheld for want of buffer room", registry=reg)
        self.waited = prom.Histogram(
            "tuninetd_hold_seconds", "how long held packets waited for their release",
            buckets=DURATION_BUCKETS, registry=reg)
        self.restarts = prom.Counter(
            "tuninetd_worker_restarts", "workers restarted, by role and reason",
            ["role", "reason"], registry=reg)
        prom.Gauge("tuninetd_start_packets", "matching packets it takes to start "
                   "(--start-packets)", registry=reg).set(cfg.start_packets)
        prom.Gauge("tuninetd_start_window_seconds", "seconds from the first matching packet "
                   "in which they must come (--start-window)", registry=reg).set(cfg.start_span)
        keep = prom.Gauge("tuninetd_keep_alive", "1 per sensor: what keeps the state up "
                          "through it", ["sensor", "source"], registry=reg)
        for spec in cfg.sensors:
            keep.labels(spec.label, wording.keep_alive(spec, cfg)).set(1)
        self._generate = prom.generate_latest
        self.content_type = prom.CONTENT_TYPE_LATEST
        self.sock = listen(host, port)
        self.address = self.sock.getsockname()
        self.server = Server(self.sock, selector, self._answer, max_request=MAX_REQUEST,
                             too_long=_response("431 Request Header Fields Too Large", b""),
                             timeout=CLIENT_TIMEOUT, max_clients=MAX_CLIENTS)

    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address[0]).is_loopback

    def observe(self, event: Event) -> None:
        if isinstance(event, Triggered):
            self.packets.labels(event.sensor).inc()
        elif isinstance(event, Counted):
            self.packets.labels(event.sensor).inc(event.packets)
        elif isinstance(event, CommandEnded):
            (self.starts if event.event == "start" else self.stops).inc()
            if not event.outcome.ok:
                self.failures.labels(event.event).inc()
            if event.outcome.duration is not None:
                self.duration.labels(event.event).observe(event.outcome.duration)
        elif isinstance(event, Released):
            self.released.labels(event.verdict).inc(event.packets)
            self.overflowed.inc(event.overflowed)
            self.waited.observe(event.waited)
        elif isinstance(event, WorkerRestarted):
            self.restarts.labels(event.role, event.reason).inc()

    def tick(self, now: float) -> None:
        self.server.expire(now)
        self.set_state(self.view().state)

    def set_state(self, state: str) -> None:
        if state != self.current_state:
            self.state.labels(self.current_state).set(0)
            self.state.labels(state).set(1)
            self.current_state = state

    def _answer(self, request: bytes) -> bytes | None:
        if b"\r\n\r\n" not in request and b"\n\n" not in request:
            return None
        first = request.split(b"\n", 1)[0].decode("latin-1").split()
        if len(first) < 2:
            return _response("400 Bad Request", b"bad request\n")
        method, target = first[0], first[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"GET /metrics\n")
        if target not in ("/metrics", "/"):
            return _response("404 Not Found", b"try /metrics\n")
        body = self._generate(WithoutCreated(self.registry))
        reply = _response("200 OK", body, self.content_type)
        return reply[: len(reply) - len(body)] if method == "HEAD" else reply

    def deadline(self) -> float | None:
        return self.server.deadline()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.close()


class WithoutCreated:
    """The registry's metrics without their ``*_created`` samples, a start
    time per counter and histogram that only adds noise. prometheus-client
    0.17 can switch them off (disable_created_metrics); Debian bookworm's 0.16
    cannot, so they are left out here, the same way on every version."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def _held(snap: Snapshot) -> float:
    return math.nan if snap.hold is None else snap.hold.held


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
