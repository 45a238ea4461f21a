"""Live connections to downstream MCP servers, one per (username, server), never shared between users.

Each connection runs in its own task of the pool's task group, so the SDK
client's context managers open and close in one task. Idle connections are
closed after ``idle_seconds``; at ``max_live`` the least recently used idle one
makes room. A connection whose process died or whose secrets changed is
replaced on the next call; ``close_when_idle`` closes one whose secrets the
gateway saw change without waiting for that call. One being closed counts
against ``max_live`` until its downstream has stopped: a downstream may take
seconds to stop (one that ignores the end of its stdin waits for a signal), and
each holds its user's secrets.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client

from mcp_secrets.errors import SecretsError

logger = logging.getLogger(__name__)

PoolKey = tuple[str, str]
# Opens the transport to one downstream server; called inside the connection's own task.
Opener = Callable[[], AbstractAsyncContextManager[Client]]


class GatewayBusyError(SecretsError):
    """Raised when every downstream connection is in use and the pool is at its bound."""


class StartTimeoutError(Exception):
    """Raised when a downstream server does not finish its start in time; it has been stopped.

    Also when the gateway stops while the server starts.
    """


@dataclass(eq=False)
class Connection:
    """One user's live client of one downstream server."""

    key: PoolKey
    fingerprint: str
    client: Client | None = None
    last_used: float = field(default_factory=anyio.current_time)
    active_calls: int = 0
    dead: bool = False
    stop: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)
    # Cancelled to stop a downstream still starting: until it has started, it does not wait on ``stop``.
    starting: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    on_log: Callable[[Any], Awaitable[None]] | None = None
    # Set for the length of one call: where the downstream's questions to its user, and word that a
    # URL-mode one is done, go (the client of that call).
    on_elicit: Callable[[Any], Awaitable[Any]] | None = None
    on_elicit_complete: Callable[[str], Awaitable[None]] | None = None
    # Why the downstream's connection ended, when the gateway ended it (a message over the bound): a call
    # that fails on it says so rather than "Connection closed". Never anything of what was sent.
    fault: str | None = None
    # Its user's secrets changed while a call used it, or while it started: it holds the values of before.
    close_after_call: bool = False


@dataclass(eq=False)
class Turn:
    """Makes the calls of one key take turns (to open, or to call); kept while any call holds or awaits it."""

    lock: anyio.Lock = field(default_factory=anyio.Lock)
    calls: int = 0
    listing: bool = False  # the holder is the gateway's listing of the key's tools, not a call
    # The gateway's count of changes of the key's secrets while it is kept: a call that read them before
    # one closes the connection it used once it ends.
    secret_changes: int = 0


