"""The REST API (``POST /secrets/set``, ``GET /secrets``, ``GET /openapi.json``) over a real server."""

from __future__ import annotations

import gzip
import json
import os
import re
import secrets as _random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx2
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SchemaValidator
from mcp_secrets.crypto import SecretEncryptor, parse_master_key
from mcp_secrets.rest import MAX_BODY_BYTES
from mcp_secrets.secrets import MAX_VALUE_BYTES
from mcp_secrets.store.sqlite import SQLiteStore

from .conftest import POLL_INTERVAL, STARTUP_POLLS, Deployment, create_token, legacy_sse_messages_path


class Rest:
    """The REST API of one deployment, as one user (or as the holder of a given token, or of none)."""

    def __init__(self, deployment: Any, http: httpx2.Client, token: str | None) -> None:
        self.deployment = deployment
        self.http = http
        self.headers = {} if token is None else {"Authorization": f"Bearer {token}"}

    def set(self, **body: Any) -> httpx2.Response:
        return self.http.post(f"{self.deployment.base_url}/secrets/set", headers=self.headers, json=body)

    def post_raw(self, content: bytes) -> httpx2.Response:
        headers = {**self.headers, "Content-Type": "application/json"}
        return self.http.post(f"{self.deployment.base_url}/secrets/set", headers=headers, content=content)

    def list(self, server: str | None = None, cursor: str | None = None) -> httpx2.Response:
        params = {} if server is None else {"server": server}
        if cursor is not None:
            params["cursor"] = cursor
        return self.http.get(f"{self.deployment.base_url}/secrets", headers=self.headers, params=params)

    def keys(self, server: str | None = None) -> list[tuple[str, str]]:
        listed = self.list(server)
        assert listed.status_code == 200, listed.text
        return [(entry["server"], entry["key"]) for entry in listed.json()["keys"]]


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=30) as client:
        yield client


@pytest.fixture
def alice(streamable_http_deployment, http: httpx2.Client) -> Rest:
    return Rest(streamable_http_deployment, http, streamable_http_deployment.token("alice"))


@pytest.fixture
def bob(streamable_http_deployment, http: httpx2.Client) -> Rest:
    return Rest(streamable_http_deployment, http, streamable_http_deployment.token("bob"))


@pytest.fixture
def server() -> str:
    """An MCP server name no other test uses, since a module's tests share each deployment's store."""
    return f"server-{_random.token_hex(4)}"


# --- save, update, delete, list -------------------------------------------------------------------


def test_save_update_and_delete_answer_with_the_right_status(http_deployment, http, server: str) -> None:
    rest = Rest(http_deployment, http, http_deployment.token("alice"))

    answers = [
        rest.set(server=server, key="TOKEN", value="one"),
        rest.set(server=server, key="TOKEN", value="two", action="save"),
        rest.set(server=server, key="TOKEN", value="three", action="update"),
        rest.set(server=server, key="OTHER", value="four", action="update"),
        rest.set(server=server, key="TOKEN", action="delete"),
    ]

    assert [answer.status_code for answer in answers] == [200] * 5
    assert [answer.json() for answer in answers] == [
        {"server": server, "key": "TOKEN", "status": status} for status in ("created", "updated", "updated")
    ] + [
        {"server": server, "key": "OTHER", "status": "created"},
        {"server": server, "key": "TOKEN", "status": "deleted"},
    ]
    assert rest.keys(server) == [(server, "OTHER")]


