"""``request_secret`` and the one-time entry page over a real ``mcp-secrets serve``.

The tests act as a browser would: GET the link without any bearer token, read
the hidden ``csrf`` field, POST the form with the cookie the GET set.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets as _random
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import anyio
import httpx2
import pytest
from mcp_types import (
    INVALID_REQUEST,
    CallToolResult,
    ElicitCompleteNotification,
    ElicitRequestURLParams,
    ElicitResult,
    ErrorData,
)

from conftest import parse_time, text_of
from mcp_secrets.bootstrap import open_secrets
from mcp_secrets.config import Settings
from mcp_secrets.entry import MAX_LIVE_LINKS
from mcp_secrets.secrets import MAX_VALUE_BYTES

from .conftest import create_token, isolated_env, serving

pytestmark = pytest.mark.anyio

ENTRY_PREFIX = "/secrets/entry/"
CSRF_COOKIE = "mcp_secrets_csrf"
# (Client mode, the protocol version it negotiates with this server)
ERAS = [
    pytest.param(("auto", "2026-07-28"), id="2026-07-28"),
    pytest.param(("legacy", "2025-11-25"), id="2025-11-25"),
]


# --- helpers --------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(html: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every start tag of a page, with its attributes."""
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def inputs_of(html: str) -> list[dict[str, str | None]]:
    return [attrs for tag, attrs in tags_of(html) if tag == "input"]


def csrf_of(html: str) -> str:
    (field,) = [attrs for attrs in inputs_of(html) if attrs.get("name") == "csrf"]
    assert field["type"] == "hidden"
    assert field["value"]
    return field["value"]


def browser() -> httpx2.AsyncClient:
    """An HTTP client that keeps cookies and carries no bearer token, like the user's browser."""
    return httpx2.AsyncClient(trust_env=False, timeout=30)


async def open_form(http: httpx2.AsyncClient, url: str) -> tuple[httpx2.Response, str]:
    """GET the entry page; the response and its csrf field."""
    page = await http.get(url)
    assert page.status_code == 200, page.text
    return page, csrf_of(page.text)


async def fill_in(url: str, value: str) -> list[httpx2.Response]:
    """What a user does in a fresh browser: open the link, type the value, submit. Both responses."""
    async with browser() as http:
        page, csrf = await open_form(http, url)
        posted = await http.post(url, data={"csrf": csrf, "value": value})
    return [page, posted]


def token_of(url: str) -> str:
    assert ENTRY_PREFIX in url
    return url.rsplit("/", 1)[1]


def everything_in(result: CallToolResult) -> str:
    return json.dumps(result.model_dump(mode="json"))


def stored_values(deployment: Any, username: str, server: str) -> dict[str, str]:
    """What the deployment's store holds for one user and server, read through the library."""
    env = deployment.env
    settings = Settings(
        master_key=env["MCP_SECRETS_MASTER_KEY"],
        data_dir=Path(env["MCP_SECRETS_DATA_DIR"]),
        config_dir=Path(env["MCP_SECRETS_CONFIG_DIR"]),
        database_url=None,
    )
    secrets = open_secrets(settings)
    try:
        return secrets.get_secrets(username, server)
    finally:
        secrets.close()
        secrets.store.close()


async def keys_of(client: Any, server: str) -> tuple[str, list[str]]:
    """The username a listing is for and the keys it lists for ``server``."""
    listed = await client.call_tool("list_secret_keys", {"server": server})
    assert not listed.is_error, text_of(listed)
    assert listed.structured_content is not None
    return listed.structured_content["username"], [
        entry["key"] for entry in listed.structured_content["keys"]
    ]


async def new_link(deployment: Any, server: str, key: str = "API_TOKEN", username: str = "alice") -> str:
    """An entry link made by ``request_secret`` for a client that cannot open URLs itself."""
    result = await link_sent(deployment, server, key, username)
    assert result.structured_content is not None
    return str(result.structured_content["url"])


async def link_sent(deployment: Any, server: str, key: str, username: str = "alice") -> CallToolResult:
    async with deployment.connect(username) as client:
        result = await client.call_tool("request_secret", {"server": server, "key": key})
    assert not result.is_error, text_of(result)
    return result


class Elicitor:
    """An elicitation callback that records URL requests and answers ``action``, optionally filling in."""

    def __init__(self, action: str = "accept", fill: Callable[[str], Any] | None = None) -> None:
        self.action = action
        self.fill = fill
        self.requests: list[ElicitRequestURLParams] = []

    @property
    def urls(self) -> list[str]:
        return [request.url for request in self.requests]

    async def __call__(self, _context: Any, params: Any) -> ElicitResult:
        assert isinstance(params, ElicitRequestURLParams), type(params)
        self.requests.append(params)
        if self.fill is not None:
            await self.fill(params.url)
        return ElicitResult(action=self.action)


@pytest.fixture
def server() -> str:
    """An MCP server name no other test uses, since a module's tests share each deployment's store."""
    return f"server-{_random.token_hex(4)}"


