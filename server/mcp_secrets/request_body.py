"""Reading an HTTP request body with a bound, whether or not the request declares its length.

A ``Content-Length`` check alone lets a chunked request through, and Starlette's
``body()`` and ``form()`` read all of it into memory: the entry page takes a POST
from anyone who can reach the server, before it knows whether the link is real.
The SDK bounds its own endpoints with ``RequestBodyLimitMiddleware``, which answers
in plain text; the REST API answers in JSON and the entry page in HTML, so they
read their bodies here and answer in their own form.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Message


async def read_body(request: Request, limit: int) -> bytes | None:
    """The whole body; None as soon as it is known to be over ``limit`` bytes, declared or streamed."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            return None
    return bytes(received)


def with_body(request: Request, body: bytes) -> Request:
    """The same request over a body already read, so that Starlette's parsers can read it again."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, replay)