README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("bash")), reason="needs curl and bash")
def test_the_readme_curl_examples_work_and_keep_the_token_and_value_out_of_curls_arguments(
    alice: Rest, server: str, canary: str, tmp_path: Path
) -> None:
    """A process's arguments are readable by every user of the machine (`ps`): the README says so of
    mcp-remote's token, and its own REST examples must not teach putting a token or a value there."""
    section = README.read_text(encoding="utf-8").split("\n## REST API\n", 1)[1]
    script = section.split("```sh\n", 1)[1].split("```", 1)[0]
    script = script.replace("http://127.0.0.1:8000", alice.deployment.base_url)
    script = script.replace('"value": "…"', f'"value": "{canary}"').replace("github", server)
    real_curl = shutil.which("curl")
    shim = tmp_path / "bin" / "curl"
    shim.parent.mkdir()
    # Records every argument curl gets, then runs the real one.
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{tmp_path}/argv"\nexec "{real_curl}" "$@"\n')
    shim.chmod(0o700)
    token = alice.headers["Authorization"].removeprefix("Bearer ")
    env = {"PATH": f"{shim.parent}:{os.environ['PATH']}", "TOKEN": token}

    done = subprocess.run(
        [str(shutil.which("bash")), "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    # What the README quotes each example answering, its `…` standing for a time.
    quoted = [line[2:].split("  ")[0] for line in script.splitlines() if line.startswith("# {")]
    answers = "".join('[^"]+'.join(map(re.escape, answer.split("…"))) for answer in quoted)
    assert len(quoted) == 2
    assert re.fullmatch(answers, done.stdout)
    assert f'{{"server":"{server}","key":"TOKEN","status":"created"}}' in done.stdout
    assert f'"username":"alice","keys":[{{"server":"{server}","key":"TOKEN",' in done.stdout
    arguments = (tmp_path / "argv").read_text()
    assert arguments.count(alice.deployment.base_url) == 2  # both examples ran through the shim
    token_shown = token in arguments  # bare bools: a failure prints neither the token nor the value
    value_shown = canary in arguments + done.stdout + done.stderr
    assert not token_shown, "the token was one of curl's arguments"
    assert not value_shown, "the value was one of curl's arguments, or in its output"


def test_list_with_a_server_shows_only_that_servers_keys(alice: Rest, server: str) -> None:
    other = server + "-other"
    for name, key in [(server, "B"), (server, "A"), (other, "C")]:
        assert alice.set(server=name, key=key, value="v").status_code == 200

    one_server = alice.list(server)
    every_server = alice.list()

    assert one_server.status_code == 200
    assert one_server.json()["username"] == "alice"
    assert [(entry["server"], entry["key"]) for entry in one_server.json()["keys"]] == [
        (server, "A"),
        (server, "B"),
    ]
    listed_everywhere = [(entry["server"], entry["key"]) for entry in every_server.json()["keys"]]
    assert [pair for pair in listed_everywhere if pair[0] in (server, other)] == [
        (server, "A"),
        (server, "B"),
        (other, "C"),
    ]
    entry = one_server.json()["keys"][0]
    assert set(entry) == {"server", "key", "created_at", "updated_at"}


def test_a_listing_is_not_kept_by_a_cache_between_the_client_and_the_server(alice: Rest, server: str) -> None:
    # A caching proxy (nginx's proxy_cache) keys by URL and ignores Authorization: one user's listing
    # would be served to the next caller of the same URL, whoever that is.
    assert alice.set(server=server, key="TOKEN", value="v").status_code == 200

    listed = alice.list(server)

    assert listed.status_code == 200
    assert "no-store" in listed.headers.get("cache-control", "")


@pytest.mark.anyio
async def test_an_empty_server_lists_every_server_as_the_tools_do(
    streamable_http_deployment, alice: Rest, server: str
) -> None:
    other = server + "-other"
    for name in (server, other):
        assert alice.set(server=name, key="TOKEN", value="v").status_code == 200

    empty = alice.list("")
    async with streamable_http_deployment.connect("alice") as client:
        listed = await client.call_tool("list_secret_keys", {"server": ""})

    assert empty.status_code == 200, empty.text
    assert empty.json() == alice.list().json()
    assert listed.structured_content is not None
    by_tool = [(entry["server"], entry["key"]) for entry in listed.structured_content["keys"]]
    assert alice.keys("") == by_tool
    assert {(server, "TOKEN"), (other, "TOKEN")} <= set(by_tool)


def seed(deployment: Deployment, username: str, pairs: list[tuple[str, str]]) -> None:
    """Store ``pairs`` for ``username`` straight into the deployment's store, past the per-user limit."""
    encryptor = SecretEncryptor([parse_master_key(deployment.env["MCP_SECRETS_MASTER_KEY"])])
    store = SQLiteStore(deployment.data_dir / "secrets.db")
    now = datetime.now(timezone.utc)
    try:
        for server, key in pairs:
            value = encryptor.encrypt(_random.token_urlsafe(24), username=username, server=server, key=key)
            store.put_secret(username, server, key, value, now)
    finally:
        store.close()


def pairs_of(listing: dict[str, Any]) -> list[tuple[str, str]]:
    return [(entry["server"], entry["key"]) for entry in listing["keys"]]


@pytest.mark.anyio
async def test_a_listing_of_more_keys_than_a_page_goes_on_with_its_next_cursor_as_the_tool_does(
    streamable_http_deployment, http: httpx2.Client
) -> None:
    # 11,000 keys were one body of 1.5 MB, read in 0.36-0.48 s while every other call of the server waited.
    username = f"pager-{_random.token_hex(4)}"
    stored = [("alpha", f"KEY_{index:04d}") for index in range(1500)] + [("beta", "TOKEN")]
    seed(streamable_http_deployment, username, stored)
    rest = Rest(streamable_http_deployment, http, streamable_http_deployment.token(username))
    document = http.get(f"{streamable_http_deployment.base_url}/openapi.json").json()

    first = rest.list()
    second = rest.list(cursor=first.json().get("next_cursor", ""))
    one_server = rest.list("alpha", cursor="alpha/KEY_0999")
    async with streamable_http_deployment.connect(username) as client:
        by_tool = await client.call_tool("list_secret_keys", {})

    assert [answer.status_code for answer in (first, second, one_server)] == [200] * 3
    assert [len(answer.json()["keys"]) for answer in (first, second)] == [1000, 501]
    assert pairs_of(first.json()) + pairs_of(second.json()) == stored
    assert first.json()["next_cursor"] == "alpha/KEY_0999"
    assert "next_cursor" not in second.json()
    assert pairs_of(one_server.json()) == stored[1000:1500]
    assert "next_cursor" not in one_server.json()
    assert by_tool.structured_content is not None
    assert pairs_of(by_tool.structured_content) == pairs_of(first.json())
    assert by_tool.structured_content["next_cursor"] == first.json()["next_cursor"]
    for answer in (first, second, one_server):
        _documented(document, "/secrets", "get", answer)


def test_a_listing_within_a_page_is_the_whole_list_as_before_without_a_cursor(
    alice: Rest, server: str
) -> None:
    for key in ("A", "B"):
        assert alice.set(server=server, key=key, value="v").status_code == 200

    listed = alice.list(server)

    assert listed.status_code == 200
    assert set(listed.json()) == {"username", "keys"}
    assert pairs_of(listed.json()) == [(server, "A"), (server, "B")]


@pytest.mark.anyio
async def test_a_cursor_no_answer_handed_out_is_taken_as_where_to_go_on_from_as_the_tool_takes_it(
    streamable_http_deployment, alice: Rest, server: str
) -> None:
    # A cursor is the last server/key a page showed: one of another deployment, or typed, is a place too.
    for key in ("A", "B", "C"):
        assert alice.set(server=server, key=key, value="v").status_code == 200

    listed = alice.list(server, cursor=f"{server}/AA")
    async with streamable_http_deployment.connect("alice") as client:
        by_tool = await client.call_tool("list_secret_keys", {"server": server, "cursor": f"{server}/AA"})

    assert listed.status_code == 200, listed.text
    assert pairs_of(listed.json()) == [(server, "B"), (server, "C")]
    assert by_tool.structured_content is not None
    assert pairs_of(by_tool.structured_content) == pairs_of(listed.json())


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cursor", ["github", "github/", "/TOKEN", "a/b/c", "{canary} x/TOKEN", "github/{canary}!"]
)
async def test_a_malformed_cursor_is_400_as_the_tool_refuses_it_without_quoting_it(
    streamable_http_deployment, alice: Rest, canary: str, cursor: str
) -> None:
    cursor = cursor.replace("{canary}", canary)

    answer = alice.list(cursor=cursor)
    async with streamable_http_deployment.connect("alice") as client:
        by_tool = await client.call_tool("list_secret_keys", {"cursor": cursor})

    assert answer.status_code == 400
    assert answer.json() == {
        "error": "invalid_input",
        "message": "cursor must be the next_cursor of an earlier answer, as server/key",
    }
    assert by_tool.is_error
    assert answer.json()["message"] in str(by_tool.content)
    assert canary not in answer.text


def test_a_cursor_given_twice_in_the_query_is_400_rather_than_the_last_one_taken(alice: Rest) -> None:
    url = f"{alice.deployment.base_url}/secrets"
    answer = alice.http.get(url, headers=alice.headers, params=[("cursor", "a/B"), ("cursor", "a/C")])

    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_input", "message": "cursor given more than once"}


def test_delete_of_a_missing_key_is_404(alice: Rest, server: str) -> None:
    alice.set(server=server, key="PRESENT", value="v")

    missing_key = alice.set(server=server, key="ABSENT", action="delete")
    missing_server = alice.set(server=server + "-none", key="ABSENT", action="delete")

    assert [missing_key.status_code, missing_server.status_code] == [404, 404]
    assert missing_key.json()["error"] == "not_found"
    assert alice.keys(server) == [(server, "PRESENT")]


# --- bad input ------------------------------------------------------------------------------------

CANARY = "{canary}"
BAD_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "bad-server-name": ({"server": f"bad {CANARY}", "key": "K", "value": "v"}, "server"),
    "bad-key-name": ({"server": "s", "key": f"{CANARY}/x", "value": "v"}, "key"),
    "key-too-long": ({"server": "s", "key": "K" * 129, "value": CANARY}, "key"),
    "empty-value": ({"server": "s", "key": "K", "value": ""}, "value"),
    "oversized-value": ({"server": "s", "key": "K", "value": CANARY + "x" * MAX_VALUE_BYTES}, "value"),
    "no-value-to-save": ({"server": "s", "key": "K"}, "value"),
    "value-a-number": ({"server": "s", "key": "K", "value": 123}, "value"),
    "value-an-object": ({"server": "s", "key": "K", "value": {"$ne": CANARY}}, "value"),
    "server-a-number": ({"server": 7, "key": "K", "value": CANARY}, "server"),
    "key-a-list": ({"server": "s", "key": [CANARY], "value": "v"}, "key"),
    "missing-server": ({"key": "K", "value": CANARY}, "server"),
    "unknown-field": ({"server": "s", "key": "K", "value": "v", "owner": CANARY}, "owner"),
    "username-field": ({"server": "s", "key": "K", "value": "v", "username": "bob"}, "username"),
    "unknown-action": ({"server": "s", "key": "K", "value": CANARY, "action": "upsert"}, "action"),
}