# --- the elicitation round trip -------------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("submit_first", [True, False], ids=["submit-then-accept", "accept-then-submit"])
async def test_request_secret_stores_the_value_typed_into_the_page(
    http_deployment, server: str, canary: str, era: tuple[str, str], submit_first: bool
) -> None:
    mode, version = era
    pages: list[httpx2.Response] = []
    completed: list[str] = []

    async def submit(url: str) -> None:
        pages.extend(await fill_in(url, canary))

    async def on_message(message: object) -> None:
        if isinstance(message, ElicitCompleteNotification):
            completed.append(message.params.elicitation_id)

    async with anyio.create_task_group() as tasks:

        async def fill(url: str) -> None:
            if submit_first:
                await submit(url)
            else:
                tasks.start_soon(submit, url)  # the user types after the client said "accept"

        elicitor = Elicitor("accept", fill)
        async with http_deployment.connect(
            "alice", mode=mode, elicitation_callback=elicitor, message_handler=on_message
        ) as alice:
            negotiated = alice.protocol_version
            result = await alice.call_tool("request_secret", {"server": server, "key": "API_TOKEN"})
            listed_by_alice = await keys_of(alice, server)
    async with http_deployment.connect("bob") as bob:
        listed_by_bob = await keys_of(bob, server)

    assert negotiated == version
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored"
    assert (result.structured_content["server"], result.structured_content["key"]) == (server, "API_TOKEN")
    (url,) = elicitor.urls
    assert url.startswith(http_deployment.base_url + ENTRY_PREFIX)
    assert [page.status_code for page in pages] == [200, 200]
    assert "Secret stored" in pages[1].text
    assert listed_by_alice == ("alice", ["API_TOKEN"])
    assert listed_by_bob == ("bob", [])
    assert stored_values(http_deployment, "alice", server) == {"API_TOKEN": canary}
    if mode == "legacy":  # the 2025-11-25 era announces the end of the URL elicitation it started
        assert completed == [elicitor.requests[0].elicitation_id]
    assert canary not in everything_in(result)
    assert all(canary not in page.text for page in pages)
    log = http_deployment.log()
    assert ENTRY_PREFIX in log, "the access log must show entry requests for this check to mean anything"
    assert canary not in log
    assert token_of(url) not in log


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_declining_stores_nothing_and_uses_the_link_up(
    streamable_http_deployment, server: str, era: tuple[str, str], action: str
) -> None:
    mode, version = era
    elicitor = Elicitor(action)

    async with streamable_http_deployment.connect("alice", mode=mode, elicitation_callback=elicitor) as alice:
        result = await alice.call_tool("request_secret", {"server": server, "key": "API_TOKEN"})
        negotiated = alice.protocol_version
    (url,) = elicitor.urls
    async with browser() as http:
        opened = await http.get(url)
        posted = await http.post(url, data={"csrf": "x", "value": "late"})

    assert negotiated == version
    assert result.structured_content is not None
    assert result.structured_content["status"] == "declined"
    assert "declined" in text_of(result)
    assert [opened.status_code, posted.status_code] == [410, 410]
    assert stored_values(streamable_http_deployment, "alice", server) == {}


@pytest.mark.parametrize("era", ERAS)
async def test_no_submission_within_the_wait_is_pending_and_the_link_stays_usable(
    impatient_deployment, server: str, canary: str, era: tuple[str, str]
) -> None:
    mode, version = era
    elicitor = Elicitor("accept")

    async with impatient_deployment.connect("alice", mode=mode, elicitation_callback=elicitor) as alice:
        result = await alice.call_tool("request_secret", {"server": server, "key": "API_TOKEN"})
        negotiated = alice.protocol_version
    (url,) = elicitor.urls
    pages = await fill_in(url, canary)

    assert negotiated == version
    assert result.structured_content is not None
    assert result.structured_content["status"] == "pending"
    expires_at = parse_time(result.structured_content["expires_at"])
    assert expires_at.tzinfo is not None
    assert f"{expires_at.astimezone(timezone.utc):%H:%M} UTC" in text_of(result)
    assert pages[1].status_code == 200
    assert stored_values(impatient_deployment, "alice", server) == {"API_TOKEN": canary}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_client_without_url_elicitation_gets_the_link_to_open(
    http_deployment, server: str, canary: str, mode: str
) -> None:
    async with http_deployment.connect("alice", mode=mode) as alice:
        result = await alice.call_tool("request_secret", {"server": server, "key": "API_TOKEN"})
    assert result.structured_content is not None
    url = result.structured_content["url"]
    pages = await fill_in(url, canary)

    assert result.structured_content["status"] == "link_sent"
    assert result.structured_content["expires_at"] is not None
    assert url.startswith(http_deployment.base_url + ENTRY_PREFIX)
    assert url in text_of(result)
    assert [page.status_code for page in pages] == [200, 200]
    assert stored_values(http_deployment, "alice", server) == {"API_TOKEN": canary}
    assert stored_values(http_deployment, "bob", server) == {}
    assert token_of(url) not in http_deployment.log()


async def test_a_client_whose_url_elicitation_fails_gets_the_link_to_open(
    streamable_http_deployment, server: str, canary: str
) -> None:
    """It said it opens URLs but answered the request with an error: the link comes in the result."""

    async def refuse(_context: Any, _params: Any) -> ErrorData:
        return ErrorData(code=INVALID_REQUEST, message="cannot open links here")

    deployment = streamable_http_deployment
    async with deployment.connect("alice", mode="legacy", elicitation_callback=refuse) as alice:
        result = await alice.call_tool("request_secret", {"server": server, "key": "API_TOKEN"})
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    url = result.structured_content["url"]
    pages = await fill_in(url, canary)

    assert result.structured_content["status"] == "link_sent"
    assert url in text_of(result)
    assert [page.status_code for page in pages] == [200, 200]
    assert stored_values(deployment, "alice", server) == {"API_TOKEN": canary}


# --- the link belongs to one user, once, for a while ----------------------------------------------


async def test_bob_cannot_open_or_submit_alices_link(
    streamable_http_deployment, server: str, canary: str
) -> None:
    deployment = streamable_http_deployment
    url = await new_link(deployment, server)
    bob = {"Authorization": f"Bearer {deployment.token('bob')}"}
    alice = {"Authorization": f"Bearer {deployment.token('alice')}"}

    async with browser() as http:
        _, csrf = await open_form(http, url)
        opened_by_bob = await http.get(url, headers=bob)
        posted_by_bob = await http.post(url, headers=bob, data={"csrf": csrf, "value": canary})
        opened_by_alice = await http.get(url, headers=alice)

    assert [opened_by_bob.status_code, posted_by_bob.status_code] == [403, 403]
    for refused in (opened_by_bob, posted_by_bob):
        assert "another user" in refused.text
        assert not inputs_of(refused.text)
        assert canary not in refused.text
    assert opened_by_alice.status_code == 200
    assert stored_values(deployment, "alice", server) == {}
    assert stored_values(deployment, "bob", server) == {}


