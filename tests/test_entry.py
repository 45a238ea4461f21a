"""One-time entry links over every store backend, and ``request_secret`` through the in-process client."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server import request_state
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CallToolResult,
    CreateMessageResult,
    ElicitCompleteNotification,
    ElicitRequest,
    ElicitRequestURLParams,
    ElicitResult,
    InputRequiredResult,
    TextContent,
)

from conftest import assert_not_leaked, isolated_env, new_canary, text_of
from mcp_secrets.app import ENTRY_REQUEST, GATEWAY_LINKS, EntrySettings, build_server, missing_secrets_hint
from mcp_secrets.config import StoreLocation
from mcp_secrets.crypto import SecretEncryptor, generate_master_key, parse_master_key
from mcp_secrets.entry import ENTRY_PATH, LINK_TTL, MAX_LIVE_LINKS, EntryLink, EntryLinks, LinkState
from mcp_secrets.errors import EntryLinkError, InvalidInputError, StoreUnavailableError, WriteUnconfirmedError
from mcp_secrets.identity import LocalIdentity
from mcp_secrets.secrets import MAX_VALUE_BYTES, Secrets
from mcp_secrets.store import LinkRecord
from mcp_secrets.store.sqlite import SQLiteStore
from mcp_secrets.tokens import ApiTokens
from test_crypto import fresh_master_key

BASE_URL = "http://127.0.0.1:8000"


class FakeClock:
    """A clock that moves only when told; it starts at the real present so no store expires links early."""

    def __init__(self) -> None:
        now = datetime.now(timezone.utc)
        # Whole milliseconds: a BSON date keeps no finer.
        self.now = now.replace(microsecond=now.microsecond // 1000 * 1000)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def links(secrets: Secrets, clock: FakeClock) -> EntryLinks:
    """Entry links over each backend in turn, on a fake clock."""
    return EntryLinks(secrets, clock=clock)


@pytest.fixture
def link(links: EntryLinks) -> EntryLink:
    """A fresh link for alice's github TOKEN."""
    return links.create("alice", "github", "TOKEN")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def typed_into(command: list[str], value: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``command`` run as a user runs a printed one, typing ``value`` at its prompt."""
    return subprocess.run(
        command, input=value + "\n", env=env, capture_output=True, text=True, timeout=60, check=False
    )


# --- making and finding links ---------------------------------------------------------------------


def test_a_new_link_is_live_and_bound_to_its_username_server_and_key(
    links: EntryLinks, link: EntryLink, clock: FakeClock
) -> None:
    record, state = links.find(link.token)

    assert state == "live"
    assert record == link.record
    assert (record.username, record.server, record.key) == ("alice", "github", "TOKEN")
    assert record.created_at == clock.now
    assert record.expires_at == clock.now + LINK_TTL
    assert record.used_at is None


def test_link_url_is_the_entry_path_plus_the_token(link: EntryLink) -> None:
    assert link.url(BASE_URL + "/") == f"{BASE_URL}{ENTRY_PATH}/{link.token}"
    assert link.url(BASE_URL) == f"{BASE_URL}/secrets/entry/{link.token}"


def test_every_link_gets_its_own_unguessable_token(links: EntryLinks) -> None:
    made = [links.create("alice", "github", "TOKEN") for _ in range(5)]

    assert len({one.token for one in made}) == 5
    assert len({one.record.link_id for one in made}) == 5
    assert all(len(one.token) >= 43 for one in made)  # 32 random bytes, base64url


@pytest.mark.parametrize(
    ("username", "server", "key", "field"),
    [
        pytest.param("bad name", "github", "TOKEN", "username", id="username"),
        pytest.param("alice", "git/hub", "TOKEN", "server", id="server"),
        pytest.param("alice", "github", "", "key", id="key"),
    ],
)
def test_create_refuses_an_invalid_name_naming_the_field(
    links: EntryLinks, username: str, server: str, key: str, field: str
) -> None:
    with pytest.raises(InvalidInputError, match=field):
        links.create(username, server, key)


def _one_char_changed(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


FORGERIES: dict[str, Callable[[str], str]] = {
    "one-char-changed": _one_char_changed,
    "first-char-changed": lambda token: ("A" if token[0] != "A" else "B") + token[1:],
    "truncated": lambda token: token[:-1],
    "truncated-short": lambda token: token[:10],
    "extended": lambda token: token + "A",
    "non-ascii": lambda token: token[:-1] + "é",
    "too-long": lambda token: token * 3,
    "empty": lambda _: "",
    "the-hash-itself": sha256,
    "another-random-token": lambda _: "x" * 43,
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_forged_or_altered_token_is_unknown_and_stores_nothing(
    links: EntryLinks, link: EntryLink, secrets: Secrets, forge: Callable[[str], str]
) -> None:
    forged = forge(link.token)

    assert links.find(forged) == (None, "unknown")
    with pytest.raises(EntryLinkError) as refused:
        links.submit(forged, "value")
    assert refused.value.gone is False
    assert secrets.list_secret_keys("alice") == []
    assert links.state(link.token) == "live"


# --- submitting -----------------------------------------------------------------------------------


def test_submit_stores_the_value_for_the_links_owner_only(
    links: EntryLinks, link: EntryLink, secrets: Secrets, canary: str
) -> None:
    secrets.set_secret("bob", "github", "OTHER", "bobs")

    stored = links.submit(link.token, canary)

    assert stored.link_hash == link.record.link_hash
    assert secrets.get_secrets("alice", "github", record_use=False) == {"TOKEN": canary}
    assert secrets.get_secrets("bob", "github") == {"OTHER": "bobs"}
    assert links.state(link.token) == "used"


def test_a_link_works_once(links: EntryLinks, link: EntryLink, secrets: Secrets) -> None:
    links.submit(link.token, "first")

    with pytest.raises(EntryLinkError) as second:
        links.submit(link.token, "second")

    assert second.value.gone is True
    assert secrets.get_secrets("alice", "github") == {"TOKEN": "first"}
    record, state = links.find(link.token)
    assert state == "used"
    assert record is not None
    assert record.used_at is not None


def test_a_claim_the_database_did_not_confirm_gives_the_link_back_to_submit_again(
    links: EntryLinks, link: EntryLink, secrets: Secrets, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MongoDB outside a transaction: the claim is made on the primary, then not replicated as asked in
    # time. The link must not stay used up with nothing stored: the user could only ask for another.
    claim = secrets.store.claim_link

    def claimed_but_unconfirmed(link_hash: str, now: datetime, claim_id: str, **form: str | None) -> bool:
        claim(link_hash, now, claim_id, **form)
        raise WriteUnconfirmedError("the MongoDB server made the change but did not confirm it")

    monkeypatch.setattr(secrets.store, "claim_link", claimed_but_unconfirmed)
    with pytest.raises(WriteUnconfirmedError) as unconfirmed:
        links.submit(link.token, canary)
    monkeypatch.undo()

    assert links.state(link.token) == "live"
    assert secrets.get_secrets("alice", "github") == {}
    links.submit(link.token, canary)  # the user's second try
    assert secrets.get_secrets("alice", "github", record_use=False) == {"TOKEN": canary}
    assert_not_leaked(unconfirmed.value, canary)


@pytest.mark.parametrize(
    "apart",
    [timedelta(milliseconds=-1), timedelta(0), timedelta(microseconds=500)],
    ids=["a-moment-earlier", "same-instant", "same-millisecond"],
)
def test_an_unconfirmed_claim_that_changed_nothing_leaves_another_submissions_claim_in_place(
    links: EntryLinks, link: EntryLink, secrets: Secrets, monkeypatch: pytest.MonkeyPatch, apart: timedelta
) -> None:
    # MongoDB answers a claim that matched nothing (the link just used by another submission) with the
    # same unconfirmed write concern: giving "its" claim back must not make the used link live again.
    # MongoDB keeps times to the millisecond, so the other claim's time may be this one's too.
    claim = secrets.store.claim_link

    def matched_nothing_unconfirmed(link_hash: str, now: datetime, claim_id: str, **form: str | None) -> bool:
        # Another submission, after this one found the link live: it claims and stores.
        assert claim(link_hash, now + apart, "claim-of-the-other") is True
        secrets.set_secret("alice", "github", "TOKEN", "first", via="entry-page")
        assert claim(link_hash, now, claim_id, **form) is False
        raise WriteUnconfirmedError("the MongoDB server made the change but did not confirm it")

    monkeypatch.setattr(secrets.store, "claim_link", matched_nothing_unconfirmed)
    with pytest.raises(WriteUnconfirmedError):
        links.submit(link.token, "second")
    monkeypatch.undo()

    assert links.state(link.token) == "used"
    with pytest.raises(EntryLinkError):
        links.submit(link.token, "third")
    assert secrets.get_secrets("alice", "github") == {"TOKEN": "first"}


def test_concurrent_submissions_of_one_link_store_exactly_one_value(
    links: EntryLinks, link: EntryLink, secrets: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = [f"value-{n}" for n in range(8)]
    # Every submission finds the link live before any claims it: the race is at the claim itself.
    all_found = threading.Barrier(len(values), timeout=30)
    find = links.find

    def find_then_wait_for_the_others(token: str) -> tuple[LinkRecord | None, LinkState]:
        found = find(token)
        all_found.wait()
        return found

    monkeypatch.setattr(links, "find", find_then_wait_for_the_others)

    def attempt(value: str) -> str | bool:
        """The value when it was stored, else whether the refusal said the link is gone."""
        try:
            links.submit(link.token, value)
        except EntryLinkError as exc:
            return exc.gone
        return value

    with ThreadPoolExecutor(max_workers=len(values)) as pool:
        outcomes = list(pool.map(attempt, values))
    winners = [outcome for outcome in outcomes if isinstance(outcome, str)]

    assert [outcome for outcome in outcomes if not isinstance(outcome, str)] == [True] * (len(values) - 1)
    assert len(winners) == 1
    assert secrets.get_secrets("alice", "github") == {"TOKEN": winners[0]}


def test_a_submission_keeps_only_the_hash_of_its_forms_csrf_token_to_tell_that_form_again(
    links: EntryLinks, link: EntryLink
) -> None:
    links.submit(link.token, "value", form="csrf-of-the-users-form")

    record, state = links.find(link.token)
    assert state == "used"
    assert record is not None
    assert record.claimed_by == sha256("csrf-of-the-users-form")
    assert links.stored_by_form(record, "csrf-of-the-users-form") is True
    assert links.stored_by_form(record, "csrf-of-another-form") is False


def test_a_link_claimed_without_a_form_is_taken_for_no_forms(links: EntryLinks, link: EntryLink) -> None:
    links.submit(link.token, "value")  # as the library does, and as claims made before forms were kept

    record, _ = links.find(link.token)
    assert record is not None
    assert record.claimed_by is None
    assert links.stored_by_form(record, "any-form") is False


@pytest.mark.parametrize(
    "past_expiry", [timedelta(0), timedelta(seconds=1), timedelta(days=1)], ids=["at", "after", "long-after"]
)
def test_an_expired_link_refuses_to_store(
    links: EntryLinks, link: EntryLink, secrets: Secrets, clock: FakeClock, past_expiry: timedelta
) -> None:
    clock.advance(LINK_TTL + past_expiry)

    assert links.state(link.token) == "expired"
    with pytest.raises(EntryLinkError) as refused:
        links.submit(link.token, "too late")
    assert refused.value.gone is True
    assert secrets.list_secret_keys("alice") == []


@pytest.fixture
def tokens(secrets: Secrets, clock: FakeClock) -> ApiTokens:
    return ApiTokens(secrets.store, clock=clock)


@pytest.mark.parametrize("death", ["revoked", "expired"])
def test_a_link_made_with_an_api_token_stores_nothing_once_that_token_no_longer_works(
    links: EntryLinks, secrets: Secrets, tokens: ApiTokens, clock: FakeClock, death: str
) -> None:
    # A leaked token's holder made the link; its user revoked the token (or it ran out) while the link lived.
    secrets.set_secret("alice", "github", "TOKEN", "the-real-one")
    leaked = tokens.create("alice", expires_in=timedelta(minutes=5)).record
    link = links.create("alice", "github", "TOKEN", token_id=leaked.token_id)
    assert links.state(link.token) == "live"
    if death == "revoked":
        tokens.revoke(leaked.token_id)
    else:
        clock.advance(timedelta(minutes=5))

    # Revoked, the link is ended too: MongoDB's TTL index may then have dropped it already.
    assert links.state(link.token) in (("expired", "unknown") if death == "revoked" else ("expired",))
    with pytest.raises(EntryLinkError):
        links.submit(link.token, "attacker-value")
    assert links.claim_outcome(link.token) == "gone"
    assert secrets.get_secrets("alice", "github") == {"TOKEN": "the-real-one"}


def test_revoking_one_token_leaves_the_links_of_the_users_other_tokens_and_of_no_token_working(
    links: EntryLinks, secrets: Secrets, tokens: ApiTokens
) -> None:
    kept = tokens.create("alice").record
    revoked = tokens.create("alice").record
    of_kept = links.create("alice", "github", "KEPT", token_id=kept.token_id)
    of_none = links.create("alice", "github", "JWT")  # a JWT's caller, or a link made before tokens were kept
    tokens.revoke(revoked.token_id)

    links.submit(of_kept.token, "one")
    links.submit(of_none.token, "two")

    assert secrets.get_secrets("alice", "github") == {"JWT": "two", "KEPT": "one"}


def test_a_link_of_a_token_that_is_not_in_the_store_stores_nothing(
    links: EntryLinks, secrets: Secrets
) -> None:
    link = links.create("alice", "github", "TOKEN", token_id="0123456789")

    assert links.state(link.token) == "expired"
    with pytest.raises(EntryLinkError):
        links.submit(link.token, "value")
    assert secrets.list_secret_keys("alice") == []


def test_the_audit_trail_names_the_link_and_the_token_that_made_it_never_the_links_token(
    links: EntryLinks, secrets: Secrets, tokens: ApiTokens
) -> None:
    made_with = tokens.create("alice").record
    link = links.create("alice", "github", "TOKEN", token_id=made_with.token_id)
    without = links.create("alice", "github", "OTHER")

    links.submit(link.token, "value")
    links.submit(without.token, "value")

    events = {event.key: event for event in secrets.store.list_events("alice") if event.action == "created"}
    assert events["TOKEN"].transport == "entry-page"
    assert events["TOKEN"].detail == f"entry link {link.record.link_id} of token {made_with.token_id}"
    assert events["OTHER"].detail == f"entry link {without.record.link_id}"
    for event in events.values():
        assert link.token not in event.to_json()
        assert without.token not in event.to_json()


def test_a_link_is_still_live_just_before_it_expires(
    links: EntryLinks, link: EntryLink, secrets: Secrets, clock: FakeClock
) -> None:
    clock.advance(LINK_TTL - timedelta(milliseconds=1))

    links.submit(link.token, "just in time")

    assert secrets.get_secrets("alice", "github") == {"TOKEN": "just in time"}


def test_a_link_made_before_the_clock_stepped_back_does_not_outlive_its_ttl_by_the_step(
    links: EntryLinks, link: EntryLink, secrets: Secrets, clock: FakeClock
) -> None:
    clock.advance(-timedelta(days=1))  # an NTP step, a VM restored: the link's ten minutes would last a day

    with pytest.raises(EntryLinkError):
        links.submit(link.token, "a day later")

    assert links.state(link.token) == "expired"
    assert secrets.get_secrets("alice", "github") == {}


def test_a_link_stays_live_through_a_step_back_of_the_clock_within_a_minute(
    links: EntryLinks, link: EntryLink, secrets: Secrets, clock: FakeClock
) -> None:
    # A small correction, or a page served by a replica whose clock runs a little behind the one that made it.
    clock.advance(-timedelta(seconds=59))

    links.submit(link.token, "after a small step")

    assert secrets.get_secrets("alice", "github") == {"TOKEN": "after a small step"}


def test_the_ttl_is_configurable(secrets: Secrets, clock: FakeClock) -> None:
    links = EntryLinks(secrets, ttl=timedelta(seconds=30), clock=clock)
    made = links.create("alice", "github", "TOKEN")

    clock.advance(timedelta(seconds=29))
    before = links.state(made.token)
    clock.advance(timedelta(seconds=1))

    assert made.record.expires_at == made.record.created_at + timedelta(seconds=30)
    assert (before, links.state(made.token)) == ("live", "expired")


INVALID_VALUES = {
    "empty": "",
    "over-64-KiB": "x" * (MAX_VALUE_BYTES + 1),
    "over-64-KiB-in-UTF-8": "é" * (MAX_VALUE_BYTES // 2 + 1),
    "lone-surrogate": "abc\ud800",
}


@pytest.mark.parametrize("value", INVALID_VALUES.values(), ids=INVALID_VALUES.keys())
def test_an_invalid_value_is_refused_without_using_the_link_up(
    links: EntryLinks, link: EntryLink, secrets: Secrets, value: str
) -> None:
    marked = new_canary() + value if value else value

    with pytest.raises(InvalidInputError, match="value") as refused:
        links.submit(link.token, marked)

    if marked:
        assert_not_leaked(refused.value, marked, marked[:40])
    assert links.state(link.token) == "live"
    assert secrets.list_secret_keys("alice") == []


def test_a_value_of_exactly_64_kib_is_stored(links: EntryLinks, link: EntryLink, secrets: Secrets) -> None:
    links.submit(link.token, "x" * MAX_VALUE_BYTES)

    assert secrets.get_secrets("alice", "github") == {"TOKEN": "x" * MAX_VALUE_BYTES}


def test_a_store_failure_while_storing_gives_the_link_back(
    links: EntryLinks, link: EntryLink, secrets: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*_: object, **__: object) -> None:
        raise StoreUnavailableError("the store is unavailable")

    with monkeypatch.context() as patched:
        patched.setattr(secrets, "set_secret", unavailable)
        with pytest.raises(StoreUnavailableError):
            links.submit(link.token, "value")
        state_after_failure = links.state(link.token)
    links.submit(link.token, "value")

    assert state_after_failure == "live"
    assert secrets.get_secrets("alice", "github") == {"TOKEN": "value"}


def test_a_links_value_counts_as_stored_only_once_written_after_the_claim(
    secrets: Secrets, clock: FakeClock
) -> None:
    on_clock = Secrets(secrets.store, secrets.encryptor, clock=clock)
    links = EntryLinks(on_clock, clock=clock)
    on_clock.set_secret("alice", "github", "TOKEN", "written before the link")
    link = links.create("alice", "github", "TOKEN")
    clock.advance(timedelta(seconds=1))
    assert links.submission(link.token) == "waiting"

    secrets.store.claim_link(link.record.link_hash, clock(), "claim-1")  # the page claimed it and is writing
    claimed = links.submission(link.token)
    clock.advance(timedelta(seconds=1))
    on_clock.set_secret("alice", "github", "TOKEN", "written by the page", via="entry-page")

    assert claimed == "waiting"
    assert links.submission(link.token) == "stored"
    assert links.submission("x" * 43) == "gone"
    on_clock.close()


def test_an_expired_unused_links_value_will_never_come(
    links: EntryLinks, link: EntryLink, clock: FakeClock
) -> None:
    clock.advance(LINK_TTL)

    assert links.submission(link.token) == "gone"


# --- resume and cancel ----------------------------------------------------------------------------


def test_resume_gives_the_owner_back_the_link(links: EntryLinks, link: EntryLink) -> None:
    assert links.resume(link.token, "alice") == link


@pytest.mark.parametrize(
    ("token", "username"),
    [
        pytest.param(None, "bob", id="another-users-link"),
        pytest.param("x" * 43, "alice", id="unknown-token"),
        pytest.param("short", "alice", id="malformed-token"),
    ],
)
def test_resume_refuses_a_link_that_is_not_the_callers(
    links: EntryLinks, link: EntryLink, token: str | None, username: str
) -> None:
    with pytest.raises(EntryLinkError) as refused:
        links.resume(token or link.token, username)

    assert refused.value.gone is False
    assert links.state(link.token) == "live"


def test_cancel_uses_a_live_link_up_without_storing(
    links: EntryLinks, link: EntryLink, secrets: Secrets
) -> None:
    links.cancel(link.token)

    assert links.state(link.token) == "used"
    with pytest.raises(EntryLinkError):
        links.submit(link.token, "value")
    assert secrets.list_secret_keys("alice") == []


def test_a_declined_links_value_will_never_come_even_just_after_the_no(
    links: EntryLinks, link: EntryLink
) -> None:
    # Not "storing" for the next ten seconds, as a page's claim is: nothing is writing a value for it.
    links.cancel(link.token)

    assert links.claim_outcome(link.token) == "gone"
    assert links.submission(link.token) == "gone"


def test_cancel_leaves_unknown_used_and_expired_links_as_they_are(
    links: EntryLinks, secrets: Secrets, clock: FakeClock
) -> None:
    used = links.create("alice", "github", "USED")
    links.submit(used.token, "value")
    expired = links.create("alice", "github", "EXPIRED")
    clock.advance(LINK_TTL)

    for token in (used.token, expired.token, "x" * 43):
        links.cancel(token)

    assert [links.state(used.token), links.state(expired.token)] == ["used", "expired"]
    assert secrets.get_secrets("alice", "github") == {"USED": "value"}


# --- what the store holds -------------------------------------------------------------------------


def test_the_store_holds_only_the_sha256_of_the_token(secrets: Secrets, link: EntryLink) -> None:
    record = secrets.store.find_link(sha256(link.token))

    assert record == link.record
    assert record.link_hash == sha256(link.token)
    assert all(link.token not in str(field) for field in dataclasses.astuple(record))
    assert secrets.store.find_link(link.token) is None


def test_the_token_is_not_in_the_sqlite_file(sqlite_secrets: Secrets) -> None:
    links = EntryLinks(sqlite_secrets)
    made = [links.create("alice", "github", f"KEY{n}") for n in range(3)]
    links.submit(made[0].token, "value")
    links.cancel(made[1].token)
    store = sqlite_secrets.store
    assert isinstance(store, SQLiteStore)

    raw = b"".join(path.read_bytes() for path in sorted(store.path.parent.glob(store.path.name + "*")))

    assert sha256(made[2].token).encode() in raw, (
        "the hash must be in the file for this check to mean anything"
    )
    for one in made:
        assert one.token.encode() not in raw


# --- request_secret on stdio, and with the entry page in process -----------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_request_secret_on_stdio_tells_the_user_to_run_mcp_secrets_set(
    sqlite_secrets: Secrets, mode: str
) -> None:
    async with Client(build_server(sqlite_secrets, LocalIdentity("alice")), mode=mode) as alice:
        result = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})

    assert not result.is_error, text_of(result)
    assert result.structured_content == {
        "server": "github",
        "key": "TOKEN",
        "status": "use_terminal",
        "url": None,
        "expires_at": None,
    }
    # The user it is for: a terminal's own user (the login name) may not be the server's.
    assert "mcp-secrets set github TOKEN --user alice" in text_of(result)
    assert sqlite_secrets.list_secret_keys("alice") == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("username", "server", "key"),
    [("alice", "github", "TOKEN"), ("-alice", "-github", "-TOKEN")],
    ids=["plain", "names-starting-with-a-dash"],
)
async def test_the_terminal_command_request_secret_gives_on_stdio_stores_the_secret(
    tmp_path: Path, canary: str, username: str, server: str, key: str
) -> None:
    """A name may start with `-`, which the command line read as an option: the command failed."""
    master_key = generate_master_key()
    store = SQLiteStore(tmp_path / "secrets.db")
    service = Secrets(store, SecretEncryptor([parse_master_key(master_key)]))
    try:
        async with Client(build_server(service, LocalIdentity(username))) as user:
            result = await user.call_tool("request_secret", {"server": server, "key": key})
        command = re.search(r"terminal:  mcp-secrets (.+?)  \(", text_of(result))
        assert command, text_of(result)
        env = isolated_env(
            tmp_path,
            MCP_SECRETS_MASTER_KEY=master_key,
            MCP_SECRETS_DATABASE_URL=f"sqlite:///{tmp_path / 'secrets.db'}",
        )

        done = typed_into([sys.executable, "-m", "mcp_secrets", *shlex.split(command.group(1))], canary, env)

        assert done.returncode == 0, done.stderr
        assert service.get_secrets(username, server) == {key: canary}
    finally:
        service.close()
        store.close()


AUTH0_USERNAME = "auth0|5f7c8ec7c33c6c004bbafe82"  # a username a shell would read as a pipe


async def _request_secret_command(service: Secrets, username: str) -> str:
    async with Client(build_server(service, LocalIdentity(username))) as user:
        result = await user.call_tool("request_secret", {"server": "github", "key": "KEY"})
    command = re.search(r"terminal:  (mcp-secrets .+?)  \(", text_of(result))
    assert command, text_of(result)
    return command.group(1)


async def _gateway_hint_command(_service: Secrets, username: str) -> str:
    hint = missing_secrets_hint(None)(username, "github", ["KEY"])
    command = re.search(r"run `(mcp-secrets .+?)`", hint)
    assert command, hint
    return command.group(1)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "given_by", [_request_secret_command, _gateway_hint_command], ids=["request-secret-on-stdio", "gateway"]
)
async def test_the_printed_command_run_in_a_shell_stores_for_that_user_alone(
    tmp_path: Path, canary: str, given_by: Callable[[Secrets, str], Any]
) -> None:
    master_key = generate_master_key()
    store = SQLiteStore(tmp_path / "secrets.db")
    service = Secrets(store, SecretEncryptor([parse_master_key(master_key)]))
    try:
        command = await given_by(service, AUTH0_USERNAME)
        env = isolated_env(
            tmp_path,
            MCP_SECRETS_MASTER_KEY=master_key,
            MCP_SECRETS_DATABASE_URL=f"sqlite:///{tmp_path / 'secrets.db'}",
        )
        # As the user pastes it into a terminal: through a shell, which finds mcp-secrets on the PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

        done = typed_into(["/bin/sh", "-c", command], canary, env)

        assert done.returncode == 0, done.stderr
        assert service.get_secrets(AUTH0_USERNAME, "github") == {"KEY": canary}
        assert store.count_secrets() == 1  # nobody else's, "auth0" before the bar included
    finally:
        service.close()
        store.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "arguments",
    [{"server": "git hub", "key": "TOKEN"}, {"server": "github", "key": "a/b"}],
    ids=["bad-server", "bad-key"],
)
async def test_request_secret_refuses_bad_names_naming_the_field(
    sqlite_secrets: Secrets, arguments: dict[str, str]
) -> None:
    async with Client(build_server(sqlite_secrets, LocalIdentity("alice"))) as alice:
        result = await alice.call_tool("request_secret", arguments)

    assert result.is_error
    bad_field = "server" if arguments["server"] == "git hub" else "key"
    assert f"{bad_field} must be" in text_of(result)
    assert "git hub" not in text_of(result)
    assert "a/b" not in text_of(result)


class Elicitor:
    """An elicitation callback that records each URL request and answers with ``action``.

    With ``submit``, it first redeems the link directly (the page's own code path) with that value.
    """

    def __init__(self, links: EntryLinks, action: str, submit: str | None = None) -> None:
        self.links = links
        self.action = action
        self.submit = submit
        self.urls: list[str] = []

    async def __call__(self, _context: Any, params: Any) -> ElicitResult:
        assert isinstance(params, ElicitRequestURLParams)
        self.urls.append(params.url)
        if self.submit is not None:
            self.links.submit(params.url.rsplit("/", 1)[1], self.submit)
        return ElicitResult(action=self.action)


@pytest.fixture
def entry_client(sqlite_secrets: Secrets) -> Callable[..., Client]:
    """``entry_client(elicitor, mode=, wait_seconds=)``: an in-process client, entry page configured."""

    def make(elicitor: Elicitor, *, mode: str = "auto", wait_seconds: float = 5.0) -> Client:
        entry = EntrySettings(links=elicitor.links, base_url=BASE_URL, wait_seconds=wait_seconds)
        mcp = build_server(sqlite_secrets, LocalIdentity("alice"), entry=entry)
        return Client(mcp, mode=mode, elicitation_callback=elicitor)

    return make


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_request_secret_in_process_stores_what_the_link_received(
    sqlite_secrets: Secrets, entry_client: Callable[..., Client], mode: str, canary: str
) -> None:
    elicitor = Elicitor(EntryLinks(sqlite_secrets), "accept", submit=canary)

    async with entry_client(elicitor, mode=mode) as alice:
        result = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})

    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored"
    assert len(elicitor.urls) == 1
    assert elicitor.urls[0].startswith(f"{BASE_URL}/secrets/entry/")
    assert sqlite_secrets.get_secrets("alice", "github") == {"TOKEN": canary}
    assert canary not in json.dumps(result.model_dump(mode="json"))


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_request_secret_in_process_declined_uses_the_link_up(
    sqlite_secrets: Secrets, entry_client: Callable[..., Client], mode: str, action: str
) -> None:
    links = EntryLinks(sqlite_secrets)
    elicitor = Elicitor(links, action)

    async with entry_client(elicitor, mode=mode) as alice:
        result = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})

    assert result.structured_content is not None
    assert result.structured_content["status"] == "declined"
    assert links.state(elicitor.urls[0].rsplit("/", 1)[1]) == "used"
    assert sqlite_secrets.list_secret_keys("alice") == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_request_secret_closed_after_the_page_stored_the_value_says_stored_not_declined(
    sqlite_secrets: Secrets, entry_client: Callable[..., Client], mode: str, action: str, canary: str
) -> None:
    # The user entered the value on the page, then closed the client's dialog rather than confirm it.
    elicitor = Elicitor(EntryLinks(sqlite_secrets), action, submit=canary)

    async with entry_client(elicitor, mode=mode) as alice:
        result = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})

    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored", text_of(result)
    assert "nothing was stored" not in text_of(result)
    assert sqlite_secrets.get_secrets("alice", "github") == {"TOKEN": canary}
    assert canary not in json.dumps(result.model_dump(mode="json"))


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_request_secret_that_does_not_wait_still_says_stored_when_the_page_was_submitted_first(
    sqlite_secrets: Secrets, entry_client: Callable[..., Client], mode: str, canary: str
) -> None:
    # MCP_SECRETS_ENTRY_WAIT_SECONDS=0: the user filled in the page before confirming the client's dialog.
    elicitor = Elicitor(EntryLinks(sqlite_secrets), "accept", submit=canary)

    async with entry_client(elicitor, mode=mode, wait_seconds=0) as alice:
        result = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})

    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored", text_of(result)
    assert sqlite_secrets.get_secrets("alice", "github") == {"TOKEN": canary}
    assert canary not in json.dumps(result.model_dump(mode="json"))


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_request_secret_in_process_without_a_submission_is_pending(
    sqlite_secrets: Secrets, entry_client: Callable[..., Client], mode: str
) -> None:
    links = EntryLinks(sqlite_secrets)
    elicitor = Elicitor(links, "accept")

    async with entry_client(elicitor, mode=mode, wait_seconds=0) as alice:
        result = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})

    assert result.structured_content is not None
    assert result.structured_content["status"] == "pending"
    assert result.structured_content["expires_at"] is not None
    assert links.state(elicitor.urls[0].rsplit("/", 1)[1]) == "live"


class WaitsToBeTold(Elicitor):
    """A client that keeps its dialog open until told that the page is done, then accepts: the Inspector 2.x.

    Its user fills in the page at once; the dialog answers only on ``notifications/elicitation/complete``.
    """

    def __init__(self, links: EntryLinks, value: str) -> None:
        super().__init__(links, "accept", submit=value)
        self.told = anyio.Event()
        self.asked: list[str] = []  # the elicitation ids of the requests
        self.completed: list[str] = []  # the elicitation ids of the notifications

    async def on_message(self, message: object) -> None:
        if isinstance(message, ElicitCompleteNotification):
            self.completed.append(message.params.elicitation_id)
            self.told.set()

    async def __call__(self, context: Any, params: Any) -> ElicitResult:
        self.asked.append(params.elicitation_id)
        answer = await super().__call__(context, params)
        await self.told.wait()
        return answer


@pytest.mark.anyio
async def test_a_client_that_waits_to_be_told_the_page_is_done_is_told_once_before_it_answers(
    sqlite_secrets: Secrets, canary: str
) -> None:
    links = EntryLinks(sqlite_secrets)
    elicitor = WaitsToBeTold(links, canary)
    entry = EntrySettings(links=links, base_url=BASE_URL)
    server = build_server(sqlite_secrets, LocalIdentity("alice"), entry=entry)

    # Protocol 2025-11-25, where the dialog is a request inside the call and the notification names it.
    async with Client(
        server, mode="legacy", elicitation_callback=elicitor, message_handler=elicitor.on_message
    ) as alice:
        result = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})

    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored", text_of(result)
    assert elicitor.completed == elicitor.asked
    assert len(elicitor.asked) == 1
    assert sqlite_secrets.get_secrets("alice", "github") == {"TOKEN": canary}


class SlowInThePage(WaitsToBeTold):
    """As ``WaitsToBeTold``, with a user who fills in the page only after the call's progress was reported.

    A client that gives up on a call it hears nothing of for a while (the Inspector: 60 s) keeps waiting
    while progress comes.
    """

    def __init__(self, links: EntryLinks, value: str) -> None:
        super().__init__(links, value)
        self.heard = anyio.Event()
        self.progress: list[tuple[float, float | None]] = []

    async def on_progress(self, done: float, total: float | None, _message: str | None) -> None:
        self.progress.append((done, total))
        self.heard.set()

    async def __call__(self, context: Any, params: Any) -> ElicitResult:
        await self.heard.wait()
        return await super().__call__(context, params)


@pytest.mark.anyio
async def test_the_call_reports_progress_while_the_clients_dialog_is_open(
    sqlite_secrets: Secrets, monkeypatch: pytest.MonkeyPatch, canary: str
) -> None:
    monkeypatch.setattr("mcp_secrets.app.DIALOG_PROGRESS_SECONDS", 0.0)
    now = [1000.0]
    links = EntryLinks(sqlite_secrets)
    elicitor = SlowInThePage(links, canary)
    entry = EntrySettings(links=links, base_url=BASE_URL, wait_seconds=50.0, clock=lambda: now[0])
    server = build_server(sqlite_secrets, LocalIdentity("alice"), entry=entry)

    async with Client(
        server, mode="legacy", elicitation_callback=elicitor, message_handler=elicitor.on_message
    ) as alice:
        now[0] += 70.0  # the user is a while in the dialog and the page: past the call's own wait
        result = await alice.call_tool(
            "request_secret", {"server": "github", "key": "TOKEN"}, progress_callback=elicitor.on_progress
        )

    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored", text_of(result)
    # Of no set length while the dialog is open: the call's wait counts only once the client answers.
    assert elicitor.progress
    assert all(total is None for _, total in elicitor.progress)
    assert elicitor.completed == elicitor.asked
    assert sqlite_secrets.get_secrets("alice", "github") == {"TOKEN": canary}


class SlowToConfirm(Elicitor):
    """A user who takes ``seconds`` (of ``clock``) to confirm the client's dialog, then accepts."""

    def __init__(self, links: EntryLinks, clock: list[float], seconds: float) -> None:
        super().__init__(links, "accept")
        self.clock = clock
        self.seconds = seconds

    async def __call__(self, context: Any, params: Any) -> ElicitResult:
        self.clock[0] += self.seconds
        return await super().__call__(context, params)


@pytest.mark.anyio
@pytest.mark.parametrize(("confirmed_after", "waits"), [(60.0, False), (20.0, True)])
async def test_request_secret_waits_for_the_page_counting_from_the_call_not_from_the_dialog(
    sqlite_secrets: Secrets, confirmed_after: float, waits: bool
) -> None:
    # A client that gives up on a request after 60 s must get the answer first: the dialog's time counts.
    # Protocol 2025-11-25, where the dialog is a request inside the call (in 2026-07-28 it is between two).
    now = [1000.0]
    links = EntryLinks(sqlite_secrets)
    entry = EntrySettings(links=links, base_url=BASE_URL, wait_seconds=50.0, clock=lambda: now[0])
    elicitor = SlowToConfirm(links, now, confirmed_after)
    progress: list[float] = []

    async def on_progress(done: float, _total: float | None, _message: str | None) -> None:
        progress.append(done)
        now[0] += 10.0  # the wait goes on: ten seconds pass between two looks at the store

    async with Client(
        build_server(sqlite_secrets, LocalIdentity("alice"), entry=entry),
        mode="legacy",
        elicitation_callback=elicitor,
    ) as alice:
        result = await alice.call_tool(
            "request_secret", {"server": "github", "key": "TOKEN"}, progress_callback=on_progress
        )

    assert result.structured_content is not None
    assert result.structured_content["status"] == "pending"
    # Past 50 s from the call's start, it answers at once; before, it waits out the rest, and no more.
    assert progress == ([20.0, 30.0, 40.0] if waits else [])


async def first_round(client: Client, arguments: dict[str, Any]) -> tuple[InputRequiredResult, str]:
    """A request_secret of protocol 2026-07-28 asking for input: that result, and its link's token."""
    asked = await client.session.call_tool("request_secret", arguments, allow_input_required=True)
    assert isinstance(asked, InputRequiredResult)
    [request] = asked.input_requests.values()
    assert isinstance(request, ElicitRequest)
    assert isinstance(request.params, ElicitRequestURLParams)
    return asked, request.params.url.rsplit("/", 1)[1]


async def second_round(
    client: Client, arguments: dict[str, Any], asked: InputRequiredResult
) -> CallToolResult:
    """The same call again, the user having accepted to open the link."""
    return await client.call_tool(
        "request_secret",
        arguments,
        input_responses={ENTRY_REQUEST: ElicitResult(action="accept")},
        request_state=asked.request_state,
    )


def alices_entry_client(links: EntryLinks, wait_seconds: float = 5.0) -> Client:
    """An in-process client of protocol 2026-07-28 acting as alice, whose answers the test sends itself."""
    entry = EntrySettings(links=links, base_url=BASE_URL, wait_seconds=wait_seconds)
    server = build_server(links.secrets, LocalIdentity("alice"), entry=entry)
    return Client(server, elicitation_callback=Elicitor(links, "accept"))  # declares URL elicitation


@pytest.mark.anyio
async def test_a_round_trip_sent_again_with_accept_after_the_user_declined_says_nothing_is_stored(
    sqlite_secrets: Secrets,
) -> None:
    # The client sends the answered round again, same requestState, now accepting: the no used the link up.
    links = EntryLinks(sqlite_secrets)
    arguments = {"server": "github", "key": "TOKEN"}
    async with alices_entry_client(links, wait_seconds=0) as alice:
        asked, token = await first_round(alice, arguments)
        declined = await alice.call_tool(
            "request_secret",
            arguments,
            input_responses={ENTRY_REQUEST: ElicitResult(action="decline")},
            request_state=asked.request_state,
        )
        again = await second_round(alice, arguments, asked)

    assert declined.structured_content is not None
    assert declined.structured_content["status"] == "declined"
    assert again.structured_content is not None
    assert again.structured_content["status"] == "declined", text_of(again)
    assert "stays valid" not in text_of(again)
    assert "request_secret again" in text_of(again)
    assert links.state(token) == "used"
    assert sqlite_secrets.list_secret_keys("alice") == []


SAMPLED = CreateMessageResult(role="assistant", content=TextContent(type="text", text="yes"), model="m")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "responses",
    [None, {"another_question": ElicitResult(action="accept")}, {ENTRY_REQUEST: SAMPLED}],
    ids=["none", "under-another-key", "not-an-elicitation-result"],
)
async def test_a_round_trip_without_an_answer_to_its_question_asks_it_again_and_keeps_the_link(
    sqlite_secrets: Secrets, responses: dict[str, Any] | None, canary: str
) -> None:
    # A client's slip is no "no": taken for one, it used the link up and told the model the user declined.
    links = EntryLinks(sqlite_secrets)
    arguments = {"server": "github", "key": "TOKEN"}
    async with alices_entry_client(links) as alice:
        asked, token = await first_round(alice, arguments)
        again = await alice.session.call_tool(
            "request_secret",
            arguments,
            input_responses=responses,
            request_state=asked.request_state,
            allow_input_required=True,
        )
        assert isinstance(again, InputRequiredResult), again
        assert again.input_requests is not None
        request = again.input_requests[ENTRY_REQUEST]
        assert isinstance(request, ElicitRequest)
        assert isinstance(request.params, ElicitRequestURLParams)
        assert request.params.url == f"{BASE_URL}{ENTRY_PATH}/{token}"
        assert links.state(token) == "live"
        links.submit(token, canary)
        result = await second_round(alice, arguments, again)

    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored"
    assert sqlite_secrets.get_secrets("alice", "github") == {"TOKEN": canary}
    assert canary not in json.dumps(result.model_dump(mode="json"))


@pytest.mark.anyio
async def test_request_secret_resumes_on_a_server_restarted_with_a_new_master_key_first(
    sqlite_secrets: Secrets, master_key: bytes, canary: str
) -> None:
    # Rotation step one: the server restarts with keys [new, old] while a user has the page open.
    def server_with(*master_keys: bytes) -> MCPServer[Any]:
        secrets = Secrets(sqlite_secrets.store, SecretEncryptor(master_keys))
        entry = EntrySettings(links=EntryLinks(secrets), base_url=BASE_URL, wait_seconds=5.0)
        return build_server(secrets, LocalIdentity("alice"), entry=entry)

    arguments = {"server": "github", "key": "TOKEN"}
    elicitor = Elicitor(EntryLinks(sqlite_secrets), "accept")  # declares URL elicitation; the test answers
    async with Client(server_with(master_key), elicitation_callback=elicitor) as before:
        asked, token = await first_round(before, arguments)
    EntryLinks(sqlite_secrets).submit(token, canary)

    async with Client(server_with(fresh_master_key(), master_key), elicitation_callback=elicitor) as after:
        result = await second_round(after, arguments, asked)

    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored"
    assert sqlite_secrets.get_secrets("alice", "github") == {"TOKEN": canary}


@pytest.mark.anyio
async def test_a_round_trip_begun_under_a_master_key_since_removed_is_refused_and_the_value_still_stored(
    sqlite_secrets: Secrets, master_key: bytes, canary: str
) -> None:
    # What the README's rotation says to wait out before removing the old key: its request states.
    def server_with(*master_keys: bytes) -> tuple[MCPServer[Any], Secrets]:
        secrets = Secrets(sqlite_secrets.store, SecretEncryptor(master_keys))
        entry = EntrySettings(links=EntryLinks(secrets), base_url=BASE_URL, wait_seconds=5.0)
        return build_server(secrets, LocalIdentity("alice"), entry=entry), secrets

    arguments = {"server": "github", "key": "TOKEN"}
    elicitor = Elicitor(EntryLinks(sqlite_secrets), "accept")  # declares URL elicitation; the test answers
    async with Client(server_with(master_key)[0], elicitation_callback=elicitor) as before:
        asked, token = await first_round(before, arguments)
    new_key = fresh_master_key()
    server, secrets = server_with(new_key)  # rotated, and the old key removed
    EntryLinks(secrets).submit(token, canary)

    async with Client(server, elicitation_callback=elicitor) as after:
        with pytest.raises(MCPError, match="requestState"):
            await second_round(after, arguments, asked)

    assert secrets.get_secrets("alice", "github", record_use=False) == {"TOKEN": canary}


@pytest.mark.anyio
async def test_request_secret_resumes_within_a_link_lifetime_set_longer_than_ten_minutes(
    sqlite_secrets: Secrets, monkeypatch: pytest.MonkeyPatch, canary: str
) -> None:
    # MCP_SECRETS_ENTRY_LINK_MINUTES=30: the user confirms the client's dialog 15 minutes on, link still live.
    links = EntryLinks(sqlite_secrets, ttl=timedelta(minutes=30))
    entry = EntrySettings(links=links, base_url=BASE_URL, wait_seconds=5.0)
    arguments = {"server": "github", "key": "TOKEN"}
    elicitor = Elicitor(links, "accept")  # declares URL elicitation; the test answers
    async with Client(
        build_server(sqlite_secrets, LocalIdentity("alice"), entry=entry), elicitation_callback=elicitor
    ) as alice:
        asked, token = await first_round(alice, arguments)
        links.submit(token, canary)
        later = time.time() + timedelta(minutes=15).total_seconds()
        monkeypatch.setattr(request_state, "time", SimpleNamespace(time=lambda: later))
        result = await second_round(alice, arguments, asked)

    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored"


class LeftOpen(Elicitor):
    """An elicitation callback whose user opens the page and leaves it, until the link has expired."""

    def __init__(self, links: EntryLinks, clock: FakeClock) -> None:
        super().__init__(links, "accept")
        self.clock = clock

    async def __call__(self, context: Any, params: Any) -> ElicitResult:
        answer = await super().__call__(context, params)
        self.clock.advance(LINK_TTL + timedelta(seconds=1))
        return answer


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_request_secret_whose_link_expires_while_waiting_says_expired_not_pending(
    sqlite_secrets: Secrets, entry_client: Callable[..., Client], mode: str, clock: FakeClock
) -> None:
    # Only a wait set longer than a link's life gets here: "pending until" would name a time gone by.
    elicitor = LeftOpen(EntryLinks(sqlite_secrets, clock=clock), clock)

    async with entry_client(elicitor, mode=mode) as alice:
        result = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})

    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "expired", text_of(result)
    assert "stays valid" not in text_of(result)
    assert "request_secret again" in text_of(result)
    assert sqlite_secrets.list_secret_keys("alice") == []