class DownstreamPool:
    """Opens, reuses, bounds and closes downstream connections."""

    def __init__(
        self, *, max_live: int = 32, idle_seconds: float = 300.0, start_seconds: float = 60.0
    ) -> None:
        self.max_live = max_live
        self.idle_seconds = idle_seconds
        # How long a downstream may take to start and answer (the handshake; the gateway's listing).
        self.start_seconds = start_seconds
        self._connections: dict[PoolKey, Connection] = {}
        self._turns: dict[PoolKey, Turn] = {}
        # Connections whose downstream is starting, or stopping: they count against max_live too.
        self._starting: set[Connection] = set()
        self._closing: set[Connection] = set()
        self._stopping = False  # set by close_all(): no downstream starts after it
        self._task_group: TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[DownstreamPool]:
        """Run the pool (and its idle reaper); on exit every downstream connection is closed."""
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            task_group.start_soon(self._reap_idle)
            try:
                yield self
            finally:
                for connection in list(self._connections.values()):
                    connection.stop.set()
                self._connections.clear()
                task_group.cancel_scope.cancel()
                self._task_group = None

    @property
    def live(self) -> int:
        """How many downstream connections are open."""
        return len(self._connections)

    @asynccontextmanager
    async def connection(self, key: PoolKey, fingerprint: str, opener: Opener) -> AsyncIterator[Connection]:
        """A live connection for ``key`` made with ``opener``, held for the duration of one call."""
        connection = await self._acquire(key, fingerprint, opener)
        connection.active_calls += 1
        try:
            yield connection
        finally:
            connection.active_calls -= 1
            connection.last_used = anyio.current_time()
            if connection.close_after_call and not connection.active_calls:
                self.discard(connection)

    async def close_all(self) -> None:
        """Close every connection now, live or starting, and wait until each downstream has stopped.

        For a process about to end: no downstream starts afterwards.
        """
        # A call waiting its turn behind one closed here would start another, left behind by an exit.
        self._stopping = True
        starting = list(self._starting)
        connections = [*self._connections.values(), *starting]
        for connection in connections:
            self.discard(connection)
        for connection in starting:
            connection.starting.cancel()
        for connection in connections:
            await connection.closed.wait()

    def discard(self, connection: Connection) -> None:
        """Close a connection whose downstream failed; the next call opens a new one."""
        connection.dead = True
        connection.stop.set()
        if not connection.closed.is_set():
            self._closing.add(connection)
        if self._connections.get(connection.key) is connection:
            del self._connections[connection.key]

    def close_idle(self, key: PoolKey) -> None:
        """Close the connection of ``key`` now, unless a call is using it."""
        connection = self._connections.get(key)
        if connection is not None and connection.active_calls == 0:
            self.discard(connection)

    def close_when_idle(self, key: PoolKey) -> None:
        """Close the connection of ``key`` now if no call is using it, else once its calls end.

        One still starting is closed once the call that starts it ends.
        """
        connection = self._connections.get(key)
        if connection is not None:
            if connection.active_calls:
                connection.close_after_call = True  # a running call is not cut
            else:
                self.discard(connection)
        for starting in self._starting:
            if starting.key == key:
                starting.close_after_call = True

    async def _acquire(self, key: PoolKey, fingerprint: str, opener: Opener) -> Connection:
        task_group = self._task_group
        if task_group is None:
            raise RuntimeError("the downstream pool is not running; use `async with pool.running()`")
        turn = self._turns.setdefault(key, Turn())
        turn.calls += 1
        try:
            async with turn.lock:
                return await self._reuse_or_open(task_group, key, fingerprint, opener)
        finally:
            turn.calls -= 1
            if not turn.calls:
                del self._turns[key]  # one entry per key in use, not per key ever seen

    async def _reuse_or_open(
        self, task_group: TaskGroup, key: PoolKey, fingerprint: str, opener: Opener
    ) -> Connection:
        """The live connection of ``key`` if its secrets are unchanged, else a new one; call in its turn."""
        current = self._connections.get(key)
        if current is not None and not current.dead and current.fingerprint == fingerprint:
            return current
        if current is not None:
            self.discard(current)
        if self._stopping:
            raise StartTimeoutError("the gateway is stopping")
        await self._make_room()
        if self._stopping:  # while it waited for room
            raise StartTimeoutError("the gateway is stopping")
        connection = Connection(key, fingerprint)
        # A downstream that never answers would hold this key's turn, and every call waiting on it.
        self._starting.add(connection)
        try:
            with anyio.move_on_after(self.start_seconds) as waited:
                await task_group.start(self._hold, connection, opener)
        finally:
            self._starting.discard(connection)
        if waited.cancelled_caught:
            raise StartTimeoutError(f"it did not answer within {self.start_seconds:g} seconds")
        self._connections[key] = connection
        return connection

    async def _make_room(self) -> None:
        while len(self._connections) + len(self._starting) + len(self._closing) >= self.max_live:
            if self._closing:
                # Room is coming without closing another: a stop is bounded (EOF, SIGTERM, then SIGKILL).
                await next(iter(self._closing)).closed.wait()
                continue
            idle = [c for c in self._connections.values() if c.active_calls == 0]
            if idle:
                self.discard(min(idle, key=lambda connection: connection.last_used))
            else:
                raise GatewayBusyError(
                    f"all {self.max_live} downstream connections are busy; try again in a moment"
                )

    async def _hold(self, connection: Connection, opener: Opener, *, task_status: TaskStatus[None]) -> None:
        started = False
        try:
            with connection.starting:
                async with opener() as client:
                    connection.client = client
                    started = True
                    task_status.started()
                    await connection.stop.wait()
        except Exception as exc:
            if not started:
                raise
            # Type only: a downstream's message may hold an injected value.
            logger.info(
                "downstream connection for server %s ended: %s", connection.key[1], type(exc).__name__
            )
        finally:
            connection.dead = True
            self._closing.discard(connection)
            connection.closed.set()
            if self._connections.get(connection.key) is connection:
                del self._connections[connection.key]
        if not started:  # close_all() ended its start
            raise StartTimeoutError("the gateway stopped it while it started")

    async def _reap_idle(self) -> None:
        period = max(0.05, min(self.idle_seconds / 2, 30.0))
        while True:
            await anyio.sleep(period)
            now = anyio.current_time()
            for connection in list(self._connections.values()):
                if connection.active_calls == 0 and now - connection.last_used >= self.idle_seconds:
                    logger.debug("closing idle downstream connection for server %s", connection.key[1])
                    self.discard(connection)