FORGERIES: dict[str, Callable[[str], str]] = {
    "one-char-changed": lambda token: token[:-1] + ("A" if token[-1] != "A" else "B"),
    "truncated": lambda token: token[:-1],
    "random": lambda _: _random.token_urlsafe(32),
    "non-ascii": lambda token: token[:-1] + "é",
    "too-long": lambda token: token * 3,
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
async def test_a_forged_link_is_404_without_a_form(
    streamable_http_deployment, server: str, canary: str, forge: Callable[[str], str]
) -> None:
    url = await new_link(streamable_http_deployment, server)
    forged = url.rsplit("/", 1)[0] + "/" + forge(token_of(url))

    async with browser() as http:
        _, csrf = await open_form(http, url)
        opened = await http.get(forged)
        posted = await http.post(forged, data={"csrf": csrf, "value": canary})
        still_live = await http.get(url)

    assert [opened.status_code, posted.status_code] == [404, 404]
    for page in (opened, posted):
        assert "not valid" in page.text
        assert "ask the assistant for a new one" in page.text  # it may be an expired link, forgotten
        assert "<form" not in page.text
        assert not inputs_of(page.text)
    assert still_live.status_code == 200
    assert stored_values(streamable_http_deployment, "alice", server) == {}


@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "DELETE", "PATCH"])
async def test_another_method_on_a_link_is_405_naming_every_method_the_page_takes(
    streamable_http_deployment, server: str, method: str
) -> None:
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        answer = await http.request(method, url)
        still_live = await http.get(url)

    assert answer.status_code == 405
    assert {name.strip() for name in answer.headers["Allow"].split(",")} == {"GET", "HEAD", "POST"}
    assert still_live.status_code == 200


async def test_a_used_link_is_410_and_keeps_the_first_value(
    streamable_http_deployment, server: str, canary: str
) -> None:
    url = await new_link(streamable_http_deployment, server)
    await fill_in(url, canary)

    async with browser() as http:
        opened = await http.get(url)
        posted = await http.post(url, data={"csrf": "x", "value": "second"})

    assert [opened.status_code, posted.status_code] == [410, 410]
    for page in (opened, posted):
        assert "expired or has already been used" in page.text
        assert "Ask the assistant for a new one" in page.text
        assert not inputs_of(page.text)
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": canary}


async def test_a_link_made_with_a_token_since_revoked_is_410_and_stores_nothing(
    streamable_http_deployment, server: str, canary: str
) -> None:
    deployment = streamable_http_deployment
    async with deployment.connect("alice") as client:
        await client.call_tool("set_secret", {"server": server, "key": "API_TOKEN", "value": canary})
    # A second token of alice's leaks; its holder asks for a link to her key, and she revokes the token.
    leaked = create_token(deployment.env, "alice")
    async with deployment.connect("alice", token=leaked) as client:
        result = await client.call_tool("request_secret", {"server": server, "key": "API_TOKEN"})
    assert result.structured_content is not None
    url = result.structured_content["url"]
    async with browser() as http:
        _, csrf = await open_form(http, url)
        revoked = deployment.cli("token", "revoke", leaked.split("_")[1])
        assert revoked.returncode == 0, revoked.stderr
        opened = await http.get(url)
        posted = await http.post(url, data={"csrf": csrf, "value": "attacker-value"})

    assert [opened.status_code, posted.status_code] == [410, 410]
    for page in (opened, posted):
        assert "expired or has already been used" in page.text
        assert not inputs_of(page.text)
    assert stored_values(deployment, "alice", server) == {"API_TOKEN": canary}
    assert token_of(url) not in deployment.log()


async def test_once_a_token_that_filled_its_users_links_is_revoked_the_user_gets_links_again(
    streamable_http_deployment, server: str
) -> None:
    deployment = streamable_http_deployment
    # A user of its own: the module's other tests leave alice's links open, and must not meet her limit.
    username = f"user-{_random.token_hex(4)}"
    leaked = create_token(deployment.env, username)
    async with deployment.connect(username, token=leaked) as client:
        made = [
            await client.call_tool("request_secret", {"server": server, "key": f"KEY_{n}"})
            for n in range(MAX_LIVE_LINKS)
        ]
        refused = await client.call_tool("request_secret", {"server": server, "key": "ONE_MORE"})
    assert not any(result.is_error for result in made)
    assert refused.is_error
    assert "too many entry links open" in text_of(refused)

    revoked = deployment.cli("token", "revoke", leaked.split("_")[1])
    assert revoked.returncode == 0, revoked.stderr
    result = await link_sent(deployment, server, "API_TOKEN", username)

    assert result.structured_content is not None
    assert result.structured_content["status"] == "link_sent"
    async with browser() as http:
        await open_form(http, result.structured_content["url"])


async def test_a_form_sent_twice_says_the_value_is_stored_not_that_the_link_expired(
    streamable_http_deployment, server: str, canary: str
) -> None:
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        _, csrf = await open_form(http, url)
        # A double click on the button: the browser sends the form twice and shows the second answer.
        first = await http.post(url, data={"csrf": csrf, "value": canary})
        second = await http.post(url, data={"csrf": csrf, "value": canary})

    assert [first.status_code, second.status_code] == [200, 410]
    assert "Secret already stored" in second.text
    assert server in second.text
    assert "expired" not in second.text
    assert "Ask the assistant for a new one" not in second.text
    assert not inputs_of(second.text)
    assert canary not in first.text + second.text
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": canary}