class SlowPage(Elicitor):
    """An elicitation callback whose user submits the page while the store is slow, then fails.

    It answers once the page has claimed the link and is writing the value; that write waits for
    ``give_up`` and then fails as an unavailable store does, as ``EntryLinks.submit`` sees it.
    """

    def __init__(self, links: EntryLinks, value: str) -> None:
        super().__init__(links, "accept")
        self.value = value
        self.writing, self.give_up = threading.Event(), threading.Event()
        self.page = ThreadPoolExecutor(max_workers=1)
        self.submissions: list[Any] = []

    def slow_then_unavailable(self, *_: object, **__: object) -> None:
        self.writing.set()
        self.give_up.wait()
        raise StoreUnavailableError("the store is unavailable")

    async def __call__(self, _context: Any, params: Any) -> ElicitResult:
        assert isinstance(params, ElicitRequestURLParams)
        self.urls.append(params.url)
        token = params.url.rsplit("/", 1)[1]
        self.submissions.append(self.page.submit(self.links.submit, token, self.value))
        await anyio.to_thread.run_sync(self.writing.wait)
        return ElicitResult(action=self.action)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_request_secret_says_stored_only_once_the_value_is_written_not_when_the_page_claims_it(
    sqlite_secrets: Secrets,
    entry_client: Callable[..., Client],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    canary: str,
) -> None:
    links = EntryLinks(sqlite_secrets)
    page = SlowPage(links, canary)
    monkeypatch.setattr(sqlite_secrets, "set_secret", page.slow_then_unavailable)

    try:
        async with entry_client(page, mode=mode, wait_seconds=1) as alice:
            result = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})
    finally:
        page.give_up.set()
        page.page.shutdown()
    with pytest.raises(StoreUnavailableError):
        page.submissions[0].result()

    assert result.structured_content is not None
    assert result.structured_content["status"] == "pending", text_of(result)
    assert links.state(page.urls[0].rsplit("/", 1)[1]) == "live"  # given back: the user may try again
    assert sqlite_secrets.list_secret_keys("alice") == []
    assert canary not in json.dumps(result.model_dump(mode="json"))


