"""A bound on the sessions one user keeps open over HTTP, so that no one user can take them all.

The SDK bounds the sessions of a Streamable HTTP server as a whole (10,000), not per user: one token
holder opening sessions and leaving them would fill the server until they idle out (30 minutes), and
every other user would be refused meanwhile. SSE has no bound at all: each stream holds a connection
and a task for as long as the client keeps it. Past the bound a user's new session is refused with 429;
the sessions already open, and every other user's, go on. Sessions opened with an API token revoked (or
expired) since do not count: no request can use them again, and a leaked token, once revoked, must not
keep its user out. The ``subscriptions/listen`` streams of protocol 2026-07-28, which has no sessions,
are bounded per user the same way (the SDK takes 1,024 in all), by ``OpenStreams``. A stateless server
keeps nothing open past a request: its GET, a stream that could never carry a message, is refused.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus

from mcp.server.auth.middleware.bearer_auth import (
    AuthenticatedUser,
    AuthorizationContext,
    authorization_context,
)
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_secrets.errors import SecretsError
from mcp_secrets.identity import API_TOKEN_CLIENT, API_TOKEN_ISSUER
from mcp_secrets.offload import run_store_work
from mcp_secrets.tokens import ApiTokens

logger = logging.getLogger(__name__)

_INVALID_REQUEST = -32600  # JSON-RPC, as the SDK answers its own session limit


def token_username(scope: Scope) -> str | None:
    """The verified token's user, as the tools take it; None before authentication (the SDK refuses it)."""
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser) and user.access_token.subject:
        return user.access_token.subject
    return None


async def _live_tokens(tokens: ApiTokens, username: str) -> set[str] | None:
    """The ids of the user's API tokens that still work; None when the store cannot say (all count)."""
    try:
        return await run_store_work(tokens.store, lambda: tokens.live_ids(username))
    except SecretsError:
        return None


def _counts(owner: AuthorizationContext | None, live: set[str] | None) -> bool:
    """Whether a session of ``owner`` counts: all do, but those of an API token that no longer works."""
    if owner is None:
        return True
    client_id = owner["client_id"]
    if live is None or owner["issuer"] != API_TOKEN_ISSUER or not client_id.startswith(API_TOKEN_CLIENT):
        return True
    return client_id.removeprefix(API_TOKEN_CLIENT) in live


async def token_check(tokens: ApiTokens, username: str) -> Callable[[AuthorizationContext | None], bool]:
    """Whether what ``owner`` opened for ``username`` is still theirs: not if their API token has died."""
    live = await _live_tokens(tokens, username)
    return lambda owner: _counts(owner, live)


async def _refuse(username: str, most: int, scope: Scope, receive: Receive, send: Send) -> None:
    logger.warning("refused a new session of %s: %d sessions of that user are open already", username, most)
    message = (
        f"too many open sessions for this user (at most {most}): close one (DELETE on Streamable HTTP, "
        "or end an SSE stream), or wait until an idle one ends"
    )
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": _INVALID_REQUEST, "message": message}}
    await JSONResponse(body, status_code=HTTPStatus.TOO_MANY_REQUESTS)(scope, receive, send)


class SessionlessEndpoint:
    """In front of a stateless ``/mcp``: any method but POST is refused (405, ``Allow: POST``).

    With no session, nothing is ever sent on a GET stream, which would yet hold a task and a connection
    for as long as its client keeps it, with no bound per user; and there is no session to DELETE.
    A request without a token goes on to the SDK, which refuses it (401).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 405 to an authenticated request other than a POST; pass anything else on."""
        if scope["type"] != "http" or scope["method"] == "POST" or token_username(scope) is None:
            await self.app(scope, receive, send)
            return
        message = "Method Not Allowed: this server is stateless; send each message by POST"
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": _INVALID_REQUEST, "message": message}}
        refused = JSONResponse(body, status_code=HTTPStatus.METHOD_NOT_ALLOWED, headers={"Allow": "POST"})
        await refused(scope, receive, send)


