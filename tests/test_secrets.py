"""The Secrets service on every backend: what it returns, whom it returns it to, what it refuses."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_not_leaked, new_canary
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.errors import ConfigurationError, DecryptionError, InvalidInputError, SecretNotFoundError
from mcp_secrets.secrets import ACTIONS, OPERATOR, SecretKeyInfo, Secrets, UpdateResult
from mcp_secrets.store import SecretStore
from mcp_secrets.store.sqlite import SQLiteStore

# Whole milliseconds: a BSON date keeps no finer, and these tests run on every backend.
T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)


def padded(size: int) -> str:
    """A canary padded with ASCII to ``size`` bytes of UTF-8."""
    canary = new_canary()
    return canary + "x" * (size - len(canary))


# --- writing and reading --------------------------------------------------------------------------


def test_first_save_reports_created_and_the_value_reads_back(secrets: Secrets, canary: str) -> None:
    assert secrets.set_secret("alice", "github", "TOKEN", canary) == UpdateResult(
        "github", "TOKEN", "created"
    )

    assert secrets.get_secrets("alice", "github") == {"TOKEN": canary}


@pytest.mark.parametrize("action", ["save", "update"])
def test_saving_again_replaces_the_value_and_reports_updated(secrets: Secrets, action: str) -> None:
    first, second = new_canary(), new_canary()

    created = secrets.update_secret("alice", "github", "TOKEN", first, action)
    updated = secrets.update_secret("alice", "github", "TOKEN", second, action)

    assert (created.status, updated.status) == ("created", "updated")
    assert secrets.get_secrets("alice", "github") == {"TOKEN": second}


def test_delete_action_removes_the_secret(secrets: Secrets, canary: str) -> None:
    secrets.set_secret("alice", "github", "TOKEN", canary)

    assert secrets.update_secret("alice", "github", "TOKEN", action="delete") == UpdateResult(
        "github", "TOKEN", "deleted"
    )
    assert secrets.get_secrets("alice", "github") == {}


@pytest.mark.parametrize("action", ["remove", "SAVE", "", None, 1, {"$ne": ""}])
def test_unknown_action_is_refused_and_writes_nothing(secrets: Secrets, canary: str, action: Any) -> None:
    with pytest.raises(InvalidInputError, match="action") as raised:
        secrets.update_secret("alice", "github", "TOKEN", canary, action)

    assert_not_leaked(raised.value, canary)
    assert secrets.list_secret_keys("alice") == []


def test_timestamps_keep_creation_and_follow_updates(store: SecretStore, encryptor: SecretEncryptor) -> None:
    now = [T0]
    secrets = Secrets(store, encryptor, clock=lambda: now[0])
    secrets.set_secret("alice", "github", "TOKEN", new_canary())
    now[0] = T1

    secrets.set_secret("alice", "github", "TOKEN", new_canary())

    assert secrets.list_secret_keys("alice") == [
        SecretKeyInfo("github", "TOKEN", created_at=T0, updated_at=T1)
    ]


@pytest.mark.parametrize(
    ("username", "server", "key"),
    [
        ("a" * 128, "s" * 128, "k" * 128),
        ("alice@example.com", "my-server.v2", "API_KEY"),
        ("_", ".", "-"),
        ("0", "..", "9"),
        ("samlp|Customer1|jane@example.com", "github", "TOKEN"),
    ],
)
def test_names_at_the_edges_of_the_rules_are_accepted(
    secrets: Secrets, canary: str, username: str, server: str, key: str
) -> None:
    secrets.set_secret(username, server, key, canary)

    assert secrets.get_secrets(username, server) == {key: canary}


def test_an_auth0_subject_is_a_user_apart_from_its_strategy_and_its_neighbours(secrets: Secrets) -> None:
    """A '|' has no meaning to a store: no pattern, no operator, nothing that matches a prefix."""
    users = ["auth0|5f7c8ec7c33c6c004bbafe82", "auth0", "auth0|5f7c8ec7c33c6c004bbafe8", "auth0||"]
    values = {username: new_canary() for username in users}
    for username, value in values.items():
        secrets.set_secret(username, "github", "TOKEN", value)

    secrets.delete_secret(users[0], "github", "TOKEN")

    assert secrets.get_secrets(users[0], "github") == {}
    assert secrets.list_secret_keys(users[0]) == []
    for username in users[1:]:
        assert secrets.get_secrets(username, "github") == {"TOKEN": values[username]}
    assert [event.action for event in secrets.list_events(users[0])] == ["deleted", "created"]


# --- whose secrets --------------------------------------------------------------------------------


@pytest.fixture
def seeded(secrets: Secrets) -> dict[tuple[str, str, str], str]:
    """alice on github (two keys) and linear, bob on github: a distinct canary each."""
    records = {
        ("alice", "github", "TOKEN"): new_canary(),
        ("alice", "github", "OTHER"): new_canary(),
        ("alice", "linear", "TOKEN"): new_canary(),
        ("bob", "github", "TOKEN"): new_canary(),
    }
    for (username, server, key), value in records.items():
        secrets.set_secret(username, server, key, value)
    return records


def test_a_service_without_a_master_key_lists_deletes_and_reads_the_trail_but_never_a_value(
    secrets: Secrets, seeded: dict[tuple[str, str, str], str]
) -> None:
    keyless = Secrets(secrets.store, None)
    try:
        listed = [(info.server, info.key) for info in keyless.list_secret_keys("alice")]
        deleted = keyless.delete_secret("alice", "github", "OTHER")
        newest = keyless.list_events("alice", limit=1)[0]
        with pytest.raises(ConfigurationError) as read:
            keyless.get_secrets("alice", "github")
        with pytest.raises(ConfigurationError) as written:
            keyless.set_secret("alice", "github", "NEW", new_canary())
    finally:
        keyless.close()

    assert listed == [("github", "OTHER"), ("github", "TOKEN"), ("linear", "TOKEN")]
    assert deleted == UpdateResult("github", "OTHER", "deleted")
    assert (newest.action, newest.key) == ("deleted", "OTHER")
    for refused in (read, written):
        assert "needs the master key" in str(refused.value)
        assert_not_leaked(refused.value, *seeded.values())
    assert [info.key for info in secrets.list_secret_keys("alice", "github")] == ["TOKEN"]


def test_get_secrets_returns_only_that_users_secrets_for_that_server(
    secrets: Secrets, seeded: dict[tuple[str, str, str], str]
) -> None:
    assert secrets.get_secrets("alice", "github") == {
        "OTHER": seeded["alice", "github", "OTHER"],
        "TOKEN": seeded["alice", "github", "TOKEN"],
    }
    assert secrets.get_secrets("alice", "linear") == {"TOKEN": seeded["alice", "linear", "TOKEN"]}
    assert secrets.get_secrets("bob", "github") == {"TOKEN": seeded["bob", "github", "TOKEN"]}
    assert secrets.get_secrets("bob", "linear") == {}
    assert secrets.get_secrets("carol", "github") == {}


def test_list_secret_keys_gives_names_and_timestamps_never_values(
    secrets: Secrets, seeded: dict[tuple[str, str, str], str]
) -> None:
    listed = secrets.list_secret_keys("alice")

    assert [(info.server, info.key) for info in listed] == [
        ("github", "OTHER"),
        ("github", "TOKEN"),
        ("linear", "TOKEN"),
    ]
    assert all(isinstance(info, SecretKeyInfo) for info in listed)
    assert all(info.created_at <= info.updated_at for info in listed)
    ciphertexts = [record.value for record in secrets.store.find_secrets("alice")]
    for leaked in [*seeded.values(), *ciphertexts]:
        assert leaked not in repr(listed)


def test_list_secret_keys_filters_by_server(
    secrets: Secrets, seeded: dict[tuple[str, str, str], str]
) -> None:
    assert [(info.server, info.key) for info in secrets.list_secret_keys("alice", "linear")] == [
        ("linear", "TOKEN")
    ]
    assert [(info.server, info.key) for info in secrets.list_secret_keys("bob")] == [("github", "TOKEN")]
    assert secrets.list_secret_keys("bob", "linear") == []


# --- deleting -------------------------------------------------------------------------------------


def test_delete_removes_one_record_only(secrets: Secrets, seeded: dict[tuple[str, str, str], str]) -> None:
    assert secrets.delete_secret("alice", "github", "TOKEN").status == "deleted"

    assert secrets.get_secrets("alice", "github") == {"OTHER": seeded["alice", "github", "OTHER"]}
    assert secrets.get_secrets("alice", "linear") == {"TOKEN": seeded["alice", "linear", "TOKEN"]}
    assert secrets.get_secrets("bob", "github") == {"TOKEN": seeded["bob", "github", "TOKEN"]}


def test_deleting_an_unknown_key_names_key_and_server(
    secrets: Secrets, seeded: dict[tuple[str, str, str], str]
) -> None:
    with pytest.raises(SecretNotFoundError) as raised:
        secrets.delete_secret("alice", "github", "MISSING")

    assert "'MISSING'" in str(raised.value)
    assert "'github'" in str(raised.value)
    assert_not_leaked(raised.value, *seeded.values())


def test_deleting_for_a_server_without_secrets_names_the_server(
    secrets: Secrets, seeded: dict[tuple[str, str, str], str]
) -> None:
    with pytest.raises(SecretNotFoundError, match="no secrets for server 'jira'"):
        secrets.delete_secret("alice", "jira", "TOKEN")


def test_alice_cannot_delete_bobs_secret(secrets: Secrets, canary: str) -> None:
    secrets.set_secret("bob", "jira", "TOKEN", canary)

    with pytest.raises(SecretNotFoundError):
        secrets.delete_secret("alice", "jira", "TOKEN")

    assert secrets.get_secrets("bob", "jira") == {"TOKEN": canary}


# --- the per-user limit -------------------------------------------------------------------------


def test_a_new_key_past_the_limit_is_refused_and_leaves_no_trace(
    store: SecretStore, encryptor: SecretEncryptor, canary: str
) -> None:
    limited = Secrets(store, encryptor, max_secrets_per_user=2)
    limited.set_secret("alice", "a", "K", new_canary())
    limited.set_secret("alice", "b", "K", new_canary())
    events_before = limited.list_events("alice")

    with pytest.raises(InvalidInputError, match="at most 2 secrets") as raised:
        limited.set_secret("alice", "b", "NEW", canary)

    assert_not_leaked(raised.value, canary)
    assert [(info.server, info.key) for info in limited.list_secret_keys("alice")] == [("a", "K"), ("b", "K")]
    assert limited.list_events("alice") == events_before
    assert limited.set_secret("alice", "b", "K", canary).status == "updated"
    assert limited.set_secret("bob", "b", "NEW", canary).status == "created"
    limited.close()


def test_writers_on_separate_connections_never_take_more_than_the_limit(
    tmp_path: Path, encryptor: SecretEncryptor
) -> None:
    # Each connection stands for a server process of its own on the same file: only the database
    # can tell them who took the last place.
    limit, writers, rounds = 3, 8, 20
    path = tmp_path / "secrets.db"
    services = [Secrets(SQLiteStore(path), encryptor, max_secrets_per_user=limit) for _ in range(writers)]
    start = threading.Barrier(writers)

    def write(writer: int, round_: int) -> bool:
        start.wait()
        try:
            services[writer].set_secret(f"user{round_}", "s", f"K{writer}", "v")
        except InvalidInputError:
            return False
        return True

    try:
        for round_ in range(rounds):
            services[0].set_secret(f"user{round_}", "s", "FIRST", "v")
            services[0].set_secret(f"user{round_}", "s", "SECOND", "v")
            with ThreadPoolExecutor(max_workers=writers) as pool:
                stored = list(pool.map(write, range(writers), [round_] * writers))

            assert stored.count(True) == 1, f"round {round_}"
            assert services[0].store.count_secrets(f"user{round_}") == limit
    finally:
        for service in services:
            service.close()
            service.store.close()


def test_a_store_query_that_forgets_the_username_still_hands_alice_none_of_bobs_values(
    secrets: Secrets, monkeypatch: pytest.MonkeyPatch, canary: str
) -> None:
    # Each ciphertext is bound to its username: a broken query returns records that do not decrypt.
    secrets.set_secret("bob", "github", "TOKEN", canary)
    find = secrets.store.find_secrets
    monkeypatch.setattr(secrets.store, "find_secrets", lambda _username, server=None: find("bob", server))

    with pytest.raises(DecryptionError) as raised:
        secrets.get_secrets("alice", "github")

    assert_not_leaked(raised.value, canary)


def test_at_the_limit_a_known_key_name_on_another_server_is_still_a_new_secret(
    store: SecretStore, encryptor: SecretEncryptor, canary: str
) -> None:
    limited = Secrets(store, encryptor, max_secrets_per_user=2)
    try:
        limited.set_secret("alice", "github", "TOKEN", "v")
        limited.set_secret("alice", "github", "USER", "v")

        with pytest.raises(InvalidInputError, match="at most 2 secrets") as raised:
            limited.set_secret("alice", "linear", "TOKEN", canary)
        replaced = limited.set_secret("alice", "github", "TOKEN", "v2")

        assert limited.get_secrets("alice", "linear") == {}
    finally:
        limited.close()
    assert_not_leaked(raised.value, canary)
    assert replaced.status == "updated"


# --- validation -----------------------------------------------------------------------------------

BAD_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("a" * 129, id="129-characters"),
    pytest.param("a b", id="space"),
    pytest.param("a/b", id="slash"),
    pytest.param("$ne", id="dollar"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("ü", id="non-ascii"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param({"$ne": ""}, id="operator-dict"),
    pytest.param(5, id="int"),
    pytest.param(None, id="none"),
]


def _update_with(field: str, bad: object, value: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {"username": "alice", "server": "github", "key": "TOKEN", "value": value}
    arguments[field] = bad
    return arguments


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("field", ["username", "server", "key"])
def test_invalid_name_is_refused_naming_the_field_not_the_input(
    secrets: Secrets, canary: str, field: str, bad: object
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        secrets.update_secret(**_update_with(field, bad, canary))

    message = str(raised.value)
    assert message.startswith(f"{field} must be")
    if bad != "":  # every message "contains" the empty string
        assert str(bad) not in message
        assert repr(bad) not in message
    assert_not_leaked(raised.value, canary)
    assert secrets.store.count_secrets() == 0


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("field", ["username", "server", "key"])
def test_record_use_refuses_an_invalid_name_and_records_nothing(
    secrets: Secrets, field: str, bad: object
) -> None:
    names: dict[str, Any] = {"username": "alice", "server": "github", "key": "TOKEN"}
    names[field] = bad

    with pytest.raises(InvalidInputError, match=f"^{field} must be"):
        secrets.record_use(names["username"], names["server"], [names["key"]], via="library")

    assert secrets.flush()
    assert secrets.list_events(None) == []


def test_record_use_refuses_one_string_for_its_keys(secrets: Secrets) -> None:
    with pytest.raises(InvalidInputError, match=r"^keys must be"):
        secrets.record_use("alice", "github", "TOKEN", via="library")

    assert secrets.list_events(None) == []


NAIVE = datetime(2026, 12, 6)  # noqa: DTZ001 - a time without its zone, refused


@pytest.mark.parametrize("not_before", [NAIVE, "2026-12-06T00:00:00Z"], ids=["naive", "text"])
def test_record_use_refuses_a_not_before_that_is_no_time_with_its_zone(
    secrets: Secrets, not_before: Any
) -> None:
    with pytest.raises(InvalidInputError, match=r"^not_before must be a datetime with its time zone$"):
        secrets.record_use("alice", "github", ["TOKEN"], via="library", not_before=not_before)

    assert secrets.list_events(None) == []


@pytest.mark.parametrize("keys", [None, 5], ids=["none", "int"])
def test_record_use_refuses_keys_that_are_no_collection(secrets: Secrets, keys: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"^keys must be a collection of key names$"):
        secrets.record_use("alice", "github", keys, via="library")

    assert secrets.list_events(None) == []


RECORD_CALLS: list[Any] = [
    pytest.param(lambda s: s.record(None, "rotated"), "username must be", id="actor-none"),
    pytest.param(lambda s: s.record({"$ne": ""}, "rotated"), "username must be", id="actor-dict"),
    pytest.param(lambda s: s.record("alice", 5), "action must be", id="action-int"),
    pytest.param(lambda s: s.record("alice", "x", detail="d" * 1025), "detail must be", id="detail-long"),
    pytest.param(lambda s: s.record("alice", "x", via="cli\x1b[2J"), "via must be", id="via-escape"),
    pytest.param(lambda s: s.record("alice", "x", server="a/b"), "server must be", id="server-slash"),
    pytest.param(lambda s: s.record("alice", "x", key=5), "key must be", id="key-int"),
    pytest.param(lambda s: s.record("alice", "x", at="yesterday"), "at must be", id="at-text"),
    pytest.param(
        lambda s: s.record("alice", "x", at=datetime(2026, 1, 1)),  # noqa: DTZ001 - naive, on purpose
        "at must be",
        id="at-naive",
    ),
]


@pytest.mark.parametrize(("call", "reason"), RECORD_CALLS)
def test_record_refuses_what_the_trail_cannot_hold_and_writes_nothing(
    secrets: Secrets, call: Callable[[Secrets], object], reason: str
) -> None:
    with pytest.raises(InvalidInputError, match=f"^{reason}"):
        call(secrets)

    assert secrets.list_events(None) == []


def test_record_takes_the_operator_and_names_left_empty(secrets: Secrets) -> None:
    secrets.record(OPERATOR, "rotated", via="cli", detail="3 re-encrypted")

    [event] = secrets.list_events(None)
    assert (event.actor, event.action, event.server, event.key) == (OPERATOR, "rotated", "", "")


USE_CALLS: list[Any] = [
    pytest.param(lambda s, texts: s.get_secrets("alice", "github", **texts), id="get_secrets"),
    pytest.param(lambda s, texts: s.record_use("alice", "github", ["TOKEN"], **texts), id="record_use"),
]


# Texts an event cannot hold: not strings; a lone surrogate (a file name decoded with surrogateescape), which
# neither BSON nor SQLite's UTF-8 can encode; a control character, which `mcp-secrets audit` would print to
# a terminal; and more than a label's length.
BAD_EVENT_TEXTS: list[Any] = [
    pytest.param(None, id="none"),
    pytest.param(5, id="int"),
    pytest.param(b"rest", id="bytes"),
    pytest.param({"$ne": ""}, id="dict"),
    pytest.param("rest\udcff", id="lone-surrogate"),
    pytest.param("rest\x1b[2J", id="escape"),
    pytest.param("r" * 1025, id="1025-characters"),
]


@pytest.mark.parametrize("call", USE_CALLS)
@pytest.mark.parametrize("bad", BAD_EVENT_TEXTS)
@pytest.mark.parametrize("field", ["via", "action", "detail"])
def test_a_use_whose_via_action_or_detail_is_not_text_is_refused_and_records_nothing(
    secrets: Secrets, canary: str, field: str, bad: object, call: Callable[[Secrets, dict[str, Any]], object]
) -> None:
    secrets.set_secret("alice", "github", "TOKEN", canary)
    texts: dict[str, Any] = {"via": "library", field: bad}

    with pytest.raises(InvalidInputError, match=f"^{field} must be") as raised:
        call(secrets, texts)

    assert_not_leaked(raised.value, canary)
    assert secrets.flush()
    assert [event.action for event in secrets.list_events(None)] == ["created"]


def test_a_use_of_bob_batched_after_alices_refused_one_is_recorded(secrets: Secrets, canary: str) -> None:
    secrets.set_secret("bob", "github", "TOKEN", canary)

    with pytest.raises(InvalidInputError):
        secrets.get_secrets("bob", "github", detail="rest\udcff")
    secrets.get_secrets("bob", "github", detail="after")

    assert secrets.flush()
    assert [(event.action, event.detail) for event in secrets.list_events("bob")] == [
        ("used", "after"),
        ("created", ""),
    ]
    assert secrets.store.count_secrets() == 1
    secrets.set_secret("bob", "github", "OTHER", new_canary())  # the writer is not stuck: changes go on


CHANGE_CALLS: list[Any] = [
    pytest.param(lambda s, value, via: s.set_secret("alice", "github", "TOKEN", value, via=via), id="set"),
    pytest.param(
        lambda s, value, via: s.update_secret("alice", "github", "TOKEN", value, "update", via=via),
        id="update",
    ),
    pytest.param(lambda s, _, via: s.delete_secret("alice", "github", "TOKEN", via=via), id="delete"),
]


@pytest.mark.parametrize("call", CHANGE_CALLS)
@pytest.mark.parametrize("bad", BAD_EVENT_TEXTS)
def test_a_change_whose_via_is_not_text_is_refused_and_changes_nothing(
    secrets: Secrets, canary: str, bad: object, call: Callable[[Secrets, str, object], object]
) -> None:
    kept = new_canary()
    secrets.set_secret("alice", "github", "TOKEN", kept)

    with pytest.raises(InvalidInputError, match=r"^via must be") as raised:
        call(secrets, canary, bad)

    assert_not_leaked(raised.value, canary, kept)
    assert secrets.get_secrets("alice", "github", record_use=False) == {"TOKEN": kept}
    # The trail still reads: no event of another type was written to it.
    assert [event.action for event in secrets.list_events("alice")] == ["created"]


@pytest.mark.parametrize("field", ["server", "key"])
def test_at_sign_is_for_usernames_only(secrets: Secrets, canary: str, field: str) -> None:
    with pytest.raises(InvalidInputError, match=f"^{field} must be"):
        secrets.update_secret(**_update_with(field, "a@b", canary))


@pytest.mark.parametrize("size", [1, 65536])
def test_values_of_1_byte_to_64_kib_are_accepted(secrets: Secrets, size: int) -> None:
    value = "v" if size == 1 else padded(size)

    secrets.set_secret("alice", "github", "TOKEN", value)

    assert secrets.get_secrets("alice", "github") == {"TOKEN": value}


def test_64_kib_counts_bytes_of_utf8_not_characters(secrets: Secrets) -> None:
    secrets.set_secret("alice", "github", "TOKEN", "é" * 32768)

    with pytest.raises(InvalidInputError, match="at most 65536 bytes"):
        secrets.set_secret("alice", "github", "TOKEN", "é" * 32768 + "x")
    assert secrets.get_secrets("alice", "github") == {"TOKEN": "é" * 32768}


@pytest.mark.parametrize(
    ("make_value", "reason"),
    [
        pytest.param(lambda _: "", "must not be empty", id="empty"),
        pytest.param(
            lambda canary: canary + "x" * (65537 - len(canary)), "at most 65536 bytes", id="65537-bytes"
        ),
        pytest.param(lambda canary: canary + "\ud800", "lone surrogate", id="lone-surrogate"),
        pytest.param(lambda _: 5, "must be a string", id="int"),
        pytest.param(lambda _: None, "must be a string", id="none"),
        pytest.param(lambda canary: canary.encode(), "must be a string", id="bytes"),
        pytest.param(lambda canary: {"$ne": canary}, "must be a string", id="dict"),
    ],
)
def test_invalid_value_is_refused_without_echoing_it(
    secrets: Secrets, canary: str, make_value: Callable[[str], object], reason: str
) -> None:
    kept = new_canary()
    secrets.set_secret("alice", "github", "TOKEN", kept)

    with pytest.raises(InvalidInputError, match=reason) as raised:
        secrets.update_secret("alice", "github", "TOKEN", make_value(canary))

    assert_not_leaked(raised.value, canary, kept)
    assert secrets.get_secrets("alice", "github") == {"TOKEN": kept}


# --- operator injection ---------------------------------------------------------------------------

INJECTIONS: list[Any] = [
    pytest.param(lambda s: s.get_secrets({"$ne": None}, "github"), id="get-username"),
    pytest.param(lambda s: s.get_secrets("alice", {"$ne": None}), id="get-server"),
    pytest.param(lambda s: s.get_secrets({"$gt": ""}, {"$gt": ""}), id="get-both"),
    pytest.param(lambda s: s.list_secret_keys({"$ne": None}), id="list-username"),
    pytest.param(lambda s: s.list_secret_keys({"$regex": ".*"}, "github"), id="list-regex"),
    pytest.param(lambda s: s.list_secret_keys("alice", {"$gt": ""}), id="list-server"),
    pytest.param(lambda s: s.delete_secret({"$ne": None}, "github", "TOKEN"), id="delete-username"),
    pytest.param(lambda s: s.delete_secret("alice", {"$ne": None}, {"$ne": None}), id="delete-names"),
    pytest.param(lambda s: s.set_secret({"$ne": None}, "github", "TOKEN", "overwritten"), id="save-username"),
    pytest.param(lambda s: s.set_secret("alice", "github", {"$gt": ""}, "overwritten"), id="save-key"),
]


@pytest.mark.parametrize("attempt", INJECTIONS)
def test_operator_objects_as_names_are_refused_and_reach_no_other_user(
    secrets: Secrets, seeded: dict[tuple[str, str, str], str], attempt: Callable[[Secrets], object]
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        attempt(secrets)

    assert_not_leaked(raised.value, *seeded.values())
    assert secrets.get_secrets("bob", "github") == {"TOKEN": seeded["bob", "github", "TOKEN"]}
    assert secrets.store.count_secrets() == len(seeded)


# --- tampered records -----------------------------------------------------------------------------


def _stored(secrets: Secrets, username: str, server: str, key: str) -> str:
    return next(record.value for record in secrets.store.find_secrets(username, server) if record.key == key)


TAMPERINGS: list[Any] = [
    pytest.param(lambda s: _stored(s, "bob", "github", "TOKEN"), id="bobs-ciphertext"),
    pytest.param(lambda s: _stored(s, "alice", "github", "OTHER"), id="another-keys-ciphertext"),
    pytest.param(lambda s: _stored(s, "alice", "linear", "TOKEN"), id="another-servers-ciphertext"),
    pytest.param(lambda s: _stored(s, "alice", "github", "TOKEN")[:-2], id="truncated"),
    pytest.param(lambda _: "garbled", id="garbled"),
    pytest.param(lambda _: "v1:00000000:AAAA", id="unknown-key-id"),
]


@pytest.mark.parametrize("replacement", TAMPERINGS)
def test_tampered_record_fails_to_decrypt_naming_its_key(
    secrets: Secrets, seeded: dict[tuple[str, str, str], str], replacement: Callable[[Secrets], str]
) -> None:
    secrets.store.put_secret("alice", "github", "TOKEN", replacement(secrets), T1)

    with pytest.raises(DecryptionError) as raised:
        secrets.get_secrets("alice", "github")

    assert "'TOKEN'" in str(raised.value)
    assert_not_leaked(raised.value, *seeded.values())
    assert [(info.server, info.key) for info in secrets.list_secret_keys("alice", "github")] == [
        ("github", "OTHER"),
        ("github", "TOKEN"),
    ]
    assert secrets.get_secrets("alice", "linear") == {"TOKEN": seeded["alice", "linear", "TOKEN"]}


# --- at rest --------------------------------------------------------------------------------------


def _database_bytes(path: Path) -> bytes:
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return b"".join(file.read_bytes() for file in files if file.exists())


def test_sqlite_files_never_hold_a_plaintext(sqlite_secrets: Secrets) -> None:
    kept, replaced, deleted, replacement = (new_canary() for _ in range(4))
    sqlite_secrets.set_secret("alice", "github", "KEPT", kept)
    sqlite_secrets.set_secret("alice", "github", "REPLACED", replaced)
    sqlite_secrets.set_secret("alice", "github", "REPLACED", replacement)
    sqlite_secrets.set_secret("alice", "github", "DELETED", deleted)
    sqlite_secrets.delete_secret("alice", "github", "DELETED")
    store = sqlite_secrets.store
    assert isinstance(store, SQLiteStore)

    on_disk = _database_bytes(store.path)

    # The ciphertexts are there, so the files read are the ones written.
    assert _stored(sqlite_secrets, "alice", "github", "KEPT").encode() in on_disk
    for value in (kept, replaced, deleted, replacement):
        assert value.encode() not in on_disk
        assert value.encode("utf-16-le") not in on_disk


# --- properties -----------------------------------------------------------------------------------

VALUE_MARK = new_canary()
operator_dicts = st.dictionaries(
    st.sampled_from(["$ne", "$gt", "$regex", "$where", "$exists", "a.b"]),
    st.one_of(st.none(), st.text(max_size=5), st.integers()),
    max_size=2,
)
# Valid names come from a small pool too, so that updates and deletes meet earlier saves.
valid_names = st.one_of(
    st.sampled_from(["github", "TOKEN", "a.b", ".", "..", "a" * 128]),
    st.from_regex(r"[A-Za-z0-9_.\-]{1,128}", fullmatch=True),
)
other_names = st.one_of(
    st.sampled_from(["$ne", "$gt", "$where", "$.x", "a@b", "a\x00b", "ü", "a" * 129, ""]),
    st.text(max_size=140),
    st.text(max_size=10).map(lambda text: "$" + text),
    st.text(max_size=10).map(lambda text: text + "." + text),
    st.none(),
    st.integers(),
    operator_dicts,
)


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid three times in four: every argument must pass before the later ones are even checked.

    (``st.one_of`` flattens and merges repeated branches, so it cannot weight them.)
    """
    return st.sampled_from([valid, valid, valid, other]).flatmap(lambda strategy: strategy)


