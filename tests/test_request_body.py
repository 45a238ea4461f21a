"""Request bodies are read with a bound: a declared length or a stream over it stops the read."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.types import Message

from mcp_secrets.request_body import read_body, with_body

pytestmark = pytest.mark.anyio

CHUNK = b"x" * 1024


def streamed(chunks: int, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[Request, list[int]]:
    """A request whose body arrives in ``chunks`` chunks of 1 KiB, and the count of chunks it gave so far."""
    given = [0]

    async def receive() -> Message:
        given[0] += 1
        return {"type": "http.request", "body": CHUNK, "more_body": given[0] < chunks}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers or [], "query_string": b""}
    return Request(scope, receive), given


async def test_a_body_within_the_limit_is_read_whole() -> None:
    request, _ = streamed(4)

    assert await read_body(request, 4 * 1024) == CHUNK * 4


async def test_a_chunked_body_over_the_limit_stops_being_read_at_the_limit() -> None:
    request, given = streamed(10_000)  # 10 MiB, without a Content-Length

    assert await read_body(request, 8 * 1024) is None
    assert given[0] == 9  # the chunk that went past 8 KiB, and not one more


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    request, given = streamed(10_000, headers=[(b"content-length", str(10_000 * 1024).encode())])

    assert await read_body(request, 8 * 1024) is None
    assert given[0] == 0


async def test_a_body_read_once_can_be_parsed_again_as_a_form() -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
        "query_string": b"",
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    form = await with_body(Request(scope, receive), b"csrf=abc&value=x%2By").form()

    assert dict(form) == {"csrf": "abc", "value": "x+y"}
