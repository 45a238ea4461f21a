"""Against a real ``serve``: a request that never arrives whole is closed; connections stay under the limit.

Anyone who can reach the port could otherwise hold connections open with half a request, or none, until
the process had no file descriptor left: nobody else got in, and the log filled with asyncio's errors.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import anyio
import pytest

from conftest import text_of
from e2e.conftest import Deployment, _module_server, isolated_env

pytestmark = pytest.mark.anyio

REQUEST_SECONDS = 2  # the server's bound in this module: short, so that a test waits little
CLOSE_WAIT_SECONDS = 100  # how long a test waits for the server to close a connection: a failure, not a limit
TOO_SLOW = "closed a connection: its request did not arrive whole within 2 s"
BUSY = "connections are open, as many as allowed"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _module_server(
        tmp_path_factory, "streamable-http", MCP_SECRETS_REQUEST_TIMEOUT_SECONDS=str(REQUEST_SECONDS)
    )


def _port(deployment: Deployment) -> int:
    assert deployment.base_url is not None
    return int(deployment.base_url.rsplit(":", 1)[1])


def _send(port: int, data: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(data)
    return connection


def _until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a test failure if it never does)."""
    connection.settimeout(CLOSE_WAIT_SECONDS)
    received = b""
    with connection:
        while chunk := connection.recv(65536):
            received += chunk
    return received


def _whole_response(connection: socket.socket) -> bytes:
    """One response read whole, by its Content-Length, leaving the connection open."""
    connection.settimeout(CLOSE_WAIT_SECONDS)
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return received


