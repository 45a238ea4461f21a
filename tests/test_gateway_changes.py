"""Telling a user's clients that their tools changed (mcp_secrets.gateway.changes), without a transport."""

from __future__ import annotations

import secrets as secrets_module
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp.shared.subscriptions import ServerEvent, ToolsListChanged

from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.gateway import changes as changes_module
from mcp_secrets.gateway.changes import LISTENING_USER, StillTheirs, ToolListChanges
from mcp_secrets.gateway.listen import FIRST_PAUSE_SECONDS, LIVED_LONG_SECONDS, LONGEST_PAUSE_SECONDS, Backoff
from mcp_secrets.offload import run_store_work
from mcp_secrets.secrets import Secrets
from mcp_secrets.store.sqlite import SQLiteStore
from mcp_secrets.tokens import ApiTokens

pytestmark = pytest.mark.anyio


@pytest.fixture
def tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ApiTokens, list[str]]]:
    """API tokens on a real store, and the users whose live tokens were looked up, in order."""
    store = SQLiteStore(tmp_path / "secrets.db")
    tokens = ApiTokens(store)
    looked_up: list[str] = []
    live_ids = tokens.live_ids

    def counted(username: str) -> set[str]:
        looked_up.append(username)
        return live_ids(username)

    monkeypatch.setattr(tokens, "live_ids", counted)
    try:
        yield tokens, looked_up
    finally:
        store.close()


async def test_a_change_is_told_to_its_users_stream_and_not_to_anothers(
    tokens: tuple[ApiTokens, list[str]],
) -> None:
    changes = ToolListChanges(tokens[0])
    heard: dict[str, list[ServerEvent]] = {"alice": [], "bob": []}
    told = anyio.Event()
    for username, events in heard.items():
        listening = LISTENING_USER.set((username, None))
        changes.bus.subscribe(lambda event, events=events: (events.append(event), told.set()))
        LISTENING_USER.reset(listening)

    async with changes.running():
        changes.changed("alice")
        with anyio.fail_after(10):
            await told.wait()

    assert heard == {"alice": [ToolsListChanged()], "bob": []}


async def test_a_change_of_a_user_with_no_client_listening_asks_the_store_nothing(
    tokens: tuple[ApiTokens, list[str]],
) -> None:
    # Whose tokens still work is asked only to choose among the user's clients: with none, not at all.
    api_tokens, looked_up = tokens
    changes = ToolListChanges(api_tokens)
    listening = LISTENING_USER.set(("bob", None))
    changes.bus.subscribe(lambda _event: None)
    LISTENING_USER.reset(listening)

    async with changes.running():
        changes.changed("alice")
        await anyio.wait_all_tasks_blocked()
        looked_up_meanwhile = list(looked_up)

    assert looked_up_meanwhile == []


async def test_changes_of_a_user_while_their_clients_are_being_told_are_told_once_more_after(
    tokens: tuple[ApiTokens, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A downstream may say its tools changed a thousand times at once: each notice only says "list again".
    checks = {"running": 0, "most": 0}
    release = anyio.Event()

    async def slow_check(_tokens: ApiTokens, _username: str) -> StillTheirs:
        checks["running"] += 1
        checks["most"] = max(checks["most"], checks["running"])
        await release.wait()
        checks["running"] -= 1
        return lambda _owner: True

    monkeypatch.setattr(changes_module, "token_check", slow_check)
    changes = ToolListChanges(tokens[0])
    heard: list[ServerEvent] = []
    listening = LISTENING_USER.set(("alice", None))
    changes.bus.subscribe(heard.append)
    LISTENING_USER.reset(listening)

    async with changes.running():
        changes.changed("alice")
        await anyio.wait_all_tasks_blocked()  # her clients are being told
        for _ in range(100):
            changes.changed("alice")
        await anyio.wait_all_tasks_blocked()
        release.set()
        await anyio.wait_all_tasks_blocked()
        told_after_the_first = list(heard)
        changes.changed("alice")  # one made after every notice went is told again
        await anyio.wait_all_tasks_blocked()

    assert checks["most"] == 1
    assert told_after_the_first == [ToolsListChanged()] * 2
    assert heard == [ToolsListChanged()] * 3


def test_the_pause_before_listening_again_doubles_up_to_the_longest_and_starts_over_after_a_long_stream() -> (
    None
):
    backoff = Backoff()

    at_once = [backoff.pause_after(0.0) for _ in range(8)]
    after_a_long_stream = backoff.pause_after(LIVED_LONG_SECONDS)
    then_at_once = backoff.pause_after(0.5)

    assert at_once == [min(FIRST_PAUSE_SECONDS * 2**n, LONGEST_PAUSE_SECONDS) for n in range(8)]
    assert at_once[-1] == LONGEST_PAUSE_SECONDS
    assert (after_a_long_stream, then_at_once) == (FIRST_PAUSE_SECONDS, 2 * FIRST_PAUSE_SECONDS)


async def test_a_change_written_on_the_event_loop_is_told_though_the_store_is_busy_as_its_round_starts(
    tmp_path: Path,
) -> None:
    # A write SQLite takes at once runs on the loop under nonblocking(), and calls its listeners there: the
    # round they start outlives that write, and must wait for the store as any other work does.
    store = SQLiteStore(tmp_path / "secrets.db")
    secrets = Secrets(store, SecretEncryptor([b"k" * 32]))
    changes = ToolListChanges(ApiTokens(store))
    secrets.on_change(lambda username, _server: changes.changed(username))
    heard: list[ServerEvent] = []
    told = anyio.Event()
    listening = LISTENING_USER.set(("alice", None))
    changes.bus.subscribe(lambda event: (heard.append(event), told.set()))
    LISTENING_USER.reset(listening)
    value = secrets_module.token_urlsafe(16)

    try:
        async with changes.running():
            await run_store_work(store, lambda: secrets.set_secret("alice", "github", "TOKEN", value))
            # The shared connection taken before the round asks whose tokens still work, as the writer of
            # uses or a write waiting for another process's lock takes it from a thread of its own.
            store._lock.acquire()
            try:
                await anyio.wait_all_tasks_blocked()
            finally:
                store._lock.release()
            await told.wait()
    finally:
        secrets.close()
        store.close()

    assert heard == [ToolsListChanged()]
