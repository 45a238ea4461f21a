"""The entry page served by two replicas of one store: the two posts of a double click may reach both.

Each replica is its own store object, ``Secrets`` and ``EntryLinks`` on one SQLite file, with the entry
page's routes; they share nothing but the file, as two processes behind a load balancer do. Replica A's
write of the value is held until the test lets it go, so that B's post comes while A stores.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from starlette.applications import Starlette

from mcp_secrets import entry_page
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.entry import ENTRY_PATH, EntryLinks
from mcp_secrets.entry_page import CSRF_COOKIE, entry_routes
from mcp_secrets.errors import StoreUnavailableError
from mcp_secrets.secrets import Secrets, UpdateResult
from mcp_secrets.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

CSRF = "c" * 43
WAIT_SECONDS = 30  # for a test that went wrong to fail rather than hang


class HeldSecrets(Secrets):
    """``Secrets`` whose next ``set_secret`` says it started, then waits to be let go (and fails, if told)."""

    def __init__(self, store: SQLiteStore, encryptor: SecretEncryptor) -> None:
        super().__init__(store, encryptor)
        self.storing = threading.Event()
        self.let_go = threading.Event()
        self.fail = False

    def set_secret(
        self, username: str, server: str, key: str, value: str, *, via: str = "library", detail: str = ""
    ) -> UpdateResult:
        self.storing.set()
        self.let_go.wait(WAIT_SECONDS)
        if self.fail:
            raise StoreUnavailableError("the SQLite store is unavailable: held by the test")
        return super().set_secret(username, server, key, value, via=via, detail=detail)


@dataclass
class Replica:
    store: SQLiteStore
    secrets: Secrets
    links: EntryLinks
    http: httpx2.AsyncClient

    async def post(self, path: str, value: str) -> httpx2.Response:
        return await self.http.post(path, data={"csrf": CSRF, "value": value})


@asynccontextmanager
async def replica(
    path: Path, encryptor: SecretEncryptor, secrets_type: type[Secrets] = Secrets
) -> AsyncIterator[Replica]:
    store = SQLiteStore(path)
    secrets = secrets_type(store, encryptor)
    links = EntryLinks(secrets)
    app = Starlette(routes=entry_routes(links))
    transport = httpx2.ASGITransport(app=app)
    try:
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", cookies={CSRF_COOKIE: CSRF}
        ) as http:
            yield Replica(store, secrets, links, http)
    finally:
        secrets.close()
        store.close()


def after_its_next_store_read(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once ``store`` has read a user's records: the replica looked whether the value is in."""
    looked = threading.Event()
    find_secrets = store.find_secrets

    def spied(*args: Any, **kwargs: Any) -> Any:
        found = find_secrets(*args, **kwargs)
        looked.set()
        return found

    monkeypatch.setattr(store, "find_secrets", spied)
    return looked


async def wait_for(event: threading.Event) -> None:
    assert await anyio.to_thread.run_sync(event.wait, WAIT_SECONDS), "the test's step never came"


async def until(condition: Callable[[], bool]) -> None:
    """Wait, looking every few milliseconds, until ``condition`` holds."""
    while not condition():
        await anyio.sleep(0.01)


async def post_into(answers: dict[str, httpx2.Response], name: str, post: Callable[[], Any]) -> None:
    answers[name] = await post()


@asynccontextmanager
async def two_replicas(
    tmp_path: Path, encryptor: SecretEncryptor
) -> AsyncIterator[tuple[Replica, HeldSecrets, Replica, str]]:
    """Replica A, whose write is held (its ``HeldSecrets`` given apart), replica B, and a link's path."""
    async with (
        replica(tmp_path / "secrets.db", encryptor, HeldSecrets) as a,
        replica(tmp_path / "secrets.db", encryptor) as b,
    ):
        assert isinstance(a.secrets, HeldSecrets)
        yield a, a.secrets, b, f"{ENTRY_PATH}/{a.links.create('alice', 'github', 'TOKEN').token}"


async def sent_to_a_then_to_b(
    a: Replica, held: HeldSecrets, b: Replica, path: str, value: str, *, b_looked: Callable[[], bool]
) -> tuple[httpx2.Response, httpx2.Response]:
    """The form posted to A, then, while A stores, to B; A is let go once ``b_looked`` or B answered."""
    answers: dict[str, httpx2.Response] = {}
    with anyio.fail_after(WAIT_SECONDS):
        async with anyio.create_task_group() as posts:
            posts.start_soon(post_into, answers, "first", lambda: a.post(path, value))
            await wait_for(held.storing)  # A claimed the link, and is storing its value
            posts.start_soon(post_into, answers, "second", lambda: b.post(path, value))
            await until(lambda: b_looked() or "second" in answers)
            held.let_go.set()
    return answers["first"], answers["second"]


