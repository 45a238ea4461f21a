"""Hearing that a downstream's tools changed, on the ``subscriptions/listen`` stream it offers (2026-07-28).

The stream can end while the connection to the downstream lives: the downstream closes it, or a remote
one's network blips. It is then opened again after a pause, which doubles each time up to a cap, so that
a downstream closing every stream at once costs a request a minute and not a busy loop; a stream that
lived long starts the pauses over.

A change of its tools made while no stream was open is told on none. So once each stream is acknowledged
its tools are listed, and a listing unlike the one at the stream before says they changed meanwhile; a
listing that fails says nothing, and the next is compared with the last that worked. A change made once a
stream is acknowledged is told by that stream (and, made before the listing, by the comparison too: twice,
which does no harm). A reopen that found nothing changed tells no client: one behind a proxy ending idle
streams would list again every minute.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from anyio.abc import TaskStatus
from mcp import Client
from mcp_types import Tool
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_secrets.gateway.redact import REDACT_INLINE_CHARS, chars_within

logger = logging.getLogger(__name__)

# How long a downstream may take to acknowledge a subscriptions/listen stream; past it, the gateway goes on
# without hearing it until the next one.
LISTEN_SECONDS = 10.0
# The pause before a stream is opened again: the first, and the longest it doubles up to.
FIRST_PAUSE_SECONDS = 1.0
LONGEST_PAUSE_SECONDS = 60.0
# A stream that lived this long ended for a reason of its own (a proxy's idle timeout, say), not at once.
LIVED_LONG_SECONDS = 60.0
# Every tool a downstream lists, all pages, bounded in size and time as the gateway's own listings are
# (a listing past the time raises TimeoutError; the listing before then stands).
ListTools = Callable[[], Awaitable[list[Tool]]]


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
async def listening_for_tool_changes(
    client: Client, server: str, tools_changed: Callable[[], None], list_tools: ListTools
) -> AsyncIterator[None]:
    """While inside, a server on 2026-07-28 that declares ``tools.listChanged`` can say its tools changed.

    It says so on a ``subscriptions/listen`` stream, which the SDK also hands to ``client``'s message
    handler; a server of the handshake says so on its session, straight to that handler. A change made
    between two streams is found by ``list_tools``, and ``tools_changed`` called. Entering waits for the
    first stream to be acknowledged (up to ``LISTEN_SECONDS``); leaving stops listening.
    """
    tools = client.server_capabilities.tools
    if client.protocol_version not in MODERN_PROTOCOL_VERSIONS or tools is None or not tools.list_changed:
        yield
        return
    async with anyio.create_task_group() as listening:
        watch = _ListingWatch(server, tools_changed, list_tools)
        await listening.start(_keep_listening, client, server, watch)
        try:
            yield
        finally:
            listening.cancel_scope.cancel()


class _ListingWatch:
    """Compares a downstream's listing at each acknowledged stream with the one at the stream before."""

    def __init__(self, server: str, tools_changed: Callable[[], None], list_tools: ListTools) -> None:
        self._server = server
        self._tools_changed = tools_changed
        self._list_tools = list_tools
        self._fingerprint: str | None = None  # None until a listing worked

    async def stream_acknowledged(self) -> None:
        """List the tools; call ``tools_changed`` if they differ from the last listing that worked."""
        try:
            tools = await self._list_tools()
            if chars_within(tools, REDACT_INLINE_CHARS):
                fingerprint = _fingerprint(tools)
            else:  # as a large listing is redacted: other users' calls go on meanwhile
                fingerprint = await anyio.to_thread.run_sync(_fingerprint, tools)
        except Exception as exc:  # noqa: BLE001 - a failed listing says nothing of a change; the type only
            problem = type(exc).__name__
            logger.info("tools of server %s not listed at a listen stream: %s", self._server, problem)
            return
        before, self._fingerprint = self._fingerprint, fingerprint
        if before is not None and fingerprint != before:
            logger.debug("the tools of server %s changed while no listen stream was open", self._server)
            self._tools_changed()


def _fingerprint(tools: list[Tool]) -> str:
    """SHA-256 of the canonical JSON of ``tools``: equal for equal listings, in the same order."""
    dumped = [tool.model_dump(by_alias=True, mode="json") for tool in tools]
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _keep_listening(
    client: Client, server: str, watch: _ListingWatch, *, task_status: TaskStatus[None]
) -> None:
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
                    task_status.started()  # the listing below holds up no call of the connection
                try:
                    await watch.stream_acknowledged()
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
