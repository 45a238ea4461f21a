"""The per-user session bound in front of Streamable HTTP, with requests held at the moments that matter.

The end-to-end tests (tests/e2e/test_transports.py) send requests at once to a real server; which of
them the manager has recorded when the next one is counted depends there on the machine's load. Here
the app behind the bound records a session and then waits, so each order is shown every time.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from anyio.abc import TaskGroup
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import Message, Receive, Scope, Send

from mcp_secrets.session_quota import StreamableSessionQuota
from mcp_secrets.store.sqlite import SQLiteStore
from mcp_secrets.tokens import ApiTokens

pytestmark = pytest.mark.anyio

BOUND = 2


class Manager:
    """Stands for the SDK's session manager: only its record of each live session's owner is read."""

    def __init__(self) -> None:
        self._session_owners: dict[str, Any] = {}


class App:
    """Opens a session per request, as the manager does: recorded first, answered when let go."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.ids = (f"session-{index}" for index in itertools.count())
        self.recorded = anyio.Event()
        self.answer = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: ARG002
        session_id = next(self.ids)
        self.manager._session_owners[session_id] = authorization_context(scope["user"])
        self.recorded.set()
        await self.answer.wait()
        headers = [(MCP_SESSION_ID_HEADER.encode(), session_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})


def opening(username: str) -> Scope:
    """A POST without a session id, of ``username``'s API token: a request that opens a session."""
    token = AccessToken(token="t", client_id="api-token:abc", scopes=[], subject=username)
    return {"type": "http", "method": "POST", "headers": [], "user": AuthenticatedUser(token)}


async def status_of(quota: StreamableSessionQuota, scope: Scope) -> int:
    """The status the bound, and the app behind it, answer ``scope`` with."""
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await quota(scope, receive, send)
    return statuses[0]


@pytest.fixture
def quota_and_app(tmp_path: Path) -> tuple[StreamableSessionQuota, App]:
    manager = Manager()
    app = App(manager)
    tokens = ApiTokens(SQLiteStore(tmp_path / "secrets.db"))
    quota = StreamableSessionQuota(app, cast("StreamableHTTPSessionManager", manager), BOUND, tokens)
    return quota, app


async def open_and_hold(
    requests: TaskGroup, quota: StreamableSessionQuota, app: App, statuses: list[int]
) -> None:
    """Send one request of alice's that opens a session; return once it is recorded and held unanswered.

    Its status goes to ``statuses`` when it is answered, or at once when the bound refuses it.
    """

    async def open_one() -> None:
        statuses.append(await status_of(quota, opening("alice")))
        app.recorded.set()  # refused, it is never recorded: what waits for it goes on all the same

    requests.start_soon(open_one)
    await app.recorded.wait()
    app.recorded = anyio.Event()


async def test_a_session_recorded_but_not_yet_answered_counts_once(
    quota_and_app: tuple[StreamableSessionQuota, App],
) -> None:
    # Counted twice (recorded, and in flight), one session held the place of two: a user with one open
    # got 429 for a second, below the bound of two.
    quota, app = quota_and_app
    statuses: list[int] = []

    async with anyio.create_task_group() as requests:
        await open_and_hold(requests, quota, app, statuses)  # recorded, not answered
        await open_and_hold(requests, quota, app, statuses)  # must pass the bound and be recorded too
        app.answer.set()

    assert statuses == [200, 200]


async def test_requests_in_flight_still_cannot_pass_the_bound(
    quota_and_app: tuple[StreamableSessionQuota, App],
) -> None:
    quota, app = quota_and_app
    statuses: list[int] = []

    async with anyio.create_task_group() as requests:
        for _ in range(BOUND):
            await open_and_hold(requests, quota, app, statuses)
        third = await status_of(quota, opening("alice"))  # both others in flight, recorded, unanswered
        app.answer.set()
    fourth = await status_of(quota, opening("alice"))  # both answered and open
    bobs = await status_of(quota, opening("bob"))

    assert (third, fourth, statuses, bobs) == (429, 429, [200, 200], 200)