async def test_a_form_posted_after_another_form_used_the_link_says_its_value_was_not_stored(
    streamable_http_deployment, server: str, canary: str
) -> None:
    url = await new_link(streamable_http_deployment, server)

    # The link leaked: someone else opens it too, and submits before its user does.
    async with browser() as user, browser() as someone_else:
        _, users_csrf = await open_form(user, url)
        _, their_csrf = await open_form(someone_else, url)
        theirs = await someone_else.post(url, data={"csrf": their_csrf, "value": "someone-elses-value"})
        users = await user.post(url, data={"csrf": users_csrf, "value": canary})

    assert [theirs.status_code, users.status_code] == [200, 409]
    assert "NOT stored" in users.text
    assert "used by another submission" in users.text
    assert "treat the secret as replaced" in users.text
    assert "new link" in users.text
    assert "already stored" not in users.text
    assert "nothing more to do" not in users.text
    assert not inputs_of(users.text)
    assert canary not in users.text
    assert canary not in streamable_http_deployment.log()
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": "someone-elses-value"}


async def test_two_forms_posted_at_once_store_one_value_and_tell_the_other_it_was_not_stored(
    streamable_http_deployment, server: str, canary: str
) -> None:
    keys = [f"KEY_{round_}" for round_ in range(6)]
    answers: list[list[httpx2.Response]] = []
    for key in keys:
        url = await new_link(streamable_http_deployment, server, key)
        async with browser() as one, browser() as other:
            _, one_csrf = await open_form(one, url)
            _, other_csrf = await open_form(other, url)
            posted: list[httpx2.Response] = []
            async with anyio.create_task_group() as posts:
                posts.start_soon(_post_into, posted, one, url, {"csrf": one_csrf, "value": canary})
                posts.start_soon(_post_into, posted, other, url, {"csrf": other_csrf, "value": canary})
        answers.append(sorted(posted, key=lambda answer: answer.status_code))

    for stored, refused in answers:
        assert [stored.status_code, refused.status_code] == [200, 409]
        assert "Secret stored" in stored.text
        assert "NOT stored" in refused.text, refused.text
    assert stored_values(streamable_http_deployment, "alice", server) == dict.fromkeys(keys, canary)


async def _post_into(
    answers: list[httpx2.Response], http: httpx2.AsyncClient, url: str, form: dict[str, str]
) -> None:
    answers.append(await http.post(url, data=form))


async def test_a_form_sent_twice_at_once_stores_once_and_says_so_both_times(
    streamable_http_deployment, server: str, canary: str
) -> None:
    # Each round races two posts of one form, as a double click on a busy server does; a few rounds,
    # since either post may reach the server first.
    keys = [f"KEY_{round_}" for round_ in range(12)]
    answers: list[list[httpx2.Response]] = []
    for key in keys:
        url = await new_link(streamable_http_deployment, server, key)
        async with browser() as http:
            _, csrf = await open_form(http, url)
            posted: list[httpx2.Response] = []
            form = {"csrf": csrf, "value": canary}
            async with anyio.create_task_group() as posts:
                posts.start_soon(_post_into, posted, http, url, form)
                posts.start_soon(_post_into, posted, http, url, form)
        answers.append(sorted(posted, key=lambda answer: answer.status_code))

    for stored, again in answers:
        assert [stored.status_code, again.status_code] == [200, 410]
        assert "Secret stored" in stored.text
        assert "Secret already stored" in again.text, again.text
        assert canary not in stored.text + again.text
    assert stored_values(streamable_http_deployment, "alice", server) == dict.fromkeys(keys, canary)


async def test_an_expired_link_is_410(short_link_deployment, server: str) -> None:
    result = await link_sent(short_link_deployment, server, "API_TOKEN")
    assert result.structured_content is not None
    url = result.structured_content["url"]
    expires_at = parse_time(result.structured_content["expires_at"])
    async with browser() as http:
        _, csrf = await open_form(http, url)
        # A bounded sleep past the link's own expiry (6 s on this server).
        await anyio.sleep(max(0.0, (expires_at - datetime.now(timezone.utc)).total_seconds()) + 0.3)
        opened = await http.get(url)
        posted = await http.post(url, data={"csrf": csrf, "value": "too late"})

    assert [opened.status_code, posted.status_code] == [410, 410]
    assert "expired" in opened.text
    assert stored_values(short_link_deployment, "alice", server) == {}


# --- the page itself ------------------------------------------------------------------------------


async def test_the_form_has_one_labelled_password_field_and_names_the_secret(
    streamable_http_deployment, server: str
) -> None:
    url = await new_link(streamable_http_deployment, server, "API_TOKEN")

    async with browser() as http:
        page, _ = await open_form(http, url)
    tags = tags_of(page.text)
    inputs = inputs_of(page.text)
    (form,) = [attrs for tag, attrs in tags if tag == "form"]
    (password,) = [attrs for attrs in inputs if attrs.get("type") == "password"]
    (label,) = [attrs for tag, attrs in tags if tag == "label"]
    (html,) = [attrs for tag, attrs in tags if tag == "html"]

    assert form["method"] == "post"
    assert "action" not in form or not form["action"], "the form posts back to its own link"
    assert [attrs["type"] for attrs in inputs] == ["hidden", "password"]
    assert password["name"] == "value"
    assert "value" not in password
    assert label["for"] == password["id"]
    assert html["lang"] == "en"
    assert ">Secret value</label>" in page.text
    for shown in (server, "API_TOKEN", "alice"):
        assert f"<dd>{shown}</dd>" in page.text
    assert "<dt>For user</dt><dd>alice</dd>" in page.text  # the account, as the README quotes it


async def test_the_form_uses_no_script_and_no_outside_resource(
    streamable_http_deployment, server: str
) -> None:
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        page, _ = await open_form(http, url)
    tags = tags_of(page.text)

    assert "<script" not in page.text.lower()
    assert not [tag for tag, _ in tags if tag in ("script", "link", "img", "iframe", "object", "embed")]
    assert not [attrs for _, attrs in tags if "src" in attrs or "href" in attrs]
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert "url(" not in page.text


PAGES = ["form", "unknown", "used", "other-user"]