def _with_canary(body: Any, canary: str) -> Any:
    if isinstance(body, str):
        return body.replace(CANARY, canary)
    if isinstance(body, dict):
        return {name: _with_canary(value, canary) for name, value in body.items()}
    if isinstance(body, list):
        return [_with_canary(value, canary) for value in body]
    return body


@pytest.mark.parametrize(("body", "field"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_input_is_400_naming_the_field_but_not_the_value(
    alice: Rest, canary: str, body: dict[str, Any], field: str
) -> None:
    answer = alice.set(**_with_canary(body, canary))

    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_input"
    assert field in answer.json()["message"]
    assert canary not in answer.text
    assert alice.keys("s") == []


@pytest.mark.parametrize("prefix", ["", "ghp_"], ids=["canary", "token-shaped"])
@pytest.mark.parametrize("beside", [{}, {"value": "v"}], ids=["instead-of-value", "beside-value"])
def test_a_value_sent_as_a_field_name_by_mistake_is_not_quoted_back(
    alice: Rest, canary: str, prefix: str, beside: dict[str, str]
) -> None:
    # {"<value>": ""}: a client mixing up a name and a value; a GitHub token is letters, digits and '_'.
    name = prefix + canary.replace("-", "_") if prefix else canary
    answer = alice.set(server="s", key="K", **beside, **{name: ""})

    assert answer.status_code == 400
    assert "unknown field" in answer.json()["message"]
    assert name not in answer.text
    assert name[:16] not in answer.text
    assert alice.keys("s") == []


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"server": "s", "key": "K", "value": "{canary}"', id="truncated-json"),
        pytest.param(b"{canary}", id="not-json"),
        pytest.param(b'["s", "K", "{canary}"]', id="json-array"),
        pytest.param(b"", id="empty-body"),
        pytest.param(b'{"server": "s", "key": "K", "value": "\xff{canary}"}', id="not-utf-8"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(alice: Rest, canary: str, content: bytes) -> None:
    answer = alice.post_raw(content.replace(b"{canary}", canary.encode()))

    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_input"
    assert canary not in answer.text


@pytest.mark.parametrize("content", [b'{"server": "s", "key": "K", "value": "{canary}"', b"{canary}", b""])
def test_a_body_that_is_not_json_is_told_so(alice: Rest, canary: str, content: bytes) -> None:
    answer = alice.post_raw(content.replace(b"{canary}", canary.encode()))

    assert answer.status_code == 400
    assert answer.json()["message"] == "the body is not valid JSON"
    assert canary not in answer.text


@pytest.mark.parametrize(
    ("content", "field"),
    [
        pytest.param('{"server": "s", "key": "K", "value": "v", "value": "{canary}"}', "value", id="value"),
        pytest.param(
            '{"server": "{server}", "server": "s", "key": "K", "value": "{canary}"}', "server", id="server"
        ),
        pytest.param(
            '{"server": "s", "key": "K", "value": "{canary}", "action": "delete", "action": "save"}',
            "action",
            id="action",
        ),
    ],
)
def test_a_field_given_twice_is_400_rather_than_the_last_one_taken(
    alice: Rest, canary: str, server: str, content: str, field: str
) -> None:
    # A proxy or client library that reads the first of two may check or log another body than is stored.
    answer = alice.post_raw(content.replace("{canary}", canary).replace("{server}", server).encode())

    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_input", "message": f"fields given more than once: {field}"}
    assert alice.keys("s") == []
    assert alice.keys(server) == []
    assert canary not in answer.text
    assert canary not in alice.deployment.log()


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=utf-16",
        "application/jsonx",
        None,
    ],
)
def test_a_body_not_declared_as_utf_8_json_is_415(
    alice: Rest, canary: str, server: str, content_type: str | None
) -> None:
    # A browser sends text/plain and forms across origins without asking first; the API reads JSON only.
    body = json.dumps({"server": server, "key": "K", "value": canary}).encode()
    headers = {**alice.headers, **({} if content_type is None else {"Content-Type": content_type})}
    answer = alice.http.post(f"{alice.deployment.base_url}/secrets/set", headers=headers, content=body)

    assert answer.status_code == 415
    assert answer.json()["error"] == "unsupported_media_type"
    assert "application/json" in answer.json()["message"]
    assert alice.keys(server) == []
    assert canary not in answer.text


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip-body", "plain-body"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate, gzip", "br"])
def test_a_body_declared_as_compressed_is_415_rather_than_read_as_it_came(
    alice: Rest, canary: str, server: str, encoding: str, compressed: bool
) -> None:
    # The API does not decompress: read as sent, a gzip body is "not JSON", and a plain one declared as gzip
    # would be stored as a proxy that decompresses it could never have read it.
    body = json.dumps({"server": server, "key": "K", "value": canary}).encode()
    headers = {**alice.headers, "Content-Type": "application/json", "Content-Encoding": encoding}
    content = gzip.compress(body) if compressed else body
    answer = alice.http.post(f"{alice.deployment.base_url}/secrets/set", headers=headers, content=content)

    assert answer.status_code == 415
    assert answer.json()["error"] == "unsupported_media_type"
    assert "Content-Encoding" in answer.json()["message"]
    assert alice.keys(server) == []
    assert canary not in answer.text