class StreamableSessionQuota:
    """In front of ``/mcp``: refuses a request that would open one session more than a user may keep."""

    def __init__(
        self, app: ASGIApp, manager: StreamableHTTPSessionManager, most: int, tokens: ApiTokens
    ) -> None:
        self.app = app
        self.manager = manager
        self.most = most
        self.tokens = tokens
        # Requests that may open a session and are not answered yet: the manager records a session only
        # after an await, so requests sent at once would all pass a count of the recorded ones alone.
        self._opening: Counter[str] = Counter()
        # Sessions whose opening request has been answered. One recorded while its request is still in
        # flight is counted in _opening, not again among the recorded: counted twice, it would make a
        # request sent meanwhile meet the bound early, refused below it.
        self._answered: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a POST without a session id, the only request that opens a session, past the bound."""
        username = token_username(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        # The first of a repeated header, as the manager reads it (a dict would keep the last): a second
        # version header must not make a request that opens a session look sessionless here.
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        version = headers.get(MCP_PROTOCOL_VERSION_HEADER.encode())
        # As the manager routes it: a request of a later protocol than the handshake's (2026-07-28)
        # stands alone and opens no session.
        sessionless = version is not None and version.decode("latin-1") not in HANDSHAKE_PROTOCOL_VERSIONS
        if username is None or sessionless or MCP_SESSION_ID_HEADER.encode() in headers:
            await self.app(scope, receive, send)
            return
        # Counted with the ones not answered yet, each once, whether or not the manager has recorded it.
        if self._open(username) + self._opening[username] >= self.most:
            # Looked at only here, at the bound: it takes a store call. No await between this count and
            # the one taken below, so requests at once still cannot pass the bound.
            live = await _live_tokens(self.tokens, username)
            if self._open(username, live) + self._opening[username] >= self.most:
                await _refuse(username, self.most, scope, receive, send)
                return
        self._opening[username] += 1
        in_flight = True

        def answered(session_id: str | None) -> None:
            nonlocal in_flight
            in_flight = False
            self._settle(username, session_id)

        async def send_answer(message: Message) -> None:
            # The manager records a session before it answers: from here on, its own count has it.
            if in_flight and message["type"] == "http.response.start":
                answered(_session_id(message))
            await send(message)

        try:
            await self.app(scope, receive, send_answer)
        finally:
            if in_flight:
                answered(None)

    def _settle(self, username: str, session_id: str | None) -> None:
        """One of ``username``'s requests in flight is answered, with the session it opened if any."""
        self._opening[username] -= 1
        owners = self.manager._session_owners  # noqa: SLF001 - see _open
        self._answered &= owners.keys()  # those the manager has forgotten go
        if session_id is not None:
            self._answered.add(session_id)
        if not self._opening[username]:
            del self._opening[username]
            # None of theirs in flight: whatever of theirs is recorded is answered (one whose request
            # failed before its answer included).
            self._answered.update(sid for sid, owner in owners.items() if owner["subject"] == username)

    def _open(self, username: str, live: set[str] | None = None) -> int:
        """The user's sessions whose opening request was answered; those in flight are in ``_opening``."""
        # The manager's own record of who opened each live session: it forgets a session however it
        # ends (DELETE, idle timeout, crash), which no layer in front of it can see. No public API has it.
        owners = self.manager._session_owners  # noqa: SLF001
        return sum(
            1
            for session_id, owner in owners.items()
            if owner["subject"] == username and session_id in self._answered and _counts(owner, live)
        )


def _session_id(start: Message) -> str | None:
    """The session id an answer's headers give, if any."""
    for name, value in start.get("headers", ()):
        if name.lower() == MCP_SESSION_ID_HEADER.encode():
            return bytes(value).decode("latin-1")
    return None


class OpenStreams:
    """Who opened each stream a user has open, to keep each user within ``most`` of them."""

    def __init__(self, most: int, tokens: ApiTokens) -> None:
        self.most = most
        self.tokens = tokens
        self._open: dict[str, list[AuthorizationContext | None]] = {}  # by user; None: no token (stdio)

    async def full(self, username: str) -> bool:
        """Whether ``username`` has as many streams open as they may; those of a dead token not counted."""
        if len(self._open.get(username, ())) < self.most:
            return False
        live = await _live_tokens(self.tokens, username)  # at the bound only: it takes a store call
        return sum(_counts(owner, live) for owner in self._open.get(username, ())) >= self.most

    @contextmanager
    def counted(self, username: str, owner: AuthorizationContext | None) -> Iterator[None]:
        """Count a stream of ``username`` opened by ``owner`` while inside, however it ends."""
        streams = self._open.setdefault(username, [])
        streams.append(owner)
        try:
            yield
        finally:
            streams.remove(owner)
            if not streams and self._open.get(username) is streams:
                del self._open[username]


class SseStreamQuota:
    """In front of ``/sse``: refuses a stream that would be one more than a user may keep open.

    An SSE session lives exactly as long as the GET request of its stream, so counting the requests in
    flight counts the sessions.
    """

    def __init__(self, app: ASGIApp, most: int, tokens: ApiTokens) -> None:
        self.app = app
        self.streams = OpenStreams(most, tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the stream, counted for its user while it lasts, unless the user is at the bound."""
        username = token_username(scope) if scope["type"] == "http" else None
        if username is None:
            await self.app(scope, receive, send)
            return
        # No await between the count of full() and the one counted() adds: streams at once cannot pass.
        if await self.streams.full(username):
            await _refuse(username, self.streams.most, scope, receive, send)
            return
        with self.streams.counted(username, authorization_context(scope["user"])):
            await self.app(scope, receive, send)
