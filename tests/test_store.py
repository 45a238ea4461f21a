"""The store protocol on every backend, then what only SQLite or only MongoDB promises."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import secrets
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import bson
import dns.resolver
import mongomock
import pymongo
import pytest
from bson.raw_bson import RawBSONDocument
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pymongo.errors import DuplicateKeyError

from _mongo_wire import (
    DROP,
    MONGOS_HELLO,
    PRIMARY_HELLO,
    WRITES,
    WTIMEOUT,
    duplicate_key,
    mongo_wire_server,
    server_holding,
    server_losing_writes,
    server_refusing_duplicates,
)
from conftest import STORE_KINDS, assert_not_leaked
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.errors import (
    ConfigurationError,
    SecretNotFoundError,
    StoreUnavailableError,
    UnreadableRecordError,
    WriteUnconfirmedError,
)
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import (
    UNCONFIRMED,
    AuditEvent,
    LimitReached,
    LinkRecord,
    SecretRecord,
    SecretStore,
    SecretUse,
    TokenRecord,
    nonblocking,
    open_store,
)
from mcp_secrets.store import mongo as mongo_module
from mcp_secrets.store.mongo import DEFAULT_DATABASE, MongoStore
from mcp_secrets.store.sqlite import SQLiteStore

# Whole milliseconds: a BSON date keeps no finer, and the suite must hold on every backend.
T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)
T2 = T0 + timedelta(hours=1)
FAR_AHEAD = datetime(2999, 1, 1, tzinfo=timezone.utc)

mongo_backends = pytest.mark.parametrize(
    "store", [kind for kind in STORE_KINDS if kind != "sqlite"], indirect=True
)


@pytest.fixture
def mongo_store(store: SecretStore) -> MongoStore:
    """The ``store`` fixture narrowed to MongoDB (use with ``@mongo_backends``)."""
    assert isinstance(store, MongoStore)
    return store


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "secrets.db"


@pytest.fixture
def sqlite_store(sqlite_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(sqlite_path)
    yield opened
    opened.close()


def _triples(store: SecretStore, username: str, server: str | None = None) -> list[tuple[str, str, str]]:
    return [(record.server, record.key, record.value) for record in store.find_secrets(username, server)]


def _token(token_id: str, username: str = "alice", created_at: datetime = T0, **fields: Any) -> TokenRecord:
    return TokenRecord(token_id, username, f"sha256-of-{token_id}", created_at, **fields)


# --- secrets, on every backend --------------------------------------------------------------------


def test_put_secret_creates_then_replaces_keeping_created_at(store: SecretStore) -> None:
    assert store.put_secret("alice", "github", "TOKEN", "ciphertext-1", T0) is True
    assert store.put_secret("alice", "github", "TOKEN", "ciphertext-2", T1) is False

    assert store.find_secrets("alice", "github") == [
        SecretRecord("alice", "github", "TOKEN", "ciphertext-2", created_at=T0, updated_at=T1)
    ]


def test_replacing_at_the_same_instant_still_reports_a_replacement(store: SecretStore) -> None:
    # A fixed test clock, or a coarse system clock, gives two saves the same timestamp.
    assert store.put_secret("alice", "github", "TOKEN", "ciphertext-1", T0) is True
    assert store.put_secret("alice", "github", "TOKEN", "ciphertext-2", T0) is False


def test_many_puts_of_one_record_leave_exactly_one(store: SecretStore) -> None:
    created = [
        store.put_secret("alice", "github", "TOKEN", f"ciphertext-{n}", T0 + timedelta(seconds=n))
        for n in range(20)
    ]

    assert created == [True] + [False] * 19
    assert store.count_secrets() == 1
    assert store.find_secrets("alice") == [
        SecretRecord("alice", "github", "TOKEN", "ciphertext-19", T0, T0 + timedelta(seconds=19))
    ]


SEEDED = [
    ("alice", "gitlab", "TOKEN"),
    ("alice", "github", "api_key"),
    ("alice", "github", "USER"),
    ("alice", "aws", "KEY_ID"),
    ("alice", "github", "TOKEN"),
    ("bob", "github", "TOKEN"),
    ("bob", "slack", "WEBHOOK"),
]


@pytest.fixture
def seeded(store: SecretStore) -> SecretStore:
    """Alice and Bob with a few records each, written out of order; the value names its record."""
    for username, server, key in SEEDED:
        store.put_secret(username, server, key, f"{username}/{server}/{key}", T0)
    return store


def test_find_secrets_of_one_server_returns_that_users_records_in_key_order(seeded: SecretStore) -> None:
    # Byte order, as both SQLite's BINARY collation and MongoDB compare strings: upper case first.
    assert _triples(seeded, "alice", "github") == [
        ("github", "TOKEN", "alice/github/TOKEN"),
        ("github", "USER", "alice/github/USER"),
        ("github", "api_key", "alice/github/api_key"),
    ]


def test_find_secrets_without_a_server_returns_every_server_in_server_key_order(seeded: SecretStore) -> None:
    assert [(server, key) for server, key, _ in _triples(seeded, "alice")] == [
        ("aws", "KEY_ID"),
        ("github", "TOKEN"),
        ("github", "USER"),
        ("github", "api_key"),
        ("gitlab", "TOKEN"),
    ]
    assert all(record.username == "alice" for record in seeded.find_secrets("alice"))


def test_find_secrets_of_an_unknown_user_or_server_is_empty(seeded: SecretStore) -> None:
    assert seeded.find_secrets("carol") == []
    assert seeded.find_secrets("alice", "slack") == []
    assert seeded.count_secrets() == len(SEEDED)


# A record that differs from alice's github TOKEN in one name only.
OTHER_RECORDS = pytest.mark.parametrize(
    "other",
    [
        ("bob", "github", "TOKEN"),
        ("Alice", "github", "TOKEN"),
        ("alice", "gitlab", "TOKEN"),
        ("alice", "github", "USER"),
    ],
    ids=["other-user", "username-case", "other-server", "other-key"],
)


@OTHER_RECORDS
def test_records_are_isolated_per_username_server_and_key(
    store: SecretStore, other: tuple[str, str, str]
) -> None:
    mine = ("alice", "github", "TOKEN")
    assert store.put_secret(*mine, "alices-ciphertext", T0) is True
    assert store.put_secret(*other, "other-ciphertext", T1) is True
    written = {mine: "alices-ciphertext", other: "other-ciphertext"}

    for username, server, _ in written:
        listed = [(r.username, r.server, r.key, r.value) for r in store.find_secrets(username, server)]
        # Exactly that user's records of that server: a query matching a name loosely would list more.
        assert sorted(listed) == sorted(
            (*record, value) for record, value in written.items() if record[:2] == (username, server)
        )
    assert store.delete_secret(*other) is True
    assert _triples(store, "alice", "github") == [("github", "TOKEN", "alices-ciphertext")]


@OTHER_RECORDS
def test_replace_value_swaps_only_the_record_it_names(
    store: SecretStore, other: tuple[str, str, str]
) -> None:
    # The swap is checked on the ciphertext too, but a row copied to another record holds the same text.
    store.put_secret("alice", "github", "TOKEN", "same-ciphertext", T0)
    store.put_secret(*other, "same-ciphertext", T0)

    assert store.replace_value(*other, "same-ciphertext", "new-ciphertext") is True

    values = {
        (r.username, r.server, r.key): r.value for u in ("alice", other[0]) for r in store.find_secrets(u)
    }
    assert values == {("alice", "github", "TOKEN"): "same-ciphertext", other: "new-ciphertext"}


def test_replace_value_with_the_value_it_already_holds_reports_the_swap(store: SecretStore) -> None:
    # The record still held ``old``: that is what the answer says, on every backend.
    store.put_secret("alice", "github", "TOKEN", "ciphertext", T0)

    assert store.replace_value("alice", "github", "TOKEN", "ciphertext", "ciphertext") is True
    assert store.replace_value("alice", "github", "TOKEN", "other-ciphertext", "ciphertext") is False


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_reads_and_deletes_nothing(seeded: SecretStore, limit: int) -> None:
    # Left to the databases, MongoDB reads a limit of 0 as none, and SQLite a negative one.
    seeded.add_event(AuditEvent(T0, "alice", "created", "github", "TOKEN"))
    seeded.add_event(AuditEvent(T0, "alice", "updated", "github", "TOKEN"))

    assert seeded.list_events(None, None, limit) == []
    assert seeded.scan_secrets(None, limit) == []
    assert seeded.delete_events(T2, limit) == 0
    assert seeded.count_events(T2) == 2


def test_sample_ciphertexts_are_those_at_each_end_of_the_store_each_once(store: SecretStore) -> None:
    # Written in (username, server, key) order: the first and last by SQLite's primary key are then also
    # the oldest and newest by MongoDB's _id.
    for number in range(10):
        store.put_secret(f"user{number}", "github", "TOKEN", f"ciphertext-{number}", T0)

    assert sorted(store.sample_ciphertexts(2)) == sorted(f"ciphertext-{n}" for n in (0, 1, 8, 9))
    assert sorted(store.sample_ciphertexts(6)) == sorted(f"ciphertext-{n}" for n in range(10))


def test_sample_ciphertexts_of_an_empty_store_are_none(store: SecretStore) -> None:
    assert store.sample_ciphertexts(3) == []
    assert store.sample_ciphertexts(0) == []


def test_sample_ciphertexts_leave_out_a_value_that_is_not_text_and_read_no_other_field(
    store: SecretStore,
) -> None:
    store.put_secret("alice", "github", "A", "ciphertext-a", T0)
    store.put_secret("alice", "github", "B", "ciphertext-b", T0)
    not_text = b"\xff ciphertext" if isinstance(store, SQLiteStore) else {"ciphertext": "b"}
    alice = {"username": "alice", "server": "github"}
    alter_stored(store, "user_secrets", {**alice, "key": "B"}, "value", not_text)
    alter_stored(store, "user_secrets", {**alice, "key": "A"}, "updated_at", "not a date")

    assert store.sample_ciphertexts(2) == ["ciphertext-a"]


def test_delete_secret_removes_exactly_that_record(seeded: SecretStore) -> None:
    assert seeded.delete_secret("alice", "github", "TOKEN") is True

    assert seeded.count_secrets() == len(SEEDED) - 1
    assert [(server, key) for server, key, _ in _triples(seeded, "alice", "github")] == [
        ("github", "USER"),
        ("github", "api_key"),
    ]
    assert _triples(seeded, "bob", "github") == [("github", "TOKEN", "bob/github/TOKEN")]


def test_delete_secret_returns_false_when_there_is_no_such_record(seeded: SecretStore) -> None:
    assert seeded.delete_secret("alice", "github", "TOKEN") is True
    assert seeded.delete_secret("alice", "github", "TOKEN") is False
    assert seeded.delete_secret("carol", "github", "TOKEN") is False
    assert seeded.count_secrets() == len(SEEDED) - 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(min_size=1, max_size=300))
@example(value="x" * 65536)
@example(value="nul\x00inside")
@example(value='{"$ne": null}')
@example(value="  padded\r\n")
@example(value="v1:AAAA==:ZmFrZQ==")
def test_the_stored_ciphertext_comes_back_exactly_as_given(store: SecretStore, value: str) -> None:
    store.put_secret("alice", "github", "TOKEN", value, T0)

    [record] = store.find_secrets("alice", "github")
    assert record.value == value


def test_timestamps_come_back_timezone_aware_in_utc(store: SecretStore) -> None:
    paris = timezone(timedelta(hours=2))
    store.put_secret("alice", "github", "TOKEN", "ciphertext", T0.astimezone(paris))
    store.put_secret("alice", "github", "TOKEN", "ciphertext", T1.astimezone(paris))
    store.put_token(_token("t1", created_at=T0.astimezone(paris), expires_at=T2.astimezone(paris)))
    store.revoke_token("t1", T1.astimezone(paris))

    [record] = store.find_secrets("alice")
    token = store.find_token("sha256-of-t1")
    assert token is not None
    moments = {
        "created_at": (record.created_at, T0),
        "updated_at": (record.updated_at, T1),
        "token created_at": (token.created_at, T0),
        "token expires_at": (token.expires_at, T2),
        "token revoked_at": (token.revoked_at, T1),
    }
    for name, (moment, expected) in moments.items():
        assert moment is not None, name
        assert moment.utcoffset() == timedelta(0), name
        assert moment == expected, name


def test_concurrent_puts_leave_exactly_the_expected_records(store: SecretStore) -> None:
    threads, puts = 8, 50
    start = threading.Barrier(threads)

    def worker(thread: int) -> list[bool]:
        start.wait()
        created = []
        for n in range(puts):
            # Half the puts race the other threads for shared records, half write the thread's own.
            server = "shared" if n % 2 == 0 else f"thread-{thread}"
            now = T0 + timedelta(milliseconds=thread * puts + n)
            created.append(store.put_secret("alice", server, f"K{n // 2:02}", f"{thread}:{n}", now))
        return created

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(worker, range(threads)))

    shared, own = puts // 2, threads * (puts // 2)
    assert sum(created for result in results for created in result) == shared + own
    assert store.count_secrets() == shared + own
    shared_records = store.find_secrets("alice", "shared")
    assert [record.key for record in shared_records] == [f"K{n:02}" for n in range(shared)]
    assert all(record.value.split(":")[1] == str(2 * int(record.key[1:])) for record in shared_records)
    for thread in range(threads):
        assert [value for _, _, value in _triples(store, "alice", f"thread-{thread}")] == [
            f"{thread}:{n}" for n in range(1, puts, 2)
        ]


def test_reads_racing_the_recording_of_uses_see_whole_records(store: SecretStore) -> None:
    # The service reads on the caller's thread while its use recorder writes on its own.
    keys = tuple(f"K{n:02}" for n in range(20))
    for key in keys:
        store.put_secret("alice", "github", key, f"v-{key}", T0)
    rounds, stop = 300, threading.Event()

    def record() -> int:
        recorded = 0
        while not stop.is_set() and recorded < rounds:
            at = T1 + timedelta(milliseconds=recorded)
            event = AuditEvent(at, "alice", "used", "github", ",".join(keys), "library")
            store.record_uses([SecretUse("alice", "github", keys, event)])
            recorded += 1
        return recorded

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that reads and writes interleave
    with ThreadPoolExecutor(max_workers=1) as pool:
        recorder = pool.submit(record)
        try:
            reads = 0
            while not recorder.done() or reads < 50:
                records = store.find_secrets("alice", "github")
                assert [(record.key, record.value) for record in records] == [(k, f"v-{k}") for k in keys]
                reads += 1
        finally:
            stop.set()
            sys.setswitchinterval(switch_interval)
        assert recorder.result() == rounds

    last = T1 + timedelta(milliseconds=rounds - 1)
    assert {record.last_used_at for record in store.find_secrets("alice", "github")} == {last}


def test_stored_keys_are_those_asked_for_that_the_user_holds(store: SecretStore) -> None:
    for username, server, key in [
        ("alice", "github", "TOKEN"),
        ("alice", "github", "OTHER"),
        ("alice", "slack", "TOKEN"),
        ("bob", "linear", "TOKEN"),
    ]:
        store.put_secret(username, server, key, "ciphertext", T0)
    asked = [("github", "TOKEN"), ("github", "MISSING"), ("slack", "TOKEN"), ("linear", "TOKEN")]

    assert store.stored_keys("alice", asked) == {("github", "TOKEN"), ("slack", "TOKEN")}
    assert store.stored_keys("bob", asked) == {("linear", "TOKEN")}
    assert store.stored_keys("carol", asked) == set()
    assert store.stored_keys("alice", []) == set()


def test_stored_keys_asked_for_by_the_thousand_are_all_answered(store: SecretStore) -> None:
    # More than SQLite's oldest bound of 999 parameters a statement.
    for index in range(0, 1500, 3):
        store.put_secret("alice", "big", f"KEY_{index:04d}", "ciphertext", T0)

    stored = store.stored_keys("alice", [("big", f"KEY_{index:04d}") for index in range(1500)])

    assert stored == {("big", f"KEY_{index:04d}") for index in range(0, 1500, 3)}


def test_sqlite_finds_stored_keys_by_primary_key(sqlite_store: SQLiteStore) -> None:
    # Rather than the user's every record: 11,000 of them for one user of a team's store.
    statements: list[str] = []
    sqlite_store._connection.set_trace_callback(statements.append)
    sqlite_store.stored_keys("alice", [("github", "TOKEN"), ("github", "OTHER"), ("slack", "TOKEN")])
    sqlite_store._connection.set_trace_callback(None)

    selects = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    assert selects
    for sql in selects:
        plan = sqlite_store._connection.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        assert any("USING PRIMARY KEY (username=? AND server=? AND key=?)" in step[3] for step in plan), plan


# --- tokens, on every backend ---------------------------------------------------------------------


def test_put_token_then_find_token_by_its_hash(store: SecretStore) -> None:
    token = _token("a1b2c3", expires_at=T2, label="laptop")
    store.put_token(token)

    assert store.find_token("sha256-of-a1b2c3") == token
    assert store.find_token("sha256-of-someone-else") is None


def test_list_tokens_is_oldest_first_then_by_id(store: SecretStore) -> None:
    for token in [
        _token("t3", "bob", T1),
        _token("t5", "alice", T2),
        _token("t2", "alice", T0),
        _token("t4", "bob", T1),
        _token("t1", "alice", T1),
    ]:
        store.put_token(token)

    assert [token.token_id for token in store.list_tokens()] == ["t2", "t1", "t3", "t4", "t5"]


def test_list_tokens_of_one_user_leaves_out_the_others(store: SecretStore) -> None:
    for token in [_token("t1", "alice", T0), _token("t2", "bob", T1), _token("t3", "alice", T2)]:
        store.put_token(token)

    assert [token.token_id for token in store.list_tokens("alice")] == ["t1", "t3"]
    assert [token.token_id for token in store.list_tokens("bob")] == ["t2"]
    assert store.list_tokens("carol") == []


def test_has_tokens_is_true_once_any_token_is_stored_revoked_or_not(store: SecretStore) -> None:
    assert store.has_tokens() is False
    store.put_token(_token("t1", "alice", T0))
    store.revoke_token("t1", T1)

    assert store.has_tokens() is True


def test_revoke_token_succeeds_once_and_the_record_stays_findable(store: SecretStore) -> None:
    store.put_token(_token("t1"))
    store.put_token(_token("t2"))

    assert store.revoke_token("t1", T1) == _token("t1", revoked_at=T1)
    assert store.revoke_token("t1", T2) is None
    assert store.revoke_token("no-such-token", T1) is None

    revoked = store.find_token("sha256-of-t1")
    assert revoked is not None
    assert revoked.revoked_at == T1
    assert [token.revoked_at for token in store.list_tokens()] == [T1, None]


# --- records another tool wrote, on every backend -------------------------------------------------

_UNSET = object()  # the field taken out of the document (MongoDB; SQLite's columns are always there)


def alter_stored(store: SecretStore, table: str, match: dict[str, str], field: str, value: object) -> None:
    """Change one stored field behind the store's back, as another tool (sqlite3, mongosh) would."""
    if isinstance(store, SQLiteStore):
        where = " AND ".join(f"{name} = ?" for name in match)
        with contextlib.closing(sqlite3.connect(store.path)) as database, database:
            database.execute(f"UPDATE {table} SET {field} = ? WHERE {where}", (value, *match.values()))  # noqa: S608
        return
    assert isinstance(store, MongoStore)
    change = {"$unset": {field: ""}} if value is _UNSET else {"$set": {field: value}}
    assert store._secrets.database[table].update_one(match, change).matched_count == 1