def test_a_body_declared_as_identity_encoded_is_taken(alice: Rest, server: str) -> None:
    body = json.dumps({"server": server, "key": "K", "value": "v"}).encode()
    headers = {**alice.headers, "Content-Type": "application/json", "Content-Encoding": "identity"}
    answer = alice.http.post(f"{alice.deployment.base_url}/secrets/set", headers=headers, content=body)

    assert answer.status_code == 200, answer.text
    assert alice.keys(server) == [(server, "K")]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; charset=UTF-8", 'application/json;charset="utf-8"'],
)
def test_json_is_taken_in_any_spelling_of_its_media_type(alice: Rest, server: str, content_type: str) -> None:
    body = json.dumps({"server": server, "key": "K", "value": "v"}).encode()
    headers = {**alice.headers, "Content-Type": content_type}
    answer = alice.http.post(f"{alice.deployment.base_url}/secrets/set", headers=headers, content=body)

    assert answer.status_code == 200, answer.text
    assert alice.keys(server) == [(server, "K")]


@pytest.mark.parametrize("char", ["\x01", '"', "😀"], ids=["control", "quote", "astral"])
def test_a_value_at_the_limit_is_taken_however_json_escapes_it(
    alice: Rest, canary: str, server: str, char: str
) -> None:
    # A JSON encoder may write each byte of a value as six (\u0001): the body limit leaves room for that.
    value = canary + char * ((MAX_VALUE_BYTES - len(canary)) // len(char.encode("utf-8")))
    answer = alice.set(server=server, key="K", value=value)  # escaped as json.dumps does, ASCII only

    assert answer.status_code == 200, answer.text
    assert alice.keys(server) == [(server, "K")]
    assert canary not in answer.text


def test_an_oversized_body_is_refused(alice: Rest, canary: str) -> None:
    answer = alice.set(server="s", key="K", value=canary + "x" * MAX_BODY_BYTES)

    assert answer.status_code == 413
    assert canary not in answer.text


GONE_LINE = "a client went away before its request body was read"


@pytest.mark.parametrize(
    ("transport", "path"),
    [
        ("streamable_http_deployment", "/secrets/set"),
        ("streamable_http_deployment", "/secrets/entry/not-a-link"),
        ("streamable_http_deployment", "/mcp"),
        ("stateless_deployment", "/mcp"),
        ("sse_deployment", "/messages/"),
    ],
)
def test_a_client_that_goes_away_mid_body_leaves_one_line_in_the_log_not_a_traceback(
    request: pytest.FixtureRequest, transport: str, path: str, canary: str
) -> None:
    # Anyone can send half a body and hang up: that must not fill the log with errors. The SDK reads
    # the MCP endpoints' bodies itself, and logs such a request on /mcp as an error of its own.
    deployment: Deployment = request.getfixturevalue(transport)
    log = deployment.log_path
    assert deployment.base_url is not None
    start = log.stat().st_size
    host, port = str(urlsplit(deployment.base_url).hostname), int(urlsplit(deployment.base_url).port or 80)
    arguments = {"server": "s", "key": "K", "value": canary}
    if path.startswith("/secrets/"):
        body = json.dumps(arguments).encode()
    else:
        call = {"name": "set_secret", "arguments": arguments}
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}).encode()
    with ExitStack() as held:  # a legacy SSE stream stays open until the line is read
        if path == "/messages/":
            path = legacy_sse_messages_path(deployment.token("alice"), host, port, held)
        with socket.create_connection((host, port), timeout=30) as half:
            half.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {deployment.token('alice')}\r\n"
                "Accept: application/json, text/event-stream\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body) * 2}\r\n\r\n".encode()
                + body
            )

        written = ""
        for _ in range(STARTUP_POLLS):  # a bound on the wait for the line, never a time asserted
            written = log.read_bytes()[start:].decode("utf-8", "replace")
            if GONE_LINE in written:
                break
            time.sleep(POLL_INTERVAL)
    assert GONE_LINE in written
    assert "Traceback" not in written
    assert "ERROR" not in written
    assert "Exception in ASGI application" not in written
    assert canary not in written