async def test_a_form_sent_again_to_another_replica_while_the_first_stores_says_it_is_stored(
    tmp_path: Path, encryptor: SecretEncryptor, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_replicas(tmp_path, encryptor) as (a, held, b, path):
        b_looked = after_its_next_store_read(b.store, monkeypatch)  # the link used, its value not in yet
        first, second = await sent_to_a_then_to_b(a, held, b, path, canary, b_looked=b_looked.is_set)
        stored = b.secrets.get_secrets("alice", "github")

    assert (first.status_code, second.status_code) == (200, 410)
    assert "Secret already stored" in second.text, second.text
    assert "expired" not in second.text
    assert (canary in first.text + second.text) is False
    assert stored == {"TOKEN": canary}


async def test_a_form_sent_again_to_another_replica_that_lost_the_claim_says_it_is_stored(
    tmp_path: Path, encryptor: SecretEncryptor, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both found the link live; A claimed it first, so B's claim finds it used.
    answers: dict[str, httpx2.Response] = {}
    async with two_replicas(tmp_path, encryptor) as (a, held, b, path):
        b_claiming = threading.Event()
        claim_link = b.store.claim_link

        def claim_after_a(*args: Any, **form: Any) -> bool:
            b_claiming.set()
            held.storing.wait(WAIT_SECONDS)
            return claim_link(*args, **form)

        monkeypatch.setattr(b.store, "claim_link", claim_after_a)
        b_looked = after_its_next_store_read(b.store, monkeypatch)
        with anyio.fail_after(WAIT_SECONDS):
            async with anyio.create_task_group() as posts:
                posts.start_soon(post_into, answers, "second", lambda: b.post(path, canary))
                await wait_for(b_claiming)  # B found the link live, and is about to claim it
                posts.start_soon(post_into, answers, "first", lambda: a.post(path, canary))
                # B's claim found the link used, and B looked whether its value is in (or answered already).
                await until(lambda: b_looked.is_set() or "second" in answers)
                held.let_go.set()
        stored = b.secrets.get_secrets("alice", "github")

    first, second = answers["first"], answers["second"]
    assert (first.status_code, second.status_code) == (200, 410)
    assert "Secret already stored" in second.text, second.text
    assert (canary in first.text + second.text) is False
    assert stored == {"TOKEN": canary}


async def test_a_form_sent_again_to_another_replica_whose_first_post_failed_stores_it(
    tmp_path: Path, encryptor: SecretEncryptor, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A could not store, and gave the link back: B's post, the one the browser shows, stores the value.
    async with two_replicas(tmp_path, encryptor) as (a, held, b, path):
        held.fail = True
        b_looked = after_its_next_store_read(b.store, monkeypatch)
        first, second = await sent_to_a_then_to_b(a, held, b, path, canary, b_looked=b_looked.is_set)
        stored = b.secrets.get_secrets("alice", "github")
        state = b.links.state(path.rsplit("/", 1)[1])

    assert (first.status_code, second.status_code) == (503, 200)
    assert "Secret stored" in second.text, second.text
    assert (canary in first.text + second.text) is False
    assert stored == {"TOKEN": canary}
    assert state == "used"


async def test_a_form_sent_again_while_the_store_is_unavailable_says_to_try_again_not_that_the_link_expired(
    tmp_path: Path, encryptor: SecretEncryptor, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # B cannot tell whether A's value is in: "expired, ask for a new link" would send the user for a
    # link they may not need; the store being unavailable is what B knows.
    async with two_replicas(tmp_path, encryptor) as (a, held, b, path):
        find_link = b.store.find_link
        lookups: list[str] = []

        def unavailable_after_the_first(link_hash: str) -> Any:
            lookups.append(link_hash)
            if len(lookups) > 1:
                raise StoreUnavailableError("the SQLite store is unavailable: held by the test")
            return find_link(link_hash)

        monkeypatch.setattr(b.store, "find_link", unavailable_after_the_first)
        # A is let go once B answered.
        first, second = await sent_to_a_then_to_b(a, held, b, path, canary, b_looked=lambda: False)

    assert (first.status_code, second.status_code) == (200, 503)
    assert "Try again later" in second.text, second.text
    assert "expired" not in second.text.lower()
    assert (canary in first.text + second.text) is False


async def test_a_form_sent_to_a_link_declined_a_while_ago_is_answered_at_once(
    tmp_path: Path, encryptor: SecretEncryptor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user declined in their client, then sent the page they had open: that claim stores nothing, ever.
    declined_at = datetime.now(timezone.utc)
    clock = [declined_at]
    store = SQLiteStore(tmp_path / "secrets.db")
    secrets = Secrets(store, encryptor)
    links = EntryLinks(secrets, clock=lambda: clock[0])
    token = links.create("alice", "github", "TOKEN").token
    links.cancel(token)
    clock[0] = declined_at + timedelta(seconds=entry_page.SENT_AGAIN_WAIT_SECONDS + 1)
    looks: list[str] = []
    claim_outcome = links.claim_outcome

    def counted(*args: Any, **kwargs: Any) -> Any:
        looks.append("look")
        return claim_outcome(*args, **kwargs)

    monkeypatch.setattr(links, "claim_outcome", counted)
    app = Starlette(routes=entry_routes(links))
    try:
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1", cookies={CSRF_COOKIE: CSRF}
        ) as http:
            answer = await http.post(f"{ENTRY_PATH}/{token}", data={"csrf": CSRF, "value": "too late"})
    finally:
        secrets.close()
        store.close()

    assert answer.status_code == 410
    assert "Link expired" in answer.text
    assert looks == ["look"]  # not looked at again and again for a value that will not come