@pytest.fixture
def two_of_each(store: SecretStore) -> SecretStore:
    """Alice's and Bob's records, tokens, events and links: Alice's are the ones a test alters."""
    for username, server, key in [("alice", "github", "B"), ("alice", "gitlab", "A"), ("bob", "github", "B")]:
        store.put_secret(username, server, key, f"ciphertext of {username}/{server}/{key}", T0)
    store.put_token(_token("t1", "alice"))
    store.put_token(_token("t2", "bob"))
    store.add_event(AuditEvent(T0, "alice", "updated", "github", "B"))
    store.add_event(AuditEvent(T0, "bob", "updated", "github", "B"))
    for link_id, username in [("l1", "alice"), ("l2", "bob")]:
        # Far ahead: mongomock, like MongoDB, drops an expired link by its TTL index.
        store.put_link(
            LinkRecord(link_id, f"sha256-of-{link_id}", username, "github", "TOKEN", T0, FAR_AHEAD)
        )
    return store


_ALICES_SECRET = {"username": "alice", "server": "github", "key": "B"}
_SECRET_NAMED = "username 'alice', server 'github', key 'B'"
_TOKEN_NAMED = "token_id 't1', username 'alice'"
_EVENT_NAMED = "actor 'alice', server 'github', key 'B'"
_LINK_NAMED = "link_id 'l1', username 'alice', server 'github', key 'TOKEN'"
# Each: the table, the record, the field, what SQLite then holds, what MongoDB then holds, how the record
# is named, a read that includes it, and reads that do not.
MALFORMED: dict[str, tuple[Any, ...]] = {
    "secret-value-not-text": (
        "user_secrets", _ALICES_SECRET, "value",
        lambda canary: canary.encode(), lambda canary: {"ciphertext": canary},
        _SECRET_NAMED, lambda store: store.find_secrets("alice", "github"),
    ),
    "secret-server-missing": (
        "user_secrets", _ALICES_SECRET, "server",
        lambda canary: canary.encode(), lambda _: _UNSET,
        None, lambda store: store.find_secrets("alice"),
    ),
    "secret-updated_at-not-a-date": (
        "user_secrets", _ALICES_SECRET, "updated_at",
        lambda canary: canary, lambda canary: canary,
        _SECRET_NAMED, lambda store: store.find_secrets("alice", "github"),
    ),
    "secret-last_used_at-not-a-date": (
        "user_secrets", _ALICES_SECRET, "last_used_at",
        lambda canary: canary, lambda _: 12345,
        _SECRET_NAMED, lambda store: store.scan_secrets(None, 10),
    ),
    "token-hash-missing": (
        "api_tokens", {"token_id": "t1"}, "token_hash",
        lambda canary: canary.encode(), lambda _: _UNSET,
        _TOKEN_NAMED, lambda store: store.list_tokens(),
    ),
    "token-created_at-not-a-date": (
        "api_tokens", {"token_id": "t1"}, "created_at",
        lambda canary: canary, lambda canary: canary,
        _TOKEN_NAMED, lambda store: store.find_token("sha256-of-t1"),
    ),
    "event-at-not-a-date": (
        "audit_events", {"actor": "alice"}, "at",
        lambda canary: canary, lambda canary: canary,
        _EVENT_NAMED, lambda store: store.list_events(),
    ),
    "event-detail-not-text": (
        "audit_events", {"actor": "alice"}, "detail",
        lambda canary: canary.encode(), lambda canary: [canary],
        _EVENT_NAMED, lambda store: store.list_events("alice"),
    ),
    "link-expires_at-not-a-date": (
        "entry_links", {"link_id": "l1"}, "expires_at",
        lambda canary: canary, lambda canary: canary,
        _LINK_NAMED, lambda store: store.find_link("sha256-of-l1"),
    ),
    "link-used_at-not-a-date": (
        "entry_links", {"link_id": "l1"}, "used_at",
        lambda canary: canary, lambda canary: {"at": canary},
        _LINK_NAMED, lambda store: store.find_link("sha256-of-l1"),
    ),
}  # fmt: skip


def _reads_of_the_others(store: SecretStore) -> list[object]:
    """What Bob, and Alice's other server, read: none of it includes an altered record."""
    return [
        _triples(store, "alice", "gitlab"),
        _triples(store, "bob"),
        [token.token_id for token in store.list_tokens("bob")],
        store.find_token("sha256-of-t2") is not None,
        [event.actor for event in store.list_events("bob")],
        store.find_link("sha256-of-l2") is not None,
    ]


@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_record_of_the_wrong_shape_fails_the_reads_that_include_it_naming_it_and_no_other(
    two_of_each: SecretStore, case: tuple[Any, ...], canary: str
) -> None:
    table, match, field, in_sqlite, in_mongo, named, read = case
    store = two_of_each
    sqlite = isinstance(store, SQLiteStore)
    expected = _reads_of_the_others(store)
    alter_stored(store, table, match, field, (in_sqlite if sqlite else in_mongo)(canary))

    with pytest.raises(UnreadableRecordError) as raised:
        read(store)

    where = f"the table {table}" if sqlite else f"the collection {table}"
    if named is None:  # the field that names it is the one gone: named by what is left
        named = (
            "username 'alice', server of type bytes, key 'B'"
            if sqlite
            else "username 'alice', server missing, key 'B'"
        )
    assert f"{named} in {where} cannot be read" in str(raised.value)
    assert f"its field {field} holds " in str(raised.value)
    assert isinstance(raised.value, StoreUnavailableError)
    assert_not_leaked(raised.value, canary)
    assert raised.value.__cause__ is None
    assert _reads_of_the_others(store) == expected


def test_a_prune_keeping_events_stops_at_one_it_cannot_read_and_one_keeping_none_deletes_it(
    two_of_each: SecretStore,
) -> None:
    # Kept (exported) events are deleted once kept: one that cannot be read would be lost from the export.
    store = two_of_each
    no_text = b"" if isinstance(store, SQLiteStore) else 5
    alter_stored(store, "audit_events", {"actor": "alice"}, "action", no_text)
    kept: list[AuditEvent] = []

    with pytest.raises(UnreadableRecordError) as raised:
        store.delete_events(FAR_AHEAD, 10, kept.extend)

    assert f"{_EVENT_NAMED} in the " in str(raised.value)
    assert kept == []
    assert store.delete_events(FAR_AHEAD, 10) == len(["alice's", "bob's"])
    assert store.list_events() == []


def test_find_token_by_id_finds_one_token_revoked_or_not(store: SecretStore) -> None:
    store.put_token(_token("t1"))
    store.put_token(_token("t2", "bob"))
    store.revoke_token("t2", T1)

    assert store.find_token_by_id("t1") == _token("t1")
    assert store.find_token_by_id("t2") == _token("t2", "bob", revoked_at=T1)
    assert store.find_token_by_id("t3") is None


def test_a_token_revokes_and_is_found_by_id_while_another_tokens_record_cannot_be_read(
    two_of_each: SecretStore,
) -> None:
    store = two_of_each
    alter_stored(
        store,
        "api_tokens",
        {"token_id": "t2"},
        "token_hash",
        b"" if isinstance(store, SQLiteStore) else _UNSET,
    )

    assert store.find_token_by_id("t1") == _token("t1")
    assert store.revoke_token("t1", T1) == _token("t1", revoked_at=T1)


# --- operator injection ---------------------------------------------------------------------------

HOSTILE = [{"$ne": "x"}, {"$ne": None}, {"$gt": ""}, {"$regex": ".*"}]


def _attempt(call: Callable[[], object]) -> object:
    """What a call returns, or None when the backend refuses the value outright."""
    try:
        return call()
    except (TypeError, StoreUnavailableError, sqlite3.Error):
        return None


@pytest.mark.parametrize("hostile", HOSTILE, ids=str)
def test_an_operator_in_place_of_a_name_reaches_no_record(store: SecretStore, hostile: Any) -> None:
    store.put_secret("alice", "github", "TOKEN", "alices-ciphertext", T0)
    store.put_token(_token("t1"))

    assert not _attempt(lambda: store.find_secrets(hostile))
    assert not _attempt(lambda: store.find_secrets("alice", hostile))
    assert not _attempt(lambda: store.delete_secret(hostile, hostile, hostile))
    assert not _attempt(lambda: store.put_secret(hostile, hostile, hostile, "overwritten", T1))
    assert not _attempt(lambda: store.find_token(hostile))
    assert not _attempt(lambda: store.list_tokens(hostile))
    assert not _attempt(lambda: store.revoke_token(hostile, T1))
    assert not _attempt(lambda: store.find_token_by_id(hostile))

    assert _triples(store, "alice") == [("github", "TOKEN", "alices-ciphertext")]
    assert [(token.token_id, token.revoked_at) for token in store.list_tokens()] == [("t1", None)]


@pytest.mark.parametrize("name", ["$ne", "$where", "$regex", "a.b", "$**", "$"])
def test_a_name_spelled_like_an_operator_or_a_path_is_only_a_name(store: SecretStore, name: str) -> None:
    # MongoDB takes a string in a filter's value, or in $in, as itself: only a document could be an operator.
    store.put_secret("alice", "github", "TOKEN", "alices-ciphertext", T0)
    store.put_secret(name, name, name, "its-own-ciphertext", T0)
    store.record_uses([SecretUse(name, name, (name,), AuditEvent(T1, name, "used", name, name))])

    assert store.find_secrets(name) == [SecretRecord(name, name, name, "its-own-ciphertext", T0, T0, T1)]
    assert _triples(store, "alice", name) == []
    assert store.count_secrets(name) == 1
    assert store.list_events(name) == [AuditEvent(T1, name, "used", name, name)]
    assert store.replace_value("alice", "github", name, "alices-ciphertext", "replaced") is False
    assert store.delete_secret(name, name, name) is True
    assert _triples(store, "alice") == [("github", "TOKEN", "alices-ciphertext")]


class _Unqueried:
    """Stands in for a collection that must not be queried: every method call fails the test."""

    def __getattr__(self, name: str) -> Callable[..., object]:
        def query(*_args: object, **_kwargs: object) -> object:
            raise AssertionError(f"{name} ran before the filter was checked")

        return query


MONGO_CALLS: dict[str, Callable[[MongoStore, Any], object]] = {
    "put_secret": lambda store, bad: store.put_secret("alice", bad, "TOKEN", "ciphertext", T0),
    "delete_secret": lambda store, bad: store.delete_secret("alice", "github", bad),
    "find_secrets username": lambda store, bad: store.find_secrets(bad),
    "find_secrets server": lambda store, bad: store.find_secrets("alice", bad),
    "find_token": lambda store, bad: store.find_token(bad),
    "list_tokens": lambda store, bad: store.list_tokens(bad),
    "revoke_token": lambda store, bad: store.revoke_token(bad, T0),
    "find_token_by_id": lambda store, bad: store.find_token_by_id(bad),
    "count_events": lambda store, bad: store.count_events(bad),
    "delete_events": lambda store, bad: store.delete_events(bad, 10),
    "count_secrets": lambda store, bad: store.count_secrets(bad),
    "list_events actor": lambda store, bad: store.list_events(bad),
    "list_events server": lambda store, bad: store.list_events("alice", bad),
    "replace_value key": lambda store, bad: store.replace_value("alice", "github", bad, "old", "new"),
    "replace_value old": lambda store, bad: store.replace_value("alice", "github", "TOKEN", bad, "new"),
    "scan_secrets": lambda store, bad: store.scan_secrets(("alice", bad, "TOKEN"), 10),
    "find_link": lambda store, bad: store.find_link(bad),
    "claim_link": lambda store, bad: store.claim_link(bad, T0, "claim-1"),
    "claim_link claim_id": lambda store, bad: store.claim_link("hash-1", T0, bad),
    "claim_link form": lambda store, bad: store.claim_link("hash-1", T0, "claim-1", form=bad),
    "release_link": lambda store, bad: store.release_link(bad, "claim-1"),
    "release_link claim_id": lambda store, bad: store.release_link("hash-1", bad),
    "count_live_links": lambda store, bad: store.count_live_links(bad, T0),
    "end_token_links": lambda store, bad: store.end_token_links(bad, T0),
}


@mongo_backends
@pytest.mark.parametrize("call", MONGO_CALLS.values(), ids=MONGO_CALLS.keys())
def test_mongo_store_refuses_a_non_string_filter_value_before_any_query(
    mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch, call: Callable[[MongoStore, Any], object]
) -> None:
    monkeypatch.setattr(mongo_store, "_secrets", _Unqueried())
    monkeypatch.setattr(mongo_store, "_tokens", _Unqueried())
    monkeypatch.setattr(mongo_store, "_events", _Unqueried())
    monkeypatch.setattr(mongo_store, "_links", _Unqueried())

    with pytest.raises(TypeError, match=r"must be a (string|datetime)"):
        call(mongo_store, {"$ne": None})


# --- MongoDB only ---------------------------------------------------------------------------------


@mongo_backends
def test_mongo_store_creates_a_unique_index_on_username_server_key(mongo_store: MongoStore) -> None:
    indexes = mongo_store._secrets.index_information().values()

    assert any(
        [tuple(field) for field in index["key"]] == [("username", 1), ("server", 1), ("key", 1)]
        and index.get("unique")
        for index in indexes
    )


@mongo_backends
def test_mongo_unique_index_refuses_a_second_document_for_the_same_record(mongo_store: MongoStore) -> None:
    mongo_store.put_secret("alice", "github", "TOKEN", "ciphertext", T0)

    with pytest.raises(DuplicateKeyError):
        mongo_store._secrets.insert_one(
            {
                "username": "alice",
                "server": "github",
                "key": "TOKEN",
                "value": "x",
                "created_at": T1,
                "updated_at": T1,
            }
        )


@mongo_backends
def test_mongo_documents_hold_the_user_secret_fields(mongo_store: MongoStore) -> None:
    mongo_store.put_secret("alice", "github", "TOKEN", "ciphertext", T0)
    mongo_store.put_secret("alice", "github", "TOKEN", "ciphertext-2", T1)

    document = mongo_store._secrets.find_one({}, {"_id": False})
    assert document is not None
    assert set(document) == {"username", "server", "key", "value", "created_at", "updated_at"}
    assert document["value"] == "ciphertext-2"
    # Native BSON dates, not strings: MongoDB can sort and expire on them.
    assert isinstance(document["created_at"], datetime)
    assert isinstance(document["updated_at"], datetime)


