"""API tokens on every backend: shown once, stored as a hash, verified, revoked, expired."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets as _random
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mcp_secrets.errors import (
    InvalidInputError,
    SecretNotFoundError,
    StoreUnavailableError,
    UnreadableRecordError,
)
from mcp_secrets.store import AuditEvent, SecretStore, TokenRecord
from mcp_secrets.store.sqlite import SQLiteStore
from mcp_secrets.tokens import ApiTokens, NewToken
from test_store import alter_stored

# Whole milliseconds: a BSON date keeps no finer, and these tests run on every backend.
T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)


class Clock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(store: SecretStore, clock: Clock) -> ApiTokens:
    return ApiTokens(store, clock=clock)


def assert_not_echoed(error: BaseException, text: str) -> None:
    shown = (str(error), repr(error), "".join(traceback.format_exception(error)))
    assert not any(text in part for part in shown)


def test_created_token_is_prefixed_and_verifies_to_its_record(tokens: ApiTokens) -> None:
    new = tokens.create("alice", label="laptop")

    assert new.token.startswith(f"mcps_{new.record.token_id}_")
    assert (new.record.username, new.record.label, new.record.created_at) == ("alice", "laptop", T0)
    assert (new.record.expires_at, new.record.revoked_at) == (None, None)
    assert tokens.verify(new.token) == new.record


def test_store_keeps_only_the_sha256_of_the_token(tokens: ApiTokens, store: SecretStore) -> None:
    new = tokens.create("alice", label="laptop")
    secret_part = new.token.split("_", 2)[2]  # mcps_<id>_<random>; the random part may hold "_"

    (stored,) = store.list_tokens()

    assert stored.token_hash == hashlib.sha256(new.token.encode()).hexdigest()
    for field in dataclasses.astuple(stored):
        assert secret_part not in str(field)
        assert new.token not in str(field)


def test_sqlite_file_never_holds_the_token(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "secrets.db")
    new = ApiTokens(store).create("alice")
    files = [tmp_path / "secrets.db", tmp_path / "secrets.db-wal", tmp_path / "secrets.db-shm"]

    on_disk = b"".join(file.read_bytes() for file in files if file.exists())
    store.close()

    assert new.record.token_hash.encode() in on_disk
    assert new.token.split("_", 2)[2].encode() not in on_disk  # the random part, which may hold "_"


def test_the_random_part_of_a_token_carries_256_bits(tokens: ApiTokens) -> None:
    # A plain SHA-256 is a safe lookup key only for a token nobody can guess by brute force.
    secret_part = tokens.create("alice").token.split("_", 2)[2]  # the random part may hold "_"

    assert len(base64.urlsafe_b64decode(secret_part + "=")) == 32


def test_each_token_is_different(tokens: ApiTokens) -> None:
    made = [tokens.create("alice") for _ in range(5)]

    assert len({new.token for new in made}) == len({new.record.token_id for new in made}) == 5


def _one_character_changed(token: str, position: int) -> str:
    character = "b" if token[position] == "a" else "a"
    return token[:position] + character + token[position + 1 :]


GARBAGE: list[Any] = [
    pytest.param(lambda _: "", id="empty"),
    pytest.param(lambda _: "mcps_", id="prefix-only"),
    pytest.param(lambda _: "not-a-token", id="no-prefix"),
    pytest.param(
        lambda _: f"mcps_{_random.token_hex(5)}_{_random.token_urlsafe(32)}", id="well-formed-unknown"
    ),
    pytest.param(
        lambda new: f"mcps_{new.record.token_id}_{_random.token_urlsafe(32)}", id="right-id-wrong-secret"
    ),
    pytest.param(lambda new: new.record.token_hash, id="the-stored-hash"),
    pytest.param(lambda new: new.token.upper(), id="upper-case"),
    pytest.param(lambda new: new.token + "x", id="appended"),
    pytest.param(lambda new: new.token[:-1], id="truncated"),
    pytest.param(lambda new: f" {new.token}", id="leading-space"),
    pytest.param(lambda new: new.token + "x" * 300, id="overlong"),
]


@pytest.mark.parametrize("make", GARBAGE)
def test_garbage_or_unknown_token_does_not_verify(tokens: ApiTokens, make: Callable[[Any], str]) -> None:
    new = tokens.create("alice")

    assert tokens.verify(make(new)) is None


def test_token_altered_in_any_one_character_does_not_verify(tokens: ApiTokens) -> None:
    new = tokens.create("alice")

    for position in range(len(new.token)):
        assert tokens.verify(_one_character_changed(new.token, position)) is None
    assert tokens.verify(new.token) == new.record


@pytest.mark.parametrize(
    "by",
    [
        pytest.param(lambda new: new.record.token_id, id="id"),
        pytest.param(lambda new: new.token, id="whole-token"),
    ],
)
def test_revoked_token_no_longer_verifies(tokens: ApiTokens, clock: Clock, by: Callable[[Any], str]) -> None:
    new, other = tokens.create("alice"), tokens.create("alice")
    clock.now = T0 + timedelta(minutes=1)

    revoked = tokens.revoke(by(new))

    assert revoked.token_id == new.record.token_id
    assert revoked.revoked_at == clock.now
    assert tokens.verify(new.token) is None
    assert tokens.verify(other.token) == other.record


UNKNOWN: list[Any] = [
    pytest.param(lambda _: _random.token_hex(5), id="unknown-id"),
    pytest.param(
        lambda _: f"mcps_{_random.token_hex(5)}_{_random.token_urlsafe(32)}", id="unknown-whole-token"
    ),
    pytest.param(lambda _: f"not-a-token-{_random.token_hex(8)}", id="garbage"),
    pytest.param(lambda revoked: revoked.token, id="already-revoked-token"),
    pytest.param(lambda revoked: revoked.record.token_id, id="already-revoked-id"),
]


@pytest.mark.parametrize("make", UNKNOWN)
def test_revoking_an_unknown_token_does_not_echo_it(tokens: ApiTokens, make: Callable[[Any], str]) -> None:
    revoked = tokens.create("alice")
    tokens.revoke(revoked.record.token_id)
    argument = make(revoked)

    with pytest.raises(SecretNotFoundError, match="no live token") as raised:
        tokens.revoke(argument)

    assert_not_echoed(raised.value, argument)


def test_token_expires_at_its_expiry(tokens: ApiTokens, clock: Clock) -> None:
    new = tokens.create("alice", expires_in=timedelta(hours=1))
    assert new.record.expires_at == T0 + timedelta(hours=1)

    clock.now = T0 + timedelta(minutes=59)
    assert tokens.verify(new.token) == new.record

    clock.now = T0 + timedelta(hours=1)
    assert tokens.verify(new.token) is None

    clock.now = T0 + timedelta(days=30)
    assert tokens.verify(new.token) is None


@pytest.mark.parametrize("expires_in", [timedelta(0), timedelta(seconds=-1)])
def test_expiry_must_be_in_the_future(tokens: ApiTokens, expires_in: timedelta) -> None:
    with pytest.raises(InvalidInputError, match="expiry"):
        tokens.create("alice", expires_in=expires_in)


@pytest.mark.parametrize("label", ["x" * 201, "line\nbreak", "bell\x07"])
def test_label_must_be_short_and_printable(tokens: ApiTokens, label: str) -> None:
    with pytest.raises(InvalidInputError, match="label"):
        tokens.create("alice", label=label)


def test_list_filters_by_username(tokens: ApiTokens) -> None:
    alice_1, bob, alice_2 = tokens.create("alice"), tokens.create("bob"), tokens.create("alice")

    assert {record.token_id for record in tokens.list("alice")} == {
        alice_1.record.token_id,
        alice_2.record.token_id,
    }
    assert [record.token_id for record in tokens.list("bob")] == [bob.record.token_id]
    assert len(tokens.list()) == 3
    assert tokens.list("carol") == []


def test_live_ids_are_a_users_tokens_neither_revoked_nor_expired(tokens: ApiTokens, clock: Clock) -> None:
    kept = tokens.create("alice")
    revoked = tokens.create("alice")
    expiring = tokens.create("alice", expires_in=timedelta(hours=1))
    tokens.create("bob")
    tokens.revoke(revoked.record.token_id)
    clock.now = T0 + timedelta(hours=1)

    assert tokens.live_ids("alice") == {kept.record.token_id}
    assert expiring.record.token_id not in tokens.live_ids("alice")


def test_has_any_counts_revoked_tokens(tokens: ApiTokens) -> None:
    assert tokens.has_any() is False
    new = tokens.create("alice")
    tokens.revoke(new.record.token_id)

    assert tokens.has_any() is True


def test_has_any_reads_one_token_rather_than_every_one(
    tokens: ApiTokens, store: SecretStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Asked at each start of an HTTP server: a listing read all 10,000 tokens of a team's store (41 ms).
    for username in ("alice", "bob", "carol"):
        tokens.create(username)

    def every_token(username: str | None = None) -> list[TokenRecord]:
        raise AssertionError("has_any read every token")

    monkeypatch.setattr(store, "list_tokens", every_token)

    assert tokens.has_any() is True


def test_a_first_token_is_made_only_while_the_store_holds_none(tokens: ApiTokens) -> None:
    first = tokens.create_first("alice", label="first run")
    assert first is not None
    tokens.revoke(first.record.token_id)

    assert tokens.create_first("alice", label="first run") is None
    assert [record.token_id for record in tokens.list()] == [first.record.token_id]


def test_two_servers_starting_at_once_on_a_new_store_make_one_first_token(
    store: SecretStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each start reads the store empty before either puts its token, as replicas on a new database do.
    first_start, second_start = ApiTokens(store, clock=clock), ApiTokens(store, clock=clock)
    has_tokens = store.has_tokens
    made_meanwhile: list[NewToken | None] = []

    def second_start_runs_meanwhile() -> bool:
        found = has_tokens()
        if not made_meanwhile:
            made_meanwhile.append(None)
            made_meanwhile[0] = second_start.create_first("bob", label="first run")
        return found

    monkeypatch.setattr(store, "has_tokens", second_start_runs_meanwhile)

    made = first_start.create_first("alice", label="first run")

    [meanwhile] = made_meanwhile
    assert meanwhile is not None
    assert made is None
    assert [record.token_id for record in store.list_tokens()] == [meanwhile.record.token_id]
    assert first_start.verify(meanwhile.token) is not None
    assert [event.action for event in store.list_events()] == ["token-created"]


def test_a_token_revokes_while_another_tokens_record_cannot_be_read(
    tokens: ApiTokens, store: SecretStore
) -> None:
    # Revoking read every token to find the one revoked: one unreadable record stopped every revocation.
    kept, other = tokens.create("alice"), tokens.create("bob")
    alter_stored(store, "api_tokens", {"token_id": other.record.token_id}, "created_at", "not a time")

    revoked = tokens.revoke(kept.record.token_id)

    assert revoked == dataclasses.replace(kept.record, revoked_at=T0)
    assert tokens.verify(kept.token) is None
    [event] = store.list_events("alice", limit=1)
    assert (event.action, event.detail) == ("token-revoked", f"token {kept.record.token_id}")


def test_a_token_whose_own_record_cannot_be_read_is_revoked_recorded_and_said_so(
    tokens: ApiTokens, store: SecretStore
) -> None:
    # The revoke is made; only its record cannot be read back. Told "failed", with no event, and then
    # "no live token" on a second try, the operator would never see it recorded.
    new = tokens.create("alice")
    alter_stored(store, "api_tokens", {"token_id": new.record.token_id}, "created_at", "not a time")

    with pytest.raises(UnreadableRecordError) as unreadable:
        tokens.revoke(new.record.token_id)

    assert f"token {new.record.token_id} was revoked" in str(unreadable.value)
    assert "the document" in str(unreadable.value) or "the row" in str(unreadable.value)
    with pytest.raises(UnreadableRecordError):  # still refused, as it was before the revoke
        tokens.verify(new.token)
    [event] = store.list_events("alice", limit=1)
    assert event.action == "token-revoked"
    assert event.detail.startswith(f"token {new.record.token_id}")
    assert (new.token in str(unreadable.value)) is False


def refuse_events(monkeypatch: pytest.MonkeyPatch, store: SecretStore, action: str) -> None:
    """Make ``store`` refuse to write audit events of ``action``, as an unavailable store would."""
    add_event = store.add_event

    def refusing(event: AuditEvent) -> None:
        if event.action == action:
            raise StoreUnavailableError("the store is unavailable")
        add_event(event)

    monkeypatch.setattr(store, "add_event", refusing)


def test_a_revocation_whose_event_cannot_be_written_says_the_token_is_revoked(
    tokens: ApiTokens, store: SecretStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Told only "the store is unavailable", and then "no live token" on a second try, the operator would
    # take it for a revocation that never happened.
    new = tokens.create("alice")
    refuse_events(monkeypatch, store, "token-revoked")
    with pytest.raises(StoreUnavailableError) as refused:
        tokens.revoke(new.record.token_id)
    monkeypatch.undo()

    assert f"token {new.record.token_id} was revoked, but writing its audit event failed" in str(
        refused.value
    )
    assert_not_echoed(refused.value, new.token)
    assert tokens.verify(new.token) is None
    with pytest.raises(SecretNotFoundError, match="no live token"):
        tokens.revoke(new.record.token_id)


def test_a_token_whose_created_event_cannot_be_written_is_revoked_and_never_shown(
    tokens: ApiTokens, store: SecretStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written, but its creation not in the trail, and never shown: it must not stay live, unrecorded.
    refuse_events(monkeypatch, store, "token-created")
    with pytest.raises(StoreUnavailableError) as refused:
        tokens.create("alice")
    monkeypatch.undo()

    [record] = tokens.list("alice")
    assert record.revoked_at is not None
    assert f"the new token {record.token_id} was not shown" in str(refused.value)
    assert "it was revoked; create another" in str(refused.value)
    [event] = store.list_events("alice", limit=1)
    assert (event.action, event.detail) == (
        "token-revoked",
        f"token {record.token_id}; its audit event could not be written, so it was revoked, never shown",
    )


def test_has_any_counts_a_token_whose_record_another_tool_left_unreadable(
    tokens: ApiTokens, store: SecretStore
) -> None:
    # Asked as an HTTP server starts: it must neither fail to start nor offer a first token over it.
    new = tokens.create("alice")
    alter_stored(store, "api_tokens", {"token_id": new.record.token_id}, "created_at", "not a time")

    assert tokens.has_any() is True


# Not None: `list(None)` means every user's tokens.
BAD_USERNAMES = ["", "a b", "a/b", "$ne", "a" * 129, "ü", {"$ne": None}, 5]


@pytest.mark.parametrize("username", BAD_USERNAMES)
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda tokens, username: tokens.create(username), id="create"),
        pytest.param(lambda tokens, username: tokens.list(username), id="list"),
    ],
)
def test_invalid_username_is_refused(
    tokens: ApiTokens, call: Callable[[ApiTokens, Any], object], username: Any
) -> None:
    tokens.create("alice")

    with pytest.raises(InvalidInputError, match=r"^username must be"):
        call(tokens, username)
    assert len(tokens.list()) == 1
