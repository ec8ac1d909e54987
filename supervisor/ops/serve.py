"""One request, one reply, then close: the control socket and the metrics
endpoint, served from the supervisor's own loop.

Nothing here blocks. Each listening socket and each connection is one more fd
in the arbiter's selector (the key's data is the callable to run when it is
ready). A request is bounded in size, a connection in time and in number: a
client that sends too much, too slowly, or never reads its answer is dropped
at its deadline without ever stalling the loop. When every place is taken, a
new connection takes the place of the oldest one: clients that hold
connections open (idle, or trickling a request) cannot lock out one that
asks at once and is answered within the same turn of the loop.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable

# request bytes (complete, or None: not yet) -> the reply; None: keep reading
Complete = Callable[[bytes], bytes | None]
# the connection's accepted socket -> a reply that ends it at once (refusal), or None
Admit = Callable[[socket.socket], bytes | None]


class Server:
    def __init__(
        self,
        sock: socket.socket,
        selector: selectors.BaseSelector,
        answer: Complete,
        *,
        max_request: int,
        too_long: bytes,
        admit: Admit | None = None,
        timeout: float = 5.0,
        max_clients: int = 16,
    ) -> None:
        self.sock = sock
        self.selector = selector
        self.answer = answer
        self.max_request = max_request
        self.too_long = too_long
        self.admit = admit
        self.timeout = timeout
        self.max_clients = max_clients
        self.clients: set[Connection] = set()
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, self._accept)

    def _accept(self, _events: int) -> None:
        for _ in range(self.max_clients):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: the client waits in the backlog, or gives up
            conn.setblocking(False)
            if len(self.clients) >= self.max_clients:
                min(self.clients, key=lambda c: c.deadline).close()
            client = Connection(self, conn, time.monotonic() + self.timeout)
            self.clients.add(client)
            # A refused client gets its answer once it has asked (answering
            # at once would race its request: EPIPE instead of the reason).
            client.refusal = self.admit(conn) if self.admit is not None else None
            self.selector.register(conn, selectors.EVENT_READ, client)

    def deadline(self) -> float | None:
        return min((c.deadline for c in self.clients), default=None)

    def expire(self, now: float) -> None:
        for client in [c for c in self.clients if c.deadline <= now]:
            client.close()

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()


class Connection:
    def __init__(self, server: Server, sock: socket.socket, deadline: float) -> None:
        self.server = server
        self.sock: socket.socket | None = sock
        self.deadline = deadline
        self.request = b""
        self.pending = b""
        self.refusal: bytes | None = None

    def __call__(self, events: int) -> None:
        if self.sock is None:
            return
        if self.pending:
            self._write()
        else:
            self._read()

    def _read(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(self.server.max_request + 1 - len(self.request))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()  # the client gave up (or only probed whether we are here)
            return
        self.request += data
        reply = self.refusal if self.refusal is not None else self.server.answer(self.request)
        if reply is None and len(self.request) > self.server.max_request:
            reply = self.server.too_long
        if reply is not None:
            self.reply(reply)

    def reply(self, data: bytes) -> None:
        self.pending = data
        self._write()

    def _write(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        self.pending = self.pending[sent:]
        if not self.pending:
            self.close()
            return
        key_events = selectors.EVENT_WRITE
        try:
            self.server.selector.modify(self.sock, key_events, self)
        except KeyError:
            self.server.selector.register(self.sock, key_events, self)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self.server.clients.discard(self)
        if sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.server.selector.unregister(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