@mongo_backends
def test_mongo_reads_the_times_mongoose_wrote_into_a_document_of_the_original_design(
    mongo_store: MongoStore,
) -> None:
    # The original design's Mongoose schema, with `timestamps: true`, wrote createdAt and updatedAt.
    original = {"username": "alice", "server": "github", "key": "TOKEN", "value": "ciphertext"}
    mongo_store._secrets.insert_one({**original, "createdAt": T0, "updatedAt": T1, "__v": 0})

    [record] = mongo_store.find_secrets("alice", "github")
    assert (record.created_at, record.updated_at) == (T0, T1)

    # Saved again here: updated now, created when Mongoose says.
    mongo_store.put_secret("alice", "github", "TOKEN", "ciphertext-2", T2)
    [record] = mongo_store.find_secrets("alice", "github")
    assert (record.created_at, record.updated_at) == (T0, T2)


@mongo_backends
@pytest.mark.parametrize("stored", ["2025-03-14T09:26:53Z", 0, None], ids=["text", "number", "null"])
def test_mongo_passes_over_a_mongoose_time_that_is_not_a_date(
    mongo_store: MongoStore, stored: object
) -> None:
    # Only ours are the store's to refuse: another name's field of another shape is no time at all.
    original = {"username": "alice", "server": "github", "key": "TOKEN", "value": "ciphertext"}
    mongo_store._secrets.insert_one({**original, "createdAt": stored, "updatedAt": stored, "updated_at": T1})

    [record] = mongo_store.find_secrets("alice", "github")
    assert (record.created_at, record.updated_at) == (T1, T1)


