"""Telling a user's clients that their tool list changed, and no other user's clients.

A user's downstream tools depend on that user's secrets, so a change of them is news for that user's
clients only: even the bare notice that something changed would tell another user that this one acted.
Clients of the handshake revisions are told on their connection; clients of 2026-07-28 on the
``subscriptions/listen`` streams they opened, each stream known by the user who opened it. A client
connected with an API token revoked (or expired) since is no longer told: it is no longer that user's.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.connection import Connection
from mcp.shared.subscriptions import ServerEvent, ToolsListChanged

from mcp_secrets.gateway.loop import LoopEntry
from mcp_secrets.session_quota import token_check
from mcp_secrets.tokens import ApiTokens

logger = logging.getLogger(__name__)

# Who a client is: its user, and the token it connected with (None without one, on stdio).
Caller = tuple[str, AuthorizationContext | None]
# The caller whose subscriptions/listen request is being served: the bus reads it as the stream subscribes.
LISTENING_USER: ContextVar[Caller | None] = ContextVar("mcp_secrets_listening_user", default=None)


StillTheirs = Callable[[AuthorizationContext | None], bool]


def _anyone(_owner: object) -> bool:
    return True


class UserSubscriptionBus:
    """A ``SubscriptionBus`` that knows whose each listen stream is: ``publish_to`` reaches one user's."""

    def __init__(self) -> None:
        self._listeners: dict[object, tuple[Caller | None, Callable[[ServerEvent], None]]] = {}

    async def publish(self, event: ServerEvent) -> None:
        """Deliver ``event`` to every stream, whoever opened it (the SDK's ``ctx.notify_*``)."""
        self._deliver(event, _anyone)
        await anyio.lowlevel.checkpoint()

    async def publish_to(
        self,
        username: str,
        event: ServerEvent,
        still_theirs: StillTheirs = _anyone,
    ) -> None:
        """Deliver ``event`` to the streams ``username`` opened, and to no other.

        ``still_theirs`` says which of those are still the user's, by the token each was opened with.
        """
        self._deliver(
            event, lambda caller: caller is not None and caller[0] == username and still_theirs(caller[1])
        )
        await anyio.lowlevel.checkpoint()

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Register the listener of a stream, as its user's (set in ``LISTENING_USER``)."""
        mark = object()
        self._listeners[mark] = (LISTENING_USER.get(), listener)

        def unsubscribe() -> None:
            self._listeners.pop(mark, None)

        return unsubscribe

    def listens(self, username: str) -> bool:
        """Whether ``username`` has a stream open."""
        return any(caller is not None and caller[0] == username for caller, _ in self._listeners.values())

    def _deliver(self, event: ServerEvent, reaches: Callable[[Caller | None], bool]) -> None:
        for caller, listener in list(self._listeners.values()):
            if not reaches(caller):
                continue
            try:
                listener(event)
            except Exception:  # as the SDK's own bus: one failing stream must not starve the others
                logger.exception("a subscription listener failed")


class ToolListChanges:
    """Sends ``notifications/tools/list_changed`` to the clients of one user."""

    def __init__(self, tokens: ApiTokens) -> None:
        self.bus = UserSubscriptionBus()
        self._tokens = tokens
        # Handshake-era connections that listed tools, and whose they are; an ended one drops out.
        self._connections: weakref.WeakKeyDictionary[Connection, Caller] = weakref.WeakKeyDictionary()
        self._task_group: TaskGroup | None = None
        self._loop = LoopEntry()  # the way in from the threads that write secrets
        # Users whose clients are being told, and those of them with a change since that round began: a
        # notice only says "list again", so one more round after it tells of all those changes.
        self._telling: set[str] = set()
        self._changed_again: set[str] = set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Send notifications while inside; ``changed`` does nothing outside."""
        async with self._loop.running(), anyio.create_task_group() as task_group:
            self._task_group = task_group
            try:
                yield
            finally:
                self._task_group = None
                task_group.cancel_scope.cancel()

    def watch(self, caller: Caller, connection: Connection) -> None:
        """Tell ``connection``, a handshake-era client of ``caller``, of changes from now on."""
        self._connections[connection] = caller

    def changed(self, username: str) -> None:
        """Tell ``username``'s clients that their tools may have changed; from any thread, never raises."""
        if self._task_group is not None:
            self._loop.call(functools.partial(self._notify_soon, username))

    def _notify_soon(self, username: str) -> None:
        task_group = self._task_group
        if task_group is None:
            return
        if username in self._telling:
            # A downstream saying so in a loop keeps one round of this user's going, not a thousand at once.
            self._changed_again.add(username)
            return
        self._telling.add(username)
        task_group.start_soon(self._tell_until_told, task_group, username)

    async def _tell_until_told(self, task_group: TaskGroup, username: str) -> None:
        """Tell ``username``'s clients, and again while changes came meanwhile; one at a time per user."""
        try:
            while True:
                self._changed_again.discard(username)  # the round starting now tells of every change so far
                await self._tell_user(task_group, username)
                if username not in self._changed_again:
                    return
        finally:
            self._telling.discard(username)
            self._changed_again.discard(username)

    async def _tell_user(self, task_group: TaskGroup, username: str) -> None:
        theirs = [
            (connection, owner) for connection, (name, owner) in self._connections.items() if name == username
        ]
        if not theirs and not self.bus.listens(username):
            return  # nobody to tell: whose tokens still work need not be asked of the store
        still_theirs = await token_check(self._tokens, username)
        # Each in a task of its own: a client that reads slowly delays nobody else's notice.
        for connection, owner in theirs:
            if still_theirs(owner):
                task_group.start_soon(_tell, connection)
        await self.bus.publish_to(username, ToolsListChanged(), still_theirs)


async def _tell(connection: Connection) -> None:
    try:
        await connection.send_tool_list_changed()
    except Exception:  # noqa: BLE001 - a notice is worth no more than its client: the others' go on
        logger.debug("tool list change not sent: the connection failed")
