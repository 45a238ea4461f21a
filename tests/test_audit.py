"""The audit trail and last use, on every backend: who changed or used which secret, how, never its value."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from conftest import new_canary, parse_time, text_of
from mcp_secrets.app import build_server
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.errors import InvalidInputError
from mcp_secrets.identity import LocalIdentity
from mcp_secrets.rotation import rotate
from mcp_secrets.secrets import SecretKeyInfo, Secrets
from mcp_secrets.store import AuditEvent, SecretStore, SecretUse
from mcp_secrets.store.sqlite import SQLiteStore
from mcp_secrets.tokens import ApiTokens

# Whole milliseconds: a BSON date keeps no finer, and these tests run on every backend.
T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)


def summary(events: list[AuditEvent]) -> list[tuple[str, str, str, str, str]]:
    """What an event says, less its time: actor, action, server, key and the transport it came by."""
    return [(event.actor, event.action, event.server, event.key, event.transport) for event in events]


def assert_no_event_holds(events: list[AuditEvent], *values: str) -> None:
    for event in events:
        for field in dataclasses.astuple(event):
            assert not any(value in str(field) for value in values), event


# --- what is recorded ----------------------------------------------------------------------------


def test_every_change_and_use_is_recorded_newest_first_with_its_transport(secrets: Secrets) -> None:
    secrets.set_secret("alice", "github", "TOKEN", new_canary(), via="cli")
    secrets.update_secret("alice", "github", "TOKEN", new_canary(), "update", via="streamable-http")
    secrets.get_secrets("alice", "github")
    secrets.delete_secret("alice", "github", "TOKEN", via="stdio")

    events = secrets.list_events("alice")

    assert summary(events) == [
        ("alice", "deleted", "github", "TOKEN", "stdio"),
        ("alice", "used", "github", "TOKEN", "library"),
        ("alice", "updated", "github", "TOKEN", "streamable-http"),
        ("alice", "created", "github", "TOKEN", "cli"),
    ]
    assert [event.at for event in events] == sorted((event.at for event in events), reverse=True)


def test_one_use_records_one_event_naming_every_returned_key(secrets: Secrets) -> None:
    for key in ("USER", "TOKEN"):
        secrets.set_secret("alice", "github", key, new_canary())

    secrets.get_secrets("alice", "github", via="gateway", action="injected", detail="github__search")

    [newest] = secrets.list_events("alice", limit=1)
    assert (newest.action, newest.key, newest.transport, newest.detail) == (
        "injected",
        "TOKEN,USER",
        "gateway",
        "github__search",
    )


def test_reading_a_server_without_secrets_records_nothing(secrets: Secrets) -> None:
    assert secrets.get_secrets("alice", "github") == {}

    assert secrets.list_events(None) == []


def test_token_creation_and_revocation_are_recorded_without_the_token(secrets: Secrets) -> None:
    tokens = ApiTokens(secrets.store)
    new = tokens.create("alice", label="laptop")

    tokens.revoke(new.token)  # revoking by the whole token, as a user may paste it

    events = secrets.list_events("alice")
    assert [(e.actor, e.action, e.transport, e.detail) for e in events] == [
        ("alice", "token-revoked", "cli", f"token {new.record.token_id}"),
        ("alice", "token-created", "cli", f"token {new.record.token_id}"),
    ]
    assert_no_event_holds(events, new.token, new.record.token_hash)


# --- reading the trail ---------------------------------------------------------------------------


def write_three(secrets: Secrets) -> None:
    secrets.set_secret("alice", "github", "TOKEN", new_canary())
    secrets.set_secret("bob", "github", "TOKEN", new_canary())
    secrets.set_secret("alice", "slack", "TOKEN", new_canary())


@pytest.mark.parametrize(
    ("username", "server", "expected"),
    [
        ("alice", None, [("alice", "slack"), ("alice", "github")]),
        ("alice", "github", [("alice", "github")]),
        ("bob", "slack", []),
        (None, "github", [("bob", "github"), ("alice", "github")]),
        (None, None, [("alice", "slack"), ("bob", "github"), ("alice", "github")]),
    ],
)
def test_list_events_filters_by_user_and_server(
    secrets: Secrets, username: str | None, server: str | None, expected: list[tuple[str, str]]
) -> None:
    write_three(secrets)

    events = secrets.list_events(username, server)

    assert [(event.actor, event.server) for event in events] == expected


@pytest.mark.parametrize("limit", [1, 2, 1000])
def test_list_events_returns_at_most_limit_newest_events(secrets: Secrets, limit: int) -> None:
    write_three(secrets)

    events = secrets.list_events(None, limit=limit)

    everything = [("alice", "slack"), ("bob", "github"), ("alice", "github")]
    assert [(event.actor, event.server) for event in events] == everything[:limit]


@pytest.mark.parametrize(
    ("username", "server"), [("alice", None), ("alice", "github"), (None, None), (None, "github")]
)
def test_a_use_written_after_a_later_change_is_listed_after_it_newest_first(
    store: SecretStore, encryptor: SecretEncryptor, username: str | None, server: str | None
) -> None:
    # A server's writer writes a use a moment after it, or seconds later while the store is busy; a change
    # made meanwhile by another process (the CLI) is written at once, before it. Newest first is by time.
    cli = Secrets(store, encryptor, clock=lambda: T1)
    cli.set_secret("alice", "github", "TOKEN", new_canary())
    used = AuditEvent(T0, "alice", "used", "github", "TOKEN", "stdio")
    store.record_uses([SecretUse("alice", "github", ("TOKEN",), used)])

    events = cli.list_events(username, server)
    newest = cli.list_events(username, server, limit=1)

    assert [(event.action, event.at) for event in events] == [("created", T1), ("used", T0)]
    assert [(event.action, event.at) for event in newest] == [("created", T1)]


def test_on_sqlite_a_use_written_after_a_change_later_in_the_same_millisecond_is_listed_after_it(
    tmp_path: Path, encryptor: SecretEncryptor
) -> None:
    # SQLite's julianday() keeps milliseconds: within one, the order is the times' own, not the order
    # written, which another process's background writer makes the reverse of the times' (MongoDB keeps
    # milliseconds only, so its two times would be one).
    store = SQLiteStore(tmp_path / "secrets.db")
    used_at = datetime(2026, 3, 4, 5, 6, 7, 100, tzinfo=timezone.utc)
    changed_at = used_at + timedelta(microseconds=300)
    cli = Secrets(store, encryptor, clock=lambda: changed_at)
    cli.set_secret("alice", "github", "TOKEN", new_canary())
    used = AuditEvent(used_at, "alice", "used", "github", "TOKEN", "stdio")
    store.record_uses([SecretUse("alice", "github", ("TOKEN",), used)])
    on_the_second = AuditEvent(used_at.replace(microsecond=0), "alice", "used", "github", "TOKEN", "stdio")
    store.record_uses([SecretUse("alice", "github", ("TOKEN",), on_the_second)])

    for username in ("alice", None):
        events = cli.list_events(username)
        assert [event.at for event in events] == [changed_at, used_at, used_at.replace(microsecond=0)]
        assert [event.at for event in cli.list_events(username, limit=1)] == [changed_at]
    store.close()


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_list_events_refuses_a_limit_outside_one_to_a_thousand(secrets: Secrets, limit: int) -> None:
    with pytest.raises(InvalidInputError, match="limit"):
        secrets.list_events("alice", limit=limit)


@pytest.mark.parametrize("limit", [2.5, 2.0, "2", None, True])
def test_list_events_refuses_a_limit_that_is_not_a_whole_number(secrets: Secrets, limit: object) -> None:
    write_three(secrets)

    with pytest.raises(InvalidInputError, match="limit"):
        secrets.list_events("alice", limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("username", "server", "field"),
    [
        ("a b", None, "username"),
        ({"$ne": ""}, None, "username"),
        ("alice", "a b", "server"),
        ("alice", {"$ne": ""}, "server"),
    ],
)
def test_list_events_refuses_a_username_or_server_outside_the_rules(
    secrets: Secrets, username: Any, server: Any, field: str
) -> None:
    secrets.set_secret("alice", "github", "TOKEN", "v")

    with pytest.raises(InvalidInputError, match=field):
        secrets.list_events(username, server)


# --- last use ------------------------------------------------------------------------------------


def test_get_secrets_sets_last_used_at_of_exactly_the_returned_keys(
    store: SecretStore, encryptor: SecretEncryptor
) -> None:
    now = [T0]
    secrets = Secrets(store, encryptor, clock=lambda: now[0])
    for username, server, key in [
        ("alice", "github", "TOKEN"),
        ("alice", "github", "USER"),
        ("alice", "slack", "TOKEN"),
        ("bob", "github", "TOKEN"),
    ]:
        secrets.set_secret(username, server, key, new_canary())
    now[0] = T1

    secrets.get_secrets("alice", "github")

    assert secrets.list_secret_keys("alice") == [
        SecretKeyInfo("github", "TOKEN", T0, T0, T1),
        SecretKeyInfo("github", "USER", T0, T0, T1),
        SecretKeyInfo("slack", "TOKEN", T0, T0, None),
    ]
    assert secrets.list_secret_keys("bob") == [SecretKeyInfo("github", "TOKEN", T0, T0, None)]


def test_a_use_written_late_never_marks_the_record_stored_anew_after_it(
    store: SecretStore, encryptor: SecretEncryptor
) -> None:
    # A server's writer writes a use a moment after it, or seconds later while the store is busy; another
    # process (the CLI) may meanwhile delete the key and store it again. That use was of the deleted record.
    now = [T0]
    cli = Secrets(store, encryptor, clock=lambda: now[0])
    cli.set_secret("alice", "github", "TOKEN", new_canary())
    used = AuditEvent(T0 + timedelta(seconds=1), "alice", "used", "github", "TOKEN", "stdio")
    now[0] = T1
    cli.delete_secret("alice", "github", "TOKEN")
    cli.set_secret("alice", "github", "TOKEN", new_canary())

    store.record_uses([SecretUse("alice", "github", ("TOKEN",), used)])

    assert cli.list_secret_keys("alice") == [SecretKeyInfo("github", "TOKEN", T1, T1, None)]
    assert used in cli.list_events("alice")  # the use itself stays in the trail
    again = AuditEvent(T1 + timedelta(seconds=1), "alice", "used", "github", "TOKEN", "stdio")
    store.record_uses([SecretUse("alice", "github", ("TOKEN",), again)])
    assert cli.list_secret_keys("alice") == [SecretKeyInfo("github", "TOKEN", T1, T1, again.at)]


# --- never a value -------------------------------------------------------------------------------


def exercise(secrets: Secrets) -> list[str]:
    """Every kind of event, with fresh values; returns what must never show up in the trail."""
    first, second, third = new_canary(), new_canary(), new_canary()
    secrets.set_secret("alice", "github", "TOKEN", first, via="cli")
    secrets.update_secret("alice", "github", "TOKEN", second, "update", via="sse")
    secrets.set_secret("alice", "github", "USER", third)
    assert secrets.get_secrets("alice", "github") == {"TOKEN": second, "USER": third}
    secrets.delete_secret("alice", "github", "USER")
    tokens = ApiTokens(secrets.store)
    new = tokens.create("alice")
    tokens.revoke(new.record.token_id)
    ciphertexts = [record.value for record in secrets.store.find_secrets("alice")]
    return [first, second, third, new.token, *ciphertexts]


def test_no_field_of_any_event_holds_a_value(secrets: Secrets) -> None:
    hidden = exercise(secrets)

    events = secrets.list_events(None, limit=1000)

    assert len(events) == 7
    assert_no_event_holds(events, *hidden)


def test_no_raw_row_of_the_sqlite_audit_table_holds_a_value(
    tmp_path: Path, encryptor: SecretEncryptor
) -> None:
    store = SQLiteStore(tmp_path / "secrets.db")
    hidden = exercise(Secrets(store, encryptor))
    store.close()

    with closing(sqlite3.connect(tmp_path / "secrets.db")) as connection:
        rows = connection.execute("SELECT * FROM audit_events").fetchall()

    assert len(rows) == 7
    assert not [row for row in rows if any(value in str(column) for column in row for value in hidden)]


# --- through MCP ---------------------------------------------------------------------------------


@asynccontextmanager
async def client_of(secrets: Secrets, username: str) -> AsyncIterator[Client]:
    """An in-process client session of a server instance acting for ``username``."""
    async with Client(build_server(secrets, LocalIdentity(username))) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


@pytest.mark.anyio
async def test_list_secret_events_shows_the_callers_own_events_only(secrets: Secrets) -> None:
    async with client_of(secrets, "bob") as bob:
        await call(bob, "set_secret", server="github", key="TOKEN", value=new_canary())
        await call(bob, "set_secret", server="slack", key="TOKEN", value=new_canary())
    async with client_of(secrets, "alice") as alice:
        await call(alice, "set_secret", server="github", key="TOKEN", value=new_canary())
        await call(alice, "delete_secret", server="github", key="TOKEN")

        listed = await call(alice, "list_secret_events")
        of_slack = await call(alice, "list_secret_events", server="slack")
        newest = await call(alice, "list_secret_events", limit=1)

    assert listed["username"] == "alice"
    assert [(e["action"], e["server"], e["key"], e["transport"]) for e in listed["events"]] == [
        ("deleted", "github", "TOKEN", "in-process"),
        ("created", "github", "TOKEN", "in-process"),
    ]
    assert of_slack["events"] == []
    assert newest["events"] == listed["events"][:1]


@pytest.mark.anyio
async def test_list_secret_events_shows_a_use_written_late_after_the_later_change(
    store: SecretStore, encryptor: SecretEncryptor
) -> None:
    # The server's own use, written late, beside a change another process made meanwhile.
    secrets = Secrets(store, encryptor, clock=lambda: T1)
    secrets.set_secret("alice", "github", "TOKEN", new_canary(), via="cli")
    used = AuditEvent(T0, "alice", "used", "github", "TOKEN", "in-process")
    store.record_uses([SecretUse("alice", "github", ("TOKEN",), used)])

    async with client_of(secrets, "alice") as alice:
        listed = await call(alice, "list_secret_events")
        newest = await call(alice, "list_secret_events", limit=1)
        keys = await call(alice, "list_secret_keys")

    assert [(e["action"], parse_time(e["at"])) for e in listed["events"]] == [("created", T1), ("used", T0)]
    assert newest["events"] == listed["events"][:1]
    assert [entry["last_used_at"] for entry in keys["keys"]] == [None]  # used before this record was made


@pytest.mark.anyio
async def test_list_secret_events_text_says_its_times_are_utc(secrets: Secrets) -> None:
    # The text is what a model reads and repeats: a bare time reads as the user's own zone.
    async with client_of(secrets, "alice") as alice:
        await call(alice, "set_secret", server="github", key="TOKEN", value=new_canary())
        result = await alice.call_tool("list_secret_events", {})

    assert result.structured_content is not None
    [event] = result.structured_content["events"]
    assert f"- {parse_time(event['at']):%Y-%m-%d %H:%M:%S} UTC created github/TOKEN" in text_of(result)


@pytest.mark.anyio
async def test_a_user_named_admin_does_not_see_a_key_rotation_as_their_own_event(secrets: Secrets) -> None:
    # "admin" is a valid username; an operator's rotation of everyone's records is not this user's doing.
    secrets.set_secret("bob", "github", "TOKEN", new_canary())
    rotate(secrets)

    async with client_of(secrets, "admin") as admin:
        listed = await call(admin, "list_secret_events")

    assert listed["events"] == []


@pytest.mark.anyio
async def test_list_secret_events_refuses_a_limit_out_of_range(secrets: Secrets) -> None:
    async with client_of(secrets, "alice") as alice:
        result = await alice.call_tool("list_secret_events", {"limit": 0})

    assert result.is_error


@pytest.mark.anyio
@pytest.mark.parametrize("limit", ["5", True, "1e1", [5], {"n": 5}])
async def test_list_secret_events_refuses_a_limit_that_is_not_a_json_number(
    secrets: Secrets, limit: object
) -> None:
    # Pydantic's lax mode would read "5" as 5 and true as 1: a call its schema (an integer) does not allow.
    async with client_of(secrets, "alice") as alice:
        result = await alice.call_tool("list_secret_events", {"limit": limit})

    assert result.is_error
    assert "limit" in result.content[0].text


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [5, 5.0])
async def test_list_secret_events_takes_a_whole_number_limit_however_json_spells_it(
    secrets: Secrets, limit: float
) -> None:
    # JSON Schema counts 5.0 as an integer, and some clients cannot tell 5 from 5.0.
    async with client_of(secrets, "alice") as alice:
        listed = await call(alice, "list_secret_events", limit=limit)

    assert listed["events"] == []


@pytest.mark.anyio
async def test_list_secret_keys_shows_last_used_at_once_a_secret_is_used(secrets: Secrets) -> None:
    async with client_of(secrets, "alice") as alice:
        await call(alice, "set_secret", server="github", key="TOKEN", value=new_canary())
        before = await call(alice, "list_secret_keys")

        secrets.get_secrets("alice", "github")
        after = await call(alice, "list_secret_keys")

    [stored] = secrets.list_secret_keys("alice")
    assert stored.last_used_at is not None
    assert [entry["last_used_at"] for entry in before["keys"]] == [None]
    assert [parse_time(entry["last_used_at"]) for entry in after["keys"]] == [stored.last_used_at]


# --- a store from before last use was tracked ----------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE user_secrets (
    username   TEXT NOT NULL,
    server     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (username, server, key)
) WITHOUT ROWID;
"""