@mongo_backends
def test_mongo_updates_never_name_one_field_under_two_operators(
    mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real server refuses an update naming a field (or a field and one inside it) under two operators,
    # $set and $setOnInsert say (ConflictingUpdateOperators); mongomock applies one of them and goes on.
    sent: list[dict[str, dict[str, Any]]] = []
    for collection in (mongo_store._secrets, mongo_store._tokens, mongo_store._links):
        for method in ("update_one", "find_one_and_update"):
            real = getattr(collection, method)

            def recording(selector: Any, update: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
                sent.append(update)
                return _real(selector, update, *args, **kwargs)

            monkeypatch.setattr(collection, method, recording)
    mongo_store.put_secret("alice", "github", "TOKEN", "ciphertext-1", T0)  # created
    mongo_store.put_secret("alice", "github", "TOKEN", "ciphertext-2", T1)  # replaced
    mongo_store.replace_value("alice", "github", "TOKEN", "ciphertext-2", "ciphertext-3")
    mongo_store.put_token(_token("t1"))
    mongo_store.revoke_token("t1", T1)
    mongo_store.put_link(LinkRecord("l1", "hash-1", "alice", "github", "TOKEN", T0, T2))
    mongo_store.claim_link("hash-1", T1, "claim-1")
    mongo_store.release_link("hash-1", "claim-1")

    assert len(sent) == 6
    for update in sent:
        paths = [path for fields in update.values() for path in fields]
        assert len(paths) == len(set(paths)), update
        assert not [path for path in paths for other in paths if other.startswith(f"{path}.")], update


@pytest.fixture
def mongo_clients(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Make ``MongoStore.from_url`` build mongomock clients, and record how it called ``MongoClient``."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_client(url: str, **options: Any) -> mongomock.MongoClient:
        calls.append((url, options))
        return mongomock.MongoClient(tz_aware=options.get("tz_aware", False))

    monkeypatch.setattr("mcp_secrets.store.mongo.MongoClient", fake_client)
    return calls


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("mongodb://localhost:1/mydb", "mydb"),
        ("mongodb://user:pw@localhost:1/mydb?authSource=admin", "mydb"),
        ("mongodb://localhost:1", DEFAULT_DATABASE),
        ("mongodb://localhost:1/", DEFAULT_DATABASE),
        ("mongodb://localhost:1/?replicaSet=rs0", DEFAULT_DATABASE),
    ],
)
def test_from_url_takes_the_database_from_the_url_path(
    mongo_clients: list[tuple[str, dict[str, Any]]], url: str, database: str
) -> None:
    opened = MongoStore.from_url(url)

    assert opened._secrets.database.name == database
    [(called_url, options)] = mongo_clients
    assert called_url == url
    assert options["tz_aware"] is True


def test_from_url_keeps_the_server_selection_timeout_and_app_name_the_url_sets(
    mongo_clients: list[tuple[str, dict[str, Any]]],
) -> None:
    url = "mongodb://localhost:1/db?serverSelectionTimeoutMS=30000&appName=billing"

    MongoStore.from_url(url)

    # pymongo lets a keyword win over the URL: the client the store would build, as it would build it.
    [(called_url, options)] = mongo_clients
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(called_url, connect=False, **options)
    try:
        assert client.options.server_selection_timeout == 30
        assert client.options.pool_options.metadata["application"] == {"name": "billing"}
    finally:
        client.close()


def test_from_url_without_those_options_gets_the_stores_defaults(
    mongo_clients: list[tuple[str, dict[str, Any]]],
) -> None:
    MongoStore.from_url("mongodb://localhost:1/db")

    [(called_url, options)] = mongo_clients
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(called_url, connect=False, **options)
    try:
        assert client.options.server_selection_timeout == 5
        assert client.options.pool_options.metadata["application"] == {"name": "mcp-secrets"}
    finally:
        client.close()


@pytest.mark.parametrize("url", ["mongodb://user:s3cretpw@localhost:notaport/db", "mongodb://user:s3cretpw@"])
def test_from_url_refuses_a_malformed_url_without_quoting_it(
    mongo_clients: list[tuple[str, dict[str, Any]]], url: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        MongoStore.from_url(url)

    assert "s3cretpw" not in str(raised.value)
    assert mongo_clients == []


@pytest.mark.parametrize("database", ["a%5Cb", "a%00b"], ids=["backslash", "nul"])
def test_from_url_naming_a_database_mongodb_forbids_is_refused_without_quoting_it(
    tmp_path: Path, canary: str, database: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        open_store(
            f"mongodb://user:{canary}@localhost:1/{database}", default_sqlite_path=str(tmp_path / "unused.db")
        )

    assert "names a database MongoDB does not allow" in str(raised.value)
    assert canary not in str(raised.value)


@pytest.mark.parametrize("option", ["tlsCAFile", "tlsCertificateKeyFile", "tlsCRLFile"])
def test_from_url_naming_a_file_that_cannot_be_read_is_refused_without_quoting_it(
    mongo_clients: list[tuple[str, dict[str, Any]]], tmp_path: Path, canary: str, option: str
) -> None:
    missing = tmp_path / "missing.pem"

    with pytest.raises(ConfigurationError) as raised:
        open_store(
            f"mongodb://user:{canary}@localhost:1/db?tls=true&{option}={missing}",
            default_sqlite_path=str(tmp_path / "unused.db"),
        )

    assert "names a file that cannot be used" in str(raised.value)
    assert option.lower() in str(raised.value)
    assert canary not in str(raised.value)
    assert mongo_clients == []


@pytest.mark.parametrize(
    "failure",
    [
        dns.resolver.NXDOMAIN(),
        dns.resolver.NoNameservers(),
        dns.resolver.LifetimeTimeout(timeout=20.0, errors=[]),
    ],
    ids=["nxdomain", "no-nameservers", "timeout"],
)
def test_from_url_whose_srv_lookup_fails_reports_the_store_unavailable_not_the_url_wrong(
    mongo_clients: list[tuple[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    def resolve(*args: Any, **kwargs: Any) -> Any:
        raise failure

    monkeypatch.setattr("pymongo.synchronous.srv_resolver._resolve", resolve)

    with pytest.raises(StoreUnavailableError) as raised:
        MongoStore.from_url("mongodb+srv://user:s3cretpw@cluster0.example.net/db")

    assert f"looked up in DNS ({type(failure).__name__})" in str(raised.value)
    assert "s3cretpw" not in str(raised.value)
    assert "cluster0" not in str(raised.value)
    assert mongo_clients == []


def test_from_url_with_a_malformed_srv_url_still_says_the_url_is_wrong(
    mongo_clients: list[tuple[str, dict[str, Any]]],
) -> None:
    with pytest.raises(ConfigurationError, match="not a valid MongoDB URL"):
        MongoStore.from_url("mongodb+srv://user:s3cretpw@cluster0.example.net:27017/db")  # no port with SRV


LISTING_SORT = (("at", -1), ("_id", -1))


@mongo_backends
def test_mongo_audit_indexes_serve_each_listing_filter_and_its_sort(mongo_store: MongoStore) -> None:
    indexes = {tuple(info["key"]) for info in mongo_store._events.index_information().values()}

    # one user's, one server's, one user's of one server (list_secret_events with a server), everyone's
    for equality in ((("actor", 1),), (("server", 1),), (("actor", 1), ("server", 1)), ()):
        assert (*equality, *LISTING_SORT) in indexes


@mongo_backends
def test_mongo_finds_one_users_api_tokens_by_index(mongo_store: MongoStore) -> None:
    # Looked up at every new session and listen stream, to count only those of live tokens.
    indexes = {tuple(info["key"]) for info in mongo_store._tokens.index_information().values()}

    assert any(index[0] == ("username", 1) for index in indexes)


# The store's own queries, and the index each must search rather than scan the table for.
SQLITE_PLANS = {
    "list_events of one user and one server": (
        (
            "SELECT at FROM audit_events WHERE actor = ? AND server = ? "
            "ORDER BY julianday(at) DESC, at DESC, id DESC LIMIT ?"
        ),
        "audit_events_actor_server_time (actor=? AND server=?)",
    ),
    "list_tokens of one user": (
        "SELECT token_id FROM api_tokens WHERE username = ? ORDER BY created_at, token_id",
        "api_tokens_username (username=?)",
    ),
}


@pytest.mark.parametrize("query", SQLITE_PLANS)
def test_sqlite_searches_an_index_for_a_users_events_of_one_server_and_a_users_tokens(
    sqlite_store: SQLiteStore, query: str
) -> None:
    # A user with a million events and none of that server: 0.8 s on the event loop, every other call waiting.
    sql, index = SQLITE_PLANS[query]
    plan = sqlite_store._connection.execute(f"EXPLAIN QUERY PLAN {sql}", ("x",) * sql.count("?")).fetchall()

    table = sql.split(" FROM ")[1].split()[0]
    assert any(f"SEARCH {table} USING INDEX {index}" in step[3] for step in plan), plan


def test_mongo_drops_the_audit_index_earlier_versions_made() -> None:
    client = mongomock.MongoClient(tz_aware=True)
    client["db"]["audit_events"].create_index([("actor", 1), ("at", -1)], name="actor_at")

    MongoStore(client, "db")
    MongoStore(client, "db")  # and starts again with it gone

    assert "actor_at" not in client["db"]["audit_events"].index_information()


@pytest.mark.mongodb
@pytest.mark.skipif(not os.environ.get("MONGODB_URI"), reason="explain() needs a real MongoDB")
@pytest.mark.parametrize("store", ["mongodb"], indirect=True)
@pytest.mark.parametrize(
    "selector", [{"actor": "user1"}, {"server": "github"}, {}, {"actor": "user1", "server": "github"}]
)
def test_on_a_real_server_a_page_of_events_comes_from_an_index_unsorted(
    mongo_store: MongoStore, selector: dict[str, str]
) -> None:
    for index in range(200):
        mongo_store.add_event(AuditEvent(T0 + timedelta(seconds=index), f"user{index % 4}", "used", "github"))
    cursor = mongo_store._events.find(selector).sort(list(LISTING_SORT)).limit(50)
    assert len(list(cursor.clone())) == 50  # a selector matching nothing would win with any plan

    plan = json.dumps(cursor.explain()["queryPlanner"]["winningPlan"])

    assert "IXSCAN" in plan
    assert '"SORT"' not in plan


UNREACHABLE_URL = "mongodb://user:s3cretpw@127.0.0.1:1/db"


@pytest.fixture
def unreachable_client() -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        UNREACHABLE_URL, serverSelectionTimeoutMS=200
    )
    yield client
    client.close()


def test_mongo_store_on_an_unreachable_server_is_unavailable(
    unreachable_client: pymongo.MongoClient[dict[str, Any]],
) -> None:
    with pytest.raises(StoreUnavailableError) as raised:
        MongoStore(unreachable_client, "db")

    assert "s3cretpw" not in str(raised.value)
    assert raised.value.__cause__ is None


def test_mongo_store_whose_login_is_refused_says_so_without_the_password() -> None:
    password = secrets.token_urlsafe(16)

    def refuse_login(command: dict[str, Any]) -> dict[str, Any]:
        # What a server answers a SCRAM exchange with a wrong user name or password.
        return {"ok": 0, "errmsg": "Authentication failed.", "code": 18, "codeName": "AuthenticationFailed"}

    with mongo_wire_server(refuse_login) as port, pytest.raises(StoreUnavailableError) as raised:
        MongoStore.from_url(f"mongodb://alice:{password}@127.0.0.1:{port}/db")

    assert "refused the login" in str(raised.value)
    assert password not in str(raised.value)


def test_from_url_closes_its_client_when_the_store_cannot_be_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    # A service retrying open_secrets() while the database refuses it would gather clients, each with its
    # monitor threads and sockets, for as long as it runs.
    made: list[pymongo.MongoClient[dict[str, Any]]] = []

    def recorded(url: str, **options: Any) -> pymongo.MongoClient[dict[str, Any]]:
        made.append(pymongo.MongoClient(url, **options))
        return made[-1]

    monkeypatch.setattr("mcp_secrets.store.mongo.MongoClient", recorded)

    def refuse_login(command: dict[str, Any]) -> dict[str, Any]:
        return {"ok": 0, "errmsg": "Authentication failed.", "code": 18, "codeName": "AuthenticationFailed"}

    with mongo_wire_server(refuse_login) as port, pytest.raises(StoreUnavailableError):
        MongoStore.from_url(f"mongodb://alice:pw@127.0.0.1:{port}/db")
    with pytest.raises(StoreUnavailableError):
        MongoStore.from_url("mongodb://127.0.0.1:1/db?serverSelectionTimeoutMS=200")

    assert len(made) == 2
    assert all(client._closed for client in made)


def _read_only_server(indexes: dict[str, list[dict[str, Any]]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """As a server answers a user of the ``read`` role: the collections' ``indexes``, no documents."""

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        if name in {"find", "aggregate", "listIndexes"}:
            batch = indexes.get(collection, []) if name == "listIndexes" else []
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": batch}}
        if name in {"count", "endSessions"}:
            return {"ok": 1, "n": 0}
        # createIndexes, insert, update, delete...: as a real server, which quotes the command it refuses.
        refused = f"not authorized on db to execute command {{ {name}: {collection!r} ... }}"
        return {"ok": 0, "errmsg": refused, "code": 13, "codeName": "Unauthorized"}

    return answer


def _indexes_of(store: MongoStore) -> dict[str, list[dict[str, Any]]]:
    collections = (store._secrets, store._tokens, store._links, store._events)
    return {
        collection.name: [{**index, "key": dict(index["key"])} for index in collection.list_indexes()]
        for collection in collections
    }


def test_mongo_store_of_a_read_only_user_opens_where_its_indexes_exist_and_refuses_writes() -> None:
    # An operator's read-only account (MongoDB's read role), for list and audit: it may not create indexes.
    made = _indexes_of(MongoStore(mongomock.MongoClient(tz_aware=True), "db"))

    with mongo_wire_server(_read_only_server(made)) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            assert store.find_secrets("alice") == []
            assert store.list_events("alice") == []
            with pytest.raises(StoreUnavailableError) as refused:
                store.put_secret("alice", "github", "TOKEN", "ciphertext", T0)
        finally:
            store.close()

    assert "not allowed" in str(refused.value)
    assert "put_secret" not in str(refused.value)
    assert "user_secrets" not in str(refused.value)


def test_mongo_store_of_a_read_only_user_without_its_indexes_says_so() -> None:
    only_ids = {
        name: [{"v": 2, "key": {"_id": 1}, "name": "_id_"}] for name in ("user_secrets", "api_tokens")
    }

    with (
        mongo_wire_server(_read_only_server(only_ids)) as port,
        pytest.raises(StoreUnavailableError) as refused,
    ):
        MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")

    assert "indexes" in str(refused.value)
    assert "not allowed" in str(refused.value)


# What tells two indexes of the same keys apart on MongoDB 5.0 and later (SERVER-47657): a unique index
# may be made beside one that is not. Other options (a TTL) do not: such an index is "equivalent".
_INDEX_SIGNATURE = ("unique", "sparse", "partialFilterExpression", "collation")


def _signature(index: dict[str, Any]) -> tuple[Any, ...]:
    return (list(index["key"].items()), *(index.get(option) or None for option in _INDEX_SIGNATURE))


def _index_conflict(wanted: dict[str, Any], held: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A real server's refusal of the index ``wanted`` beside ``held``; None when it made it or has it."""
    for index in held:
        same_name = index["name"] == wanted["name"]
        same_signature = _signature(index) == _signature(wanted)
        same_options = {k: v for k, v in index.items() if k != "v"} == wanted
        if same_name and same_signature and same_options:
            return None
        if same_name and not same_signature:
            errmsg = "An existing index has the same name as the requested index"
            return {"ok": 0, "errmsg": errmsg, "code": 86, "codeName": "IndexKeySpecsConflict"}
        if same_name or same_signature:
            errmsg = f"Index already exists with a different name: {index['name']}"
            return {"ok": 0, "errmsg": errmsg, "code": 85, "codeName": "IndexOptionsConflict"}
    held.append({"v": 2, **wanted})
    return None


def _server_keeping_indexes(
    indexes: dict[str, list[dict[str, Any]]],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """As a real server (5.0 and later) keeps indexes: one per signature and one per name.

    An index's signature is its keys with its uniqueness, sparseness, partial filter and collation. An
    index asked for again, same name and options, is there already; one whose signature an index of another
    name has, or whose name one of other options has, is IndexOptionsConflict; one whose name an index of
    another signature has, IndexKeySpecsConflict. mongomock makes the second index instead.
    """

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        held = indexes.setdefault(collection, [{"v": 2, "key": {"_id": 1}, "name": "_id_"}])
        if name == "createIndexes":
            for wanted in command["indexes"]:
                refused = _index_conflict({**wanted, "key": dict(wanted["key"])}, held)
                if refused is not None:
                    return refused
            return {"ok": 1}
        if name in {"find", "aggregate", "listIndexes"}:
            batch = held if name == "listIndexes" else []
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": batch}}
        return {"ok": 1}

    return answer


def _record_index(name: str, **options: Any) -> dict[str, Any]:
    return {"v": 2, "key": {"username": 1, "server": 1, "key": 1}, "name": name, **options}


def test_the_stand_in_server_refuses_a_second_index_of_the_same_keys_as_a_real_one() -> None:
    indexes = {"c": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]}
    with mongo_wire_server(_server_keeping_indexes(indexes)) as port:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}")
        try:
            client["db"]["c"].create_index([("a", 1)], unique=True)
            client["db"]["c"].create_index([("a", 1)], unique=True)  # the same again: there already
            with pytest.raises(pymongo.errors.OperationFailure) as refused:
                client["db"]["c"].create_index([("a", 1)], unique=True, name="another")
            client["db"]["c"].create_index([("a", 1)], name="not_unique")  # another signature: made beside
        finally:
            client.close()

    assert refused.value.code == 85
    assert [index["name"] for index in indexes["c"]] == ["_id_", "a_1", "not_unique"]


@pytest.mark.parametrize(
    ("index", "code", "said"),
    [
        ("token_hash_unique", 11000, "api_tokens holds more than one document for one (token_hash)"),
        ("token_id_unique", 11000, "api_tokens holds more than one document for one (token_id)"),
        ("link_hash_unique", 11000, "entry_links holds more than one document for one (link_hash)"),
        ("username_server_key_unique", 166, "user_secrets is a view"),
        ("expires_at_ttl", 67, "entry_links refuses the store's index expires_at_ttl (CannotCreateIndex)"),
    ],
    ids=["tokens-twice", "token-ids-twice", "links-twice", "view", "capped"],
)
def test_mongo_store_that_cannot_make_an_index_names_its_collection_and_why(
    index: str, code: int, said: str
) -> None:
    # What a real server answers: duplicates under a new unique index, an index asked of a view, a TTL
    # index asked of a capped collection.
    names = {11000: "DuplicateKey", 166: "CommandNotSupportedOnView", 67: "CannotCreateIndex"}

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        if name == "createIndexes" and command["indexes"][0]["name"] == index:
            return {"ok": 0, "errmsg": "refused", "code": code, "codeName": names[code]}
        if name in {"find", "listIndexes"}:
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": []}}
        return {"ok": 1, "n": 0}

    with mongo_wire_server(answer) as port, pytest.raises(StoreUnavailableError) as refused:
        MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")

    assert said in str(refused.value)
    assert "unavailable" not in str(refused.value)


@pytest.mark.parametrize(
    ("collection", "existing"),
    [
        ("user_secrets", _record_index("username_1_server_1_key_1", unique=True)),
        ("entry_links", {"v": 2, "key": {"expires_at": 1}, "name": "expires_at_1", "expireAfterSeconds": 0}),
    ],
    ids=["unique-record-index", "ttl-index"],
)
def test_mongo_store_takes_the_index_an_operator_made_under_another_name(
    collection: str, existing: dict[str, Any]
) -> None:
    # The shell names an index after its keys: an operator adding the unique index to the original design's
    # data by hand gets username_1_server_1_key_1, and a real server makes no second one beside it.
    indexes = {collection: [{"v": 2, "key": {"_id": 1}, "name": "_id_"}, existing]}

    with mongo_wire_server(_server_keeping_indexes(indexes)) as port:
        MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db").close()

    assert [index["name"] for index in indexes[collection] if index["key"] == existing["key"]] == [
        existing["name"]
    ]


def test_mongo_store_makes_its_unique_index_beside_one_of_the_same_fields_that_is_not_unique() -> None:
    # MongoDB 5.0 and later tell the two apart by their uniqueness, and make the second.
    indexes = {"user_secrets": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}, _record_index("by_record")]}

    with mongo_wire_server(_server_keeping_indexes(indexes)) as port:
        MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db").close()

    assert [(index["name"], index.get("unique", False)) for index in indexes["user_secrets"]] == [
        ("_id_", False),
        ("by_record", False),
        ("username_server_key_unique", True),
    ]


@pytest.mark.parametrize(
    ("collection", "existing", "wanted"),
    [
        (
            "entry_links",
            {"v": 2, "key": {"expires_at": 1}, "name": "expires_at_1"},
            "expires_at_ttl",
        ),
        ("user_secrets", _record_index("username_server_key_unique"), "username_server_key_unique"),
    ],
    ids=["same-fields-without-ttl", "same-name-not-unique"],
)
def test_mongo_store_refuses_to_open_where_an_index_is_in_the_way_of_its_own(
    collection: str, existing: dict[str, Any], wanted: str
) -> None:
    # The store would go on without an index it relies on (expiry, one document per record): it names it.
    indexes = {collection: [{"v": 2, "key": {"_id": 1}, "name": "_id_"}, existing]}

    with (
        mongo_wire_server(_server_keeping_indexes(indexes)) as port,
        pytest.raises(StoreUnavailableError) as refused,
    ):
        MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")

    assert f"the collection {collection} has an index in the way" in str(refused.value)
    assert wanted in str(refused.value)


def _server_with_default_collation(
    indexes: dict[str, list[dict[str, Any]]], collection: str, collation: dict[str, Any]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """As a real server keeps the indexes of ``collection``, made with a default ``collation``: an index
    asked for without one gets that one."""
    keeping = _server_keeping_indexes(indexes)

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        if next(iter(command)) == "createIndexes" and command["createIndexes"] == collection:
            wanted = [
                index if "collation" in index else {**index, "collation": collation}
                for index in command["indexes"]
            ]
            command = {**command, "indexes": wanted}
        return keeping(command)

    return answer


CASE_INSENSITIVE = {"locale": "en", "strength": 2, "caseLevel": False, "version": "57.1"}


@pytest.mark.parametrize("collection", ["user_secrets", "api_tokens", "entry_links", "audit_events"])
def test_mongo_store_refuses_a_collection_whose_default_collation_would_match_alice_for_alice(
    collection: str,
) -> None:
    # Every filter of such a collection compares under its collation: "Alice" would list, overwrite and
    # delete alice's records, and read her trail.
    indexes: dict[str, list[dict[str, Any]]] = {}

    with (
        mongo_wire_server(_server_with_default_collation(indexes, collection, CASE_INSENSITIVE)) as port,
        pytest.raises(ConfigurationError) as refused,
    ):
        MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")

    assert f"collection {collection} has a default collation" in str(refused.value)


def test_mongo_store_opens_on_collections_whose_default_collation_is_the_binary_one() -> None:
    indexes: dict[str, list[dict[str, Any]]] = {}
    binary = {"locale": "simple"}

    with mongo_wire_server(_server_with_default_collation(indexes, "user_secrets", binary)) as port:
        MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db").close()

    assert "username_server_key_unique" in [index["name"] for index in indexes["user_secrets"]]


def test_mongo_store_of_a_read_only_user_opens_where_the_unique_index_has_another_name() -> None:
    made = _indexes_of(MongoStore(mongomock.MongoClient(tz_aware=True), "db"))
    made["user_secrets"] = [
        {"v": 2, "key": {"_id": 1}, "name": "_id_"},
        _record_index("username_1_server_1_key_1", unique=True),
    ]

    with mongo_wire_server(_read_only_server(made)) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            assert store.find_secrets("alice") == []
        finally:
            store.close()


@pytest.mark.mongodb
@pytest.mark.skipif(not os.environ.get("MONGODB_URI"), reason="set MONGODB_URI to run against a real MongoDB")
def test_on_a_real_server_the_store_opens_beside_a_unique_index_an_operator_made() -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        os.environ["MONGODB_URI"], serverSelectionTimeoutMS=5000, tz_aware=True
    )
    database = f"mcp_secrets_test_{secrets.token_hex(4)}"
    try:
        client[database]["user_secrets"].create_index(
            [("username", 1), ("server", 1), ("key", 1)], unique=True
        )
        store = MongoStore(client, database)
        store.put_secret("alice", "github", "TOKEN", "ciphertext-1", T0)
        store.put_secret("alice", "github", "TOKEN", "ciphertext-2", T1)

        assert store.count_secrets() == 1
        assert set(client[database]["user_secrets"].index_information()) == {
            "_id_",
            "username_1_server_1_key_1",
        }
    finally:
        client.drop_database(database)
        client.close()


def test_mongo_store_refuses_unacknowledged_writes_before_sending_any_command() -> None:
    # With w=0 pymongo sends a write and reads no reply: asked whether a record was created (upserted_id) or
    # a link claimed (modified_count), it raises. Every change would be made, then reported failed.
    commands: list[str] = []
    keeping = _server_keeping_indexes({})

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        commands.append(next(iter(command)))
        return keeping(command)

    with mongo_wire_server(answer) as port, pytest.raises(ConfigurationError) as refused:
        MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?w=0")

    assert "w=0" in str(refused.value)
    assert commands == []


STORE_READS: dict[str, Callable[[MongoStore], object]] = {
    "find_secrets": lambda store: store.find_secrets("alice"),
    "count_secrets": lambda store: store.count_secrets("alice"),
    "stored_keys": lambda store: store.stored_keys("alice", [("github", "TOKEN")]),
    "scan_secrets": lambda store: store.scan_secrets(None, 10),
    "list_events": lambda store: store.list_events("alice"),
    "find_token": lambda store: store.find_token("hash"),
    "find_token_by_id": lambda store: store.find_token_by_id("t1"),
    "list_tokens": lambda store: store.list_tokens(),
    "has_tokens": lambda store: store.has_tokens(),
    "find_link": lambda store: store.find_link("hash"),
    "count_live_links": lambda store: store.count_live_links("alice", T0),
}


@pytest.mark.parametrize("read", STORE_READS.values(), ids=STORE_READS.keys())
def test_mongo_store_reads_from_the_primary_whatever_read_preference_the_url_sets(
    read: Callable[[MongoStore], object],
) -> None:
    # A secondary may not have a token's revocation yet, nor the secret an entry page has just saved: the
    # store would accept the revoked token, or find no secret, for as long as the secondary lags.
    asked: list[object] = []
    keeping = _server_keeping_indexes({})

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        if next(iter(command)) in {"find", "aggregate"}:
            asked.append(command.get("$readPreference", {"mode": "primary"}))
        return keeping(command)

    with mongo_wire_server(answer, hello=MONGOS_HELLO) as port:  # a mongos passes the preference on
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?readPreference=secondaryPreferred")
        try:
            read(store)
        finally:
            store.close()

    assert asked == [{"mode": "primary"}]


@pytest.mark.parametrize(
    ("code", "name", "errmsg"),
    [
        (
            13297,
            "DatabaseDifferCase",
            "db already exists with different case already have: [team] trying to create [Team]",
        ),
        (73, "InvalidNamespace", "Invalid database name"),
    ],
    ids=["differs-in-case", "too-long"],
)
def test_mongo_store_on_a_database_name_the_server_refuses_says_the_url_is_wrong(
    code: int, name: str, errmsg: str
) -> None:
    # pymongo takes any case and any length; the server refuses a name too long, or differing only in case
    # from a database it has. Retrying would not help: a configuration error (exit 2), not the store down.
    def refuse_database(command: dict[str, Any]) -> dict[str, Any]:
        return {"ok": 0, "errmsg": errmsg, "code": code, "codeName": name}

    with mongo_wire_server(refuse_database) as port, pytest.raises(ConfigurationError) as refused:
        MongoStore.from_url(f"mongodb://127.0.0.1:{port}/Team")

    assert f"refuses the database name ({name})" in str(refused.value)


@pytest.mark.mongodb
@pytest.mark.skipif(not os.environ.get("MONGODB_URI"), reason="set MONGODB_URI to run against a real MongoDB")
def test_on_a_real_server_a_database_differing_only_in_case_is_a_configuration_error() -> None:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        os.environ["MONGODB_URI"], serverSelectionTimeoutMS=5000, tz_aware=True
    )
    database = f"mcp_secrets_test_{secrets.token_hex(4)}"
    try:
        MongoStore(client, database)
        with pytest.raises(ConfigurationError, match="DatabaseDifferCase"):
            MongoStore(client, database.upper())
    finally:
        client.drop_database(database)
        client.close()


UNREACHABLE_CALLS: dict[str, Callable[[MongoStore], object]] = {
    "put_secret": lambda store: store.put_secret("alice", "github", "TOKEN", "ciphertext", T0),
    "find_secrets": lambda store: store.find_secrets("alice"),
    "count_secrets": lambda store: store.count_secrets(),
    "find_token": lambda store: store.find_token("hash"),
    "ping": lambda store: store.ping(),
}


@pytest.mark.parametrize("call", UNREACHABLE_CALLS.values(), ids=UNREACHABLE_CALLS.keys())
def test_mongo_store_whose_server_went_away_reports_unavailable(
    unreachable_client: pymongo.MongoClient[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    call: Callable[[MongoStore], object],
) -> None:
    opened = MongoStore(mongomock.MongoClient(tz_aware=True), "db")
    monkeypatch.setattr(opened, "_client", unreachable_client)
    monkeypatch.setattr(opened, "_secrets", unreachable_client["db"]["user_secrets"])
    monkeypatch.setattr(opened, "_tokens", unreachable_client["db"]["api_tokens"])

    with pytest.raises(StoreUnavailableError) as raised:
        call(opened)

    assert "s3cretpw" not in str(raised.value)


@pytest.mark.parametrize("broken", ["username", "value"])
def test_mongo_store_gives_the_names_of_an_undecodable_document_to_read_on_after_only_when_they_are_exact(
    broken: str,
) -> None:
    # rotate reads on after a record it cannot read, by its names. A name read with its invalid bytes
    # replaced is not the stored one: as a cursor it would find the same document again, for ever, or
    # pass over the records between the two spellings.
    fields = {"username": "uXX", "server": "s", "key": "k", "value": "vXX", "created_at": T0}
    fields["updated_at"] = T0
    encoded = bson.encode(fields).replace(b"uXX" if broken == "username" else b"vXX", b"u\xffX")
    with mongo_wire_server(server_holding({"user_secrets": [RawBSONDocument(encoded)]})) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            with pytest.raises(UnreadableRecordError) as unreadable:
                store.scan_secrets(None, 10)
        finally:
            store.close()

    assert unreadable.value.record == (None if broken == "username" else ("uXX", "s", "k"))
    assert "(InvalidBSON)" in str(unreadable.value)


def test_mongo_store_names_a_document_another_tool_wrote_that_it_cannot_read_and_reads_the_others(
    canary: str,
) -> None:
    # A date past year 9999 (mongosh writes one as easily as any other): BSON holds it, datetime cannot.
    far = bson.DatetimeMS(2**62)
    good = {"value": "ciphertext", "created_at": T0, "updated_at": T0}
    documents = {
        "user_secrets": [
            {"_id": bson.ObjectId(), "username": "alice", "server": "github", "key": "A", **good},
            {
                "_id": bson.ObjectId(),
                "username": "alice",
                "server": "github",
                "key": "B",
                **good,
                "value": canary,
                "updated_at": far,
            },
            {"_id": bson.ObjectId(), "username": "alice", "server": "gitlab", "key": "A", **good},
        ],
        "api_tokens": [
            {
                "_id": bson.ObjectId(),
                "token_id": "t1",
                "username": "bob",
                "token_hash": canary,
                "created_at": T0,
                "expires_at": far,
                "label": "",
            },
        ],
        "audit_events": [
            {
                "_id": bson.ObjectId(),
                "at": far,
                "actor": "carol",
                "action": "updated",
                "server": "jira",
                "key": "K",
                "detail": canary,
            },
        ],
    }

    with mongo_wire_server(server_holding(documents)) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            with pytest.raises(StoreUnavailableError) as secret:
                store.find_secrets("alice", "github")
            with pytest.raises(StoreUnavailableError) as token:
                store.find_token(canary)
            with pytest.raises(StoreUnavailableError) as event:
                store.list_events("carol")
            readable = _triples(store, "alice", "gitlab")
        finally:
            store.close()

    assert "the document of username 'alice', server 'github', key 'B' in the collection user_secrets" in str(
        secret.value
    )
    assert "the document of token_id 't1', username 'bob' in the collection api_tokens" in str(token.value)
    assert "the document of actor 'carol', server 'jira', key 'K' in the collection audit_events" in str(
        event.value
    )
    for raised in (secret, token, event):
        assert "(InvalidBSON)" in str(raised.value)
        assert (canary in str(raised.value)) is False
        assert raised.value.__cause__ is None
    assert readable == [("gitlab", "A", "ciphertext")]


@pytest.mark.parametrize(
    ("call", "collection", "kind"),
    [
        (
            lambda store, canary: store.put_secret("alice", "github", "K", f"\ud800{canary}", T0),
            "user_secrets",
            "UnicodeEncodeError",
        ),
        (
            lambda store, canary: store.put_secret("alice", "github", "K", canary * 2**20, T0),
            "user_secrets",
            "DocumentTooLarge",
        ),
        (
            lambda store, canary: store.put_token(_token("t1", label=[canary, object()])),
            "api_tokens",
            "InvalidDocument",
        ),
        (lambda store, canary: store.list_events(canary, limit=2**64), "audit_events", "OverflowError"),
    ],
    ids=["lone-surrogate", "too-large", "no-bson-type", "int-past-8-bytes"],
)
def test_mongo_store_refuses_what_bson_cannot_hold_as_unavailable_naming_the_collection_not_the_value(
    call: Callable[[MongoStore, str], object], collection: str, kind: str, canary: str
) -> None:
    # Reached by library callers of the store: the tools validate their input first.
    with mongo_wire_server(server_holding({})) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            with pytest.raises(StoreUnavailableError) as refused:
                call(store, canary)
        finally:
            store.close()

    assert f"of the collection {collection} ({kind})" in str(refused.value)
    assert (canary in str(refused.value)) is False
    assert refused.value.__cause__ is None
    assert refused.value.__context__ is None or (canary in str(refused.value.__context__)) is False


# What the audit event of an unconfirmed change meets: nothing wrong, or a failure of its insert, or of
# the read that tells what the change did ("created" or "updated", whether the record is gone).
@pytest.mark.parametrize(
    "audit_fault", [None, "insert", "find"], ids=["recorded", "insert-fails", "read-fails"]
)
def test_a_change_made_outside_a_transaction_but_not_confirmed_is_reported_and_recorded_so(
    encryptor: SecretEncryptor, canary: str, audit_fault: str | None
) -> None:
    # Outside a transaction: a standalone server, or a replica set the store found without a primary.
    held: list[dict[str, Any]] = []
    inserted: list[dict[str, Any]] = []

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        if name == audit_fault and collection in {"audit_events", "user_secrets"}:
            return {"ok": 0, "code": 2, "codeName": "BadValue", "errmsg": "refused"}
        if name == "update":  # the upsert is made, its write concern not met
            update = command["updates"][0]
            held[:] = [{**update["q"], **update["u"]["$setOnInsert"], **update["u"]["$set"]}]
            upserted = [{"index": 0, "_id": bson.ObjectId()}]
            return {"ok": 1, "n": 1, "nModified": 0, "upserted": upserted, "writeConcernError": WTIMEOUT}
        if name == "delete":
            held.clear()
            return {"ok": 1, "n": 1, "writeConcernError": WTIMEOUT}
        if name == "insert":
            inserted.extend(command["documents"])
        if name in {"find", "aggregate", "listIndexes"}:
            batch = held if (name, collection) == ("find", "user_secrets") else []
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": batch}}
        return {"ok": 1, "n": 1}

    changes: list[tuple[str, str]] = []
    raised = _set_then_delete_unconfirmed(answer, encryptor, canary, changes.append)

    for message in raised:
        assert "made the change but did not confirm it" in message
        assert "may or may not last" in message
        assert "unavailable" not in message
        assert ("its audit event could not be written" in message) is (audit_fault is not None)
        assert (canary in message) is False
    recorded = [(event["action"], event["server"], event["key"], event["detail"]) for event in inserted]
    if audit_fault is None:
        assert recorded == [
            ("created", "github", "TOKEN", UNCONFIRMED),
            ("deleted", "github", "TOKEN", UNCONFIRMED),
        ]
    else:
        assert recorded == []
    # Made, if not confirmed: whatever holds the old value lets it go, whether or not the trail says so.
    assert changes == [("alice", "github"), ("alice", "github")]


def _set_then_delete_unconfirmed(
    answer: Callable[[dict[str, Any]], dict[str, Any]],
    encryptor: SecretEncryptor,
    value: str,
    changed: Callable[[tuple[str, str]], None] | None = None,
) -> list[str]:
    """Set ``value`` then delete it through ``Secrets`` on a server answering with ``answer``, each write
    refused as unconfirmed; the two messages. ``changed`` hears each change the service announces."""
    with mongo_wire_server(answer) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?w=majority&wtimeoutMS=1000")
        service = Secrets(store, encryptor)
        if changed is not None:
            service.on_change(lambda username, server: changed((username, server)))
        try:
            with pytest.raises(WriteUnconfirmedError) as saved:
                service.set_secret("alice", "github", "TOKEN", value)
            with pytest.raises(WriteUnconfirmedError) as deleted:
                service.delete_secret("alice", "github", "TOKEN")
        finally:
            service.close()
            store.close()
    return [str(saved.value), str(deleted.value)]


def _lagging_replica_set(
    held: list[dict[str, Any]], inserted: list[dict[str, Any]], *, changes: bool
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A standalone-looking server whose secondaries lag: every insert, and each change when ``changes``,
    is made but its write concern not met."""

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        unconfirmed = {"writeConcernError": WTIMEOUT} if changes else {}
        if name == "update":
            update = command["updates"][0]
            held[:] = [{**update["q"], **update["u"]["$setOnInsert"], **update["u"]["$set"]}]
            upserted = [{"index": 0, "_id": bson.ObjectId()}]
            return {"ok": 1, "n": 1, "nModified": 0, "upserted": upserted, **unconfirmed}
        if name == "delete":
            held.clear()
            return {"ok": 1, "n": 1, **unconfirmed}
        if name == "insert":
            inserted.extend(command["documents"])
            return {"ok": 1, "n": len(command["documents"]), "writeConcernError": WTIMEOUT}
        if name in {"find", "aggregate", "listIndexes"}:
            batch = held if (name, collection) == ("find", "user_secrets") else []
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": batch}}
        return {"ok": 1, "n": 1}

    return answer


@pytest.mark.parametrize("changes", [True, False], ids=["change-unconfirmed", "change-confirmed"])
def test_a_change_whose_audit_event_is_written_but_not_confirmed_never_says_the_event_was_not_written(
    encryptor: SecretEncryptor, canary: str, changes: bool
) -> None:
    # Secondaries that lag leave every write unconfirmed, the event's as the change's: both are made.
    held: list[dict[str, Any]] = []
    inserted: list[dict[str, Any]] = []
    raised = _set_then_delete_unconfirmed(
        _lagging_replica_set(held, inserted, changes=changes), encryptor, canary
    )

    for message in raised:
        assert "could not be written" not in message
        assert "unavailable" not in message
        assert "did not confirm" in message
        assert canary not in message
    recorded = [(event["action"], event["detail"]) for event in inserted]
    detail = UNCONFIRMED if changes else ""
    assert recorded == [("created", detail), ("deleted", detail)]


def test_a_delete_of_no_secret_whose_write_concern_is_not_met_records_no_deletion(
    encryptor: SecretEncryptor,
) -> None:
    # A server waits for the write concern of a write that changed nothing too, and can time out on it.
    inserted: list[dict[str, Any]] = []

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        if name == "delete":
            return {"ok": 1, "n": 0, "writeConcernError": WTIMEOUT}
        if name == "insert":
            inserted.extend(command["documents"])
        if name in {"find", "aggregate", "listIndexes"}:
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": []}}
        return {"ok": 1, "n": 1}

    with mongo_wire_server(answer) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?w=majority&wtimeoutMS=1000")
        service = Secrets(store, encryptor)
        try:
            with pytest.raises(SecretNotFoundError):
                service.delete_secret("alice", "github", "TOKEN")
        finally:
            service.close()
            store.close()

    assert inserted == []


# A replica set's primary that runs transactions: a session timeout is what tells pymongo it has sessions.
TRANSACTIONS_HELLO = {**PRIMARY_HELLO, "logicalSessionTimeoutMinutes": 30}


def _committing_server(
    commits: list[dict[str, Any]], unconfirmed: int
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A primary that makes each write of a transaction, and answers its first ``unconfirmed`` commits
    with a write concern not met, as one whose secondaries lag."""

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        if name == "commitTransaction":
            commits.append(command)
            return {"ok": 1, **({"writeConcernError": WTIMEOUT} if len(commits) <= unconfirmed else {})}
        if name in {"find", "listIndexes"}:
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": []}}
        if name == "update":
            return {"ok": 1, "n": 1, "nModified": 0, "upserted": [{"index": 0, "_id": bson.ObjectId()}]}
        return {"ok": 1, "n": 1}

    return answer


def test_a_transaction_whose_commit_is_confirmed_on_a_retry_is_a_change_made(canary: str) -> None:
    commits: list[dict[str, Any]] = []
    with mongo_wire_server(_committing_server(commits, unconfirmed=1), hello=TRANSACTIONS_HELLO) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?directConnection=true&w=majority")
        try:
            event = AuditEvent(T1, "alice", "", "github", "TOKEN")
            created = store.put_secret("alice", "github", "TOKEN", canary, T1, event=event)
        finally:
            store.close()

    assert store.transactions is True
    assert created is True
    assert len(commits) == 2


@pytest.mark.parametrize("limit", ["timeoutMS", "the driver's"])
def test_a_transaction_whose_commit_is_never_confirmed_is_reported_as_unconfirmed_not_unavailable(
    canary: str, limit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The driver retries the commit until its time limit (the URL's timeoutMS, else its own 120 s, cut to
    # 1 s here), then raises a timeout of its own that keeps the commit's label: made, or not.
    if limit != "timeoutMS":
        driver = pytest.importorskip("pymongo.client_session_shared")
        monkeypatch.setattr(driver, "_WITH_TRANSACTION_RETRY_TIME_LIMIT", 1)
    commits: list[dict[str, Any]] = []
    with mongo_wire_server(_committing_server(commits, unconfirmed=10**6), hello=TRANSACTIONS_HELLO) as port:
        url = f"mongodb://127.0.0.1:{port}/db?directConnection=true&w=majority"
        store = MongoStore.from_url(url + ("&timeoutMS=1000" if limit == "timeoutMS" else ""))
        try:
            with pytest.raises(WriteUnconfirmedError) as saved:
                store.put_secret("alice", "github", "TOKEN", canary, T1, event=AuditEvent(T1, "alice", ""))
        finally:
            store.close()

    assert len(commits) > 1  # retried, as the driver does
    assert "did not confirm" in str(saved.value)
    assert "unavailable" not in str(saved.value)
    assert_not_leaked(saved.value, canary)


def test_an_unconfirmed_replacement_of_a_document_of_the_wrong_shape_is_still_reported_and_recorded(
    canary: str,
) -> None:
    # After an unconfirmed write the store reads the record's created_at, to tell a creation from a
    # replacement; another tool's document may hold anything there.
    held = {"username": "alice", "server": "github", "key": "TOKEN", "value": "old", "created_at": canary}
    inserted: list[dict[str, Any]] = []

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        if name == "update":  # replaced, its write concern not met
            return {"ok": 1, "n": 1, "nModified": 1, "writeConcernError": WTIMEOUT}
        if name == "insert":
            inserted.extend(command["documents"])
        if name in {"find", "listIndexes"}:
            batch = [held] if (name, collection) == ("find", "user_secrets") else []
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": batch}}
        return {"ok": 1, "n": 1}

    with mongo_wire_server(answer) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?w=majority&wtimeoutMS=1000")
        try:
            event = AuditEvent(T1, "alice", "", "github", "TOKEN")
            with pytest.raises(WriteUnconfirmedError) as saved:
                store.put_secret("alice", "github", "TOKEN", "new", T1, event=event)
        finally:
            store.close()

    assert_not_leaked(saved.value, canary)
    assert [(event["action"], event["detail"]) for event in inserted] == [("updated", UNCONFIRMED)]


@pytest.mark.parametrize("command", ["update", "insert"])
def test_mongo_store_says_a_batch_of_uses_was_written_but_not_confirmed(command: str) -> None:
    # Two bulk writes (last uses, then events): pymongo reports their write concern in a BulkWriteError.
    def answer(sent: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(sent.items()))
        if name == "listIndexes":
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": []}}
        reply = {"ok": 1, "n": 1, "nModified": 1} if name == "update" else {"ok": 1, "n": 1}
        return {**reply, **({"writeConcernError": WTIMEOUT} if name == command else {})}

    use = SecretUse("alice", "github", ("TOKEN",), AuditEvent(T0, "alice", "used", "github", "TOKEN"))
    with mongo_wire_server(answer) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?w=majority&wtimeoutMS=1000")
        try:
            with pytest.raises(WriteUnconfirmedError) as unconfirmed:
                store.record_uses([use])
        finally:
            store.close()

    assert "(BulkWriteError)" in str(unconfirmed.value)
    assert "may or may not last" in str(unconfirmed.value)


# A primary stepping down refuses a write with this, and the driver retries a retryable write once.
STEPPED_DOWN: dict[str, Any] = {
    "ok": 0,
    "code": 10107,
    "codeName": "NotWritablePrimary",
    "errmsg": "not primary",
    "errorLabels": ["RetryableWriteError"],
}


def test_mongo_store_writes_a_batch_of_uses_through_a_primary_stepping_down() -> None:
    """A bulk write with an update of many documents is not retryable: the batch failed, and waited."""
    updates: list[dict[str, Any]] = []

    def answer(sent: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(sent.items()))
        if name == "listIndexes":
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": []}}
        if name == "update":
            updates.append(sent)
            return STEPPED_DOWN if len(updates) == 1 else {"ok": 1, "n": 2, "nModified": 2}
        return {"ok": 1, "n": 1}

    use = SecretUse("alice", "github", ("A", "B"), AuditEvent(T0, "alice", "used", "github", "A,B"))
    with mongo_wire_server(answer, hello=TRANSACTIONS_HELLO) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?directConnection=true")
        try:
            store.record_uses([use])
        finally:
            store.close()

    assert len(updates) == 2
    assert updates[0]["txnNumber"] == updates[1]["txnNumber"]  # the same write, retried
    assert [(update["q"]["key"], update.get("multi", False)) for update in updates[1]["updates"]] == [
        ("A", False),
        ("B", False),
    ]


def test_mongo_store_links_refused_for_want_of_a_privilege_say_so() -> None:
    def answer(sent: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(sent.items()))
        if name in {"find", "listIndexes"}:
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": []}}
        if name == "insert":
            return {"ok": 0, "code": 13, "codeName": "Unauthorized", "errmsg": "not authorized on db"}
        return {"ok": 1, "n": 1}

    link = LinkRecord("link-1", "hash-1", "alice", "github", "TOKEN", T0, T0 + timedelta(minutes=10))
    with mongo_wire_server(answer) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            with pytest.raises(StoreUnavailableError, match=r"not allowed to do this \(Unauthorized\)"):
                store.put_links([link])
        finally:
            store.close()


def test_mongo_store_links_made_then_taken_back_are_not_reported_as_made(canary: str) -> None:
    """A write concern not met on the insert: the links were made, then deleted again, so none stands."""
    sent_commands: list[str] = []

    def answer(sent: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(sent.items()))
        sent_commands.append(f"{name} {collection}")
        if name in {"find", "listIndexes"}:
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": []}}
        if name == "insert":
            return {"ok": 1, "n": len(sent["documents"]), "writeConcernError": WTIMEOUT}
        return {"ok": 1, "n": 1}

    link = LinkRecord("link-1", canary, "alice", "github", "TOKEN", T0, T0 + timedelta(minutes=10))
    with mongo_wire_server(answer) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?w=majority&wtimeoutMS=1000")
        try:
            with pytest.raises(StoreUnavailableError) as refused:
                store.put_links([link])
        finally:
            store.close()

    assert not isinstance(refused.value, WriteUnconfirmedError)
    assert "entry links" in str(refused.value)
    assert "may or may not" not in str(refused.value)
    assert sent_commands[-2:] == ["insert entry_links", "delete entry_links"]
    assert_not_leaked(refused.value, canary)


LINK = LinkRecord("link-1", "hash-1", "alice", "github", "TOKEN", T0, T0 + timedelta(minutes=10))
# Every call of the store that writes, but put_links: links whose writes are lost are said to be unmade,
# since no token of theirs is ever handed out (see the test of them taken back).
LOSABLE_WRITES: dict[str, tuple[str, Callable[[MongoStore], object]]] = {
    "put_secret": (
        "update user_secrets",
        lambda store: store.put_secret(
            "alice", "github", "TOKEN", "v1:k:c", T1, event=AuditEvent(T1, "alice", "")
        ),
    ),
    "delete_secret": (
        "delete user_secrets",
        lambda store: store.delete_secret(
            "alice", "github", "TOKEN", event=AuditEvent(T1, "alice", "deleted")
        ),
    ),
    "put_token": ("insert api_tokens", lambda store: store.put_token(TokenRecord("t1", "alice", "h", T1))),
    "put_token first": (
        "insert api_tokens",
        lambda store: store.put_token(TokenRecord("t1", "alice", "h", T1), first=True),
    ),
    "revoke_token": ("findAndModify api_tokens", lambda store: store.revoke_token("t1", T1)),
    "add_event": ("insert audit_events", lambda store: store.add_event(AuditEvent(T1, "alice", "set"))),
    "record_uses": (
        "update user_secrets",
        lambda store: store.record_uses(
            [SecretUse("alice", "github", ("TOKEN",), AuditEvent(T1, "alice", "used", "github", "TOKEN"))]
        ),
    ),
    "replace_value": (
        "update user_secrets",
        lambda store: store.replace_value("alice", "github", "TOKEN", "v1:k:old", "v2:k:new"),
    ),
    "claim_link": ("update entry_links", lambda store: store.claim_link("hash-1", T1, "claim-1")),
    "release_link": ("update entry_links", lambda store: store.release_link("hash-1", "claim-1")),
    "end_token_links": ("update entry_links", lambda store: store.end_token_links("t1", T1)),
}


@pytest.mark.parametrize("call", LOSABLE_WRITES)
def test_a_write_whose_connection_fails_once_it_was_sent_may_or_may_not_have_been_made(call: str) -> None:
    # A standalone server: no transaction, no retried write. The server got the write; whether it made it,
    # nobody can tell, so it must not read as an unavailable store, which would say that nothing was made.
    password = secrets.token_urlsafe(16)
    received: list[str] = []
    command, write = LOSABLE_WRITES[call]
    with mongo_wire_server(server_losing_writes(received)) as port:
        store = MongoStore.from_url(f"mongodb://alice:{password}@127.0.0.1:{port}/db?authMechanism=PLAIN")
        try:
            with pytest.raises(WriteUnconfirmedError) as lost:
                write(store)
        finally:
            store.close()

    assert received == [command]
    assert "the connection to the MongoDB server failed during the write (AutoReconnect)" in str(lost.value)
    assert "may or may not have been made" in str(lost.value)
    assert "unavailable" not in str(lost.value)
    assert_not_leaked(lost.value, password, str(port))


# The writes pymongo retries once on a replica set, when the first try's connection fails.
RETRIED_WRITES = {call: LOSABLE_WRITES[call] for call in ("add_event", "revoke_token", "claim_link")}


# How a retry can be refused: by a primary stepping down (pymongo's NotPrimaryError, a ConnectionFailure),
# or by a mongos that cannot reach the shard (an OperationFailure).
RETRY_REFUSALS = {
    "NotWritablePrimary": {"ok": 0, "code": 10107, "codeName": "NotWritablePrimary", "errmsg": "not primary"},
    "HostUnreachable": {"ok": 0, "code": 6, "codeName": "HostUnreachable", "errmsg": "shard unreachable"},
}


@pytest.mark.parametrize("refusal", RETRY_REFUSALS)
@pytest.mark.parametrize("call", RETRIED_WRITES)
def test_a_retried_write_whose_first_try_was_lost_may_or_may_not_have_been_made_whatever_the_retry_says(
    call: str, refusal: str
) -> None:
    # The first try reaches the server and its connection closes unanswered; pymongo raises the retry's
    # refusal, which says nothing of the first. That may have been made.
    password = secrets.token_urlsafe(16)
    command, write = RETRIED_WRITES[call]
    tries: list[str] = []
    losing = server_losing_writes(tries)

    def answer(sent: dict[str, Any]) -> dict[str, Any]:
        if tries and next(iter(sent)) in WRITES:
            tries.append("refused")
            return RETRY_REFUSALS[refusal]
        return losing(sent)

    url = "mongodb://alice:{}@127.0.0.1:{}/db?authMechanism=PLAIN&directConnection=true"
    with mongo_wire_server(answer, hello=TRANSACTIONS_HELLO) as port:
        store = MongoStore.from_url(url.format(password, port))
        try:
            with pytest.raises(WriteUnconfirmedError) as lost:
                write(store)
        finally:
            store.close()

    assert tries == [command, "refused"]
    assert lost.value.made is False
    assert "may or may not have been made" in str(lost.value)
    assert "unavailable" not in str(lost.value)
    assert_not_leaked(lost.value, password, str(port))


def test_a_write_to_a_server_that_cannot_be_reached_is_unavailable_and_was_never_sent() -> None:
    # Server selection fails before any write is sent: pymongo's ServerSelectionTimeoutError is an
    # AutoReconnect too, but nothing was made. So is a read whose connection fails: it changed nothing.
    received: list[str] = []
    gone = threading.Event()
    losing = server_losing_writes(received)

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        return DROP if gone.is_set() else losing(command)

    with mongo_wire_server(answer) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?serverSelectionTimeoutMS=200")
    try:
        gone.set()  # the server stops: its connections close, and none can be made
        with pytest.raises(StoreUnavailableError) as read:
            store.find_token_by_id("t1")
        with pytest.raises(StoreUnavailableError) as written:
            store.put_token(TokenRecord("t1", "alice", "h", T1))
    finally:
        store.close()

    assert received == []
    for refused in (read.value, written.value):
        assert not isinstance(refused, WriteUnconfirmedError)
        assert "unavailable" in str(refused)
    assert "(ServerSelectionTimeoutError)" in str(written.value)


def test_a_change_whose_audit_event_is_lost_on_its_way_says_the_event_may_not_have_been_written(
    canary: str,
) -> None:
    # Standalone: the change is made and answered, then the event's insert reaches the server unanswered.
    received: list[str] = []
    losing = server_losing_writes(received)

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        if "update" in command:
            return {"ok": 1, "n": 1, "nModified": 0, "upserted": [{"index": 0, "_id": bson.ObjectId()}]}
        return losing(command)

    with mongo_wire_server(answer) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            with pytest.raises(StoreUnavailableError) as lost:
                store.put_secret("alice", "github", "TOKEN", canary, T1, event=AuditEvent(T1, "alice", ""))
        finally:
            store.close()

    assert received == ["insert audit_events"]
    assert "the change was made" in str(lost.value)
    assert "the event may or may not have been written" in str(lost.value)
    assert_not_leaked(lost.value, canary)


# Every write of the store that a unique index an operator added can refuse: the command refused, the index
# (its collection, name and field), and the call.
FOREIGN_INDEX_WRITES: dict[str, tuple[str, str, str, Callable[[MongoStore], object]]] = {
    "put_secret": (
        "update user_secrets",
        "value_1",
        "value",
        lambda store: store.put_secret("alice", "github", "TOKEN", "v1:k:c", T1),
    ),
    "put_secret's event": (
        "insert audit_events",
        "actor_1",
        "actor",
        lambda store: store.put_secret(
            "alice", "github", "TOKEN", "v1:k:c", T1, event=AuditEvent(T1, "alice", "")
        ),
    ),
    "delete_secret's event": (
        "insert audit_events",
        "actor_1",
        "actor",
        lambda store: store.delete_secret(
            "alice", "github", "TOKEN", event=AuditEvent(T1, "alice", "deleted")
        ),
    ),
    "replace_value": (
        "update user_secrets",
        "value_1",
        "value",
        lambda store: store.replace_value("alice", "github", "TOKEN", "v1:k:old", "v2:k:new"),
    ),
    "put_token": (
        "insert api_tokens",
        "username_1",
        "username",
        lambda store: store.put_token(TokenRecord("t1", "alice", "h", T1)),
    ),
    "revoke_token": (
        "findAndModify api_tokens",
        "revoked_at_1",
        "revoked_at",
        lambda store: store.revoke_token("t1", T1),
    ),
    "put_links": ("insert entry_links", "username_1", "username", lambda store: store.put_links([LINK])),
    "add_event": (
        "insert audit_events",
        "actor_1",
        "actor",
        lambda store: store.add_event(AuditEvent(T1, "alice", "set")),
    ),
    "record_uses, last use": (
        "update user_secrets",
        "last_used_at_1",
        "last_used_at",
        lambda store: store.record_uses([_use(T1)]),
    ),
    "record_uses, events": (
        "insert audit_events",
        "actor_1",
        "actor",
        lambda store: store.record_uses([_use(T1)]),
    ),
}


@pytest.mark.parametrize("call", FOREIGN_INDEX_WRITES)
def test_a_write_refused_by_a_unique_index_the_store_did_not_make_names_the_index_never_its_values(
    call: str, canary: str
) -> None:
    # Not an unavailable store, which sends an operator looking at the network: the server answered.
    refused, index, field, write = FOREIGN_INDEX_WRITES[call]
    collection = refused.split()[1]
    error = duplicate_key(collection, index, {field: canary})
    with mongo_wire_server(server_refusing_duplicates(refused, error)) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            with pytest.raises(StoreUnavailableError) as raised:
                write(store)
        finally:
            store.close()

    message = str(raised.value)
    assert (
        f"a unique index of the collection {collection}, `{index}` (on {field}), that mcp-secrets did not "
        "make, holds another document with the same values; drop that index or make it non-unique"
    ) in message
    assert "unavailable" not in message
    assert "\n" not in message
    assert_not_leaked(raised.value, canary, "E11000")


def _replace_value_refused(error: dict[str, Any]) -> pytest.ExceptionInfo[StoreUnavailableError]:
    """``replace_value`` on a server that refuses its update with the duplicate-key ``error``."""
    with mongo_wire_server(server_refusing_duplicates("update user_secrets", error)) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            with pytest.raises(StoreUnavailableError) as raised:
                store.replace_value("alice", "github", "TOKEN", "v1:k:old", "v2:k:new")
        finally:
            store.close()
    return raised


@pytest.mark.parametrize(
    ("errmsg", "said"),
    [
        (
            (
                "E11000 duplicate key error collection: db.user_secrets index: value_1 collation: "
                '{ locale: "en", strength: 2 } dup key: { value: "CANARY" }'
            ),
            "a unique index of the collection user_secrets, `value_1` (on value), that mcp-secrets did not",
        ),
        # Not as any server words it: no part of it can be told from the values, so none is quoted.
        (
            "E11000 duplicate key error collection: db.user_secrets index: value_1 CANARY",
            "(DuplicateKeyError)",
        ),
    ],
    ids=["with a collation", "of another form"],
)
def test_a_foreign_unique_index_is_named_only_by_what_its_message_says_before_the_values(
    errmsg: str, said: str, canary: str
) -> None:
    error = {"code": 11000, "errmsg": errmsg.replace("CANARY", canary), "keyPattern": {"value": 1}}
    raised = _replace_value_refused(error)

    assert said in str(raised.value)
    assert "collation" not in str(raised.value)
    assert_not_leaked(raised.value, canary)


def test_a_foreign_unique_index_named_with_control_characters_is_named_escaped_on_one_line(
    canary: str,
) -> None:
    # Whoever made the index chose its name and fields: a line break would forge a line of the log, an
    # escape sequence would move an operator's terminal cursor.
    index, field = "value_1\nmcp-secrets: error: \x1b[2J", "va\rlue"
    error = duplicate_key("user_secrets", index, {field: canary})
    raised = _replace_value_refused(error)

    message = str(raised.value)
    assert (
        "a unique index of the collection user_secrets, `value_1\\nmcp-secrets: error: \\x1b[2J` "
        "(on va\\rlue)"
    ) in message
    assert message.isprintable()
    assert_not_leaked(raised.value, canary)


def test_a_change_whose_event_a_foreign_unique_index_refuses_in_a_transaction_is_not_written_again(
    canary: str,
) -> None:
    # In a transaction the event's refusal aborts the change with it: not a race of the record's own index
    # to write again, but the index to name.
    refusing = server_refusing_duplicates(
        "insert audit_events", duplicate_key("audit_events", "actor_1", {"actor": canary})
    )
    updates: list[dict[str, Any]] = []

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        if "update" in command:
            updates.append(command)
            return {"ok": 1, "n": 1, "nModified": 0, "upserted": [{"index": 0, "_id": bson.ObjectId()}]}
        return refusing(command)

    with mongo_wire_server(answer, hello=TRANSACTIONS_HELLO) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?directConnection=true")
        try:
            with pytest.raises(StoreUnavailableError) as raised:
                store.put_secret("alice", "github", "TOKEN", "v1:k:c", T1, event=AuditEvent(T1, "alice", ""))
        finally:
            store.close()

    assert len(updates) == 1
    assert "a unique index of the collection audit_events, `actor_1` (on actor)" in str(raised.value)
    assert "the change was made" not in str(raised.value)
    assert_not_leaked(raised.value, canary)


def test_an_upsert_that_loses_a_race_on_the_records_own_unique_index_is_written_again(canary: str) -> None:
    # The server's reply names the store's own index: another writer inserted the record first.
    own = duplicate_key(
        "user_secrets", "username_server_key_unique", {"username": "alice", "server": "github", "key": canary}
    )
    refusing = server_refusing_duplicates("update user_secrets", own)
    updates: list[dict[str, Any]] = []

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        if "update" in command:
            updates.append(command)
            if len(updates) > 1:
                return {"ok": 1, "n": 1, "nModified": 1}
        return refusing(command)

    with mongo_wire_server(answer) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            created = store.put_secret("alice", "github", canary, "v1:k:c", T1)
        finally:
            store.close()

    assert created is False
    assert len(updates) == 2


def test_a_batch_of_uses_written_again_takes_its_events_refused_on_their_own_ids() -> None:
    # Written again after a failure the server had in fact applied: the events are there, by their _id.
    use = _use(T1)
    refused = duplicate_key("audit_events", "_id_", {"_id": "6b13ef43cb1c28b8503d2a89"})
    with mongo_wire_server(server_refusing_duplicates("insert audit_events", refused)) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db")
        try:
            store.record_uses([use])
        finally:
            store.close()


# --- open_store -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "", "   "])
def test_open_store_without_a_url_opens_sqlite_at_the_default_path(tmp_path: Path, url: str | None) -> None:
    default = tmp_path / "data" / "secrets.db"

    opened = open_store(url, default_sqlite_path=str(default))

    assert isinstance(opened, SQLiteStore)
    assert opened.path == default
    assert default.is_file()
    opened.close()


def test_open_store_takes_a_relative_sqlite_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    opened = open_store("sqlite:///relative.db", default_sqlite_path=str(tmp_path / "default.db"))

    assert isinstance(opened, SQLiteStore)
    assert opened.path == Path("relative.db")
    assert (tmp_path / "relative.db").is_file()
    assert not (tmp_path / "default.db").exists()
    opened.close()


@pytest.mark.parametrize("name", ["file:secrets.db?mode=memory", "file:secrets.db"])
def test_a_relative_sqlite_path_that_reads_as_an_sqlite_uri_is_the_file_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # SQLite built with URI filenames (Debian's is) took "file:…" for a URI: a store in memory, whose
    # secrets were lost at exit, or another file than the private one made for it, under the umask.
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{name}"
    opened = open_store(url, default_sqlite_path=str(tmp_path / "default.db"))
    opened.put_secret("alice", "github", "TOKEN", "v1:x:ciphertext", datetime.now(timezone.utc))
    opened.close()

    reopened = open_store(url, default_sqlite_path=str(tmp_path / "default.db"), create=False)

    assert [record.value for record in reopened.find_secrets("alice")] == ["v1:x:ciphertext"]
    reopened.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == [name]
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o600


def test_open_store_takes_an_absolute_sqlite_path(tmp_path: Path) -> None:
    absolute = tmp_path / "abs" / "path.db"
    assert str(absolute).startswith("/")

    opened = open_store(f"sqlite:///{absolute}", default_sqlite_path=str(tmp_path / "default.db"))

    assert isinstance(opened, SQLiteStore)
    assert opened.path == absolute
    assert absolute.is_file()
    opened.close()


def test_open_store_opens_mongodb_urls(
    mongo_clients: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    opened = open_store("mongodb://localhost:1/mydb", default_sqlite_path=str(tmp_path / "default.db"))

    assert isinstance(opened, MongoStore)
    assert opened._secrets.database.name == "mydb"


@pytest.mark.parametrize(
    "url",
    [
        "postgres://x",
        "postgresql://user:s3cretpw@host/db",
        "sqlite://relative.db",
        "secrets.db",
        "mongodb:/x",
    ],
)
def test_open_store_refuses_other_schemes_without_quoting_the_url(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match="MCP_SECRETS_DATABASE_URL") as raised:
        open_store(url, default_sqlite_path=str(tmp_path / "default.db"))

    assert url not in str(raised.value)
    assert "s3cretpw" not in str(raised.value)


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///:memory:"])
def test_open_store_refuses_a_sqlite_url_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigurationError, match="needs the path of a file"):
        open_store(url, default_sqlite_path=str(tmp_path / "default.db"))

    assert list(tmp_path.iterdir()) == []


# --- SQLite only ----------------------------------------------------------------------------------


NOT_UTF8 = {
    "secret": ("user_secrets", "value", "username = 'alice' AND server = 'github'", _SECRET_NAMED),
    "token": ("api_tokens", "label", "token_id = 't1'", _TOKEN_NAMED),
}


@pytest.mark.parametrize("case", NOT_UTF8.values(), ids=NOT_UTF8.keys())
def test_sqlite_a_text_that_is_not_utf8_fails_naming_its_row_never_quoting_it(
    sqlite_store: SQLiteStore, case: tuple[str, str, str, str], canary: str
) -> None:
    # sqlite3's own error quotes the text it could not decode, and became the message of the store's error.
    table, field, match, named = case
    store = sqlite_store
    for username, server in [("alice", "github"), ("alice", "gitlab"), ("bob", "github")]:
        store.put_secret(username, server, "B", f"ciphertext of {username}/{server}", T0)
    store.put_token(_token("t1", "alice"))
    store.put_token(_token("t2", "bob"))
    with contextlib.closing(sqlite3.connect(store.path)) as database, database:
        database.execute(
            f"UPDATE {table} SET {field} = CAST(? AS TEXT) WHERE {match}",  # noqa: S608
            (b"\xff" + canary.encode(),),
        )

    with pytest.raises(UnreadableRecordError) as raised:
        store.find_secrets("alice") if table == "user_secrets" else store.list_tokens()

    assert f"the row of {named} in the table {table} cannot be read (its field {field} holds bytes" in str(
        raised.value
    )
    assert_not_leaked(raised.value, canary)
    assert _triples(store, "alice", "gitlab") == [("gitlab", "B", "ciphertext of alice/gitlab")]
    assert [token.token_id for token in store.list_tokens("bob")] == ["t2"]


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that hides nothing, so only the store's own care keeps its files private."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_sqlite_creates_its_directory_and_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "secrets.db"

    opened = SQLiteStore(path)
    opened.put_secret("alice", "github", "TOKEN", "ciphertext", T0)

    assert path.parent.is_dir()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    opened.close()


def test_sqlite_puts_the_directories_it_makes_for_a_new_file_on_disk(
    tmp_path: Path, synced_inodes: list[int]
) -> None:
    # SQLite syncs the directory holding its file as it makes its journal, not the ones above: after a
    # power cut a new directory, and the database in it, could be gone while the key file stayed.
    path = tmp_path / "new" / "dir" / "secrets.db"

    opened = SQLiteStore(path)
    opened.close()

    for directory in (tmp_path, tmp_path / "new", path.parent):
        assert directory.stat().st_ino in synced_inodes, directory


def test_sqlite_warns_when_an_existing_file_is_readable_by_others_and_leaves_its_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "secrets.db"
    SQLiteStore(path).close()
    path.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="mcp_secrets.store.sqlite"):
        SQLiteStore(path).close()

    assert f"the database file {path} is readable by other users" in caplog.text
    assert f"chmod 600 {path}" in caplog.text
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.usefixtures("permissive_umask")
def test_sqlite_wal_and_shm_files_are_not_group_or_world_readable(sqlite_path: Path) -> None:
    opened = SQLiteStore(sqlite_path)
    opened.put_secret("alice", "github", "TOKEN", "ciphertext", T0)

    for suffix in ("-wal", "-shm"):
        companion = sqlite_path.with_name(sqlite_path.name + suffix)
        assert companion.exists(), suffix
        assert companion.stat().st_mode & 0o077 == 0, suffix
    opened.close()


def test_sqlite_runs_in_wal_mode(sqlite_store: SQLiteStore, sqlite_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(sqlite_path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_stores_the_ciphertext_as_given(sqlite_store: SQLiteStore, sqlite_path: Path) -> None:
    sqlite_store.put_secret("alice", "github", "TOKEN", "v1:nonce:ciphertext", T0)

    with contextlib.closing(sqlite3.connect(sqlite_path)) as connection:
        rows = connection.execute("SELECT username, server, key, value FROM user_secrets").fetchall()
    assert rows == [("alice", "github", "TOKEN", "v1:nonce:ciphertext")]


def test_sqlite_overwrites_a_deleted_ciphertext_in_its_file(sqlite_path: Path, canary: str) -> None:
    # Left in a free page, a deleted record's ciphertext would open again with the master key.
    opened = SQLiteStore(sqlite_path)
    opened.put_secret("alice", "github", "KEPT", "another-ciphertext", T0)
    opened.put_secret("alice", "github", "TOKEN", f"v1:00000000:{canary}", T0)
    assert opened.delete_secret("alice", "github", "TOKEN")
    opened.close()

    files = b"".join(path.read_bytes() for path in _database_files(sqlite_path))
    assert b"another-ciphertext" in files
    assert canary.encode() not in files


def _database_files(database: Path) -> list[Path]:
    """The database file and its -wal and -shm companions, those that exist."""
    return sorted(database.parent.glob(database.name + "*"))


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_sqlite_refuses_every_call_once_its_file_is_deleted_or_replaced(
    sqlite_store: SQLiteStore, sqlite_path: Path, change: str
) -> None:
    sqlite_store.put_secret("alice", "github", "TOKEN", "ciphertext", T0)
    if change == "deleted":
        for path in _database_files(sqlite_path):
            path.unlink()
    else:
        backup = sqlite_path.with_name("backup.db")
        SQLiteStore(backup).close()
        backup.replace(sqlite_path)

    with pytest.raises(StoreUnavailableError, match=f"was {change}"):
        sqlite_store.put_secret("alice", "github", "TOKEN", "lost-ciphertext", T1)
    with pytest.raises(StoreUnavailableError, match=f"was {change}"):
        sqlite_store.find_secrets("alice")


def _sqlite_error(kind: type[sqlite3.Error], message: str, code: int, name: str) -> sqlite3.Error:
    """An error as sqlite3 raises it, with SQLite's extended result code and its name."""
    error = kind(message)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    error.sqlite_errorname = name  # type: ignore[attr-defined]
    return error


def _disk_io_error() -> sqlite3.Error:
    return _sqlite_error(sqlite3.OperationalError, "disk I/O error", 778, "SQLITE_IOERR_WRITE")


def _malformed() -> sqlite3.Error:
    return _sqlite_error(sqlite3.DatabaseError, "database disk image is malformed", 11, "SQLITE_CORRUPT")


class _FailedDisk:
    """A connection on a disk that has failed: each statement raises the error it was given (a seam).

    A real one is made by ext4's FS_IOC_SHUTDOWN (tests/e2e/test_faults.py, root only): the first write
    fails with SQLITE_IOERR_WRITE, and that connection reads the file as malformed ever after.
    """

    in_transaction = False

    def __init__(self, error: Callable[[], sqlite3.Error]) -> None:
        self._error = error
        self.closed = False

    def execute(self, *_: object) -> sqlite3.Cursor:
        raise self._error()

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("inline", [False, True], ids=["waiting", "inline"])
def test_sqlite_after_a_disk_io_error_says_so_lets_go_of_the_connection_and_opens_the_file_again(
    sqlite_store: SQLiteStore, sqlite_path: Path, inline: bool
) -> None:
    sqlite_store.put_secret("alice", "github", "TOKEN", "ciphertext", T0)
    opened = sqlite_store._connection
    failed = _FailedDisk(_disk_io_error)
    sqlite_store._connection = failed  # type: ignore[assignment]

    with (
        nonblocking() if inline else contextlib.nullcontext(),
        pytest.raises(StoreUnavailableError) as raised,
    ):
        sqlite_store.put_secret("alice", "github", "OTHER", "other-ciphertext", T1)
    opened.close()

    assert "disk I/O error" in str(raised.value)
    assert str(sqlite_path) in str(raised.value)
    # Its files let go of: a filesystem that failed can be unmounted, checked and mounted again.
    assert failed.closed
    assert _triples(sqlite_store, "alice") == [("github", "TOKEN", "ciphertext")]
    assert sqlite_store.put_secret("alice", "github", "OTHER", "other-ciphertext", T1) is True


def test_sqlite_a_file_read_as_malformed_right_after_a_disk_io_error_is_said_to_follow_it(
    sqlite_store: SQLiteStore, sqlite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_store.put_secret("alice", "github", "TOKEN", "ciphertext", T0)
    opened = sqlite_store._connection
    sqlite_store._connection = _FailedDisk(_disk_io_error)  # type: ignore[assignment]
    with pytest.raises(StoreUnavailableError, match="disk I/O error"):
        sqlite_store.find_secrets("alice")
    opened.close()
    reopened = _FailedDisk(_malformed)
    connect = sqlite_store._connect
    monkeypatch.setattr(sqlite_store, "_connect", lambda **_: reopened)

    with pytest.raises(StoreUnavailableError) as raised:
        sqlite_store.find_secrets("alice")
    monkeypatch.setattr(sqlite_store, "_connect", connect)

    # SQLite's words stay (the file may be damaged too), after what came first: the disk failed.
    assert "disk I/O error" in str(raised.value)
    assert "malformed" in str(raised.value)
    assert reopened.closed
    assert _triples(sqlite_store, "alice") == [("github", "TOKEN", "ciphertext")]


def test_sqlite_a_file_opened_again_read_only_is_opened_again_once_a_write_is_refused(
    sqlite_store: SQLiteStore, sqlite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After an I/O error that made its filesystem read-only (ext4's errors=remount-ro), SQLite opens the
    # file again read-only, and serves reads; writing again once the filesystem is writable needs a
    # connection opened anew, as a read-only one stays read-only.
    sqlite_store.put_secret("alice", "github", "TOKEN", "ciphertext", T0)
    opened = sqlite_store._connection
    sqlite_store._connection = _FailedDisk(_disk_io_error)  # type: ignore[assignment]
    with pytest.raises(StoreUnavailableError, match="disk I/O error"):
        sqlite_store.put_secret("alice", "github", "OTHER", "other-ciphertext", T1)
    opened.close()
    read_only = f"{sqlite_path.as_uri()}?mode=ro"
    monkeypatch.setattr(sqlite_store, "_connect", lambda **_: sqlite3.connect(read_only, uri=True))
    assert _triples(sqlite_store, "alice") == [("github", "TOKEN", "ciphertext")]
    monkeypatch.undo()  # the filesystem writable again

    with pytest.raises(StoreUnavailableError, match="readonly"):
        sqlite_store.put_secret("alice", "github", "OTHER", "other-ciphertext", T1)

    assert sqlite_store.put_secret("alice", "github", "OTHER", "other-ciphertext", T1) is True
    assert _triples(sqlite_store, "alice") == [
        ("github", "OTHER", "other-ciphertext"),
        ("github", "TOKEN", "ciphertext"),
    ]


def test_sqlite_a_malformed_file_is_said_to_be_malformed_at_every_call(sqlite_path: Path) -> None:
    opened = SQLiteStore(sqlite_path)
    for index in range(200):
        opened.put_secret("alice", "github", f"KEY{index}", "ciphertext" * 20, T0)
    opened.close()
    with sqlite_path.open("r+b") as database:  # every page but the first, with the schema, overwritten
        database.seek(4096)
        database.write(b"\xa5" * (sqlite_path.stat().st_size - 4096))
    damaged = SQLiteStore(sqlite_path)
    try:
        for _ in range(2):
            with pytest.raises(StoreUnavailableError) as raised:
                damaged.find_secrets("alice")
            assert "database disk image is malformed" in str(raised.value)
            assert "I/O" not in str(raised.value)
    finally:
        damaged.close()


# user_secrets as the first version made it, before last uses were kept.
_FIRST_USER_SECRETS = """
CREATE TABLE user_secrets (
    username TEXT NOT NULL, server TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (username, server, key)
) WITHOUT ROWID;
"""


def _first_version_file(path: Path) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript(_FIRST_USER_SECRETS)
    connection.execute(
        "INSERT INTO user_secrets VALUES ('alice', 'github', 'TOKEN', 'ciphertext', ?, ?)",
        (T0.isoformat(), T0.isoformat()),
    )
    connection.close()
    path.chmod(0o600)


def _use(at: datetime) -> SecretUse:
    return SecretUse("alice", "github", ("TOKEN",), AuditEvent(at, "alice", "used", "github", "TOKEN"))


def test_sqlite_opens_a_file_an_earlier_version_made_and_keeps_last_uses_in_it(sqlite_path: Path) -> None:
    _first_version_file(sqlite_path)

    opened = SQLiteStore(sqlite_path)
    opened.record_uses([_use(T1)])

    [record] = opened.find_secrets("alice")
    assert (record.value, record.created_at, record.last_used_at) == ("ciphertext", T0, T1)
    opened.close()


def test_sqlite_opened_while_another_process_upgrades_the_same_earlier_file_opens(
    sqlite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two servers starting at once after an upgrade: the other adds the new column between this
    # one's look at the columns and its own change.
    _first_version_file(sqlite_path)
    connect = SQLiteStore._connect
    looked, came_in = threading.Event(), threading.Event()

    def connect_with_the_other_process_in_between(store: SQLiteStore) -> sqlite3.Connection:
        connection = connect(store)

        def trace(statement: str) -> None:
            if looked.is_set() and not came_in.is_set():  # the statement right after the first look
                came_in.set()
                other = sqlite3.connect(sqlite_path, isolation_level=None)
                other.execute("ALTER TABLE user_secrets ADD COLUMN last_used_at TEXT")
                other.close()
            elif statement.startswith("PRAGMA table_info(user_secrets)"):
                looked.set()

        connection.set_trace_callback(trace)
        return connection

    monkeypatch.setattr(SQLiteStore, "_connect", connect_with_the_other_process_in_between)

    opened = SQLiteStore(sqlite_path)
    opened.record_uses([_use(T1)])

    assert came_in.is_set()
    assert [record.last_used_at for record in opened.find_secrets("alice")] == [T1]
    opened.close()


def test_two_sqlite_stores_on_one_file_see_each_others_writes(
    sqlite_store: SQLiteStore, sqlite_path: Path
) -> None:
    other = SQLiteStore(sqlite_path)

    sqlite_store.put_secret("alice", "github", "TOKEN", "ciphertext", T0)
    assert _triples(other, "alice") == [("github", "TOKEN", "ciphertext")]
    assert other.delete_secret("alice", "github", "TOKEN") is True
    assert sqlite_store.find_secrets("alice") == []
    other.close()


def test_sqlite_opened_while_another_process_writes_the_new_file_waits_for_it(sqlite_path: Path) -> None:
    # Two mcp-secrets starting at once on a new file: while one holds the write lock of a file not
    # yet in WAL mode, SQLite refuses the other's switch to WAL at once instead of waiting for it.
    sqlite_path.touch(mode=0o600)  # as the other one made it
    other = sqlite3.connect(sqlite_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    # The other process's write ends at some point within the busy timeout (10 s): nothing here can
    # tell when the store has started waiting for it, so it ends a moment after the store starts.
    done = threading.Timer(0.2, lambda: other.execute("COMMIT"))
    done.start()
    try:
        opened = SQLiteStore(sqlite_path)
    finally:
        done.join()
        other.close()

    opened.put_secret("alice", "github", "TOKEN", "ciphertext", T0)
    assert _triples(opened, "alice") == [("github", "TOKEN", "ciphertext")]
    with contextlib.closing(sqlite3.connect(sqlite_path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    opened.close()


def _a_directory(tmp_path: Path) -> Path:
    return tmp_path


def _under_a_regular_file(tmp_path: Path) -> Path:
    (tmp_path / "plain-file").write_text("not a directory")
    return tmp_path / "plain-file" / "secrets.db"


@pytest.mark.parametrize("make_path", [_a_directory, _under_a_regular_file])
def test_sqlite_at_an_unopenable_path_is_unavailable(
    tmp_path: Path, make_path: Callable[[Path], Path]
) -> None:
    with pytest.raises(StoreUnavailableError, match="cannot be opened"):
        SQLiteStore(make_path(tmp_path))


def test_sqlite_on_a_file_that_is_not_a_database_is_unavailable(sqlite_path: Path) -> None:
    sqlite_path.write_bytes(b"this is not an SQLite database\n" * 200)

    with pytest.raises(StoreUnavailableError):
        SQLiteStore(sqlite_path).find_secrets("alice")


def test_a_closed_sqlite_store_reports_unavailable(sqlite_path: Path) -> None:
    opened = SQLiteStore(sqlite_path)
    opened.close()

    with pytest.raises(StoreUnavailableError):
        opened.ping()


# --- entry links, on every backend ----------------------------------------------------------------

LINK_TTL = timedelta(minutes=10)


@pytest.fixture
def l0() -> datetime:
    """The present, to the millisecond MongoDB keeps, when the test starts.

    A TTL index (a real MongoDB's, and mongomock's) drops links whose expiry has passed by the clock:
    links made at import time would be gone in a run slower than their ten minutes.
    """
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _link(created_at: datetime, link_hash: str = "hash-1", username: str = "alice") -> LinkRecord:
    return LinkRecord(
        link_id=f"id-{link_hash}",
        link_hash=link_hash,
        username=username,
        server="github",
        key="TOKEN",
        created_at=created_at,
        expires_at=created_at + LINK_TTL,
    )


def test_put_link_then_find_link_by_its_hash(store: SecretStore, l0: datetime) -> None:
    store.put_link(_link(l0, "hash-1"))
    store.put_link(_link(l0, "hash-2", "bob"))

    assert store.find_link("hash-1") == _link(l0, "hash-1")
    assert store.find_link("hash-2") == _link(l0, "hash-2", "bob")
    assert store.find_link("hash-3") is None


def test_a_link_keeps_the_id_of_the_api_token_that_made_it(store: SecretStore, l0: datetime) -> None:
    made_with_token = dataclasses.replace(_link(l0, "hash-1"), token_id="abc123")
    store.put_links([made_with_token, _link(l0, "hash-2")])
    store.claim_link("hash-1", l0, "claim-1")

    assert store.find_link("hash-1") == dataclasses.replace(made_with_token, used_at=l0)
    found = store.find_link("hash-2")
    assert found is not None
    assert found.token_id is None


def test_end_token_links_ends_only_the_open_links_of_that_token(store: SecretStore, l0: datetime) -> None:
    of_token = [dataclasses.replace(_link(l0, f"t1-{n}"), token_id="t1") for n in range(3)]
    others = [dataclasses.replace(_link(l0, "t2"), token_id="t2"), _link(l0, "none")]
    store.put_links([*of_token, *others])
    store.claim_link("t1-2", l0, "claim-1")  # used: its value may be in, and it stays as it is
    ended_at = l0 + timedelta(minutes=1)

    assert store.end_token_links("t1", ended_at) == 2
    assert store.end_token_links("t1", ended_at) == 0

    assert [store.find_link(f"t1-{n}") for n in range(2)] == [
        dataclasses.replace(link, expires_at=ended_at) for link in of_token[:2]
    ]
    assert store.find_link("t1-2") == dataclasses.replace(of_token[2], used_at=l0)
    assert [store.find_link(link.link_hash) for link in others] == others
    assert store.count_live_links("alice", ended_at) == 2


def test_put_links_inserts_all_within_the_limit_and_none_past_it(store: SecretStore, l0: datetime) -> None:
    store.put_link(_link(l0, "hash-0"))
    store.put_link(_link(l0, "bobs", "bob"))  # another user's count for nothing

    store.put_links([_link(l0, "hash-1"), _link(l0, "hash-2")], max_live=3)
    with pytest.raises(LimitReached):
        store.put_links([_link(l0, "hash-3"), _link(l0, "hash-4")], max_live=4)

    assert [store.find_link(f"hash-{n}") is not None for n in range(5)] == [True, True, True, False, False]
    assert store.count_live_links("alice", l0) == 3


def test_put_links_that_fail_part_way_leave_none_of_theirs(store: SecretStore, l0: datetime) -> None:
    store.put_link(_link(l0, "hash-2"))

    with pytest.raises(StoreUnavailableError):
        store.put_links([_link(l0, "hash-1"), _link(l0, "hash-2"), _link(l0, "hash-3")])

    assert [store.find_link(f"hash-{n}") is not None for n in (1, 2, 3)] == [False, True, False]


def test_sqlite_put_links_on_separate_connections_never_take_more_than_the_limit(tmp_path: Path) -> None:
    # Each connection stands for a server process of its own on the same file: only the database can
    # tell them who took the last place. A count made before the insert let every one of them in.
    limit, writers, rounds = 3, 8, 10
    path = tmp_path / "secrets.db"
    stores = [SQLiteStore(path) for _ in range(writers)]
    start = threading.Barrier(writers)
    now = datetime.now(timezone.utc)

    def put(writer: int, round_: int) -> bool:
        start.wait()
        try:
            stores[writer].put_links([_link(now, f"{round_}-{writer}", f"user{round_}")], max_live=limit)
        except LimitReached:
            return False
        return True

    try:
        for round_ in range(rounds):
            with ThreadPoolExecutor(max_workers=writers) as pool:
                stored = list(pool.map(put, range(writers), [round_] * writers))

            assert stored.count(True) == limit, f"round {round_}"
            assert stores[0].count_live_links(f"user{round_}", now) == limit
    finally:
        for store in stores:
            store.close()


def test_claim_link_succeeds_once_and_records_when(store: SecretStore, l0: datetime) -> None:
    store.put_link(_link(l0))
    claimed_at = l0 + timedelta(minutes=1)

    first = store.claim_link("hash-1", claimed_at, "claim-1")
    second = store.claim_link("hash-1", claimed_at + timedelta(seconds=1), "claim-2")

    assert (first, second) == (True, False)
    assert store.find_link("hash-1") == dataclasses.replace(_link(l0), used_at=claimed_at)


@pytest.mark.parametrize("after_expiry", [timedelta(0), timedelta(seconds=1)], ids=["at-expiry", "after"])
def test_claim_of_an_expired_link_fails(store: SecretStore, after_expiry: timedelta, l0: datetime) -> None:
    store.put_link(_link(l0))

    assert store.claim_link("hash-1", l0 + LINK_TTL + after_expiry, "claim-1") is False
    found = store.find_link("hash-1")
    assert found is not None
    assert found.used_at is None


def test_a_claim_keeps_its_forms_hash_and_its_release_forgets_it(store: SecretStore, l0: datetime) -> None:
    store.put_link(_link(l0))

    store.claim_link("hash-1", l0, "claim-1", form="hash-of-a-form")
    claimed = store.find_link("hash-1")
    store.release_link("hash-1", "claim-1")

    assert claimed == dataclasses.replace(_link(l0), used_at=l0, claimed_by="hash-of-a-form")
    assert store.find_link("hash-1") == _link(l0)


def test_claim_of_an_unknown_link_fails(store: SecretStore, l0: datetime) -> None:
    store.put_link(_link(l0))

    assert store.claim_link("hash-2", l0, "claim-1") is False
    assert store.find_link("hash-2") is None


def test_release_makes_a_claimed_link_claimable_again(store: SecretStore, l0: datetime) -> None:
    store.put_link(_link(l0))
    store.claim_link("hash-1", l0 + timedelta(minutes=1), "claim-1")

    store.release_link("hash-1", "claim-1")
    released = store.find_link("hash-1")
    claimed_again = store.claim_link("hash-1", l0 + timedelta(minutes=2), "claim-2")

    assert released == _link(l0)
    assert claimed_again is True


def test_release_touches_only_its_own_link(store: SecretStore, l0: datetime) -> None:
    store.put_link(_link(l0, "hash-1"))
    store.put_link(_link(l0, "hash-2"))
    store.claim_link("hash-1", l0, "claim-1")
    store.claim_link("hash-2", l0, "claim-2")

    store.release_link("hash-1", "claim-1")
    store.release_link("hash-3", "claim-2")

    assert store.claim_link("hash-1", l0, "claim-3") is True
    assert store.claim_link("hash-2", l0, "claim-4") is False


def test_release_gives_back_only_the_claim_it_names_never_another_submissions(
    store: SecretStore, l0: datetime
) -> None:
    # A submission whose claim failed (or was not confirmed) gives back its own claim: never the claim
    # another submission made meanwhile, which stored its value. That would make a used link live again.
    store.put_link(_link(l0))
    store.claim_link("hash-1", l0 + timedelta(minutes=1), "claim-1")

    store.release_link("hash-1", "claim-never-made")

    assert store.claim_link("hash-1", l0 + timedelta(minutes=3), "claim-2") is False
    found = store.find_link("hash-1")
    assert found is not None
    assert found.used_at == l0 + timedelta(minutes=1)


@pytest.mark.parametrize(
    "apart", [timedelta(0), timedelta(microseconds=500)], ids=["same-instant", "same-millisecond"]
)
def test_release_by_another_claim_id_leaves_a_claim_made_in_the_same_millisecond(
    store: SecretStore, l0: datetime, apart: timedelta
) -> None:
    # MongoDB keeps times to the millisecond: a claim's time cannot tell two claims within one apart.
    claimed_at = l0 + timedelta(minutes=1)
    store.put_link(_link(l0))
    store.claim_link("hash-1", claimed_at + apart, "claim-of-the-submission-that-stored")

    store.release_link("hash-1", "claim-of-the-submission-that-matched-nothing")

    assert store.claim_link("hash-1", claimed_at, "claim-3") is False
    found = store.find_link("hash-1")
    assert found is not None
    assert found.used_at is not None
    store.release_link("hash-1", "claim-of-the-submission-that-stored")
    assert store.find_link("hash-1") == _link(l0)


def test_concurrent_claims_of_one_link_succeed_exactly_once(store: SecretStore, l0: datetime) -> None:
    store.put_link(_link(l0))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: store.claim_link("hash-1", l0, f"claim-{n}"), range(16)))

    assert results.count(True) == 1


# entry_links as versions before claim ids made it.
_ENTRY_LINKS_WITHOUT_CLAIM_IDS = """
CREATE TABLE entry_links (
    link_hash TEXT PRIMARY KEY, link_id TEXT NOT NULL, username TEXT NOT NULL, server TEXT NOT NULL,
    key TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL, used_at TEXT
);
"""


def claims_and_releases_links_from_before_claim_ids(store: SecretStore, l0: datetime) -> None:
    """``store`` holds a live link ``live`` and one ``used-before``, both written before claim ids."""
    claimed = store.claim_link("live", l0 + timedelta(minutes=1), "claim-1")
    store.release_link("live", "claim-2")
    used_by_another = store.find_link("live")
    store.release_link("live", "claim-1")
    store.release_link("used-before", "claim-1")

    assert claimed is True
    assert used_by_another is not None
    assert used_by_another.used_at == l0 + timedelta(minutes=1)
    assert store.find_link("live") == dataclasses.replace(_link(l0), link_id="l1", link_hash="live")
    used_before = store.find_link("used-before")
    assert used_before is not None
    assert used_before.used_at == l0  # claimed by an earlier version, with no id to give it back by


def test_sqlite_opens_a_file_with_links_from_before_claim_ids_and_claims_and_releases_them(
    sqlite_path: Path, l0: datetime
) -> None:
    connection = sqlite3.connect(sqlite_path, isolation_level=None)
    connection.executescript(_ENTRY_LINKS_WITHOUT_CLAIM_IDS)
    for link_hash, used_at in (("live", None), ("used-before", l0.isoformat())):
        connection.execute(
            "INSERT INTO entry_links VALUES (?, 'l1', 'alice', 'github', 'TOKEN', ?, ?, ?)",
            (link_hash, l0.isoformat(), (l0 + LINK_TTL).isoformat(), used_at),
        )
    connection.close()
    sqlite_path.chmod(0o600)

    opened = SQLiteStore(sqlite_path)
    try:
        claims_and_releases_links_from_before_claim_ids(opened, l0)
    finally:
        opened.close()


_ENTRY_LINKS_WITHOUT_TOKEN_IDS = """
CREATE TABLE entry_links (
    link_hash TEXT PRIMARY KEY, link_id TEXT NOT NULL, username TEXT NOT NULL, server TEXT NOT NULL,
    key TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL, used_at TEXT, claim_id TEXT
);
"""


def test_sqlite_opens_a_file_with_links_from_before_token_ids_and_keeps_token_ids_of_new_ones(
    sqlite_path: Path, l0: datetime
) -> None:
    connection = sqlite3.connect(sqlite_path, isolation_level=None)
    connection.executescript(_ENTRY_LINKS_WITHOUT_TOKEN_IDS)
    connection.execute(
        "INSERT INTO entry_links VALUES ('old', 'l1', 'alice', 'github', 'TOKEN', ?, ?, NULL, NULL)",
        (l0.isoformat(), (l0 + LINK_TTL).isoformat()),
    )
    connection.close()
    sqlite_path.chmod(0o600)

    opened = SQLiteStore(sqlite_path)
    try:
        new = dataclasses.replace(_link(l0, "new"), token_id="abc123")
        opened.put_link(new)

        # Made before links named their token: it names none, and lives out its time.
        assert opened.find_link("old") == dataclasses.replace(_link(l0), link_id="l1", link_hash="old")
        assert opened.find_link("new") == new
        assert opened.claim_link("old", l0, "claim-1", form="hash-of-a-form") is True
        claimed = opened.find_link("old")
        assert claimed is not None
        assert claimed.claimed_by == "hash-of-a-form"
    finally:
        opened.close()


@mongo_backends
def test_mongo_reads_claims_and_releases_links_written_before_claim_ids(
    mongo_store: MongoStore, l0: datetime
) -> None:
    for link_hash, used_at in (("live", None), ("used-before", l0)):
        mongo_store._links.insert_one(
            {
                "link_id": "l1",
                "link_hash": link_hash,
                "username": "alice",
                "server": "github",
                "key": "TOKEN",
                "created_at": l0,
                "expires_at": l0 + LINK_TTL,
                "used_at": used_at,
            }
        )

    claims_and_releases_links_from_before_claim_ids(mongo_store, l0)


def test_sqlite_put_link_drops_links_that_expired_before_it(sqlite_store: SQLiteStore, l0: datetime) -> None:
    sqlite_store.put_link(_link(l0, "old"))
    sqlite_store.put_link(_link(l0 + timedelta(minutes=5), "current"))

    sqlite_store.put_link(_link(l0 + LINK_TTL + timedelta(seconds=1), "new"))

    assert sqlite_store.find_link("old") is None
    assert sqlite_store.find_link("current") is not None
    assert sqlite_store.find_link("new") is not None


@mongo_backends
def test_mongo_expires_links_with_a_ttl_index(mongo_store: MongoStore) -> None:
    indexes = mongo_store._links.index_information()

    assert any(
        index["key"] == [("expires_at", 1)] and index.get("expireAfterSeconds") == 0
        for index in indexes.values()
    )
    assert any(index["key"] == [("link_hash", 1)] and index.get("unique") for index in indexes.values())


def test_a_sqlite_disk_full_in_a_transaction_says_so_and_the_next_write_goes_through(tmp_path: Path) -> None:
    # SQLite rolls a transaction back itself when a write in it finds the disk full (here, the file may not
    # grow): the error must be that one, not the "no transaction is active" of a ROLLBACK after it.
    store = SQLiteStore(tmp_path / "secrets.db")
    connection = store._connection
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}").fetchone()
    event = AuditEvent(T0, "alice", "created", "github", "TOKEN", "cli")

    with pytest.raises(StoreUnavailableError, match="database or disk is full"):
        store.put_secret("alice", "github", "TOKEN", "x" * 3000, T0, event=event)
    assert not connection.in_transaction

    connection.execute("PRAGMA max_page_count = 1073741823").fetchone()
    assert store.put_secret("alice", "github", "TOKEN", "x" * 3000, T0, event=event) is True
    assert [event.action for event in store.list_events("alice")] == ["created"]
    store.close()


def test_mongo_stores_errors_carry_no_replaced_error_whatever_kind_of_method_raised_them() -> None:
    canary = secrets.token_urlsafe(16)

    @mongo_module._hiding_replaced_errors
    class Store:
        def read(self) -> int:
            try:
                int(canary)  # a ValueError quoting it
            except ValueError:
                raise StoreUnavailableError("the store is unavailable") from None

        def pages(self) -> Iterator[int]:  # as iter_events: its errors come as it is iterated
            yield 1
            try:
                int(canary)
            except ValueError:
                raise StoreUnavailableError("the store is unavailable") from None

        @staticmethod
        def parse(text: str) -> int:
            return int(text)

        @classmethod
        def open(cls) -> Store:
            return cls()

    assert Store.open().parse("41") + Store.parse("1") == 42
    with pytest.raises(StoreUnavailableError) as refused:
        Store().read()
    assert refused.value.__context__ is None
    assert_not_leaked(refused.value, canary)
    pages = Store().pages()
    assert next(pages) == 1
    with pytest.raises(StoreUnavailableError) as refused_later:
        next(pages)
    assert refused_later.value.__context__ is None
    assert_not_leaked(refused_later.value, canary)


def _live_events() -> int:
    return sum(type(thing) is AuditEvent for thing in gc.get_objects())


def test_iter_events_lists_what_list_events_does_a_page_at_a_time_holding_one_page(
    store: SecretStore,
) -> None:
    # `audit --limit 1000000` held every event at once: 750 MB, and ten times that for the whole trail.
    events = [
        AuditEvent(T0 + timedelta(milliseconds=index // 3), f"user{index % 4}", "used", f"s{index % 2}", "K")
        for index in range(600)  # three to a millisecond: the order within one must hold across pages
    ]
    store.record_uses([SecretUse(event.actor, event.server, ("K",), event) for event in events])
    gc.collect()
    before = _live_events()
    seen, most = [], 0
    for index, event in enumerate(store.iter_events(None, None, 10_000, page=7)):
        seen.append(event.to_json())
        if index % 50 == 0:
            most = max(most, _live_events() - before)

    assert most <= 7 + 1
    assert seen == [event.to_json() for event in store.list_events(None, None, 10_000)]
    for actor, server, limit in (
        ("user1", None, 40),
        (None, "s0", 1000),
        ("user2", "s0", 15),
        ("nobody", None, 5),
    ):
        assert list(store.iter_events(actor, server, limit, page=4)) == store.list_events(
            actor, server, limit
        )
