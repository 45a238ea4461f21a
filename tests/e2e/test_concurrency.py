"""Concurrent writers: racing writes of one secret leave one whole record; many users stay apart.

The default run uses small sizes; the full sizes (50 racing writers, 20 users
x 50 secrets) are marked ``load`` and run with ``-m load``.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import CallToolResult

from conftest import new_canary, text_of
from mcp_secrets import open_secrets
from mcp_secrets.app import build_server
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.identity import LocalIdentity
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import WouldBlock, is_nonblocking
from mcp_secrets.store.sqlite import SQLiteStore

from .conftest import Deployment, create_token, isolated_env, serving

pytestmark = pytest.mark.anyio

SERVER, KEY = "github", "TOKEN"
BARRIER_SECONDS = 30  # generous: only reached if the writers never all arrive, which fails the test
WRITERS = [10, pytest.param(50, marks=pytest.mark.load)]
USERS_AND_SECRETS = [(4, 10), pytest.param(20, 50, marks=pytest.mark.load)]


# --- many writers, one secret -----------------------------------------------------------------------


def _gated(put_secret: Callable[..., bool], barrier: threading.Barrier) -> Callable[..., bool]:
    def gated(*args: Any, **kwargs: Any) -> bool:
        if is_nonblocking():
            # Tried on the event loop first: refuse as a busy store would, so that every write
            # moves to a worker thread of its own and they all race there.
            raise WouldBlock
        barrier.wait()
        return put_secret(*args, **kwargs)

    return gated


def hold_writes_at_a_barrier(monkeypatch: pytest.MonkeyPatch, stores: list[Any], writers: int) -> None:
    """Make every ``put_secret`` wait until all ``writers`` have reached it, so that they truly race."""
    barrier = threading.Barrier(writers, timeout=BARRIER_SECONDS)
    for store in {id(store): store for store in stores}.values():
        monkeypatch.setattr(store, "put_secret", _gated(store.put_secret, barrier))


async def race(secrets_of_writers: list[Secrets], values: list[str]) -> list[CallToolResult]:
    """One in-process client session per writer, all calling ``set_secret`` at once for alice."""
    results: list[CallToolResult] = []

    async def write(secrets: Secrets, value: str) -> None:
        async with Client(build_server(secrets, LocalIdentity("alice"))) as client:
            arguments = {"server": SERVER, "key": KEY, "value": value}
            results.append(await client.call_tool("set_secret", arguments))

    # Every writer's blocking store call needs a worker thread of its own to reach the barrier.
    threads = anyio.to_thread.current_default_thread_limiter()
    default_threads, threads.total_tokens = threads.total_tokens, len(values) + 10
    try:
        async with anyio.create_task_group() as writers:
            for secrets, value in zip(secrets_of_writers, values, strict=True):
                writers.start_soon(write, secrets, value)
    finally:
        threads.total_tokens = default_threads
    return results


def assert_one_record_holding_one_of(
    secrets: Secrets, results: list[CallToolResult], values: list[str]
) -> None:
    assert [text_of(result) for result in results if result.is_error] == []
    statuses = Counter(result.structured_content["status"] for result in results if result.structured_content)
    assert statuses == Counter({"created": 1, "updated": len(values) - 1})
    records = secrets.store.find_secrets("alice")
    assert [(record.server, record.key) for record in records] == [(SERVER, KEY)]
    assert secrets.get_secrets("alice", SERVER)[KEY] in values


@pytest.mark.parametrize("writers", WRITERS)
async def test_racing_writes_of_one_secret_leave_one_record_holding_one_written_value(
    secrets: Secrets, monkeypatch: pytest.MonkeyPatch, writers: int
) -> None:
    values = [new_canary() for _ in range(writers)]
    hold_writes_at_a_barrier(monkeypatch, [secrets.store], writers)

    results = await race([secrets] * writers, values)

    assert_one_record_holding_one_of(secrets, results, values)


@pytest.fixture
def connection_per_writer(
    tmp_path: Path, encryptor: SecretEncryptor
) -> Iterator[Callable[[int], list[Secrets]]]:
    """``open(n)``: n Secrets services on one SQLite file, a connection each, as n processes would be."""
    opened: list[Secrets] = []

    def open_writers(count: int) -> list[Secrets]:
        services = [Secrets(SQLiteStore(tmp_path / "shared.db"), encryptor) for _ in range(count)]
        opened.extend(services)
        return services

    yield open_writers
    for service in opened:
        service.close()
        service.store.close()


@pytest.mark.parametrize("writers", WRITERS)
async def test_racing_writes_from_separate_sqlite_connections_leave_one_record(
    connection_per_writer: Callable[[int], list[Secrets]], monkeypatch: pytest.MonkeyPatch, writers: int
) -> None:
    values = [new_canary() for _ in range(writers)]
    secrets_of_writers = connection_per_writer(writers)
    hold_writes_at_a_barrier(monkeypatch, [secrets.store for secrets in secrets_of_writers], writers)

    results = await race(secrets_of_writers, values)

    assert_one_record_holding_one_of(secrets_of_writers[0], results, values)


# --- many users, many secrets, over Streamable HTTP ---------------------------------------------------


def library_secrets(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Secrets:
    """``open_secrets()`` as a Python service calls it, with exactly the server's MCP_SECRETS_* settings."""
    for name in list(os.environ):
        if name.startswith("MCP_SECRETS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("MCP_SECRETS_"):
            monkeypatch.setenv(name, value)
    return open_secrets()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Callable[[list[str]], Deployment]]:
    """``start(usernames)``: a Streamable HTTP server with a CLI-made token for each user."""
    with ExitStack() as servers:

        def start(usernames: list[str]) -> Deployment:
            env = isolated_env(tmp_path)
            tokens = {username: create_token(env, username) for username in usernames}
            deployment = servers.enter_context(serving(env, "streamable-http", tmp_path / "server.log"))
            deployment.tokens.update(tokens)
            return deployment

        yield start