# --- how many links one user may have open ---------------------------------------------------------


def test_a_user_may_have_at_most_max_live_links_open_and_used_or_expired_ones_do_not_count(
    links: EntryLinks, clock: FakeClock
) -> None:
    made = [links.create("alice", "github", f"KEY_{index}") for index in range(MAX_LIVE_LINKS)]

    with pytest.raises(
        InvalidInputError, match=rf"alice has too many entry links open .*\({MAX_LIVE_LINKS} at most\)"
    ):
        links.create("alice", "github", "ONE_TOO_MANY")
    links.create("bob", "github", "TOKEN")  # another user's links are counted apart

    links.submit(made[0].token, new_canary())  # a used link frees its place
    links.create("alice", "github", "AFTER_A_USE")
    with pytest.raises(InvalidInputError):
        links.create("alice", "github", "ONE_TOO_MANY")

    clock.advance(LINK_TTL + timedelta(seconds=1))  # expired ones free theirs
    assert links.secrets.store.count_live_links("alice", clock()) == 0
    links.create("alice", "github", "AFTER_EXPIRY")


def test_links_made_before_the_clock_stepped_back_leave_their_places_to_new_ones(
    links: EntryLinks, clock: FakeClock
) -> None:
    made = links.create_many("alice", "github", ["A", "B"], within=2)
    clock.advance(-timedelta(days=1))  # they have expired, and no longer count for a day

    assert [links.state(link.token) for link in made] == ["expired", "expired"]
    assert links.secrets.store.count_live_links("alice", clock()) == 0
    links.create_many("alice", "github", ["C", "D"], within=2)