def test_list_of_a_bad_server_name_is_400(alice: Rest, canary: str) -> None:
    answer = alice.list(f"bad {canary}")

    assert answer.status_code == 400
    assert "server" in answer.json()["message"]
    assert canary not in answer.text


def test_a_server_given_twice_in_the_query_is_400_rather_than_the_last_one_listed(
    alice: Rest, server: str
) -> None:
    # As with a body's field: a proxy reading the first of two would log or check another listing.
    assert alice.set(server=server, key="K", value="v").status_code == 200
    url = f"{alice.deployment.base_url}/secrets"
    answer = alice.http.get(url, headers=alice.headers, params=[("server", "other"), ("server", server)])

    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_input", "message": "server given more than once"}


@pytest.mark.parametrize("name", ["sever", "Server", "servers"])
def test_a_misspelt_query_parameter_is_400_rather_than_a_listing_of_every_server(
    alice: Rest, server: str, name: str
) -> None:
    # As with a body's unknown field: ?sever=github would otherwise list every server's keys.
    assert alice.set(server=server, key="K", value="v").status_code == 200
    url = f"{alice.deployment.base_url}/secrets"
    answer = alice.http.get(url, headers=alice.headers, params={name: server})

    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_input", "message": f"unknown query parameters: {name}"}


def test_a_value_sent_as_a_query_parameter_name_is_not_quoted_back(alice: Rest, canary: str) -> None:
    url = f"{alice.deployment.base_url}/secrets"
    answer = alice.http.get(url, headers=alice.headers, params={canary: ""})

    assert answer.status_code == 400
    assert "unknown query parameter" in answer.json()["message"]
    assert canary not in answer.text


# --- who may do what ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="no-token"),
        pytest.param("garbage", id="garbage"),
        pytest.param("mcps_0123456789_" + "A" * 43, id="well-formed-but-unknown"),
    ],
)
@pytest.mark.parametrize("call", ["set", "list"])
def test_a_request_without_a_known_token_is_401_with_www_authenticate(
    streamable_http_deployment, http, server: str, token: str | None, call: str
) -> None:
    rest = Rest(streamable_http_deployment, http, token)

    answer = rest.set(server=server, key="K", value="v") if call == "set" else rest.list()

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert (
        Rest(streamable_http_deployment, http, streamable_http_deployment.token("alice")).keys(server) == []
    )


def test_bob_cannot_list_or_delete_alices_secrets(alice: Rest, bob: Rest, server: str) -> None:
    alice.set(server=server, key="TOKEN", value="alices")

    listed_by_bob = bob.list(server)
    deleted_by_bob = bob.set(server=server, key="TOKEN", action="delete")

    assert listed_by_bob.status_code == 200
    assert listed_by_bob.json() == {"username": "bob", "keys": []}
    assert deleted_by_bob.status_code == 404
    assert "alice" not in deleted_by_bob.text
    assert alice.keys(server) == [(server, "TOKEN")]


def test_each_user_writes_only_their_own_secrets(alice: Rest, bob: Rest, server: str) -> None:
    bob.set(server=server, key="TOKEN", value="bobs")

    assert alice.keys(server) == []
    assert bob.keys(server) == [(server, "TOKEN")]


# Headers a proxy or a client might use to name a user: the verified token alone says who calls.
USER_HEADERS = (
    "X-User",
    "X-Username",
    "X-Forwarded-User",
    "X-Remote-User",
    "Remote-User",
    "X-Auth-Request-User",
)


TWO_HOLDERS = [("alice", "bob"), ("bob", "alice"), ("alice", "garbage"), ("garbage", "alice")]


