"""A bound on the requests one user has waiting for their answers on the legacy SSE transport.

On legacy SSE a client posts each message, which is answered 202 at once, and reads the answers on its
stream. The SDK handles each request in a task of its own, which holds its answer until the stream
takes it. Nothing bounds how many: a client that posts faster than the server answers, or that stops
reading its stream and goes on posting, has the server hold a task and an answer per request. 20,000
posts in 20 s took a process to 1.1 GB, and it kept 580 MB after. (On Streamable HTTP each request
waits on a connection of its own, and connections are bounded.)

Here each request a user posts is counted until its answer is sent on its stream, or it is cancelled
(while the stream is being read: the answer of a request cancelled too late still waits for it), or the
stream ends; past ``MOST_WAITING`` of a user's, a new request is refused with 429. Notifications and
answers to the server's own requests always pass: a client at the bound can still cancel.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from uuid import UUID

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext, authorization_context
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp.shared.dispatcher import as_request_id, coerce_request_id
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from mcp.types import JSONRPCNotification, JSONRPCRequest, RequestId, jsonrpc_message_adapter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_secrets.request_body import read_body
from mcp_secrets.session_quota import token_username

logger = logging.getLogger(__name__)

MOST_WAITING = 100  # requests of one user waiting for their answers, over all their streams
WARNING_SECONDS = 60.0  # at most one warning this often per user while their requests are refused
_ANNOUNCED = re.compile(rb"session_id=([0-9a-f]{32})")
_CANCELLED = "notifications/cancelled"
# An SSE event holding an answer as the SDK writes it: its id (a number, or a string with its escapes).
_ANSWER = re.compile(
    rb'event: message\r\ndata: \{"jsonrpc":"2\.0","id":(-?\d+|"(?:[^"\\]|\\.)*"),"(?:result|error)":'
)
_TOO_LARGE = Response("Request body too large", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
_DUPLICATE = PlainTextResponse(
    "a request with this id is waiting for its answer already: each request needs an id of its own",
    HTTPStatus.CONFLICT,
)
STALL_SECONDS = 0.05  # a send that took longer had to wait for the client to read
CANCEL_GRACE_SECONDS = 5.0  # how long a stream flows before the requests cancelled as it stalled count off


@dataclass
class _Stream:
    username: str
    owner: AuthorizationContext  # the credential that opened it: the SDK takes posts of that one only
    waiting: Counter[RequestId] = field(default_factory=Counter)  # request ids posted, not yet answered
    cancelled: Counter[RequestId] = field(default_factory=Counter)  # of those, cancelled while it stalled
    sending: int = 0  # sends to the client under way: past an await, it has stopped taking what is sent
    stalled_at: float = -math.inf  # when a send last had to wait for the client


class SseBacklog:
    """Wraps the SSE stream route (``stream``) and the message route (``posts``) of one server."""

    def __init__(self, most: int = MOST_WAITING) -> None:
        self.most = most
        self._streams: dict[str, _Stream] = {}  # by session id, as the stream announced it
        self._waiting: Counter[str] = Counter()  # by user: the sum of their streams' ``waiting``
        self._warned: dict[str, float] = {}

    def stream(self, app: ASGIApp) -> ASGIApp:
        """The SSE stream route, watched for the answers it sends."""

        async def watched(scope: Scope, receive: Receive, send: Send) -> None:
            username, owner = token_username(scope), _credential(scope)
            if username is None or owner is None:  # refused by the SDK: there is no stream to watch
                await app(scope, receive, send)
                return
            stream = _Stream(username, owner)
            session_id: str | None = None

            async def watching(message: Message) -> None:
                nonlocal session_id
                stream.sending += 1
                began = time.monotonic()
                try:
                    await send(message)
                finally:
                    stream.sending -= 1
                    if time.monotonic() - began > STALL_SECONDS:
                        stream.stalled_at = time.monotonic()
                body = message.get("body", b"") if message["type"] == "http.response.body" else b""
                if session_id is None:
                    if announced := _ANNOUNCED.search(body):
                        session_id = announced.group(1).decode()
                        self._streams[session_id] = stream
                elif stream.waiting and (answered := _answered(body)) is not None:
                    self._settle(stream, answered)

            try:
                await app(scope, receive, watching)
            finally:
                if session_id is not None:
                    self._streams.pop(session_id, None)
                self._waiting[stream.username] -= stream.waiting.total()
                self._forget(stream.username)

        return watched

    def posts(self, app: ASGIApp) -> ASGIApp:
        """The message route, bounded: a request past the user's bound is refused with 429."""

        async def bounded(scope: Scope, receive: Receive, send: Send) -> None:
            stream = self._own_stream(scope)
            if stream is None:  # not a post to a stream of the poster's: the SDK answers it
                await app(scope, receive, send)
                return
            body = await read_body(Request(scope, receive), DEFAULT_MAX_REQUEST_BODY_SIZE)
            if body is None:
                await _TOO_LARGE(scope, receive, send)  # as the SDK would answer it
                return
            request_id, cancelled = _posted(body)
            self._release_cancelled(stream)
            replay = _replaying(body, receive)
            if request_id is None:
                if await _accepted(app, scope, replay, send) and cancelled is not None:
                    self._cancel(stream, cancelled)  # taken by the SDK: it may stop the request
            elif self._waiting[stream.username] >= self.most:
                await self._refuse(stream.username, scope, receive, send)
            elif stream.waiting[request_id]:
                # JSON-RPC ids are unique among requests in flight; the SDK would let the second take the
                # first one's place, and a cancel stop only one of them.
                await _DUPLICATE(scope, receive, send)
            else:
                # Counted from before the SDK has it: its answer may come before this call returns.
                stream.waiting[request_id] += 1
                self._waiting[stream.username] += 1
                accepted = False
                try:
                    accepted = await _accepted(app, scope, replay, send)
                finally:
                    if not accepted:  # refused by the SDK: it will never be answered
                        self._settle(stream, request_id)

        return bounded

    def _cancel(self, stream: _Stream, request_id: RequestId) -> None:
        """The client cancelled a request: it is never answered, unless it was answered already.

        An answer written before the cancel came waits for the stream all the same: while the stream
        stalls, the request stays counted, until its answer goes or the stream has flowed for a while.
        """
        if stream.cancelled[request_id] >= stream.waiting[request_id]:
            return  # not waiting, or cancelled already
        if stream.sending or time.monotonic() - stream.stalled_at < CANCEL_GRACE_SECONDS:
            stream.cancelled[request_id] += 1
        else:
            self._settle(stream, request_id)

    def _release_cancelled(self, stream: _Stream) -> None:
        """Count off the requests cancelled while the stream stalled, once it has flowed for a while.

        Each send that had to wait meanwhile starts the while anew: a client that does not read keeps
        them counted, and one that reads has had their answers, if any, sent.
        """
        if not stream.cancelled or stream.sending:
            return
        if time.monotonic() - stream.stalled_at < CANCEL_GRACE_SECONDS:
            return
        for request_id, count in list(stream.cancelled.items()):
            for _ in range(count):
                self._settle(stream, request_id)
        stream.cancelled.clear()

    def _own_stream(self, scope: Scope) -> _Stream | None:
        """The stream a post names, when the poster is its user; None otherwise."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        named = Request(scope).query_params.get("session_id")  # as the SDK reads it
        try:
            session_id = UUID(hex=named).hex if named is not None else None
        except ValueError:
            return None
        stream = self._streams.get(session_id) if session_id is not None else None
        if stream is None or _credential(scope) != stream.owner:
            return None  # as the SDK, which answers 404: the same user's other token is not its owner
        return stream

    def _settle(self, stream: _Stream, request_id: RequestId) -> None:
        """A request of ``stream`` is answered (or cancelled, or was never delivered): it waits no more."""
        if stream.waiting[request_id] <= 0:  # answered already, or never counted
            return
        stream.waiting[request_id] -= 1
        if not stream.waiting[request_id]:
            del stream.waiting[request_id]
        if stream.cancelled[request_id] > stream.waiting[request_id]:  # its answer went: no longer pending
            stream.cancelled[request_id] -= 1
        if stream.cancelled[request_id] <= 0:
            stream.cancelled.pop(request_id, None)
        self._waiting[stream.username] -= 1
        self._forget(stream.username)

    def _forget(self, username: str) -> None:
        if self._waiting[username] <= 0:
            self._waiting.pop(username, None)

    async def _refuse(self, username: str, scope: Scope, receive: Receive, send: Send) -> None:
        now = time.monotonic()
        if now - self._warned.get(username, -WARNING_SECONDS) >= WARNING_SECONDS:
            self._warned[username] = now
            logger.warning(
                "refused requests of %s on legacy SSE: %d of that user's are waiting for their answers",
                username,
                self.most,
            )
        message = (
            f"too many requests of this user waiting for their answers (at most {self.most}): read them "
            "on the SSE stream, or cancel some, before sending more"
        )
        await PlainTextResponse(message, HTTPStatus.TOO_MANY_REQUESTS)(scope, receive, send)


def _credential(scope: Scope) -> AuthorizationContext | None:
    """The verified credential of a request, as the SDK ties a session to it; None before authentication."""
    if scope["type"] != "http" or token_username(scope) is None:
        return None
    return authorization_context(scope["user"])


async def _accepted(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> bool:
    """Pass a post to the SDK; whether it took the message (202)."""
    accepted = False

    async def noting(message: Message) -> None:
        nonlocal accepted
        if message["type"] == "http.response.start":
            accepted = message["status"] == HTTPStatus.ACCEPTED
        await send(message)

    await app(scope, receive, noting)
    return accepted


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the body already read given back first."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _posted(body: bytes) -> tuple[RequestId | None, RequestId | None]:
    """The id of the request a post holds, and the id of the request it cancels; None for none.

    Read as the SDK reads it, so that both count the same: ``{"id": 1.0, "method": …}`` is a
    notification to it, never answered.
    """
    try:
        message = jsonrpc_message_adapter.validate_json(body, by_name=False)
    except ValidationError:
        return None, None  # the SDK refuses it
    if isinstance(message, JSONRPCRequest):
        return coerce_request_id(message.id), None
    if isinstance(message, JSONRPCNotification) and message.method == _CANCELLED:
        cancelled = cancelled_request_id_from_params(message.params)
        return None, None if cancelled is None else coerce_request_id(cancelled)
    return None, None


def _answered(event: bytes) -> RequestId | None:
    """The id of the request an SSE event answers; None for any other event (a notification, a ping).

    Read from the start of the SDK's own output (``{"jsonrpc":"2.0","id":…,"result":…}``): an answer may
    be megabytes, not to be parsed again on the event loop.
    """
    answer = _ANSWER.match(event)
    if answer is None:
        return None
    request_id = as_request_id(json.loads(answer.group(1)))
    return None if request_id is None else coerce_request_id(request_id)  # "7" and 7 are one to the SDK