def _head(port: int, method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_requests_that_never_arrive_whole_are_closed_without_an_error_or_their_bytes_in_the_log(
    guarded: Deployment, canary: str
) -> None:
    port = _port(guarded)
    token = guarded.token("alice")
    stalled = {
        "nothing sent": b"",
        "headers unfinished": f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Note: {canary}".encode(),
        "entry page body unfinished": _head(
            port,
            "POST",
            "/secrets/entry/not-a-link",
            "Content-Type: application/x-www-form-urlencoded",
            "Content-Length: 1000",
        )
        + f"value={canary}".encode(),
        "MCP body unfinished": _head(
            port,
            "POST",
            "/mcp",
            f"Authorization: Bearer {token}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
            "Content-Length: 1000",
        )
        + f'{{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {{"value": "{canary}'.encode(),
    }
    # A connection that was answered once, then began its next request and stopped.
    kept_alive = _send(port, _head(port, "GET", "/healthz"))
    assert _whole_response(kept_alive).startswith(b"HTTP/1.1 200")
    kept_alive.sendall(f"GET /healthz HTTP/1.1\r\nX-Note: {canary}".encode())
    # One request, and half the next, sent at once: the second is read only once the first is answered.
    pipelined = _send(
        port,
        _head(port, "GET", "/healthz")
        + _head(port, "POST", "/secrets/entry/not-a-link", "Content-Length: 1000")
        + f"value={canary}".encode(),
    )
    connections = {what: _send(port, data) for what, data in stalled.items()}

    answers = {what: _until_closed(connection) for what, connection in connections.items()}
    answers["next request unfinished"] = _until_closed(kept_alive)
    pipelined_answer = _until_closed(pipelined)

    assert answers == dict.fromkeys([*stalled, "next request unfinished"], b"")  # closed, unanswered
    assert pipelined_answer.startswith(b"HTTP/1.1 200")
    assert pipelined_answer.count(b"HTTP/1.1") == 1
    log = guarded.log()
    assert log.count(TOO_SLOW) >= len(answers) + 1
    assert " ERROR " not in log
    assert "Traceback" not in log
    assert (canary in log) is False


def _wait_for_log(deployment: Deployment, line: str) -> bool:
    for _ in range(int(CLOSE_WAIT_SECONDS / 0.1)):
        if line in deployment.log():
            return True
        time.sleep(0.1)
    return False


def test_a_client_that_stops_reading_what_it_asked_for_is_cut_off(guarded: Deployment) -> None:
    """Its requests arrived whole: only the bound on reading the answers ends it, or it holds on for good."""
    port = _port(guarded)
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect(("127.0.0.1", port))
    # Some 40 MB of answers, never read: more than the kernel's buffers hold, so the server must wait.
    connection.sendall(_head(port, "GET", "/openapi.json") * 6000)

    cut_off = _wait_for_log(guarded, "closed a connection: its client read nothing for 2 s")
    connection.settimeout(CLOSE_WAIT_SECONDS)
    with connection, contextlib.suppress(ConnectionResetError):  # aborted: the kernel may say so
        while connection.recv(65536):
            pass

    assert cut_off


def test_the_rest_of_a_body_answered_early_is_dropped_only_for_a_moment(
    start_server: Callable[..., AbstractContextManager[Deployment]], tmp_path: Path
) -> None:
    # No bound on a request's arrival that could end it first: only the linger after the answer does.
    env = isolated_env(tmp_path, MCP_SECRETS_REQUEST_TIMEOUT_SECONDS="3600")
    with start_server(env, "streamable-http", tmp_path / "server.log") as deployment:
        port = _port(deployment)
        connection = _send(port, _head(port, "POST", "/secrets/set", "Content-Length: 100000000000"))
        connection.settimeout(CLOSE_WAIT_SECONDS)
        answer = connection.recv(65536)  # without a token: 401 at once, the body unread
        chunk, sent, refused = b"x" * 65536, 0, False
        with connection:
            try:
                for _ in range(200_000):  # 13 GB: far longer than any linger
                    sent += connection.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                refused = True

    assert answer.startswith(b"HTTP/1.1 401")
    assert refused, f"{sent} bytes taken in after the answer, and the connection still open"


def test_a_slow_request_that_arrives_whole_in_time_is_answered(guarded: Deployment) -> None:
    port = _port(guarded)
    request = _head(port, "GET", "/healthz")
    connection = socket.create_connection(("127.0.0.1", port))
    for start in range(0, len(request), 16):  # 16 bytes at a time, over a fifth of the bound
        connection.sendall(request[start : start + 16])
        time.sleep(REQUEST_SECONDS / 5 / (len(request) // 16 + 1))

    assert _until_closed_or_answered(connection).startswith(b"HTTP/1.1 200")


def _until_closed_or_answered(connection: socket.socket) -> bytes:
    connection.settimeout(CLOSE_WAIT_SECONDS)
    with connection:
        return connection.recv(65536)


async def test_a_session_outlives_the_bound_its_open_streams_included(guarded: Deployment) -> None:
    """The bound is on a request's arrival: a stream the server answers with stays open however long."""
    async with guarded.connect("alice") as client:
        await client.call_tool("set_secret", {"server": "s", "key": "K", "value": "v"})
        await anyio.sleep(REQUEST_SECONDS * 2)
        listed = await client.call_tool("list_secret_keys", {"server": "s"})

    assert "K" in text_of(listed)


async def test_a_legacy_sse_session_outlives_the_bound(
    start_server: Callable[..., AbstractContextManager[Deployment]], tmp_path: Path
) -> None:
    # Its answers come over the GET stream opened first: closed with the bound, the call would fail.
    env = isolated_env(tmp_path, MCP_SECRETS_REQUEST_TIMEOUT_SECONDS=str(REQUEST_SECONDS))
    with start_server(env, "sse", tmp_path / "server.log") as deployment:
        async with deployment.connect("alice") as client:
            await anyio.sleep(REQUEST_SECONDS * 2)
            listed = await client.call_tool("list_secret_keys", {})

    assert not listed.is_error


def _healthy_once_they_close(port: int) -> bytes:
    """The answer to /healthz once the server has seen enough connections go (it may take a moment)."""
    for _ in range(int(CLOSE_WAIT_SECONDS / 0.1)):
        answer = _until_closed_or_answered(_send(port, _head(port, "GET", "/healthz", "Connection: close")))
        if not answer.startswith(b"HTTP/1.1 503"):
            return answer
        time.sleep(0.1)
    return answer


def test_connections_past_half_the_descriptors_are_answered_503_and_the_server_stays_reachable(
    start_server: Callable[..., AbstractContextManager[Deployment]], tmp_path: Path
) -> None:
    # 256 descriptors: at most 128 connections. No bound on a request's time that a slow run could reach.
    env = isolated_env(tmp_path, MCP_SECRETS_REQUEST_TIMEOUT_SECONDS="3600")
    log_path = tmp_path / "server.log"
    with start_server(env, "streamable-http", log_path, nofile=256) as deployment, ExitStack() as held:
        assert deployment.process is not None
        port = _port(deployment)
        idle = [held.enter_context(_send(port, b"")) for _ in range(300)]
        answers = [_until_closed(connection) for connection in idle[-100:]]
        refused = [answer for answer in answers if answer.startswith(b"HTTP/1.1 503")]
        descriptors = len(list(Path(f"/proc/{deployment.process.pid}/fd").iterdir()))
        for connection in idle:
            connection.close()
        healthy = _healthy_once_they_close(port)
        log = deployment.log()

    assert len(refused) == 100  # the last 100 of 300, all past the 128 allowed
    assert descriptors < 256
    assert healthy.startswith(b"HTTP/1.1 200")
    assert log.count(BUSY) == 1  # once a minute at most, however many are refused
    assert "out of system resource" not in log
    assert "Traceback" not in log