def test_the_gateway_hints_links_work_only_while_the_callers_api_token_does(
    links: EntryLinks, tokens: ApiTokens, secrets: Secrets
) -> None:
    leaked = tokens.create("alice").record
    hint = missing_secrets_hint(EntrySettings(links=links, base_url=BASE_URL))

    text = hint("alice", "github", ["A", "B"], leaked.token_id)
    tokens.revoke(leaked.token_id)

    made = re.findall(rf"{re.escape(BASE_URL + ENTRY_PATH)}/([A-Za-z0-9_-]+)", text)
    assert len(made) == 2
    for token in made:
        assert links.state(token) in ("expired", "unknown")  # MongoDB's TTL index drops an ended link
        with pytest.raises(EntryLinkError):
            links.submit(token, "attacker-value")
    assert secrets.list_secret_keys("alice") == []


def test_revoking_a_token_frees_the_places_its_open_links_held(
    links: EntryLinks, tokens: ApiTokens, clock: FakeClock
) -> None:
    # A leaked token's holder fills the user's links; once it is revoked, the user can ask for links again.
    leaked = tokens.create("alice").record
    for n in range(MAX_LIVE_LINKS):
        links.create("alice", "github", f"KEY{n}", token_id=leaked.token_id)
    with pytest.raises(InvalidInputError):
        links.create("alice", "github", "TOKEN")

    tokens.revoke(leaked.token_id)

    assert links.secrets.store.count_live_links("alice", clock()) == 0
    assert links.state(links.create("alice", "github", "TOKEN").token) == "live"