@pytest.mark.parametrize("order", TWO_HOLDERS, ids="-then-".join)
@pytest.mark.parametrize("call", ["set", "list"])
def test_two_authorization_headers_are_refused_rather_than_one_of_them_taken(
    alice: Rest, bob: Rest, server: str, order: tuple[str, str], call: str
) -> None:
    # A proxy that checks or logs the other header than the server reads would answer for another user.
    header = {"alice": alice.headers, "bob": bob.headers, "garbage": {"Authorization": "Bearer garbage"}}
    both = [("Authorization", header[name]["Authorization"]) for name in order]
    document = alice.http.get(f"{alice.deployment.base_url}/openapi.json").json()
    url = alice.deployment.base_url

    if call == "set":
        body = {"server": server, "key": "K", "value": _random.token_urlsafe(24)}
        answer = alice.http.post(f"{url}/secrets/set", headers=both, json=body)
    else:
        answer = alice.http.get(f"{url}/secrets", headers=both, params={"server": server})

    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"
    assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_request"')
    _documented(document, *(("/secrets/set", "post") if call == "set" else ("/secrets", "get")), answer)
    assert alice.keys(server) == []
    assert bob.keys(server) == []


def test_a_header_naming_another_user_changes_nothing(alice: Rest, bob: Rest, server: str) -> None:
    bob.set(server=server, key="TOKEN", value="bobs")
    as_bob = dict.fromkeys(USER_HEADERS, "bob")
    alice.headers.update(as_bob)

    listed = alice.list(server)
    deleted = alice.set(server=server, key="TOKEN", action="delete")
    stored = alice.set(server=server, key="ALICES", value="alices")

    assert listed.json() == {"username": "alice", "keys": []}
    assert deleted.status_code == 404
    assert stored.status_code == 200
    assert bob.keys(server) == [(server, "TOKEN")]
    assert alice.keys(server) == [(server, "ALICES")]


def test_a_foreign_origin_is_refused_even_with_a_valid_token(alice: Rest, server: str) -> None:
    alice.headers["Origin"] = "http://evil.example"

    answer = alice.set(server=server, key="TOKEN", value="v")

    assert answer.status_code == 403
    del alice.headers["Origin"]
    assert alice.keys(server) == []


def test_no_answer_and_no_log_line_ever_holds_a_value(alice: Rest, server: str, canary: str) -> None:
    answers = [
        alice.set(server=server, key="TOKEN", value=canary),
        alice.set(server=server, key="TOKEN", value=canary, action="update"),
        alice.set(server=server, key="BAD KEY", value=canary),
        alice.set(server=server, key="TOKEN", value=[canary]),
        alice.list(server),
        alice.list(),
        alice.set(server=server, key="TOKEN", action="delete"),
    ]

    assert [answer.status_code for answer in answers] == [200, 200, 400, 400, 200, 200, 200]
    assert all(canary not in answer.text for answer in answers)
    log = alice.deployment.log()
    assert "POST /secrets/set" in log, "the access log must show the requests for this check to mean anything"
    assert canary not in log


@pytest.mark.parametrize("path", ["/secrets/set", "/secrets/set/"])
def test_a_value_sent_in_the_query_by_mistake_is_not_logged(alice: Rest, canary: str, path: str) -> None:
    # HTTPie's `value==…` and `curl -G -d value=…` put the value in the URL, which the access log quotes.
    url = f"{alice.deployment.base_url}{path}"
    params = {"server": "s", "key": "K", "value": canary}
    answer = alice.http.post(url, headers=alice.headers, params=params, json={"server": "s", "key": "K"})

    assert canary not in answer.text
    log = alice.deployment.log()
    assert f"POST {path}?" in log, "the access log must show the request for this check to mean anything"
    assert canary not in log


LISTING_QUERIES = {
    "value-beside-server": [("server", "s"), ("value", "{canary}")],
    "value-as-a-parameter-name": [("{canary}", "")],
    "value-as-the-server": [("server", "{canary} x")],
    "value-as-a-server-too-long-for-a-name": [("server", "{canary}" + "x" * 128)],
    "server-twice": [("server", "s"), ("server", "{canary}!")],
    "value-as-the-cursor": [("cursor", "{canary}")],
    "value-in-a-cursor": [("server", "s"), ("cursor", "s/{canary}!")],
}


@pytest.mark.parametrize("path", ["/secrets", "/secrets/"])
@pytest.mark.parametrize("query", LISTING_QUERIES.values(), ids=LISTING_QUERIES.keys())
def test_a_value_sent_in_a_listings_query_by_mistake_is_not_logged(
    alice: Rest, canary: str, path: str, query: list[tuple[str, str]]
) -> None:
    # The answer names no parameter that could be a value (see above); the access log quotes the URL.
    params = [(name.replace("{canary}", canary), value.replace("{canary}", canary)) for name, value in query]
    answer = alice.http.get(f"{alice.deployment.base_url}{path}", headers=alice.headers, params=params)

    assert answer.status_code in {400, 404}
    log = alice.deployment.log()
    assert f"GET {path}?" in log, "the access log must show the request for this check to mean anything"
    assert canary not in log


def test_a_listings_cursor_is_left_out_of_the_access_log_as_any_query_but_a_server_alone(
    alice: Rest, server: str, canary: str
) -> None:
    # Taken, as any server/key is: a client that sent a value of name characters there sent it by mistake.
    withheld = alice.deployment.log().count("GET /secrets?… ")

    answer = alice.list(server, cursor=f"{server}/{canary}")

    assert answer.status_code == 200, answer.text
    log = alice.deployment.log()
    assert log.count("GET /secrets?… ") == withheld + 1
    assert canary not in log