any_names = mostly(valid_names, other_names)
any_values = st.one_of(
    st.text().map(lambda text: VALUE_MARK + text),
    st.text().map(lambda text: text + VALUE_MARK),
    st.text().map(lambda text: VALUE_MARK + "\udc80" + text),
    st.integers(65536 - 2, 65536 + 2).map(lambda size: VALUE_MARK + "x" * (size - len(VALUE_MARK))),
    st.just(""),
    st.none(),
    st.integers(),
    operator_dicts,
)
any_actions = mostly(
    st.sampled_from(ACTIONS), st.one_of(st.text(max_size=10), st.none(), st.integers(), operator_dicts)
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    call=st.fixed_dictionaries(
        {
            "username": any_names,
            "server": any_names,
            "key": any_names,
            "value": any_values,
            "action": any_actions,
        }
    )
)
def test_update_secret_either_works_or_refuses_plainly(sqlite_secrets: Secrets, call: dict[str, Any]) -> None:
    try:
        result = sqlite_secrets.update_secret(**call)
    except (InvalidInputError, SecretNotFoundError) as error:
        assert_not_leaked(error, VALUE_MARK)
        return

    stored = sqlite_secrets.get_secrets(call["username"], call["server"])
    if result.status == "deleted":
        assert call["key"] not in stored
    else:
        assert stored[call["key"]] == call["value"]


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(username=any_names, server=st.one_of(st.none(), any_names))
def test_reading_with_any_names_returns_nothing_foreign_or_refuses(
    sqlite_secrets: Secrets, username: Any, server: Any
) -> None:
    sqlite_secrets.set_secret("bob", "github", "TOKEN", VALUE_MARK)
    try:
        listed = sqlite_secrets.list_secret_keys(username, server)
        found = sqlite_secrets.get_secrets(username, server) if server is not None else {}
    except InvalidInputError as error:
        assert_not_leaked(error, VALUE_MARK)
        return

    assert username == "bob" or (listed == [] and found == {})