def test_past_the_limit_the_gateway_hint_says_so_and_how_else_to_store_the_keys(
    links: EntryLinks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mcp_secrets.app.GATEWAY_LINKS", 1)
    hint = missing_secrets_hint(EntrySettings(links=links, base_url=BASE_URL))

    with_links = hint("alice", "github", ["TOKEN"])
    past_the_limit = hint("alice", "github", ["TOKEN"])

    assert f"{BASE_URL}{ENTRY_PATH}/" in with_links
    assert "too many entry links open" in past_the_limit
    assert "mcp-secrets set github KEY --user alice" in past_the_limit
    assert ENTRY_PATH not in past_the_limit


def test_the_gateway_hint_makes_a_link_for_every_missing_key_or_for_none(
    links: EntryLinks, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mcp_secrets.app.GATEWAY_LINKS", 3)
    hint = missing_secrets_hint(EntrySettings(links=links, base_url=BASE_URL))

    first = hint("alice", "github", ["A", "B"])
    second = hint("alice", "github", ["A", "B"])  # one place left for two keys

    assert first.count(f"{BASE_URL}{ENTRY_PATH}/") == 2
    assert "too many entry links open to make 2 more" in second
    assert links.secrets.store.count_live_links("alice", clock()) == 2  # none made that nobody is shown


def test_gateway_calls_failing_in_a_loop_fill_only_their_share_and_request_secret_still_gets_links(
    links: EntryLinks, clock: FakeClock
) -> None:
    hint = missing_secrets_hint(EntrySettings(links=links, base_url=BASE_URL))

    hints = [hint("alice", "github", ["TOKEN"]) for _ in range(MAX_LIVE_LINKS)]  # an agent retrying a call

    made = sum(f"{BASE_URL}{ENTRY_PATH}/" in shown for shown in hints)
    assert made == GATEWAY_LINKS < MAX_LIVE_LINKS
    assert all("too many entry links open" in refused for refused in hints[made:])
    assert links.secrets.store.count_live_links("alice", clock()) == made
    for index in range(MAX_LIVE_LINKS - made):  # request_secret's own links: the rest
        links.create("alice", "github", f"KEY_{index}")
    with pytest.raises(InvalidInputError, match=rf"\({MAX_LIVE_LINKS} at most\)"):
        links.create("alice", "github", "ONE_TOO_MANY")


def test_sqlite_finds_expired_and_open_links_by_index(tmp_path: Any) -> None:
    store = SQLiteStore(tmp_path / "secrets.db")
    plans = {
        "DELETE FROM entry_links WHERE expires_at < ?": "entry_links_expires_at",
        "SELECT count(*) FROM entry_links WHERE username = ? AND used_at IS NULL AND expires_at > ?": (
            "entry_links_username"
        ),
    }
    for query, index in plans.items():
        parameters = ("x",) * query.count("?")
        plan = store._connection.execute(f"EXPLAIN QUERY PLAN {query}", parameters).fetchall()
        assert any(index in str(step) for step in plan), plan
    store.close()


@pytest.mark.anyio
async def test_both_terminal_hints_name_the_secret_settings_they_cannot_show(sqlite_secrets: Secrets) -> None:
    """A command for a terminal that lacks the MongoDB URL or master key stores the value elsewhere."""
    location = StoreLocation({"MCP_SECRETS_DATA_DIR": "/srv/data"}, ("MCP_SECRETS_DATABASE_URL",))
    async with Client(build_server(sqlite_secrets, LocalIdentity("alice"), store_settings=location)) as alice:
        result = await alice.call_tool("request_secret", {"server": "github", "key": "KEY"})

    for hint in (text_of(result), missing_secrets_hint(None, location)("alice", "github", ["KEY"])):
        assert "MCP_SECRETS_DATA_DIR=/srv/data mcp-secrets set github KEY --user alice" in hint
        assert (
            "The terminal needs MCP_SECRETS_DATABASE_URL set as this server's configuration sets it" in hint
        )


def test_a_failed_write_whose_link_cannot_be_given_back_raises_the_writes_own_error(
    links: EntryLinks, link: EntryLink, secrets: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_fails(*_args: object, **_kwargs: object) -> None:
        raise StoreUnavailableError("the store is unavailable: the write failed")

    def release_fails(*_args: object) -> None:
        raise StoreUnavailableError("the store is unavailable: the release failed")

    monkeypatch.setattr(secrets, "set_secret", write_fails)
    monkeypatch.setattr(secrets.store, "release_link", release_fails)

    with pytest.raises(StoreUnavailableError) as raised:
        links.submit(link.token, "value")

    assert str(raised.value) == "the store is unavailable: the write failed"