@pytest.mark.parametrize(("users", "per_user"), USERS_AND_SECRETS)
async def test_concurrent_users_each_see_exactly_their_own_secrets(
    http_server: Callable[[list[str]], Deployment], monkeypatch: pytest.MonkeyPatch, users: int, per_user: int
) -> None:
    usernames = [f"user{number:02d}" for number in range(users)]
    keys = [f"KEY_{number:02d}" for number in range(per_user)]
    # Every user writes the same server and key names: only the username keeps them apart.
    values = {username: {key: new_canary() for key in keys} for username in usernames}
    deployment = http_server(usernames)
    listed: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    failures: list[str] = []

    async def one_user(username: str) -> None:
        async with deployment.connect(username) as client:

            async def write(key: str) -> None:
                arguments = {"server": SERVER, "key": key, "value": values[username][key]}
                result = await client.call_tool("set_secret", arguments)
                if result.is_error:
                    failures.append(f"{username}/{key}: {text_of(result)}")

            async with anyio.create_task_group() as writes:
                for key in keys:
                    writes.start_soon(write, key)
            result = await client.call_tool("list_secret_keys", {})
            structured = result.structured_content or {"username": text_of(result), "keys": []}
            pairs = [(entry["server"], entry["key"]) for entry in structured["keys"]]
            listed[username] = (structured["username"], pairs)

    async with anyio.create_task_group() as everyone:
        for username in usernames:
            everyone.start_soon(one_user, username)

    assert failures == []
    assert listed == {username: (username, [(SERVER, key) for key in keys]) for username in usernames}
    secrets = library_secrets(monkeypatch, deployment.env)
    try:
        read_back = {username: secrets.get_secrets(username, SERVER) for username in usernames}
    finally:
        secrets.close()
        secrets.store.close()
    assert read_back == values
    log = deployment.log()
    assert not [value for user_values in values.values() for value in user_values.values() if value in log]