def test_change_listeners_hear_of_each_write_and_delete_and_nothing_else(
    secrets: Secrets, canary: str
) -> None:
    heard: list[tuple[str, str]] = []
    stop = secrets.on_change(lambda username, server: heard.append((username, server)))

    secrets.set_secret("alice", "github", "TOKEN", canary)
    secrets.set_secret("alice", "github", "TOKEN", canary + "2")
    with pytest.raises(SecretNotFoundError):
        secrets.delete_secret("alice", "github", "OTHER")
    with pytest.raises(InvalidInputError):
        secrets.set_secret("alice", "github", "bad name", canary)
    secrets.delete_secret("alice", "github", "TOKEN")
    stop()
    secrets.set_secret("bob", "linear", "TOKEN", canary)

    assert heard == [("alice", "github")] * 3


def test_a_failing_change_listener_fails_no_write(
    secrets: Secrets, canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(username: str, server: str) -> None:
        raise RuntimeError("listener broke")

    secrets.on_change(broken)

    result = secrets.set_secret("alice", "github", "TOKEN", canary)

    assert result.status == "created"
    assert secrets.get_secrets("alice", "github") == {"TOKEN": canary}
    assert "listener broke" in caplog.text
    leaked = canary in caplog.text  # a bare bool: the log is not shown
    assert not leaked


@pytest.mark.parametrize("field", ["server", "key"])
def test_stored_keys_refuses_a_bad_name_naming_its_field_alone(secrets: Secrets, field: str) -> None:
    bad = f"{new_canary()}/"
    asked = (bad, "TOKEN") if field == "server" else ("github", bad)

    with pytest.raises(InvalidInputError, match=f"^{field} must be") as raised:
        secrets.stored_keys("alice", [("github", "TOKEN"), asked])

    assert_not_leaked(raised.value, bad)


def test_a_listing_goes_on_a_page_at_a_time_from_each_pages_next_cursor(secrets: Secrets) -> None:
    stored = [("github", "A"), ("github", "B"), ("linear", "A"), ("slack", "Z"), ("slack", "ZZ")]
    for server, key in stored:
        secrets.set_secret("alice", server, key, "v")
    secrets.set_secret("bob", "github", "AA", "v")

    pages, cursor = [], ""
    while True:
        page = secrets.list_key_page("alice", cursor=cursor, limit=2)
        pages.append([(info.server, info.key) for info in page.keys])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert pages == [stored[:2], stored[2:4], stored[4:]]
    exactly_a_page = secrets.list_key_page("alice", "github", limit=2)
    assert [info.key for info in exactly_a_page.keys] == ["A", "B"]
    assert exactly_a_page.next_cursor is None
    assert secrets.list_key_page("alice", "slack", "github/Q", limit=2).next_cursor is None
    assert [info.key for info in secrets.list_key_page("alice", "github", "github/A", limit=2).keys] == ["B"]


@pytest.mark.parametrize("cursor", ["github", "github/", "/A", "a/b/c", "a b/A", None, ["github", "A"]])
def test_a_cursor_not_of_server_and_key_is_refused_without_quoting_it(secrets: Secrets, cursor: Any) -> None:
    with pytest.raises(InvalidInputError) as raised:
        secrets.list_key_page("alice", cursor=cursor)

    assert str(raised.value) == "cursor must be the next_cursor of an earlier answer, as server/key"
