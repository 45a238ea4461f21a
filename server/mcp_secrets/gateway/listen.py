"""Hearing that a downstream's tools changed, on the ``subscriptions/listen`` stream it offers (2026-07-28).

The stream can end while the connection to the downstream lives: the downstream closes it, or a remote
one's network blips. It is then opened again after a pause, which doubles each time up to a cap, so that
a downstream closing every stream at once costs a request a minute and not a busy loop; a stream that
lived long starts the pauses over.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from anyio.abc import TaskStatus
from mcp import Client
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

logger = logging.getLogger(__name__)

# How long a downstream may take to acknowledge a subscriptions/listen stream; past it, the gateway goes on
# without hearing it until the next one.
LISTEN_SECONDS = 10.0
# The pause before a stream is opened again: the first, and the longest it doubles up to.
FIRST_PAUSE_SECONDS = 1.0
LONGEST_PAUSE_SECONDS = 60.0
# A stream that lived this long ended for a reason of its own (a proxy's idle timeout, say), not at once.
LIVED_LONG_SECONDS = 60.0


class Backoff:
    """The pauses before opening another stream: doubling up to a cap, back to the first after a long one."""

    def __init__(self) -> None:
        self._next = FIRST_PAUSE_SECONDS

    def pause_after(self, lived_seconds: float) -> float:
        """How long to wait after a stream that lived ``lived_seconds`` (0 for one never acknowledged)."""
        if lived_seconds >= LIVED_LONG_SECONDS:
            self._next = FIRST_PAUSE_SECONDS
        pause = self._next
        self._next = min(pause * 2, LONGEST_PAUSE_SECONDS)
        return pause


async def pause_before_listening_again(seconds: float) -> None:
    """Wait ``seconds`` before the next stream is opened."""
    await anyio.sleep(seconds)


@asynccontextmanager
async def listening_for_tool_changes(client: Client, server: str) -> AsyncIterator[None]:
    """While inside, a server on 2026-07-28 that declares ``tools.listChanged`` can say its tools changed.

    It says so on a ``subscriptions/listen`` stream, which the SDK also hands to ``client``'s message
    handler; a server of the handshake says so on its session, straight to that handler. Entering waits
    for the first stream to be acknowledged (up to ``LISTEN_SECONDS``); leaving stops listening.
    """
    tools = client.server_capabilities.tools
    if client.protocol_version not in MODERN_PROTOCOL_VERSIONS or tools is None or not tools.list_changed:
        yield
        return
    async with anyio.create_task_group() as listening:
        await listening.start(_keep_listening, client, server)
        try:
            yield
        finally:
            listening.cancel_scope.cancel()


async def _keep_listening(client: Client, server: str, *, task_status: TaskStatus[None]) -> None:
    """Open a stream, and another after a pause each time it ends; started once the first was answered."""
    backoff = Backoff()
    started = False
    while True:
        lived = 0.0
        try:
            async with AsyncExitStack() as stack:
                with anyio.fail_after(LISTEN_SECONDS):
                    subscription = await stack.enter_async_context(client.listen(tools_list_changed=True))
                opened = anyio.current_time()
                if not started:
                    started = True
                    task_status.started()
                try:
                    async for _event in subscription:
                        pass  # each reached the message handler already, which tells the user's clients
                finally:
                    lived = anyio.current_time() - opened
            logger.debug("the listen stream of server %s ended", server)
        except Exception as exc:  # noqa: BLE001 - its tools work all the same; the type only, never a message
            logger.info("tool changes of server %s not heard for now: %s", server, type(exc).__name__)
        if not started:
            started = True
            task_status.started()
        await pause_before_listening_again(backoff.pause_after(lived))
