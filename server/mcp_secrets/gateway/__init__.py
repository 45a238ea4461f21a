"""The gateway: downstream MCP servers' tools, called with each caller's own secrets.

For a call of ``github__create_issue`` by alice, the gateway reads alice's
secrets of server ``github`` (only those), fills the ``${secret:KEY}``
placeholders of that server's entry, calls the tool on alice's own connection
to it, and takes every injected value back out of what comes back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets as _random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from anyio.abc import TaskGroup
from jsonschema.exceptions import ValidationError as SchemaValidationError
from mcp import Client
from mcp.client.caching import CacheMode
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError
from mcp_types import (
    HEADER_MISMATCH,
    SERVER_INFO_META_KEY,
    CallToolResult,
    ElicitRequest,
    InputRequest,
    InputRequiredResult,
    TextContent,
    Tool,
)
from starlette.requests import Request

from mcp_secrets.elicitation import asks_by_result, takes_elicitation
from mcp_secrets.errors import SecretsError
from mcp_secrets.gateway.asking import mode_of, shown_question, url_elicitation_required
from mcp_secrets.gateway.changes import ToolListChanges
from mcp_secrets.gateway.config import (
    MAX_TOOL_NAME_LENGTH,
    SEPARATOR,
    GatewayConfig,
    ServerConfig,
    load_gateway_config,
    origin,
    substitute,
)
from mcp_secrets.gateway.describe import describe, schema_problem
from mcp_secrets.gateway.listen import listening_for_tool_changes
from mcp_secrets.gateway.loop import LoopEntry
from mcp_secrets.gateway.pool import Connection, DownstreamPool, GatewayBusyError, StartTimeoutError, Turn
from mcp_secrets.gateway.redact import (
    BUILD_INLINE_CHARS,
    Redactor,
    chars_up_to,
    chars_within,
)
from mcp_secrets.gateway.relay import CallRelay, downstream_callbacks, relaying, set_log_level
from mcp_secrets.gateway.stdio import MAX_MESSAGE_BYTES, stdio_client
from mcp_secrets.identity import api_token_id
from mcp_secrets.offload import run_store_work
from mcp_secrets.secrets import Secrets
from mcp_secrets.tokens import ApiTokens

__all__ = ["Gateway", "GatewayConfig", "ServerStatus", "load_gateway_config", "set_log_level"]

logger = logging.getLogger(__name__)
REMOTE_TIMEOUT_SECONDS = 30.0  # to connect and to send
# How long a remote downstream's reply may stay silent, as the SDK's own client allows: a tool may work long.
REMOTE_READ_SECONDS = 300.0
# How long a downstream whose call failed may take to show it is still well, before it is replaced.
ALIVE_SECONDS = 10.0
# (user, server) tool listings kept to answer a listing while that user's call holds the downstream;
# a long-running gateway meets many users, so the least recently listed goes past this many.
KNOWN_LISTINGS = 1024
# Pages of a downstream's tool listing read at most: one handing out cursors for ever would fill memory.
LISTING_PAGES = 100
# Characters of a downstream's tool listing read at most, all its pages together: each page may be a
# message of up to MAX_MESSAGE_BYTES, and a hundred of them held at once would fill memory.
LISTING_CHARS = MAX_MESSAGE_BYTES
# Tool names as the MCP specification recommends them (and '/', which SEP-986 allows). A downstream
# tool's name is checked before any secret is read: it goes into the audit trail.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,128}")
TOOL_NAME_RULE = "1 to 128 characters of letters, digits, '_', '-', '.' or '/'"
# A tool name cut to fit ends in '-' and this many hex digits of the SHA-256 of the downstream's name.
_CUT_HASH_CHARS = 8
_CUT = re.compile(rf"-[0-9a-f]{{{_CUT_HASH_CHARS}}}\Z")


class MissingSecretsError(SecretsError):
    """Raised when a caller lacks secrets a downstream server requires; nothing is started."""


class DownstreamError(SecretsError):
    """Raised when a downstream server cannot be started or reached, or fails mid-call."""


class CallRunningError(SecretsError):
    """Raised when a listing would wait too long on the caller's call to that server; nothing is started."""


@dataclass(frozen=True)
class ServerStatus:
    """Which of a downstream server's required keys a user has stored."""

    server: str
    description: str
    required: list[str]
    missing: list[str]


def split_tool_name(name: str) -> tuple[str, str] | None:
    """``("github", "create_issue")`` for ``github__create_issue``; None for a name without a server."""
    server, separator, tool = name.partition(SEPARATOR)
    return (server, tool) if separator and server and tool else None