def columns_of(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as connection:
        return [row[1] for row in connection.execute("PRAGMA table_info(user_secrets)")]


def test_sqlite_file_without_last_used_at_gains_the_column_and_reads_back(
    tmp_path: Path, encryptor: SecretEncryptor, canary: str
) -> None:
    path = tmp_path / "old.db"
    ciphertext = encryptor.encrypt(canary, username="alice", server="github", key="TOKEN")
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(OLD_SCHEMA)
        connection.execute(
            "INSERT INTO user_secrets VALUES (?, ?, ?, ?, ?, ?)",
            ("alice", "github", "TOKEN", ciphertext, T0.isoformat(), T0.isoformat()),
        )
    now = [T1]

    store = SQLiteStore(path)
    try:
        secrets = Secrets(store, encryptor, clock=lambda: now[0])
        upgraded = columns_of(path)
        before_use = secrets.list_secret_keys("alice")
        values = secrets.get_secrets("alice", "github")
        after_use = secrets.list_secret_keys("alice")
    finally:
        store.close()

    assert upgraded[-1] == "last_used_at"
    assert before_use == [SecretKeyInfo("github", "TOKEN", T0, T0, None)]
    assert values == {"TOKEN": canary}
    assert after_use == [SecretKeyInfo("github", "TOKEN", T0, T0, T1)]
    reopened = SQLiteStore(path)  # the upgrade is done once: opening again changes nothing
    reopened.close()
    assert columns_of(path) == upgraded


def test_sqlite_file_with_the_trail_indexed_by_insertion_gets_it_indexed_by_time(tmp_path: Path) -> None:
    # Earlier versions listed the trail by insertion order, over an index of (actor, id).
    path = tmp_path / "old.db"
    SQLiteStore(path).close()
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("DROP INDEX audit_events_actor_time")
        connection.execute("DROP INDEX audit_events_time")
        connection.execute("DROP INDEX audit_events_actor_server_time")
        connection.execute("CREATE INDEX audit_events_actor ON audit_events (actor, id)")

    SQLiteStore(path).close()

    with closing(sqlite3.connect(path)) as connection:
        indexes = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_events' ORDER BY name"
        ).fetchall()
    assert indexes == [
        ("audit_events_actor_server_time",),
        ("audit_events_actor_time",),
        ("audit_events_time",),
    ]
