"""What uvicorn's HTTP/1.1 protocol leaves open, closed: slow requests, and connections past the descriptors.

Uvicorn times a connection out only between requests (its keep-alive), so a client that sends half a
request, or none, holds its connection for good. Enough of them take every file descriptor the process
has: then nobody else gets in, and asyncio logs each failed ``accept()``, thousands a second. Here:

- a request (its headers and its body) must arrive whole within ``request_seconds`` of its first byte,
  or of the connection's start, or the connection is closed; so must the client read again within as
  long once it has stopped reading what is sent to it (a stream included), and the rest of a body
  answered early (413) is taken in for ``LINGER_SECONDS`` at most;
- at most ``max_connections`` are open at once (half the descriptors the process may open): one more is
  answered 503 and closed, and the listen backlog is a sixteenth of them, so the descriptors never run out;
- a connection whose client's network is gone without a close (no FIN, no RST: a lid shut, Wi-Fi lost, a
  NAT's state dropped) is closed within about two minutes, where TCP gives up after about 15 on Linux: it
  is probed once silent (TCP keepalive), and dropped once what it was sent stays unacknowledged as long
  (``TCP_USER_TIMEOUT``, Linux). Set on each connection: Linux's take the listening socket's, but macOS's
  do not take its idle time. A gateway call answered on it is then cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

# A request whose whole message is in: nothing more to wait for from the client.
_ARRIVED = frozenset({h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR})
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
BUSY_WARNING_SECONDS = 60.0  # at most one warning this often while connections are refused
MIN_CONNECTIONS = 64
LINGER_SECONDS = 2.0  # how long a body is still taken in, to be dropped, once its request is answered
UVICORN_BACKLOG = 2048  # uvicorn's own, where the descriptors are no bound
KEEPALIVE_IDLE_SECONDS = 60  # silence before the first probe
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 6
# What is sent and stays unacknowledged (a stream's keep-alive) ends the connection after as long as the
# probes of a silent one would: neither cuts the other short.
USER_TIMEOUT_MS = (KEEPALIVE_IDLE_SECONDS + KEEPALIVE_INTERVAL_SECONDS * KEEPALIVE_PROBES) * 1000
# (level, the socket module's name, value): those this system lacks are left out.
_KEEPALIVE = (
    (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
    (socket.IPPROTO_TCP, "TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
    (socket.IPPROTO_TCP, "TCP_KEEPALIVE", KEEPALIVE_IDLE_SECONDS),  # macOS's name for it
    (socket.IPPROTO_TCP, "TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
    (socket.IPPROTO_TCP, "TCP_KEEPCNT", KEEPALIVE_PROBES),
    (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
)


def descriptor_bounds() -> tuple[int | None, int]:
    """How many connections may be open at once, and the listen backlog, for the descriptors the process has.

    Half the descriptors go to connections; the rest stay for the store, the logs, downstream servers and
    a burst: asyncio accepts up to a backlog of connections at a time, before a refused one is closed.
    """
    if sys.platform == "win32":
        return None, UVICORN_BACKLOG
    import resource  # noqa: PLC0415 - POSIX only

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None, UVICORN_BACKLOG
    return max(MIN_CONNECTIONS, soft // 2), min(UVICORN_BACKLOG, max(16, soft // 16))


class GuardedH11Protocol(H11Protocol):
    """Uvicorn's h11 protocol with both bounds; ``guarded_protocol`` sets them."""

    request_seconds: ClassVar[float] = 30.0
    max_connections: ClassVar[int | None] = None
    _arrival: asyncio.TimerHandle | None = None  # running while a request is awaited
    _unread: asyncio.TimerHandle | None = None  # running while the client reads nothing of the answer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse the connection past the bound; otherwise await its first request."""
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            _warn_busy(len(self.connections) - 1)
            transport.write(_BUSY)
            transport.close()
            return
        _keep_alive(transport)
        self._await_request()

    def data_received(self, data: bytes) -> None:
        """Stop waiting once the request is in whole; start when a next one begins."""
        super().data_received(data)
        if self.transport.is_closing() or self.conn.their_state in _ARRIVED:
            self._stop_waiting()
        else:  # a request started, on a connection that had answered one before: timed from here
            self._await_request()

    def on_response_complete(self) -> None:
        """Drop the rest of a body answered early, for a moment; time a next request begun meanwhile."""
        super().on_response_complete()
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if self.conn.our_state is h11.DONE and state is h11.SEND_BODY:
            # Answered before its body came whole (413, 401): what still comes is read only to be dropped,
            # for a moment, so that the client sees the answer rather than a reset.
            self._stop_waiting()
            linger = min(self.request_seconds, LINGER_SECONDS)
            self._arrival = self.loop.call_later(linger, self.transport.close)
        elif state in _ARRIVED:  # a next request, pipelined, came whole
            self._stop_waiting()
        elif state is h11.SEND_BODY or self.conn.trailing_data[0]:
            # A next request begun (pipelined): uvicorn's keep-alive timer no longer runs, only this one does.
            self._await_request()

    def pause_writing(self) -> None:
        """The client has stopped reading for now: it must read again within the bound."""
        super().pause_writing()
        if self._unread is None:
            self._unread = self.loop.call_later(self.request_seconds, self._not_reading)

    def resume_writing(self) -> None:
        """The client reads again."""
        super().resume_writing()
        if self._unread is not None:
            self._unread.cancel()
            self._unread = None

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing more to wait for."""
        self._stop_waiting()
        if self._unread is not None:
            self._unread.cancel()
            self._unread = None
        super().connection_lost(exc)

    def _await_request(self) -> None:
        if self._arrival is None:
            self._arrival = self.loop.call_later(self.request_seconds, self._too_slow)

    def _stop_waiting(self) -> None:
        if self._arrival is not None:
            self._arrival.cancel()
            self._arrival = None

    def _too_slow(self) -> None:
        self._arrival = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the server is the one not reading: the client is not late
            self._await_request()
            return
        logger.info("closed a connection: its request did not arrive whole within %g s", self.request_seconds)
        self.transport.close()

    def _not_reading(self) -> None:
        self._unread = None
        logger.info("closed a connection: its client read nothing for %g s", self.request_seconds)
        self.transport.abort()  # close() would wait for the client to read what is left to send


def _keep_alive(transport: asyncio.Transport) -> None:
    """Have the TCP connection of ``transport`` probed when silent, and dropped once its peer is gone."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for level, name, value in _KEEPALIVE:
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):  # one the system names but refuses: the rest still hold
                sock.setsockopt(level, option, value)


def guarded_protocol(request_seconds: float, max_connections: int | None) -> type[GuardedH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with these bounds."""
    bounds = {"request_seconds": request_seconds, "max_connections": max_connections}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), bounds)


_busy_warned_at = -BUSY_WARNING_SECONDS


def _warn_busy(open_connections: int) -> None:
    global _busy_warned_at  # noqa: PLW0603 - one clock for the process, as its descriptors are
    now = time.monotonic()
    if now - _busy_warned_at >= BUSY_WARNING_SECONDS:
        _busy_warned_at = now
        logger.warning(
            "%d connections are open, as many as allowed (half the process's file descriptors): "
            "new ones are answered 503 until some close",
            open_connections,
        )