def offered_name(server: str, tool: str) -> str:
    """``<server>__<tool>``, cut to ``MAX_TOOL_NAME_LENGTH`` when longer and then ended by a hash of ``tool``.

    The hash keeps apart names that differ past the cut, and is the same at every start.
    """
    name = f"{server}{SEPARATOR}{tool}"
    if len(name) <= MAX_TOOL_NAME_LENGTH:
        return name
    digest = hashlib.sha256(tool.encode()).hexdigest()[:_CUT_HASH_CHARS]
    return f"{name[: MAX_TOOL_NAME_LENGTH - _CUT_HASH_CHARS - 1]}-{digest}"


class Gateway:
    """Lists and calls downstream tools for one caller at a time, with that caller's secrets."""

    def __init__(
        self,
        config: GatewayConfig,
        secrets: Secrets,
        *,
        pool: DownstreamPool | None = None,
        missing_hint: Callable[[str, str, list[str], str | None], str] | None = None,
        via: str = "gateway",
    ) -> None:
        self.config = config
        self.secrets = secrets
        self.pool = pool or DownstreamPool()
        # Says how to store missing keys (with entry links when the entry page is served).
        self._missing_hint = missing_hint
        self._fingerprint_salt = _random.token_bytes(16)
        # Each user's own last listing: a tool list made with one user's credentials can describe
        # that user's account, so it is never shown to another.
        self._known_tools: dict[tuple[str, str], list[Tool]] = {}
        # Listings under way, by (user, server), and those of them during which the downstream said its
        # tools changed: such a listing may hold the tools of before, and is not kept as the last.
        self._listings: Counter[tuple[str, str]] = Counter()
        self._changed_while_listing: set[tuple[str, str]] = set()
        self._call_turns: dict[tuple[str, str], Turn] = {}
        self._via = via
        # A user's tools follow that user's secrets: a change of them is told to that user's clients.
        self.changes = ToolListChanges(ApiTokens(secrets.store))
        self._loop = LoopEntry()  # the way in from the threads that write secrets
        self._watchers: TaskGroup | None = None  # of the calls' clients, while running

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Run the connection pool, and tell clients of changes; every downstream is closed on exit."""
        async with (
            self.pool.running(),
            self.changes.running(),
            self._loop.running(),
            anyio.create_task_group() as watchers,
        ):
            stop_watching = self.secrets.on_change(self._secrets_changed)
            self._watchers = watchers
            try:
                yield self
            finally:
                self._watchers = None
                watchers.cancel_scope.cancel()
                stop_watching()

    def _secrets_changed(self, username: str, server: str) -> None:
        """Called on the thread that wrote: the pool is the event loop's alone."""
        if server in self.config.servers:  # the secrets of any other server are in no downstream
            self._loop.call(functools.partial(self._close_and_tell, username, server))

    def _close_and_tell(self, username: str, server: str) -> None:
        # The user's downstream holds the values of before, a deleted one too: it has no more use. The
        # next call starts one with what is stored then.
        self.pool.close_when_idle((username, server))
        turn = self._call_turns.get((username, server))
        if turn is not None:  # a call in it may have read the values of before, and not yet opened its own
            turn.secret_changes += 1
        self.changes.changed(username)

    def _downstream_tools_changed(self, username: str, server: str) -> None:
        """``username``'s connection to ``server`` says its tools changed: tell that user's clients."""
        # What it listed before is not what it lists now: a listing waits for a running call rather
        # than show it to clients told to list again.
        self._known_tools.pop((username, server), None)
        if self._listings[(username, server)]:
            self._changed_while_listing.add((username, server))
        self.changes.changed(username)

    async def stop(self) -> None:
        """Stop every downstream server now (``running()`` does it on exit); for a process about to end."""
        await self.pool.close_all()

    def owns(self, name: str) -> bool:
        """True when ``name`` is a downstream tool's prefixed name."""
        parts = split_tool_name(name)
        return parts is not None and parts[0] in self.config.servers

    def status(self, username: str) -> list[ServerStatus]:
        """For each configured server, the required keys ``username`` has not stored (blocking).

        Only the required keys are looked up: the user's other records, thousands perhaps, are not read.
        """
        servers = self.config.servers
        stored = self.secrets.stored_keys(
            username, [(name, key) for name, server in servers.items() for key in server.required]
        )
        return [
            ServerStatus(
                server=name,
                description=server.spec.description,
                required=sorted(server.required),
                missing=sorted(key for key in server.required if (name, key) not in stored),
            )
            for name, server in servers.items()
        ]

    async def list_tools(self, username: str) -> list[Tool]:
        """Every downstream tool, prefixed with its server's name, as listed with the caller's secrets.

        A server the caller cannot start now (missing secrets, or down) shows the tools it
        listed last for this caller, if ever; ``list_secret_keys`` says which keys are missing.
        Servers are listed in parallel: a slow one delays the listing by its own time only.
        """
        listed: dict[str, list[Tool]] = {}

        async def list_server(server: ServerConfig) -> None:
            listed[server.name] = await self._list_or_known(username, server)

        async with anyio.create_task_group() as listings:
            for server in self.config.servers.values():
                listings.start_soon(list_server, server)
        return [
            tool.model_copy(
                update={
                    "name": offered_name(name, tool.name),
                    "description": f"[{name}] {tool.description or ''}",
                }
            )
            for name in self.config.servers
            for tool in listed[name]
            if _callable(tool, name)
        ]

    async def _list_or_known(self, username: str, server: ServerConfig) -> list[Tool]:
        try:
            return await self._list(username, server)
        except DownstreamError as exc:
            # The server is down or unreachable: an operator needs to see why. The message is
            # the one a tool call would return, injected values already taken out of it.
            logger.warning("tools of server %s not listed for %s: %s", server.name, username, exc)
        except SecretsError as exc:  # missing secrets, as list_secret_keys tells the user
            logger.info("tools of server %s not listed for %s: %s", server.name, username, type(exc).__name__)
        return self._known_tools.get((username, server.name), [])

    async def call_tool(
        self, username: str, name: str, arguments: Mapping[str, Any], ctx: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Call a downstream tool as ``username``; the result carries no injected value.

        For a client on 2026-07-28, the downstream's questions to its user come back as an
        ``InputRequiredResult``, and the client's retry carries the answers on to the downstream.
        """
        parts = split_tool_name(name)
        if parts is None or parts[0] not in self.config.servers:
            raise DownstreamError(f"there is no downstream tool {name!r}")
        if not _TOOL_NAME.fullmatch(parts[1]):
            raise DownstreamError(f"a tool name of server {parts[0]} must be {TOOL_NAME_RULE}")
        server = self.config.servers[parts[0]]
        async with self._session(username, server, ctx, purpose=f"tools/call {parts[1]}") as (
            connection,
            redactor,
            relay,
        ):
            assert connection.client is not None  # noqa: S101 - set before the pool hands it out
            forward = relay.progress if relay is not None else None
            try:
                client = connection.client
                tool = await self._downstream_name(username, server, name, client)
                if ctx is not None and asks_by_result(ctx):
                    result = await _call_round(client, tool, dict(arguments), ctx, forward=forward)
                else:
                    result = await client.call_tool(tool, dict(arguments), progress_callback=forward)
            except Exception as exc:  # noqa: BLE001 - any downstream failure becomes a tool error
                required = url_elicitation_required(exc, redactor, server.name)
                if required is not None:
                    raise required from None
                # A server that answered with an error is well: restarting it would cost a start and
                # what it holds (a browser, a session). One that is gone or stuck is replaced.
                if not await _still_answers(connection.client):
                    self.pool.discard(connection)
                problem = connection.fault or describe(exc)
                raise DownstreamError(
                    redactor.text(f"downstream server {server.name} failed during {parts[1]}: {problem}")
                ) from None
            if isinstance(result, InputRequiredResult):
                assert ctx is not None  # noqa: S101 - only a call with a client is asked by result
                return _questions(result, ctx, redactor, server.name)
            shown = await redact_result_off_loop(result, redactor)
            return await _within_output_schema(
                shown, result, client, tool=tool, redactor=redactor, server=server.name
            )

    async def _downstream_name(self, username: str, server: ServerConfig, name: str, client: Client) -> str:
        """The downstream's own name of the tool offered as ``name``; a cut one is found in its listing."""
        tool = name.removeprefix(f"{server.name}{SEPARATOR}")
        if len(name) < MAX_TOOL_NAME_LENGTH or not _CUT.search(name):
            return tool  # never cut
        found = _uncut(server.name, name, self._known_tools.get((username, server.name), []))
        if found is None:  # not in this user's last listing (a client's listing outlives a restart)
            with anyio.fail_after(self.pool.start_seconds):
                found = _uncut(server.name, name, await _every_tool(client))
        return found or tool

    async def _list(self, username: str, server: ServerConfig) -> list[Tool]:
        key = (username, server.name)
        # A call of this user to this server may run for long: what it listed for them last will do.
        wait_seconds = 0 if key in self._known_tools else self.pool.start_seconds
        session = self._session(
            username,
            server,
            None,
            offer_links=False,
            purpose="tools/list",
            wait_seconds=wait_seconds,
            listing=True,
        )
        with self._listing(key) as changed_meanwhile:
            async with session as (connection, redactor, _):
                assert connection.client is not None  # noqa: S101
                seconds = self.pool.start_seconds
                try:
                    with anyio.fail_after(seconds):
                        listed = await _every_tool(connection.client)
                except Exception as exc:  # noqa: BLE001 - any downstream failure becomes a tool error
                    self.pool.discard(connection)
                    problem = (
                        f"it did not answer within {seconds:g} seconds"
                        if isinstance(exc, TimeoutError)
                        else connection.fault or describe(exc)
                    )
                    raise DownstreamError(redactor.text(f"listing {server.name} failed: {problem}")) from None
            if chars_within(listed, redactor.inline_chars):
                tools = _redact_tools(listed, redactor)
            else:  # as a large result is: other users' calls go on meanwhile
                tools = await anyio.to_thread.run_sync(_redact_tools, listed, redactor)
            if changed_meanwhile():
                return tools  # its clients were told to list again: the next listing is the one to keep
        known_tools = self._known_tools
        known_tools.pop(key, None)  # moved to the end: the most recent
        known_tools[key] = tools
        while len(known_tools) > KNOWN_LISTINGS:
            del known_tools[next(iter(known_tools))]
        return tools

    @contextmanager
    def _listing(self, key: tuple[str, str]) -> Iterator[Callable[[], bool]]:
        """While inside, a listing of ``key`` is under way; yields whether its tools changed meanwhile.

        Changed: the downstream said so during this listing, or during another of ``key`` under way with it.
        """
        self._listings[key] += 1
        try:
            yield lambda: key in self._changed_while_listing
        finally:
            self._listings[key] -= 1
            if not self._listings[key]:
                del self._listings[key]
                self._changed_while_listing.discard(key)

    @asynccontextmanager
    async def _session(
        self,
        username: str,
        server: ServerConfig,
        ctx: Context[Any, Any] | None,
        *,
        purpose: str,
        offer_links: bool = True,
        wait_seconds: float = math.inf,
        listing: bool = False,
    ) -> AsyncIterator[tuple[Connection, Redactor, CallRelay | None]]:
        """The caller's connection to ``server``, opened with their secrets of that server only.

        With it, what relays the call's log messages and progress to the client of ``ctx``, if any.
        ``wait_seconds`` bounds the wait for a call of the same caller to the same server to end; a
        ``listing`` waits for another listing up to the start bound. A call whose client is gone (see
        ``_client_gone``) is cancelled, waiting its turn or in it, and raises DownstreamError.
        """
        # One call at a time per (user, server): notifications carry no request id, so this is what keeps
        # each call's log messages with it. Other users and servers run in parallel. The secrets are read
        # in the turn: a call that waited for another is made with what is stored as it starts, never with
        # a value changed or deleted while it waited.
        key = (username, server.name)
        with anyio.CancelScope() as cut:
            async with (
                self._cancelled_when_gone(_client_gone(ctx), cut),
                self._turn(key, wait_seconds, server.name, listing=listing),
            ):
                turn = self._call_turns[key]
                changes = turn.secret_changes
                async with self._session_in_turn(
                    username, server, ctx, purpose=purpose, offer_links=offer_links
                ) as session:
                    if turn.secret_changes != changes:
                        # They changed after this call read them, before it held a connection to close: the
                        # one it holds now has the values of before.
                        session[0].close_after_call = True
                    yield session
        if cut.cancelled_caught:
            logger.info("%s of server %s by %s cancelled: its client is gone", purpose, server.name, username)
            raise DownstreamError(f"{purpose} of server {server.name} was cancelled: its client is gone")

    @asynccontextmanager
    async def _cancelled_when_gone(
        self, gone: Callable[[], Awaitable[bool]] | None, cut: anyio.CancelScope
    ) -> AsyncIterator[None]:
        """While inside, ``cut`` is cancelled once ``gone`` says the client is gone; for None, nothing is."""
        if gone is None or self._watchers is None:
            yield
            return
        # Watched from the gateway's own tasks: a task group of the call's would hand its caller every
        # error of the call as an exception group.
        watching = anyio.CancelScope()

        async def watch() -> None:
            with watching:
                if await gone():
                    cut.cancel()

        self._watchers.start_soon(watch)
        try:
            yield
        finally:
            watching.cancel()

    @asynccontextmanager
    async def _session_in_turn(
        self,
        username: str,
        server: ServerConfig,
        ctx: Context[Any, Any] | None,
        *,
        purpose: str,
        offer_links: bool,
    ) -> AsyncIterator[tuple[Connection, Redactor, CallRelay | None]]:
        """``_session`` once the caller's turn at ``server`` is taken."""
        values, stored_at = await run_store_work(
            self.secrets.store, lambda: self.secrets.read_secrets(username, server.name)
        )
        missing = sorted(server.required - values.keys())
        if missing:
            # A live downstream of this user's may hold a value deleted since: it has no more use.
            self.pool.close_idle((username, server.name))
            hint = ""
            if self._missing_hint is not None and offer_links:
                hint = await anyio.to_thread.run_sync(
                    self._missing_hint, username, server.name, missing, api_token_id(ctx)
                )
            raise MissingSecretsError(
                f"server {server.name} needs secret(s) you have not stored: {', '.join(missing)}. "
                + (hint or f"Store each with request_secret(server={server.name!r}, key=...).")
            )
        redactor = await _redactor_of(values)
        injected = {key: values.get(key, "") for key in server.referenced}
        handed_on = values.keys() & server.referenced
        recorded = False

        def record_injected() -> None:
            # Only what goes to the downstream is a use: not a refused call (missing secrets, or every
            # connection busy), not the keys no placeholder names. Once per call.
            nonlocal recorded
            if not recorded:
                recorded = True
                self.secrets.record_use(
                    username,
                    server.name,
                    handed_on,
                    via=self._via,
                    action="injected",
                    detail=purpose,
                    not_before=stored_at,
                )

        tools_changed = functools.partial(self._downstream_tools_changed, username, server.name)
        # The listing at each listen stream waits for the user's call to this server to end: whatever the
        # downstream says while it lists belongs to no call, and its answer is not sent amid a call's output.
        key = (username, server.name)
        listing_turn = functools.partial(self._turn, key, math.inf, server.name, listing=True)
        made_opener, fingerprint, holder = self._opener(server, injected, tools_changed, listing_turn)

        def opener() -> AbstractAsyncContextManager[Client]:
            record_injected()  # the values go to a new downstream now, whether or not it starts
            return made_opener()

        del values, injected  # decrypted values now live only in the opener, for this call
        try:
            async with self.pool.connection(key, fingerprint, opener) as connection:
                record_injected()  # a live connection holds the values: this call uses them
                holder["connection"] = connection
                async with relaying(connection, ctx, redactor, server.name) as relay:
                    yield connection, redactor, relay
        except (GatewayBusyError, MissingSecretsError, DownstreamError, UrlElicitationRequiredError):
            raise
        except StartTimeoutError as exc:
            raise DownstreamError(f"downstream server {server.name} could not be started: {exc}") from None
        except SecretsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any downstream failure becomes a tool error
            raise DownstreamError(
                redactor.text(f"downstream server {server.name} could not be started: {describe(exc)}")
            ) from None

    @asynccontextmanager
    async def _turn(
        self,
        key: tuple[str, str],
        wait_seconds: float,
        server: str,
        *,
        listing: bool,
    ) -> AsyncIterator[None]:
        """One user's turn at one server, waited for at most ``wait_seconds`` (else CallRunningError)."""
        turn = self._call_turns.setdefault(key, Turn())
        turn.calls += 1
        try:
            if turn.listing:
                # Another listing is bounded (a start, a listing) and lists what the caller's secrets
                # give now: clients of a user told of a change list again at once, and none may be shown
                # the tools of before.
                wait_seconds = max(wait_seconds, self.pool.start_seconds)
            await _take_turn(turn.lock, wait_seconds, server)
            turn.listing = listing
            try:
                yield
            finally:
                turn.listing = False
                turn.lock.release()
        finally:
            turn.calls -= 1
            if not turn.calls:
                del self._call_turns[key]  # one entry per key in use, not per user ever seen

    def _opener(
        self,
        server: ServerConfig,
        injected: Mapping[str, str],
        tools_changed: Callable[[], None],
        listing_turn: Callable[[], AbstractAsyncContextManager[None]],
    ) -> tuple[Callable[[], AbstractAsyncContextManager[Client]], str, dict[str, Connection]]:
        """Opens a client of ``server`` with ``injected``, calling ``tools_changed`` when its tools change.

        The listing at each of its listen streams is made within ``listing_turn``.
        """
        spec = server.spec

        def fill(text: str) -> str:
            return substitute(text, injected)

        args = [fill(arg) for arg in spec.args]
        env = {name: fill(value) for name, value in spec.env.items()}
        headers = {name: fill(value) for name, value in spec.headers.items()}
        url = fill(spec.url) if spec.url is not None else None
        fixed = server.fixed_origin
        if url is not None and fixed is not None and origin(url) != fixed:
            raise DownstreamError(
                f"the stored secrets of server {server.name} would send it to another host than its "
                "configured one: check what is stored for it (a value in a URL may need %-escapes)"
            )
        material = json.dumps([spec.command, args, env, headers, url], sort_keys=True).encode()
        fingerprint = hashlib.sha256(self._fingerprint_salt + material).hexdigest()
        holder: dict[str, Connection] = {}
        relays = downstream_callbacks(holder, tools_changed)

        def listening(client: Client) -> AbstractAsyncContextManager[None]:
            async def every_tool() -> list[Tool]:
                # Within the time any listing of it has; past the client's cache, which a change no
                # stream told of left as it was.
                async with listing_turn():
                    with anyio.fail_after(self.pool.start_seconds):
                        return await _every_tool(client, cache_mode="refresh")

            return listening_for_tool_changes(client, server.name, tools_changed, every_tool)

        @asynccontextmanager
        async def open_stdio() -> AsyncIterator[Client]:
            assert spec.command is not None  # noqa: S101
            params = StdioServerParameters(command=spec.command, args=args, env=env, cwd=spec.cwd)
            # The downstream's stderr could print an injected value: it never reaches our log.
            with open(os.devnull, "w", encoding="utf-8") as errlog:  # noqa: PTH123, ASYNC230 - never blocks
                transport = stdio_client(
                    params, errlog, name=server.name, over_bound=functools.partial(_over_bound, holder)
                )
                async with (
                    Client(transport, **relays) as client,
                    listening(client),
                ):
                    yield client

        @asynccontextmanager
        async def open_remote() -> AsyncIterator[Client]:
            assert url is not None  # noqa: S101
            if server.remote_transport == "sse":
                async with (
                    Client(sse_client(url, headers=headers), **relays) as client,
                    listening(client),
                ):
                    yield client
                return
            async with (
                httpx2.AsyncClient(
                    headers=headers,
                    timeout=httpx2.Timeout(REMOTE_TIMEOUT_SECONDS, read=REMOTE_READ_SECONDS),
                    event_hooks={"response": [_bound_body]},
                ) as http,
                Client(
                    # An event of a stream is bounded as a body is, not at the SDK's 1 MiB.
                    streamable_http_client(url, http_client=http, max_sse_event_size=MAX_MESSAGE_BYTES),
                    **relays,
                ) as client,
                listening(client),
            ):
                yield client

        return (open_stdio if server.is_stdio else open_remote), fingerprint, holder


class _BoundedBody(httpx2.AsyncByteStream):
    """A response body read up to ``MAX_MESSAGE_BYTES``; past it, ``httpx2.StreamError``."""

    def __init__(self, body: httpx2.AsyncByteStream) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._body:
            size += len(chunk)
            if size > MAX_MESSAGE_BYTES:
                raise httpx2.StreamError(f"a message over {MAX_MESSAGE_BYTES} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._body.aclose()


async def _bound_body(response: httpx2.Response) -> None:
    """Bound a remote downstream's answer that is one body; the SDK bounds each event of an event stream."""
    events = response.headers.get("content-type", "").startswith("text/event-stream")
    if not events and isinstance(response.stream, httpx2.AsyncByteStream):
        response.stream = _BoundedBody(response.stream)


def _over_bound(holder: dict[str, Connection]) -> None:
    """Mark the connection in ``holder`` as ended for a message over ``MAX_MESSAGE_BYTES``."""
    connection = holder.get("connection")
    if connection is not None:
        connection.fault = f"it sent a message over {MAX_MESSAGE_BYTES} bytes, the most the gateway reads"


def _redact_tools(tools: list[Tool], redactor: Redactor) -> list[Tool]:
    return [Tool.model_validate(redactor.data(tool.model_dump(by_alias=True))) for tool in tools]


async def redact_result_off_loop(result: CallToolResult, redactor: Redactor) -> CallToolResult:
    """``redact_result``, in a worker thread for a result over ``redactor.inline_chars``."""
    if chars_within(_result_strings(result), redactor.inline_chars):
        return redact_result(result, redactor)
    return await anyio.to_thread.run_sync(redact_result, result, redactor)


def _result_strings(result: CallToolResult) -> Iterator[Any]:
    """What of ``result`` is redacted: its content blocks' fields, structured content and ``_meta``."""
    for block in result.content:
        yield from vars(block).values()
        resource = getattr(block, "resource", None)
        if resource is not None:
            yield from vars(resource).values()
    yield result.structured_content
    yield result.meta


def redact_result(result: CallToolResult, redactor: Redactor) -> CallToolResult:
    """``result`` with every spelling of an injected value replaced: text, structured content, errors.

    The texts of its text blocks and embedded resources are read as one text first, and so are the strings
    of its structured content, so that a value cut across them is replaced too.
    """
    dumped = result.model_dump(by_alias=True, mode="json")
    if isinstance(dumped.get("_meta"), dict):
        # The downstream's stamp of who answered (2026-07-28): the client's server is the gateway, whose
        # own stamp the SDK adds where there is none.
        dumped["_meta"].pop(SERVER_INFO_META_KEY, None)
    holders = [holder for holder in map(_text_holder, dumped["content"]) if holder is not None]
    for holder, text in zip(holders, redactor.texts([holder["text"] for holder in holders]), strict=True):
        holder["text"] = text
    structured = dumped.pop("structuredContent", None)
    shown = redactor.data(dumped)
    shown["structuredContent"] = redactor.data_read_in_order(structured)
    return CallToolResult.model_validate(shown)


async def _within_output_schema(
    shown: CallToolResult,
    received: CallToolResult,
    client: Client,
    *,
    tool: str,
    redactor: Redactor,
    server: str,
) -> CallToolResult:
    """``shown``, or a tool error with its text when redaction took its structured content out of its schema.

    A client checks structured content against the tool's output schema and refuses the whole result when it
    does not fit (both SDKs' clients do, the TypeScript one even in a tool error): a label where the schema
    says integer, or breaks a pattern, cannot be shown as it is. The text content, redacted, still can.
    """
    if shown.structured_content is None or shown.structured_content == received.structured_content:
        return shown  # the downstream's own, which the gateway's client has checked
    try:
        await client.session.validate_tool_result(tool, shown)
    except RuntimeError as exc:
        cause = exc.__cause__
        # The downstream's own schema, which its listing showed redacted, may quote what it allows.
        problem = redactor.text(
            schema_problem(cause) if isinstance(cause, SchemaValidationError) else describe(exc)
        )
    else:
        return shown
    logger.info("structured content of %s of server %s withheld: redacted, %s", tool, server, problem)
    note = (
        f"[{server}] structured content withheld: with the values of secrets taken out of it, it no longer "
        f"fits the tool's output schema ({problem}). The text above is the result, redacted."
    )
    content = [*shown.content, TextContent(type="text", text=note)]
    return shown.model_copy(update={"structured_content": None, "is_error": True, "content": content})


def _text_holder(block: dict[str, Any]) -> dict[str, Any] | None:
    """What holds the text a reader reads of a dumped content block: it, its embedded resource, or None."""
    if block.get("type") == "text":
        return block
    resource = block.get("resource") if block.get("type") == "resource" else None
    return resource if isinstance(resource, dict) and isinstance(resource.get("text"), str) else None


async def _call_round(
    client: Client,
    tool: str,
    arguments: dict[str, Any],
    ctx: Context[Any, Any],
    *,
    forward: ProgressFnT | None,
) -> CallToolResult | InputRequiredResult:
    """One round of a call whose client is asked by result: the answers it brings go on to the downstream.

    The downstream's request state goes to the client as the gateway's own, which the SDK seals and
    binds to this user, tool and arguments; nothing of the round is kept here.
    """

    async def send() -> CallToolResult | InputRequiredResult:
        return await client.session.call_tool(
            tool,
            arguments,
            progress_callback=forward,
            input_responses=ctx.input_responses,
            request_state=ctx.request_state,
            allow_input_required=True,
        )

    try:
        return await send()
    except MCPError as exc:
        if exc.code != HEADER_MISMATCH:
            raise
        # What the SDK's Client.call_tool does: the listing of the tool is missing or stale; list, send again.
        await _every_tool(client, cache_mode="refresh")
        return await send()


async def _redactor_of(values: dict[str, str]) -> Redactor:
    """The Redactor of ``values``; of long ones (a PEM key, a key file), built off the event loop."""
    if sum(map(len, values.values())) <= BUILD_INLINE_CHARS:
        return Redactor(values)
    return await anyio.to_thread.run_sync(Redactor, values)


def _questions(
    result: InputRequiredResult, ctx: Context[Any, Any], redactor: Redactor, server: str
) -> InputRequiredResult:
    """The downstream's questions as its user's client is to see them; DownstreamError if it cannot."""
    shown: dict[str, InputRequest] = {}
    for key, request in (result.input_requests or {}).items():
        if not isinstance(request, ElicitRequest):  # sampling or roots: never declared to a downstream
            raise DownstreamError(
                f"downstream server {server} asked for {request.method}, which is not relayed"
            )
        if redactor.text(key) != key:
            # The client answers under the key it was shown, and the downstream finds its answer by its own
            # key: one redacted would never be answered.
            raise DownstreamError(f"downstream server {server} named its question with an injected secret")
        mode = mode_of(request.params)
        if not takes_elicitation(ctx, mode):
            raise DownstreamError(
                f"downstream server {server} asks its user in {mode} mode; this client has none"
            )
        shown[key] = ElicitRequest(params=shown_question(request.params, redactor, server))
    return InputRequiredResult(input_requests=shown or None, request_state=result.request_state)


def _callable(tool: Tool, server: str) -> bool:
    """False for a tool that ``server`` runs only as a task (SEP-1686), which the gateway does not relay."""
    if tool.execution is None or tool.execution.task_support != "required":
        return True
    logger.info("tool %r of server %s left out of a listing: it runs only as a task", tool.name, server)
    return False


def _uncut(server: str, name: str, tools: list[Tool]) -> str | None:
    """The name among ``tools`` offered as ``name``; one that fits whole wins over one cut to it."""
    matches = [tool.name for tool in tools if offered_name(server, tool.name) == name]
    whole = name.removeprefix(f"{server}{SEPARATOR}")
    return whole if whole in matches else next(iter(matches), None)


async def _still_answers(client: Client) -> bool:
    """True when ``client``'s server answers a listing of its tools within ``ALIVE_SECONDS``.

    A listing, not a ping: ping is gone as of protocol 2026-07-28. Never from the client's cache.
    """
    with anyio.move_on_after(ALIVE_SECONDS):
        try:
            await client.list_tools(cache_mode="bypass")
        except Exception:  # noqa: BLE001 - no answer, whatever the reason
            return False
        return True
    return False


async def _every_tool(client: Client, cache_mode: CacheMode = "use") -> list[Tool]:
    """Every tool ``client``'s server lists, page after page, up to ``LISTING_PAGES`` pages.

    DownstreamError when the pages together hold over ``LISTING_CHARS`` characters.
    """
    tools: list[Tool] = []
    chars = 0
    cursor = None
    for _ in range(LISTING_PAGES):
        page = await client.list_tools(cursor=cursor, cache_mode=cache_mode)
        chars += chars_up_to(page.tools, LISTING_CHARS - chars)
        if chars > LISTING_CHARS:
            raise DownstreamError(f"its tool listing holds over {LISTING_CHARS} characters, the most it may")
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


async def _take_turn(lock: anyio.Lock, seconds: float, server: str) -> None:
    """Take ``lock`` now if it is free, else within ``seconds``, or raise CallRunningError."""
    try:
        lock.acquire_nowait()
    except anyio.WouldBlock:
        with anyio.move_on_after(seconds):
            await lock.acquire()
            return
        raise CallRunningError(f"a call of yours to server {server} is still running") from None


def _client_gone(ctx: Context[Any, Any] | None) -> Callable[[], Awaitable[bool]] | None:
    """What waits until the client of ``ctx``'s call is gone, where it can go without the call cancelled.

    That is on a Streamable HTTP session (protocols of the handshake): the call is answered on the stream
    of its own POST, and once that closes (its client killed, or its network gone) the answer has
    nowhere to go, since no event store keeps it for a client to resume. The SDK goes on with the call
    all the same, as the specification has it: a closed stream is no cancellation. Anywhere else, a call
    is cancelled with its client's connection (SSE, 2026-07-28, stateless HTTP; stdio with its session),
    or has no client. It returns True once the client is gone, False if that cannot be told.
    """
    if ctx is None:
        return None
    # A Streamable HTTP session's id; SSE's connection has none. No public way in from a request's session.
    if ctx.request_context.session._connection.session_id is None:  # noqa: SLF001
        return None
    request = ctx.request_context.request
    if not isinstance(request, Request):
        return None

    async def gone() -> bool:
        # The POST's body is read: what its connection says next is that it closed, or that the answer was
        # sent whole, once the call is over. The SDK's stream of the answer listens the same way, as does
        # its 2026-07-28 transport, which cancels the call there.
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 - what cannot be told is not gone: a call is cut only surely
            return False
        return True

    return gone