def test_a_listings_server_stays_in_the_access_log(alice: Rest, server: str) -> None:
    assert alice.list(server).status_code == 200

    assert f"GET /secrets?server={server} " in alice.deployment.log()


@pytest.mark.parametrize("path", ["/secrets/set/", "/secrets/"])
def test_a_trailing_slash_behind_a_proxy_is_not_redirected_off_the_public_url(
    start_server, env: dict[str, str], tmp_path: Path, canary: str, path: str
) -> None:
    # A redirect is built from what the server sees (plain http, no path prefix), not the public URL;
    # a 307 has the client send its body again, a value included, there: in the clear, past the proxy.
    env["MCP_SECRETS_PUBLIC_URL"] = "https://secrets.example.com/team-a"
    token = create_token(env, "alice")
    headers = {"Authorization": f"Bearer {token}", "Host": "secrets.example.com"}
    body = {"server": "s", "key": "K", "value": canary}
    with (
        start_server(env, "streamable-http", tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        answer = http.post(f"{deployment.base_url}{path}", headers=headers, json=body)

    assert answer.status_code == 404
    assert "location" not in answer.headers
    assert canary not in answer.text


# --- OpenAPI --------------------------------------------------------------------------------------


def test_openapi_document_is_open_json_naming_both_paths(streamable_http_deployment, http) -> None:
    answer = http.get(f"{streamable_http_deployment.base_url}/openapi.json")

    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    document = json.loads(answer.text)
    assert document["openapi"].startswith("3.")
    assert {"title", "version"} <= set(document["info"])
    assert set(document["paths"]) == {"/secrets/set", "/secrets"}
    assert set(document["paths"]["/secrets/set"]) == {"post"}
    assert set(document["paths"]["/secrets"]) == {"get"}
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    request_schema = document["components"]["schemas"]["SetSecretRequest"]
    assert set(request_schema["properties"]) == {"server", "key", "value", "action"}
    assert set(request_schema["required"]) == {"server", "key"}
    assert request_schema["additionalProperties"] is False
    for path in document["paths"].values():
        for operation in path.values():
            assert {"200", "400", "401"} <= set(operation["responses"])


def test_openapi_documents_every_error_status_the_api_answers(streamable_http_deployment, http) -> None:
    paths = http.get(f"{streamable_http_deployment.base_url}/openapi.json").json()["paths"]

    # 413: a body over the limit (test_an_oversized_body_is_refused); 503: the store is unavailable.
    assert {"400", "401", "404", "413", "503"} <= set(paths["/secrets/set"]["post"]["responses"])
    assert {"400", "401", "503"} <= set(paths["/secrets"]["get"]["responses"])


def test_the_503s_a_client_gets_while_the_store_is_unavailable_are_as_the_openapi_document_says(
    start_server, env: dict[str, str], tmp_path: Path, canary: str
) -> None:
    token = create_token(env, "alice")
    bearer = {"Authorization": f"Bearer {token}"}
    with (
        start_server(env, "streamable-http", tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        document = http.get(f"{deployment.base_url}/openapi.json").json()
        for path in Path(env["MCP_SECRETS_DATA_DIR"]).glob("secrets.db*"):
            path.unlink()  # the store gone while serving: the token can no longer be checked
        answers = {
            ("/secrets", "get"): http.get(f"{deployment.base_url}/secrets", headers=bearer),
            ("/secrets/set", "post"): http.post(
                f"{deployment.base_url}/secrets/set",
                headers=bearer,
                json={"server": "s", "key": "K", "value": canary},
            ),
        }

    for (path, method), answer in answers.items():
        assert answer.status_code == 503, answer.text
        documented = document["paths"][path][method]["responses"]["503"]["content"]["application/json"]
        # The document's own references resolve against its root.
        jsonschema.validate(answer.json(), {**documented["schema"], "components": document["components"]})
        assert canary not in answer.text


def test_behind_a_public_url_with_a_path_the_openapi_document_points_clients_under_it(
    start_server, env: dict[str, str], tmp_path: Path
) -> None:
    public = "https://secrets.example.com/team-a"
    env["MCP_SECRETS_PUBLIC_URL"] = public
    # The proxy in front takes /team-a off and forwards the request with the public Host.
    with (
        start_server(env, "streamable-http", tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        answer = http.get(f"{deployment.base_url}/openapi.json", headers={"Host": "secrets.example.com"})
    document = answer.json()

    # As OpenAPI resolves a path: under the first server's URL, itself relative to the document's, "/"
    # when none is given.
    server_url = urljoin(f"{public}/openapi.json", document.get("servers", [{"url": "/"}])[0]["url"])
    assert server_url.rstrip("/") + "/secrets/set" == f"{public}/secrets/set"


def test_openapi_references_all_resolve(streamable_http_deployment, http) -> None:
    document = http.get(f"{streamable_http_deployment.base_url}/openapi.json").json()

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for name, value in node.items():
                if name == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = list(refs(document))
    assert found
    for ref in found:
        assert ref.startswith("#/")
        target: Any = document
        for part in ref[2:].split("/"):
            assert part in target, ref
            target = target[part]


def _documented(document: dict[str, Any], path: str, method: str, answer: httpx2.Response) -> None:
    """Assert that the document gives ``answer`` for the operation: status, content type, body, headers."""
    responses = document["paths"][path][method]["responses"]
    assert str(answer.status_code) in responses, f"{method} {path}: {answer.status_code} is not documented"
    response = responses[str(answer.status_code)]
    for name, header in response.get("headers", {}).items():
        assert not header.get("required") or name in answer.headers, f"{method} {path}: no {name} header"
    media_type = answer.headers.get("content-type", "").partition(";")[0].strip()
    content = response.get("content", {})
    assert media_type in content, f"{method} {path}: {answer.status_code} as {media_type} is not documented"
    body = answer.json() if media_type == "application/json" else answer.text
    # The document's own references resolve against its root.
    schema = {**content[media_type]["schema"], "components": document["components"]}
    SchemaValidator(schema).validate(body)


def test_every_answer_of_the_api_is_documented_with_its_status_content_type_and_body(
    alice: Rest, server: str, canary: str
) -> None:
    document = alice.http.get(f"{alice.deployment.base_url}/openapi.json").json()
    anonymous = Rest(alice.deployment, alice.http, None)
    unknown = Rest(alice.deployment, alice.http, "mcps_0123456789_" + "A" * 43)
    url = f"{alice.deployment.base_url}/secrets/set"
    posts = [
        alice.set(server=server, key="K", value=canary),
        alice.set(server=server, key="K", value=canary, action="update"),
        alice.set(server=server, key="K", action="delete"),
        alice.set(server=server, key="K", action="delete"),  # 404
        alice.set(server=f"bad {canary}", key="K", value=canary),
        alice.post_raw(canary.encode()),
        alice.set(server=server, key="K", value=canary + "x" * MAX_BODY_BYTES),
        alice.http.post(url, headers={**alice.headers, "Content-Type": "text/plain"}, content=b"{}"),
        anonymous.set(server=server, key="K", value=canary),
        unknown.set(server=server, key="K", value=canary),
    ]
    lists = [
        alice.list(),
        alice.list(server),
        alice.list(f"bad {canary}"),
        alice.http.get(f"{alice.deployment.base_url}/secrets", headers=alice.headers, params={"sever": "s"}),
        anonymous.list(),
        unknown.list(),
    ]

    assert {answer.status_code for answer in posts} == {200, 400, 401, 404, 413, 415}
    assert {answer.status_code for answer in lists} == {200, 400, 401}
    for answer in posts:
        _documented(document, "/secrets/set", "post", answer)
    for answer in lists:
        _documented(document, "/secrets", "get", answer)
    assert all(canary not in answer.text for answer in posts + lists)


# Names as the server takes them, near misses, and text of any kind; values of each JSON type.
_NAMES = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.\-]{1,128}", fullmatch=True),
    st.sampled_from(["", " ", "a b", "a/b", "a\n", "é", "A" * 128, "A" * 129, "$ne", "..", "null"]),
    st.text(max_size=20),
)
_VALUES = st.one_of(st.text(max_size=50), st.none(), st.integers(), st.lists(st.text(max_size=5), max_size=2))
_MISSING = object()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "server": st.one_of(_NAMES, _VALUES),
            "key": _NAMES,
            "value": _VALUES,
            "action": st.sampled_from(["save", "update", "delete", "upsert", "", None]),
            "owner": _NAMES,
        },
    )
)
def test_a_body_the_openapi_document_allows_is_taken_and_any_other_refused(
    streamable_http_deployment, http, body: dict[str, Any]
) -> None:
    # A client generated from the document refuses before sending what the server would refuse, and sends
    # everything it would take: the document states the server's own rules, limits included.
    # A user of its own: the names drawn ("s") are those other tests of the module expect alice not to have.
    rest = Rest(streamable_http_deployment, http, streamable_http_deployment.token("carol"))
    document = http.get(f"{rest.deployment.base_url}/openapi.json").json()
    schema = {"$ref": "#/components/schemas/SetSecretRequest", "components": document["components"]}
    allowed = SchemaValidator(schema).is_valid(body)

    answer = rest.set(**body)
    if answer.status_code == 200 and body.get("action") != "delete":  # within carol's 1000 secrets
        assert rest.set(server=body["server"], key=body["key"], action="delete").status_code == 200

    # 404: a delete, valid, of a secret carol does not have.
    assert answer.status_code in ((200, 404) if allowed else (400,)), (body, answer.text)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(server=_NAMES)
def test_a_server_the_openapi_document_allows_in_a_listing_is_taken_and_any_other_refused(
    streamable_http_deployment, http, server: str
) -> None:
    rest = Rest(streamable_http_deployment, http, streamable_http_deployment.token("carol"))
    document = http.get(f"{rest.deployment.base_url}/openapi.json").json()
    [parameter] = [
        each for each in document["paths"]["/secrets"]["get"]["parameters"] if each["name"] == "server"
    ]
    allowed = SchemaValidator(parameter["schema"]).is_valid(server)

    answer = rest.list(server)

    assert answer.status_code == (200 if allowed else 400), (server, answer.text)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cursor=st.one_of(st.tuples(_NAMES, _NAMES).map("/".join), _NAMES))
def test_a_cursor_the_openapi_document_allows_in_a_listing_is_taken_and_any_other_refused(
    streamable_http_deployment, http, cursor: str
) -> None:
    rest = Rest(streamable_http_deployment, http, streamable_http_deployment.token("carol"))
    document = http.get(f"{rest.deployment.base_url}/openapi.json").json()
    [parameter] = [
        each for each in document["paths"]["/secrets"]["get"]["parameters"] if each["name"] == "cursor"
    ]
    allowed = SchemaValidator(parameter["schema"]).is_valid(cursor)

    answer = rest.list(cursor=cursor)

    assert answer.status_code == (200 if allowed else 400), (cursor, answer.text)
