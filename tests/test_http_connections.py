"""The connections `serve` accepts over HTTP, as uvicorn runs them with `guarded_protocol`, in process."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import anyio
import pytest
import uvicorn
from starlette.responses import PlainTextResponse
from uvicorn.server import ServerState

from mcp_secrets.http_connections import guarded_protocol
from mcp_secrets.listening import listening_sockets

pytestmark = pytest.mark.anyio

ACCEPT_SECONDS = 30.0  # generous: the server shares this event loop, and accepts at its next turn


@asynccontextmanager
async def accepted() -> AsyncIterator[socket.socket]:
    """The server's end of a connection accepted by ``guarded_protocol``, served as uvicorn serves it."""
    config = uvicorn.Config(PlainTextResponse("ok"), http=guarded_protocol(30, None), log_config=None)
    config.load()
    state = ServerState()
    (listening,) = listening_sockets("127.0.0.1", 0, 16)

    def protocol() -> asyncio.Protocol:
        return cast(
            "asyncio.Protocol", config.http_protocol_class(config=config, server_state=state, app_state={})
        )

    server = await asyncio.get_running_loop().create_server(protocol, sock=listening)
    try:
        with socket.create_connection(listening.getsockname()[:2]):
            with anyio.fail_after(ACCEPT_SECONDS):
                while not state.connections:
                    await anyio.sleep(0.01)
            (connection,) = state.connections
            yield connection.transport.get_extra_info("socket")
    finally:
        server.close()
        listening.close()


@pytest.mark.skipif(sys.platform != "linux", reason="the options as Linux has them")
async def test_a_connection_is_probed_when_idle_and_dropped_when_its_peer_is_gone_for_two_minutes() -> None:
    """Without, a network gone without a close (no FIN, no RST) was noticed when TCP gave up: ~15 minutes."""
    async with accepted() as connection:
        options = {
            "keepalive": connection.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }

    # Probed after 60 s of silence, every 10 s, 6 times; and what is sent and never acknowledged (the
    # keep-alive of a call's stream) ends it after as long: 60 + 10 x 6 = 120 s.
    assert options == {"keepalive": 1, "idle": 60, "interval": 10, "count": 6, "user_timeout_ms": 120_000}
