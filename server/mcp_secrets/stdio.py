"""The SDK's stdio server, reading no incoming message past a bound.

The SDK reads stdin a line at a time, each line whole whatever its length: a
client, or anything else writing to the server's stdin, could make one line
(and the server's memory) grow without end. Here a line is read up to
``MAX_MESSAGE_BYTES``; a longer one is skipped to its end, a bounded piece at a
time, and answered with an error. A line that is not UTF-8 is answered with an
error too, where the SDK would decode it with U+FFFD in place of each bad byte.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, BinaryIO, cast

import anyio
from mcp.server.lowlevel import Server
from mcp.server.stdio import _claim_fd, _open_stdin_diversion, stdio_server
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError, jsonrpc_message_adapter
from pydantic import ValidationError

logger = logging.getLogger(__name__)

# As much as the SDK accepts as a request body over HTTP.
MAX_MESSAGE_BYTES = DEFAULT_MAX_REQUEST_BODY_SIZE
# The id of a request, read from the start of its line: clients write "jsonrpc" and "id" first. An
# over-long request answered with its own id fails at once, where one answered with null would wait. Only
# a request's, its "method" next: a response's id numbers one of this server's requests, and an answer by
# it would reach the client as the answer to its own request of that number.
_LEADING_ID = re.compile(
    rb'\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?[0-9]{1,15}|"[^"\\]{0,64}")\s*,'
    rb'\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"method"\s*:'
)


class _BoundedLines:
    """The lines of ``wire`` for the SDK's stdio server to read, each at most ``MAX_MESSAGE_BYTES``."""

    def __init__(self, wire: BinaryIO) -> None:
        self._wire = wire
        # Sends the error that refuses an over-long message: set as soon as the SDK makes its stream.
        self.reply: Callable[[SessionMessage], Awaitable[None]] | None = None

    def __aiter__(self) -> _BoundedLines:
        return self

    async def __anext__(self) -> str:
        while True:
            line, over = await anyio.to_thread.run_sync(self._read_line)
            if not line:
                raise StopAsyncIteration
            if over:
                await self._refuse(line, INVALID_REQUEST, f"message too long: over {MAX_MESSAGE_BYTES} bytes")
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                # The SDK would decode it with U+FFFD in place of the byte, and a value would be stored
                # altered. Refused, as the SDK refuses such a body over HTTP; the session goes on.
                await self._refuse(line[:256], PARSE_ERROR, "Parse error: the message is not UTF-8")
                continue
            if not text.strip():  # a blank line between messages: nothing to answer
                continue
            unread = _unreadable(text)
            if unread is None:
                return text
            code, why, request_id = unread
            await self._refuse(line[:256], code, why, request_id=request_id, find_id=False)

    def _read_line(self) -> tuple[bytes, bool]:
        """The next line; or, when it is over the bound, its start and True, its rest read and dropped."""
        line = self._wire.readline(MAX_MESSAGE_BYTES + 1)
        if len(line) <= MAX_MESSAGE_BYTES or line.endswith(b"\n"):
            return line, False
        rest = line
        while rest and not rest.endswith(b"\n"):
            rest = self._wire.readline(MAX_MESSAGE_BYTES)
        return line[:256], True

    async def _refuse(
        self, start: bytes, code: int, why: str, *, request_id: int | str | None = None, find_id: bool = True
    ) -> None:
        """Answer the message ``start`` begins with an error, refusing it for ``why``.

        By ``request_id``; or, with ``find_id``, by the id that leads the message, if any.
        """
        message = f"{why}, refused"
        logger.error("stdin: %s", message)  # and nothing of the message: it may hold a value
        if self.reply is None:
            return
        if find_id:
            request_id = _leading_id(start)
        error = JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))
        # A session already over has nobody to tell.
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self.reply(SessionMessage(error))


def _unreadable(text: str) -> tuple[int, str, int | str | None] | None:
    """Why the SDK cannot read ``text`` as a JSON-RPC message, or None when it can.

    As (error code, why, the id to answer by). The SDK parses the message again: a few microseconds a
    message, against a request dropped without a word, which its client would wait on.
    """
    try:
        jsonrpc_message_adapter.validate_json(text, by_name=False)
    except ValidationError as exc:
        # Only the parser's own words (what it expected, where): never the input, which may be a value.
        problems = exc.errors(include_input=False, include_url=False, include_context=False)
        parse_problems = [problem["msg"] for problem in problems if problem["type"] == "json_invalid"]
    else:
        return None
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # not JSON to Python either: the id that leads it, if any
        return PARSE_ERROR, f"Parse error: {parse_problems[0]}", _leading_id(text[:256].encode("utf-8"))
    request_id = _request_id_in(message)
    if not parse_problems:
        why = "Invalid Request: not a JSON-RPC 2.0 request, notification or response (a batch is not taken)"
        return INVALID_REQUEST, why, request_id
    # JSON all the same, of a kind the SDK's parser does not read.
    return PARSE_ERROR, f"Parse error: {parse_problems[0]} ({_UNREAD_JSON})", request_id


# What Python's JSON parser reads and the SDK's (pydantic's) does not.
_UNREAD_JSON = (
    "a string may hold no lone surrogate (\\ud800 to \\udfff unpaired), a number no thousands of digits, "
    "and nesting may go about 200 levels deep at most"
)
_MAX_ID_CHARACTERS = 64  # as _LEADING_ID reads at most: an id is a counter or a UUID, not a document


def _request_id_in(message: object) -> int | str | None:
    """The id of the request ``message`` is, when it is one whose id is a number or a string.

    Not a response's (no method): its id is one of this server's requests, and an answer by it would
    reach the client as the answer to its own request of that number.
    """
    if not isinstance(message, dict) or "method" not in message:
        return None
    request_id = message.get("id")
    if type(request_id) is int or (type(request_id) is str and len(request_id) <= _MAX_ID_CHARACTERS):
        return request_id
    return None


def _leading_id(start: bytes) -> int | str | None:
    """The id a request's line starts with, as clients write it: before its method, which follows it."""
    found = _LEADING_ID.match(start)
    return None if found is None else _request_id(found.group(1))


def _request_id(found: bytes) -> int | str:
    return found[1:-1].decode("utf-8", errors="replace") if found.startswith(b'"') else int(found)


async def serve_stdio(server: Server[Any]) -> None:
    """Serve ``server`` on stdio as ``MCPServer.run_stdio_async`` does, refusing a message over the bound."""
    # The SDK's own claim of stdin, which it skips for a stdin it is given: fd 0 reads the null device
    # meanwhile, so that a child process or a library reading stdin gets EOF, not the client's messages.
    wire, release = _claim_fd(0, sys.stdin, "rb", _open_stdin_diversion)
    lines = _BoundedLines(wire)
    try:
        # The SDK only iterates its stdin, for lines of text as an AsyncFile gives them.
        async with stdio_server(stdin=cast("anyio.AsyncFile[str]", lines)) as (read_stream, write_stream):
            lines.reply = write_stream.send
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        if release is not None:
            release()