@pytest.mark.parametrize("kind", PAGES)
async def test_every_entry_page_is_locked_down_by_headers(
    streamable_http_deployment, server: str, kind: str
) -> None:
    deployment = streamable_http_deployment
    url = await new_link(deployment, server)
    headers = {}
    if kind == "unknown":
        url = url.rsplit("/", 1)[0] + "/" + _random.token_urlsafe(32)
    elif kind == "used":
        await fill_in(url, "value")
    elif kind == "other-user":
        headers = {"Authorization": f"Bearer {deployment.token('bob')}"}

    async with browser() as http:
        page = await http.get(url, headers=headers)

    assert page.status_code == {"form": 200, "unknown": 404, "used": 410, "other-user": 403}[kind]
    policy = [part.strip() for part in page.headers["Content-Security-Policy"].split(";")]
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "form-action 'self'" in policy
    assert page.headers["Cache-Control"] == "no-store"
    # Either keeps the link's token from other sites; same-origin lets browsers send a real Origin on POST.
    assert page.headers["Referrer-Policy"] in ("no-referrer", "same-origin")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Content-Type"].startswith("text/html")


async def test_the_csrf_cookie_is_http_only_strict_and_scoped_to_entry_pages(
    streamable_http_deployment, server: str
) -> None:
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        page, csrf = await open_form(http, url)

    cookie = page.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert cookie.startswith(f"{CSRF_COOKIE}={csrf};")
    assert {"httponly", "samesite", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/secrets/entry" in cookie.lower()


async def test_behind_an_https_public_url_the_csrf_cookie_is_secure(
    tmp_path: Path, server: str, start_server: Callable[..., Any]
) -> None:
    _, page = await entry_page_behind("https://secrets.example.test", tmp_path, server, start_server)

    assert page.status_code == 200, page.text
    attributes = {part.strip().lower() for part in page.headers["Set-Cookie"].split(";")}
    assert "secure" in attributes


async def entry_page_behind(
    public: str, tmp_path: Path, server: str, start_server: Callable[..., Any]
) -> tuple[str, httpx2.Response]:
    """An entry link made by a server with the public URL ``public``, and its page fetched as a proxy would.

    The proxy in front forwards the request as plain HTTP with the public Host, the public URL's path
    taken off (as it does for ``/team-a/mcp``).
    """
    env = isolated_env(tmp_path, MCP_SECRETS_PUBLIC_URL=public)
    token = create_token(env, "alice")
    with start_server(env, "streamable-http", tmp_path / "server.log") as deployment:
        async with deployment.connect(token=token) as alice:
            sent = await alice.call_tool("request_secret", {"server": server, "key": "API_TOKEN"})
        assert sent.structured_content is not None, text_of(sent)
        url = str(sent.structured_content["url"])
        assert url.startswith(f"{public}{ENTRY_PREFIX}")
        async with browser() as http:
            page = await http.get(
                deployment.base_url + url.removeprefix(public), headers={"Host": urlsplit(public).netloc}
            )
    return url, page


def cookie_path_matches(cookie_path: str, request_path: str) -> bool:
    """Whether a browser sends a cookie of ``cookie_path`` with a request for ``request_path`` (RFC 6265)."""
    return request_path == cookie_path or request_path.startswith(cookie_path.rstrip("/") + "/")


async def test_behind_a_public_url_with_a_path_the_browser_sends_the_csrf_cookie_back(
    tmp_path: Path, server: str, start_server: Callable[..., Any]
) -> None:
    url, page = await entry_page_behind("https://secrets.example.test/team-a", tmp_path, server, start_server)

    assert page.status_code == 200, page.text
    attributes = {
        name.strip().lower(): value.strip()
        for name, _, value in (part.partition("=") for part in page.headers["Set-Cookie"].split(";"))
    }
    # The browser posts the form to the link it opened, under /team-a: the cookie must go with it.
    assert cookie_path_matches(attributes["path"], urlsplit(url).path)


async def test_the_value_travels_in_the_post_body_only(
    streamable_http_deployment, server: str, canary: str
) -> None:
    url = await new_link(streamable_http_deployment, server)

    pages = await fill_in(url, canary)

    assert [page.request.method for page in pages] == ["GET", "POST"]
    assert all(canary not in str(page.request.url) for page in pages)
    assert canary in pages[1].request.content.decode()
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": canary}
    entry_lines = [line for line in streamable_http_deployment.log().splitlines() if ENTRY_PREFIX in line]
    assert any('"POST /secrets/entry/' in line for line in entry_lines)
    assert not [line for line in entry_lines if canary in line or "value=" in line]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_value_put_in_the_links_query_by_mistake_is_not_stored_and_stays_out_of_the_log(
    streamable_http_deployment, server: str, canary: str, method: str
) -> None:
    # As `curl -G --data-urlencode value=…` or HTTPie's `value==…` send it: the page reads only the body.
    # The value holds a quote, which ends a link in the text of other log lines, but not here.
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        _, csrf = await open_form(http, url)
        answer = await http.request(method, url + f"?csrf={csrf}&value={canary}'{canary}")

    assert answer.status_code in (200, 403)
    assert canary not in answer.text
    assert stored_values(streamable_http_deployment, "alice", server) == {}
    log = streamable_http_deployment.log()
    assert f'"{method} /secrets/entry/' in log
    assert canary not in log


# Other spellings of a link's path: Starlette routes on the path decoded, so the first two open the page,
# but the access log quotes the path as sent. The others open nothing, yet show the token all the same.
PATH_SPELLINGS = [
    pytest.param("/secrets/entr%79/{token}", id="escaped-letter"),
    pytest.param("/secrets/entry%2F{token}", id="escaped-slash"),
    pytest.param("/secrets/entry%2f{token}", id="escaped-slash-lower-hex"),
    pytest.param("/%73ecrets%2Fentry/{token}", id="escaped-first-letter-and-slash"),
    pytest.param("/Secrets/Entry/{token}", id="other-case"),
    pytest.param("/secrets/./entry/{token}", id="dot-segment"),
    pytest.param("//secrets//entry/{token}", id="doubled-slashes"),
]


@pytest.mark.parametrize("spelling", PATH_SPELLINGS)
async def test_a_link_requested_by_another_spelling_of_its_path_stays_out_of_the_log(
    streamable_http_deployment, server: str, spelling: str
) -> None:
    url = await new_link(streamable_http_deployment, server)
    token = token_of(url)
    parts = urlsplit(url)

    # Sent as written, as curl --path-as-is does: an HTTP client would normalise the path first.
    async with await anyio.connect_tcp(parts.hostname or "", parts.port or 80) as stream:
        path = spelling.format(token=token)
        request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        await stream.send(request.encode())
        answer = b""
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while chunk := await stream.receive():
                answer += chunk

    assert answer.startswith(b"HTTP/1.1 ")
    log = streamable_http_deployment.log()
    # The request is logged, its token withheld; uvicorn quotes its path as sent (0.55) or decoded (0.54).
    sent = path.split(token)[0]
    assert any(f'"GET {shown}… HTTP/1.1"' in log for shown in (sent, unquote(sent)))
    assert token not in log
    assert token[:12] not in log


# --- CSRF -----------------------------------------------------------------------------------------


async def _post_without_cookie(http: httpx2.AsyncClient, url: str, csrf: str, value: str) -> httpx2.Response:
    async with browser() as stranger:
        return await stranger.post(url, data={"csrf": csrf, "value": value})


async def _post_with_wrong_csrf(http: httpx2.AsyncClient, url: str, csrf: str, value: str) -> httpx2.Response:
    return await http.post(url, data={"csrf": _random.token_urlsafe(32), "value": value})


async def _post_without_csrf(http: httpx2.AsyncClient, url: str, csrf: str, value: str) -> httpx2.Response:
    del csrf
    return await http.post(url, data={"value": value})


async def _post_with_empty_csrf(http: httpx2.AsyncClient, url: str, csrf: str, value: str) -> httpx2.Response:
    del csrf
    http.cookies.set(CSRF_COOKIE, "", path=ENTRY_PREFIX.rstrip("/"))
    return await http.post(url, data={"csrf": "", "value": value})


async def _post_with_non_ascii_csrf(
    http: httpx2.AsyncClient, url: str, csrf: str, value: str
) -> httpx2.Response:
    return await http.post(url, data={"csrf": csrf[:-1] + "é", "value": value})


async def _post_empty_csrf_as_multipart_without_cookie(
    http: httpx2.AsyncClient, url: str, csrf: str, value: str
) -> httpx2.Response:
    # A cross-site form may post multipart, whose parser keeps an empty field, and sends no cookie.
    del csrf
    async with browser() as stranger:
        return await stranger.post(url, files={"csrf": (None, ""), "value": (None, value)})


async def _post_multipart_without_a_boundary(
    http: httpx2.AsyncClient, url: str, csrf: str, value: str
) -> httpx2.Response:
    # Starlette cannot read it: answered by its own 400, in plain text, without the page's headers.
    body = f"csrf={csrf}&value={value}"
    return await http.post(url, content=body, headers={"Content-Type": "multipart/form-data"})


async def _post_multipart_with_a_file(
    http: httpx2.AsyncClient, url: str, csrf: str, value: str
) -> httpx2.Response:
    return await http.post(url, files={"csrf": (None, csrf), "value": ("value.txt", value.encode())})


async def _post_from_foreign_origin(
    http: httpx2.AsyncClient, url: str, csrf: str, value: str
) -> httpx2.Response:
    return await http.post(
        url, data={"csrf": csrf, "value": value}, headers={"Origin": "http://evil.example"}
    )


@pytest.mark.parametrize("attempt", [_post_multipart_without_a_boundary, _post_multipart_with_a_file])
async def test_a_multipart_body_that_is_no_form_is_answered_by_the_page_with_its_headers(
    streamable_http_deployment, server: str, canary: str, attempt: Callable[..., Any]
) -> None:
    # Starlette answered these itself, in plain text, without the page's CSP, framing and caching rules.
    refused, stored_after_refusal, pages = await _refused_then_filled_in(
        streamable_http_deployment, server, canary, attempt
    )

    assert refused.status_code == 400
    assert "the form could not be read" in refused.text
    assert "frame-ancestors 'none'" in refused.headers["content-security-policy"]
    assert refused.headers["cache-control"] == "no-store"
    assert canary not in refused.text
    assert stored_after_refusal == {}
    assert pages[1].status_code == 200  # the link was still live
    assert canary not in streamable_http_deployment.log()


async def _refused_then_filled_in(
    deployment: Any, server: str, canary: str, attempt: Callable[..., Any]
) -> tuple[httpx2.Response, dict[str, str], list[httpx2.Response]]:
    """A new link's form posted by ``attempt`` with ``canary``, what was stored then, and the pages of
    filling the form in properly afterwards."""
    url = await new_link(deployment, server)
    async with browser() as http:
        _, csrf = await open_form(http, url)
        refused = await attempt(http, url, csrf, canary)
    stored_after_refusal = stored_values(deployment, "alice", server)
    return refused, stored_after_refusal, await fill_in(url, "the real value")


CSRF_ATTEMPTS = {
    "no-cookie": _post_without_cookie,
    "mismatched-field": _post_with_wrong_csrf,
    "no-field": _post_without_csrf,
    "empty-cookie-and-field": _post_with_empty_csrf,
    "empty-field-multipart-no-cookie": _post_empty_csrf_as_multipart_without_cookie,
    "foreign-origin": _post_from_foreign_origin,
    "non-ascii-field": _post_with_non_ascii_csrf,
}


@pytest.mark.parametrize("attempt", CSRF_ATTEMPTS.values(), ids=CSRF_ATTEMPTS.keys())
async def test_a_cross_site_post_is_refused_and_the_link_stays_live(
    streamable_http_deployment, server: str, canary: str, attempt: Callable[..., Any]
) -> None:
    refused, stored_after_refusal, pages = await _refused_then_filled_in(
        streamable_http_deployment, server, canary, attempt
    )

    assert refused.status_code == 403
    assert canary not in refused.text
    assert stored_after_refusal == {}
    assert pages[1].status_code == 200
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": "the real value"}
    assert canary not in streamable_http_deployment.log()


# --- invalid values -------------------------------------------------------------------------------

INVALID = {
    "empty": "",
    "over-64-KiB": "x" * (MAX_VALUE_BYTES + 1),
    "over-64-KiB-in-UTF-8": "é" * (MAX_VALUE_BYTES // 2 + 1),
}


@pytest.mark.parametrize("value", INVALID.values(), ids=INVALID.keys())
async def test_an_invalid_value_shows_the_form_again_without_echoing_it(
    streamable_http_deployment, server: str, value: str
) -> None:
    marked = f"canary-{_random.token_hex(8)}{value}" if value else value
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        _, csrf = await open_form(http, url)
        refused = await http.post(url, data={"csrf": csrf, "value": marked})
    pages = await fill_in(url, "the real value")

    assert refused.status_code == 400
    assert "Not stored: value must" in refused.text
    assert [attrs.get("type") for attrs in inputs_of(refused.text)] == ["hidden", "password"]
    assert "value" not in next(attrs for attrs in inputs_of(refused.text) if attrs.get("type") == "password")
    if marked:
        assert marked[:40] not in refused.text
    assert pages[1].status_code == 200
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": "the real value"}


def pem_of(body: str) -> str:
    """A private key in PEM: its body in lines of 64 characters between the armor lines."""
    lines = [body[start : start + 64] for start in range(0, len(body), 64)]
    return "\n".join(["-----BEGIN PRIVATE KEY-----", *lines, "-----END PRIVATE KEY-----"])


# What a browser's one-line field makes of a pasted multi-line value: its line breaks as spaces
# (Chromium, Firefox), or dropped (a value set by a script, some password managers).
FLATTENED = {"spaces": " ", "dropped": ""}


@pytest.mark.parametrize("joiner", FLATTENED.values(), ids=FLATTENED.keys())
async def test_a_pem_key_whose_line_breaks_the_field_lost_is_refused_and_the_link_stays_live(
    streamable_http_deployment, server: str, canary: str, joiner: str
) -> None:
    key = pem_of(canary * 4)
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        _, csrf = await open_form(http, url)
        refused = await http.post(url, data={"csrf": csrf, "value": joiner.join(key.splitlines())})
    stored_after_refusal = stored_values(streamable_http_deployment, "alice", server)
    pages = await fill_in(url, key)  # a client that keeps the line breaks

    assert refused.status_code == 400
    assert "line breaks" in refused.text
    assert "mcp-secrets set" in refused.text
    assert [attrs.get("type") for attrs in inputs_of(refused.text)] == ["hidden", "password"]
    assert canary not in refused.text
    assert stored_after_refusal == {}
    assert pages[1].status_code == 200
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": key}


def _urlencoded(csrf: str, value: bytes) -> bytes:
    return b"csrf=" + csrf.encode() + b"&value=" + value


async def test_a_value_sent_as_unescaped_utf_8_is_stored_as_typed(
    streamable_http_deployment, server: str, canary: str
) -> None:
    typed = f"{canary}-pässwörd-秘密"
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        _, csrf = await open_form(http, url)
        posted = await http.post(
            url,  # as `curl --data` sends it: UTF-8 bytes, not percent-escaped
            content=_urlencoded(csrf, typed.encode()),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    assert posted.status_code == 200
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": typed}


NOT_UTF_8 = {
    "escaped-latin-1": quote("café", encoding="latin-1").encode(),
    "raw-latin-1": "café".encode("latin-1"),
}


@pytest.mark.parametrize("value", NOT_UTF_8.values(), ids=NOT_UTF_8.keys())
async def test_a_form_that_is_not_utf_8_is_refused_and_the_link_stays_live(
    streamable_http_deployment, server: str, value: bytes
) -> None:
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        _, csrf = await open_form(http, url)
        refused = await http.post(
            url,
            content=_urlencoded(csrf, value),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    stored_after_refusal = stored_values(streamable_http_deployment, "alice", server)
    pages = await fill_in(url, "the real value")

    assert refused.status_code == 400
    assert "UTF-8" in refused.text
    assert [attrs.get("type") for attrs in inputs_of(refused.text)] == ["hidden", "password"]
    assert stored_after_refusal == {}
    assert pages[1].status_code == 200
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": "the real value"}


def _multipart(fields: list[tuple[str, bytes]]) -> bytes:
    parts = [
        b'--B\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (n.encode(), v) for n, v in fields
    ]
    return b"".join(parts) + b"--B--\r\n"


async def _post_refused_then_filled_in(
    deployment: Any, server: str, form: Callable[[str], tuple[str, bytes]]
) -> tuple[httpx2.Response, dict[str, str], list[httpx2.Response]]:
    """A new link posted ``form(csrf)`` (content type, body), then filled in by the page's own form.

    What the post got, what was stored right after it, and the pages of the fill-in.
    """
    url = await new_link(deployment, server)
    async with browser() as http:
        _, csrf = await open_form(http, url)
        content_type, body = form(csrf)
        refused = await http.post(url, content=body, headers={"Content-Type": content_type})
    stored_after_refusal = stored_values(deployment, "alice", server)
    return refused, stored_after_refusal, await fill_in(url, "the real value")


MULTIPART_NOT_UTF_8 = {
    "raw-latin-1": ("multipart/form-data; boundary=B", "café".encode("latin-1")),
    "utf-8-declared-as-utf-16": ("multipart/form-data; boundary=B; charset=utf-16", "café".encode()),
}


@pytest.mark.parametrize(
    ("content_type", "value"), MULTIPART_NOT_UTF_8.values(), ids=MULTIPART_NOT_UTF_8.keys()
)
async def test_a_multipart_form_that_is_not_utf_8_is_refused_and_the_link_stays_live(
    streamable_http_deployment, server: str, canary: str, content_type: str, value: bytes
) -> None:
    # Starlette reads a part that is not UTF-8 as Latin-1, and a part of a declared charset in that one.
    refused, stored_after_refusal, pages = await _post_refused_then_filled_in(
        streamable_http_deployment,
        server,
        lambda csrf: (
            content_type,
            _multipart([("csrf", csrf.encode()), ("value", canary.encode() + value)]),
        ),
    )

    assert refused.status_code == 400
    assert "UTF-8" in refused.text
    assert canary not in refused.text
    assert stored_after_refusal == {}
    assert pages[1].status_code == 200
    assert stored_values(streamable_http_deployment, "alice", server) == {"API_TOKEN": "the real value"}


TWICE = {
    "value-urlencoded": ("application/x-www-form-urlencoded", "value"),
    "csrf-urlencoded": ("application/x-www-form-urlencoded", "csrf"),
    "value-multipart": ("multipart/form-data; boundary=B", "value"),
}


@pytest.mark.parametrize(("content_type", "field"), TWICE.values(), ids=TWICE.keys())
async def test_a_form_giving_a_field_twice_is_refused_rather_than_its_last_taken_and_the_link_stays_live(
    streamable_http_deployment, server: str, canary: str, content_type: str, field: str
) -> None:
    # The page's form sends each field once; a proxy or filter reading the first of two would check or
    # log another value than is stored.
    def form(csrf: str) -> tuple[str, bytes]:
        fields = {"csrf": csrf, "value": canary}
        sent = [(name, text.encode()) for name, text in fields.items()] + [(field, fields[field].encode())]
        if content_type.startswith("multipart/"):
            return content_type, _multipart(sent)
        return content_type, b"&".join(name.encode() + b"=" + quote(text).encode() for name, text in sent)

    refused, stored_after_refusal, pages = await _post_refused_then_filled_in(
        streamable_http_deployment, server, form
    )

    assert refused.status_code == 400
    assert "the form could not be read" in refused.text
    assert canary not in refused.text
    assert stored_after_refusal == {}
    assert pages[1].status_code == 200


async def test_a_form_of_many_more_fields_than_the_pages_is_refused_and_the_link_stays_live(
    streamable_http_deployment, server: str, canary: str
) -> None:
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        _, csrf = await open_form(http, url)
        padding = b"&x=" * 50_000  # costly to parse whole, and no form of this page
        refused = await http.post(
            url,
            content=_urlencoded(csrf, canary.encode()) + padding,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    stored_after_refusal = stored_values(streamable_http_deployment, "alice", server)
    pages = await fill_in(url, "the real value")

    assert refused.status_code == 400
    assert refused.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert canary not in refused.text
    assert stored_after_refusal == {}
    assert pages[1].status_code == 200


async def test_a_missing_value_field_is_refused_like_an_empty_one(
    streamable_http_deployment, server: str
) -> None:
    url = await new_link(streamable_http_deployment, server)

    async with browser() as http:
        _, csrf = await open_form(http, url)
        refused = await http.post(url, data={"csrf": csrf})
        still_live = await http.get(url)

    assert refused.status_code == 400
    assert "value must not be empty" in refused.text
    assert still_live.status_code == 200


async def test_an_oversized_form_is_refused_before_it_is_read(
    streamable_http_deployment, server: str
) -> None:
    url = await new_link(streamable_http_deployment, server)
    marked = f"canary-{_random.token_hex(8)}" + "x" * (300 * 1024)

    async with browser() as http:
        _, csrf = await open_form(http, url)
        refused = await http.post(url, data={"csrf": csrf, "value": marked})
        still_live = await http.get(url)

    assert refused.status_code == 413
    assert marked[:40] not in refused.text
    assert still_live.status_code == 200
    assert stored_values(streamable_http_deployment, "alice", server) == {}


async def test_an_oversized_form_without_a_declared_length_is_refused_before_it_is_read(
    streamable_http_deployment, server: str
) -> None:
    url = await new_link(streamable_http_deployment, server)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"value="
        for _ in range(300):  # 300 KiB, chunked: no Content-Length tells the size beforehand
            yield b"x" * 1024

    async with browser() as http:
        refused = await http.post(
            url, content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        still_live = await http.get(url)

    assert refused.status_code == 413
    assert still_live.status_code == 200
    assert stored_values(streamable_http_deployment, "alice", server) == {}


async def test_over_http_sigterm_cuts_a_request_secret_still_waiting_after_the_grace_period(
    tmp_path: Path, server: str
) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_ENTRY_WAIT_SECONDS="600", MCP_SECRETS_SHUTDOWN_GRACE_SECONDS="1")
    token = create_token(env, "alice")
    elicitor = Elicitor("accept")  # accepts, and never fills the page in: the call keeps waiting
    waiting = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        waiting.set()  # the server reports progress while it waits for the page

    with serving(env, "streamable-http", tmp_path / "server.log") as deployment:
        assert deployment.process is not None
        deployment.tokens["alice"] = token
        session = AsyncExitStack()
        alice = await session.enter_async_context(deployment.connect("alice", elicitation_callback=elicitor))

        async def request() -> None:
            with contextlib.suppress(Exception):  # cut by the shutdown, as meant here
                arguments = {"server": server, "key": "API_TOKEN"}
                await alice.call_tool("request_secret", arguments, progress_callback=on_progress)

        async with anyio.create_task_group() as group:
            group.start_soon(request)
            await waiting.wait()
            deployment.process.send_signal(signal.SIGTERM)
            # Far less than the 600 s the call would wait: the 1 s grace period cut it.
            returncode = await anyio.to_thread.run_sync(functools.partial(deployment.process.wait, 60))
            group.cancel_scope.cancel()
        with contextlib.suppress(Exception):  # the server went away under the open session
            await session.aclose()

    assert returncode == 0
    assert "timeout graceful shutdown exceeded" in (tmp_path / "server.log").read_text()
