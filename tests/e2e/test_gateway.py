"""The gateway through real MCP clients: downstream tools called with each caller's own secrets.

Most tests run against both fixture downstreams (tests/fixtures/downstream_server.py):
a stdio process the gateway starts per user with the secret in its environment, and
one Streamable HTTP server that reads the secret from each connection's
Authorization header. The last ones run the real ``mcp-secrets serve --servers``
over Streamable HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import secrets as _random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import anyio
import httpx2
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp import Client
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError
from mcp.shared.subscriptions import ToolsListChanged
from mcp_types import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    SERVER_INFO_META_KEY,
    URL_ELICITATION_REQUIRED,
    CallToolResult,
    CreateMessageResult,
    ElicitCompleteNotification,
    ElicitRequestFormParams,
    ElicitRequestParams,
    ElicitRequestURLParams,
    ElicitResult,
    InputRequiredResult,
    ListRootsResult,
    LoggingMessageNotificationParams,
    TextContent,
    ToolListChangedNotification,
)
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from conftest import assert_no_fragment_of, new_canary
from mcp_secrets import gateway as gateway_module
from mcp_secrets.app import build_server, missing_secrets_hint
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.gateway import Gateway, load_gateway_config
from mcp_secrets.gateway import listen as listen_module
from mcp_secrets.gateway import relay as relay_module
from mcp_secrets.gateway import stdio as gateway_stdio
from mcp_secrets.gateway.pool import Connection, DownstreamPool
from mcp_secrets.gateway.redact import REDACT_INLINE_CHARS, Redactor
from mcp_secrets.identity import LocalIdentity
from mcp_secrets.logs import CLIENT_TRANSPORT_LOGGERS, PAYLOAD_LOGGERS, URL_LOGGERS
from mcp_secrets.secrets import Secrets
from mcp_secrets.store.sqlite import SQLiteStore

from .conftest import (
    CLI_TIMEOUT,
    HTTP_TRANSPORTS,
    INITIALIZE,
    MCP_SECRETS,
    Deployment,
    create_token,
    free_port,
    isolated_env,
    legacy_sse_stream,
    run_cli,
    serving,
    stdout_path,
)
from .test_hardening import as_an_ordinary_process

pytestmark = pytest.mark.anyio

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "downstream_server.py"
SILENT_FIXTURE = FIXTURE.with_name("silent_server.py")
DOWNSTREAM_TOOLS = {
    "token_hash",
    "echo_token",
    "echo_token_in_chunks",
    "echo_token_in_form",
    "echo_token_split",
    "echo_token_as_number",
    "seen_digests",
    "environ_digests",
    "fail_with_token",
    "refuse_with_token",
    "ping",
    "crash",
    "work",
    "hang",
    "sign_in_first",
    "ask",
    "open_page",
    "ask_client",
}
STDIO_ENTRY: dict[str, Any] = {
    "command": sys.executable,
    "args": [str(FIXTURE)],
    "env": {"DOWNSTREAM_TOKEN": "${secret:TOKEN}"},
}
CONCURRENT_CALLS = 5
# Generous bounds on waits for something to happen, never assertions about how long it took.
STARTUP_SECONDS = 20.0
CLOSE_SECONDS = 10.0
AUDIT_SECONDS = 30.0
SILENT_START_SECONDS = 2.0  # how long the gateway waits for a downstream that never answers


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def fresh_value(label: str) -> str:
    return f"{label}-{_random.token_hex(12)}"


def spellings(value: str) -> dict[str, str]:
    """How a downstream tool may hand a value back: the forms the gateway must take out."""
    raw = value.encode()
    return {
        "plain": value,
        "base64": base64.b64encode(raw).decode(),
        "base64 unpadded": base64.b64encode(raw).decode().rstrip("="),
        "base64url": base64.urlsafe_b64encode(raw).decode(),
        "base64url unpadded": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "quote": quote(value),
        "quote_plus": quote_plus(value),
        "hex": raw.hex(),
    }


def assert_no_spelling_of(value: str, shown: str) -> None:
    for name, spelled in spellings(value).items():
        leaked = spelled in shown  # a bare bool: a failure prints neither the value nor where it was
        assert not leaked, f"the {name} form of the value got through"


def everything_in(result: CallToolResult) -> str:
    """All a client can read in a result: text, structured content, error flag and meta."""
    return json.dumps(result.model_dump(mode="json"))


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


def hash_of(result: CallToolResult) -> str:
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return str(result.structured_content["result"])


# --- the two fixture downstreams ------------------------------------------------------------------


class HttpDownstream:
    """The fixture downstream over Streamable HTTP on a free port, started again after ``crash``."""

    def __init__(self, log_path: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.options = options
        self.env = env or {}  # options of the fixture, as DOWNSTREAM_UNLOCKS
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def ensure_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        command = [sys.executable, str(FIXTURE), "streamable-http", str(self.port), *self.options]
        with self.log_path.open("a", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, **self.env}
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the HTTP downstream exited:\n{self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        pytest.fail(f"the HTTP downstream did not listen:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def http_downstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpDownstream]:
    """One Streamable HTTP fixture downstream per module."""
    server = HttpDownstream(tmp_path_factory.mktemp("downstream") / "downstream.log")
    server.ensure_running()
    yield server
    server.stop()


@dataclass
class Downstream:
    """One way to reach the fixture downstream: its gateway entry, and the HTTP server behind it if any."""

    transport: str
    entry: dict[str, Any]
    http: HttpDownstream | None = None

    def revive(self) -> None:
        """Start the HTTP downstream again after ``crash`` killed it; stdio needs nothing."""
        if self.http is not None:
            # Its connections close while the process ends: until it has, it still looks alive.
            if self.http.process is not None:
                self.http.process.wait(timeout=CLOSE_SECONDS)
            self.http.ensure_running()


@functools.cache
def load_fixture_server() -> MCPServer[Any]:
    """The fixture downstream's own MCPServer, for an in-process client: what it lists itself."""
    spec = importlib.util.spec_from_file_location("gateway_fixture_downstream_server", FIXTURE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the SDK resolves the tools' annotations through it
    spec.loader.exec_module(module)
    server: MCPServer[Any] = module.mcp
    return server


def http_entry(http: HttpDownstream) -> dict[str, Any]:
    return {"url": http.url, "headers": {"Authorization": "Bearer ${secret:TOKEN}"}}


@pytest.fixture(params=["stdio", "streamable-http"])
def downstream(request: pytest.FixtureRequest) -> Downstream:
    """The fixture downstream over each transport in turn: stdio and Streamable HTTP."""
    if request.param == "stdio":
        return Downstream("stdio", STDIO_ENTRY)
    http: HttpDownstream = request.getfixturevalue("http_downstream")
    http.ensure_running()
    return Downstream("streamable-http", http_entry(http), http)


# --- the gateway in process -----------------------------------------------------------------------


@asynccontextmanager
async def running_gateway(
    secrets: Secrets, tmp_path: Path, servers: dict[str, Any], **pool_options: Any
) -> AsyncIterator[Gateway]:
    """A gateway over ``servers`` (written to a file and loaded as ``serve --servers`` does), running."""
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    gateway = Gateway(
        load_gateway_config(path),
        secrets,
        pool=DownstreamPool(**pool_options),
        missing_hint=missing_secrets_hint(None),
    )
    async with gateway.running():
        yield gateway


@pytest.fixture
async def gateway(sqlite_secrets: Secrets, tmp_path: Path, downstream: Downstream) -> AsyncIterator[Gateway]:
    """A running gateway whose one server, ``down``, is the fixture downstream."""
    async with running_gateway(sqlite_secrets, tmp_path, {"down": downstream.entry}) as running:
        yield running


def connect(secrets: Secrets, gateway: Gateway, username: str, **client_options: Any) -> Client:
    """An in-process SDK client of mcp-secrets with ``gateway``, acting for ``username``."""
    return Client(build_server(secrets, LocalIdentity(username), gateway=gateway), **client_options)


def connection_of(gateway: Gateway, username: str, server: str = "down") -> Connection:
    return gateway.pool._connections[(username, server)]


async def call(secrets: Secrets, gateway: Gateway, username: str, tool: str) -> CallToolResult:
    """One call of ``down__TOOL`` by ``username`` on a client of its own."""
    return await call_server(secrets, gateway, username, f"down__{tool}")


async def call_server(
    secrets: Secrets, gateway: Gateway, username: str, name: str, arguments: dict[str, Any] | None = None
) -> CallToolResult:
    """One call of the tool ``name`` (prefixed) by ``username`` on a client of its own."""
    async with connect(secrets, gateway, username) as client:
        return await client.call_tool(name, arguments or {})


async def wait_closed(connection: Connection) -> None:
    with anyio.fail_after(CLOSE_SECONDS):
        await connection.closed.wait()


def processes_with(marker: str) -> list[int]:
    """The ids of live processes whose command line holds ``marker`` (Linux /proc)."""
    return [int(path.parent.name) for path in Path("/proc").glob("[0-9]*/cmdline") if marker in _read(path)]


def _read(cmdline: Path) -> str:
    try:
        return cmdline.read_bytes().decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""


@pytest.fixture
def marker() -> Iterator[str]:
    """A mark for the downstream processes of one test; any left behind are killed afterwards."""
    mark = f"--test-mark={_random.token_hex(8)}"
    yield mark
    for pid in processes_with(mark):
        os.kill(pid, signal.SIGKILL)


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads processes from /proc")


@asynccontextmanager
async def watching(
    connect_client: Callable[..., AbstractAsyncContextManager[Client]], mode: str
) -> AsyncIterator[tuple[Client, MemoryObjectReceiveStream[None]]]:
    """A client of protocol ``mode`` that has listed its tools, and an item on a stream each time it is
    told they changed: on its session before 2026-07-28, on a subscriptions/listen stream from then."""
    send, changes = anyio.create_memory_object_stream[None](100)

    async def on_message(message: object) -> None:
        if mode == "legacy" and isinstance(message, ToolListChangedNotification):
            send.send_nowait(None)

    async with connect_client(mode=mode, message_handler=on_message) as client:
        await client.list_tools()
        if mode == "legacy":
            assert client.server_capabilities.tools is not None
            assert client.server_capabilities.tools.list_changed
            yield client, changes
            return
        async with client.listen(tools_list_changed=True) as subscription, anyio.create_task_group() as tasks:

            async def forward() -> None:
                async for event in subscription:
                    if isinstance(event, ToolsListChanged):
                        send.send_nowait(None)

            tasks.start_soon(forward)
            try:
                yield client, changes
            finally:
                tasks.cancel_scope.cancel()


async def told_of_a_change(changes: MemoryObjectReceiveStream[None]) -> None:
    with anyio.fail_after(STARTUP_SECONDS):
        await changes.receive()


def untold(changes: MemoryObjectReceiveStream[None]) -> int:
    """How many notices of a change are waiting on ``changes``, unread."""
    return changes.statistics().current_buffer_used


def down_tools(listed: list[Any]) -> set[str]:
    return {tool.name for tool in listed if tool.name.startswith("down__")}


# --- listing and calling --------------------------------------------------------------------------


async def test_downstream_tools_are_listed_prefixed_beside_the_secrets_tools(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    async with Client(load_fixture_server()) as direct:
        originals = {tool.name: tool for tool in (await direct.list_tools()).tools}
    async with Client(build_server(sqlite_secrets, LocalIdentity("alice"))) as without_gateway:
        secrets_tools = {tool.name for tool in (await without_gateway.list_tools()).tools}

    async with connect(sqlite_secrets, gateway, "alice") as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}

    assert set(originals) == DOWNSTREAM_TOOLS
    assert {"set_secret", "list_secret_keys"} <= secrets_tools
    assert set(listed) == secrets_tools | {f"down__{name}" for name in originals}
    for name, original in originals.items():
        offered = listed[f"down__{name}"]
        assert offered.description == f"[down] {original.description}"
        assert offered.input_schema == original.input_schema
        assert offered.output_schema == original.output_schema
    assert listed["down__work"].input_schema["properties"]["steps"]["default"] == 3


async def test_a_downstream_tool_the_clients_protocol_cannot_describe_is_left_out_of_its_listing_alone(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    arrays = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_LISTS_ARRAY_OUTPUT": "1"}}

    async with running_gateway(sqlite_secrets, tmp_path, {"down": arrays}) as gw:
        # The downstream speaks 2026-07-28, where an output schema may be an array; 2025-11-25 requires an
        # object, so a client of the initialize handshake cannot be shown that tool, only the others.
        async with connect(sqlite_secrets, gw, "alice", mode="legacy") as handshake:
            on_handshake = {tool.name for tool in (await handshake.list_tools()).tools}
        async with connect(sqlite_secrets, gw, "alice") as modern:
            on_modern = {tool.name for tool in (await modern.list_tools()).tools}

    assert "down__names" in on_modern
    assert on_handshake == on_modern - {"down__names"}
    assert {"set_secret", "down__token_hash"} <= on_handshake


async def test_a_downstream_tool_that_only_runs_as_a_task_is_left_out_of_every_listing(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    env = {**STDIO_ENTRY["env"], "DOWNSTREAM_HANDSHAKE_ONLY": "1", "DOWNSTREAM_TASK_TOOLS": "1"}

    async with running_gateway(sqlite_secrets, tmp_path, {"down": {**STDIO_ENTRY, "env": env}}) as gw:
        # The gateway relays no task (SEP-1686), and declares none: a tool the downstream runs only as one
        # fails at every call, on every protocol revision. One that may run either way is called as usual.
        for mode in ("legacy", "auto"):
            async with connect(sqlite_secrets, gw, "alice", mode=mode) as client:
                listed = {tool.name for tool in (await client.list_tools()).tools}
            assert "down__research" not in listed, mode
            assert {"down__lookup", "down__token_hash"} <= listed, mode


async def test_a_tool_listing_that_names_the_secret_shows_its_label_instead(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    value = fresh_value("alice")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)
    describing = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_DESCRIBES_TOKEN": "1"}}

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": describing}) as gw,
        connect(sqlite_secrets, gw, "alice") as client,
    ):
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}

    account = listed["down__account"]
    assert account.description == "[down] Acts for the account of token [redacted TOKEN]"
    assert account.title == "Acts for the account of token [redacted TOKEN]"
    assert value not in json.dumps([tool.model_dump(mode="json") for tool in listed.values()])


async def test_every_page_of_a_downstreams_tool_listing_is_offered(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    paged = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_PAGED": "1"}}

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": paged}) as gw,
        connect(sqlite_secrets, gw, "alice") as client,
    ):
        listed = {tool.name for tool in (await client.list_tools()).tools}

    assert {f"down__{name}" for name in DOWNSTREAM_TOOLS} <= listed


async def test_a_downstreams_listing_past_the_bound_in_all_its_pages_leaves_its_tools_out_with_a_warning(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    sqlite_secrets.set_secret("alice", "small", "TOKEN", fresh_value("alice"))
    pages = gateway_module.LISTING_CHARS // (1 << 20) + 1  # each page well within the bound of one message
    bulky = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_BULKY_PAGES": str(pages)}}
    within = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_BULKY_PAGES": "2"}}

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": bulky, "small": within}) as gw,
        connect(sqlite_secrets, gw, "alice") as client,
    ):
        listed = {tool.name for tool in (await client.list_tools()).tools}

    assert_no_spelling_of(canary, caplog.text)  # first: a failure below may print the log
    assert not any(name.startswith("down__") for name in listed)
    assert {"small__token_hash", "small__bulky1", "small__bulky2"} <= listed
    assert (
        f"tools of server down not listed for alice: listing down failed: DownstreamError: its tool listing "
        f"holds over {gateway_module.LISTING_CHARS} characters" in caplog.text
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_listing_with_a_cursor_the_gateway_never_handed_out_is_invalid_params(
    sqlite_secrets: Secrets, tmp_path: Path, mode: str
) -> None:
    # The gateway reads every page of each downstream and offers them all on one page, without a cursor.
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    paged = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_PAGED": "1"}}
    cursor = _random.token_urlsafe(16)

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": paged}) as gw,
        connect(sqlite_secrets, gw, "alice", mode=mode) as client,
    ):
        with pytest.raises(MCPError) as refused:
            await client.list_tools(cursor=cursor)
        listed = await client.list_tools()

    assert refused.value.code == INVALID_PARAMS
    assert "cursor" in refused.value.message
    assert cursor not in refused.value.message
    assert listed.next_cursor is None
    assert {f"down__{name}" for name in DOWNSTREAM_TOOLS} <= {tool.name for tool in listed.tools}


async def test_long_tool_names_are_offered_within_128_characters_unique_and_stable_and_called_by_them(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    # The fixture lists token_hash and ping under 150-character names that differ in their last one.
    server = "a-downstream-server-with-a-long-name"
    value = fresh_value("alice")
    sqlite_secrets.set_secret("alice", server, "TOKEN", value)
    long_names = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_LONG_NAMES": "1"}}
    whole = {f"{server}__{name}" for name in DOWNSTREAM_TOOLS}

    async def offered() -> list[str]:
        async with (
            running_gateway(sqlite_secrets, tmp_path, {server: long_names}) as gw,
            connect(sqlite_secrets, gw, "alice") as client,
        ):
            return [tool.name for tool in (await client.list_tools()).tools]

    first, again = await offered(), await offered()
    shortened = sorted(name for name in first if name.startswith(f"{server}__") and name not in whole)
    assert whole <= set(first)
    assert len(shortened) == 2
    assert all(len(name) <= 128 for name in first)
    assert len(set(first)) == len(first)
    assert sorted(again) == sorted(first)
    # A fresh gateway, which has listed nothing yet, routes each shortened name to its own tool.
    async with running_gateway(sqlite_secrets, tmp_path, {server: long_names}) as gw:
        answers = [await call_server(sqlite_secrets, gw, "alice", name) for name in shortened]
    assert sorted(text_of(answer) for answer in answers) == sorted([sha256(value), "pong"])


async def test_a_user_who_cannot_start_a_server_is_not_shown_the_tools_listed_for_another(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    async with connect(sqlite_secrets, gateway, "alice") as alice:
        alices = {tool.name for tool in (await alice.list_tools()).tools}

    # bob has no TOKEN: the server cannot start for him. What it listed for alice may describe
    # her account, so bob sees only the secrets tools.
    async with connect(sqlite_secrets, gateway, "bob") as bob:
        bobs = {tool.name for tool in (await bob.list_tools()).tools}

    assert {f"down__{name}" for name in DOWNSTREAM_TOOLS} <= alices
    assert not any(name.startswith("down__") for name in bobs)
    assert "list_secret_keys" in bobs


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_change_of_a_users_secrets_tells_that_users_clients_and_no_others_that_their_tools_changed(
    sqlite_secrets: Secrets, tmp_path: Path, mode: str
) -> None:
    tokens = {"alice": fresh_value("alice"), "bob": fresh_value("bob")}

    async def store(client: Client, username: str) -> None:
        arguments = {"server": "down", "key": "TOKEN", "value": tokens[username]}
        assert not (await client.call_tool("set_secret", arguments)).is_error

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": STDIO_ENTRY}) as gw,
        watching(functools.partial(connect, sqlite_secrets, gw, "alice"), mode) as (alice, alices),
        watching(functools.partial(connect, sqlite_secrets, gw, "bob"), mode) as (bob, bobs),
    ):
        before = down_tools((await alice.list_tools()).tools)
        await store(alice, "alice")  # the server's tools become alice's to see
        await told_of_a_change(alices)
        after = down_tools((await alice.list_tools()).tools)
        # bob is told of his own change only: alice's, even the news that she made one, is hers.
        await store(bob, "bob")
        await told_of_a_change(bobs)
        assert not (await alice.call_tool("delete_secret", {"server": "down", "key": "TOKEN"})).is_error
        await told_of_a_change(alices)

    assert before == set()
    assert after == {f"down__{name}" for name in DOWNSTREAM_TOOLS}
    assert (untold(alices), untold(bobs)) == (0, 0)


async def test_clients_of_one_user_that_list_again_at_once_when_told_of_a_change_all_get_the_new_tools(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    # The optional EXTRA makes the downstream list one more tool: its change changes alice's tools.
    growing = {
        **STDIO_ENTRY,
        "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_LISTS_ARRAY_OUTPUT": "${secret:EXTRA}"},
        "secrets": {"TOKEN": {}, "EXTRA": {"required": False}},
    }
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    listings: list[set[str]] = []

    async def list_again(client: Client) -> None:
        listings.append(down_tools((await client.list_tools()).tools))

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": growing}) as gw,
        watching(functools.partial(connect, sqlite_secrets, gw, "alice"), "auto") as (first, firsts),
        watching(functools.partial(connect, sqlite_secrets, gw, "alice"), "auto") as (second, seconds),
    ):
        before = down_tools((await first.list_tools()).tools)
        stored = await first.call_tool("set_secret", {"server": "down", "key": "EXTRA", "value": "1234"})
        assert not stored.is_error, text_of(stored)
        await told_of_a_change(firsts)
        await told_of_a_change(seconds)
        # Two chats of alice's, told together, list together: neither may be shown the tools of before.
        async with anyio.create_task_group() as both:
            both.start_soon(list_again, first)
            both.start_soon(list_again, second)

    assert "down__names" not in before
    assert listings == [before | {"down__names"}] * 2


# A downstream with ``unlock``, whose listing a client of 2026-07-28 may keep for an hour unless told.
UNLOCKING = {"DOWNSTREAM_UNLOCKS": "1", "DOWNSTREAM_LISTING_TTL_MS": "3600000"}


def unlocking_entry(era: str) -> dict[str, Any]:
    """The stdio fixture downstream with its ``unlock`` tool, speaking 2026-07-28 or only the handshake."""
    env = {**STDIO_ENTRY["env"], **UNLOCKING}
    if era == "handshake":
        env["DOWNSTREAM_HANDSHAKE_ONLY"] = "1"
    return {**STDIO_ENTRY, "env": env}


@pytest.mark.parametrize("era", ["2026-07-28", "handshake"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_downstream_whose_tools_changed_tells_its_users_clients_and_no_others(
    sqlite_secrets: Secrets, tmp_path: Path, mode: str, era: str
) -> None:
    # A downstream says so on a subscriptions/listen stream from 2026-07-28, on its session before.
    for username in ("alice", "bob"):
        sqlite_secrets.set_secret(username, "down", "TOKEN", fresh_value(username))

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": unlocking_entry(era)}) as gw,
        watching(functools.partial(connect, sqlite_secrets, gw, "alice"), mode) as (alice, alices),
        watching(functools.partial(connect, sqlite_secrets, gw, "bob"), mode) as (bob, bobs),
    ):
        before = down_tools((await alice.list_tools()).tools)
        unlocked = await alice.call_tool("down__unlock", {})
        assert not unlocked.is_error, text_of(unlocked)
        await told_of_a_change(alices)
        alices_after = down_tools((await alice.list_tools()).tools)
        # bob's downstream is his own process, which changed nothing: neither its tools nor the news are his.
        bobs_after = down_tools((await bob.list_tools()).tools)
        assert not (await bob.call_tool("down__unlock", {})).is_error
        await told_of_a_change(bobs)

    assert "down__unlocked" not in before
    assert alices_after == before | {"down__unlocked"}
    assert bobs_after == before
    assert (untold(alices), untold(bobs)) == (0, 0)


async def test_a_remote_downstream_whose_tools_changed_tells_its_users_clients(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    # Over Streamable HTTP on 2026-07-28, the gateway hears it on a subscriptions/listen stream.
    http = HttpDownstream(tmp_path / "downstream.log", env=UNLOCKING)
    http.ensure_running()
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    try:
        async with (
            running_gateway(sqlite_secrets, tmp_path, {"down": http_entry(http)}) as gw,
            watching(functools.partial(connect, sqlite_secrets, gw, "alice"), "auto") as (alice, alices),
        ):
            before = down_tools((await alice.list_tools()).tools)
            assert not (await alice.call_tool("down__unlock", {})).is_error
            await told_of_a_change(alices)
            after = down_tools((await alice.list_tools()).tools)
    finally:
        http.stop()

    assert after == before | {"down__unlocked"}
    assert untold(alices) == 0


def closing_listen_entry(closes: str, listens: Path) -> dict[str, Any]:
    """The unlocking downstream on 2026-07-28, closing its ``once`` first or ``always`` every listen stream at
    once, and adding a line to ``listens`` at each listen request it is sent."""
    entry = unlocking_entry("2026-07-28")
    env = {**entry["env"], "DOWNSTREAM_CLOSES_LISTEN": closes, "DOWNSTREAM_LISTEN_FILE": str(listens)}
    return {**entry, "env": env}


def listen_file(listens: Path) -> list[str]:
    """The requests the downstream noted in ``listens``, in order: ``listen`` and ``list``."""
    return listens.read_text(encoding="utf-8").splitlines() if listens.exists() else []


def listen_requests(listens: Path) -> int:
    return listen_file(listens).count("listen")


def listed_on_listening_again(listens: Path) -> bool:
    """True once the downstream listed its tools after its second listen request."""
    noted = listen_file(listens)
    listening = [index for index, request in enumerate(noted) if request == "listen"]
    return len(listening) >= 2 and "list" in noted[listening[1] :]


async def test_a_downstreams_listen_stream_that_it_closed_is_opened_again_and_its_changes_still_told(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    listens = tmp_path / "listens"

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": closing_listen_entry("once", listens)}) as gw,
        watching(functools.partial(connect, sqlite_secrets, gw, "alice"), "auto") as (alice, alices),
    ):
        before = down_tools((await alice.list_tools()).tools)
        with anyio.fail_after(STARTUP_SECONDS):
            # The downstream's own record: the gateway listened again, and listed what it offers then.
            while not listed_on_listening_again(listens):
                await anyio.sleep(0.05)
        assert not (await alice.call_tool("down__unlock", {})).is_error
        await told_of_a_change(alices)
        after = down_tools((await alice.list_tools()).tools)

    assert after == before | {"down__unlocked"}
    assert untold(alices) == 0


async def test_a_downstream_closing_every_listen_stream_at_once_is_listened_to_after_longer_and_longer_pauses(
    sqlite_secrets: Secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    listens = tmp_path / "listens"
    pauses: list[float] = []
    all_paused = anyio.Event()
    stopped = anyio.Event()
    watched = 8  # pauses until the longest, and one more

    async def pause(seconds: float) -> None:
        # The pauses are recorded, not waited out; the last one lasts until the connection closes.
        pauses.append(seconds)
        if len(pauses) < watched:
            return
        all_paused.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    monkeypatch.setattr(listen_module, "pause_before_listening_again", pause)
    async with running_gateway(
        sqlite_secrets, tmp_path, {"down": closing_listen_entry("always", listens)}
    ) as gw:
        hash_of(await call(sqlite_secrets, gw, "alice", "token_hash"))  # opens alice's connection
        with anyio.fail_after(STARTUP_SECONDS):
            await all_paused.wait()
        requests = listen_requests(listens)
        gw.pool.close_idle(("alice", "down"))
        with anyio.fail_after(CLOSE_SECONDS):
            await stopped.wait()  # closing the connection ends its listening

    # One listen request before each pause, none in between: no busy loop, whatever the downstream does.
    assert requests == watched
    first, longest = listen_module.FIRST_PAUSE_SECONDS, listen_module.LONGEST_PAUSE_SECONDS
    doubling = [min(first * 2**n, longest) for n in range(watched)]
    assert pauses == doubling
    assert pauses[-2:] == [longest, longest]


class ListenPauses:
    """Stands in for the pauses between a connection's listen streams: none is slept.

    Each connection's first pause lasts until ``reopen`` is set, and its ``last`` one until the connection
    closes; ``taken`` says how many each connection (known by its listening task) took so far.
    """

    def __init__(self, last: int) -> None:
        self.last = last
        self.reopen = anyio.Event()
        self.taken: dict[int, int] = {}
        self._paused = anyio.Event()

    async def pause(self, seconds: float) -> None:  # noqa: ARG002 - pause_before_listening_again's signature
        listener = anyio.get_current_task().id
        taken = self.taken[listener] = self.taken.get(listener, 0) + 1
        self._paused.set()
        if taken == 1:
            await self.reopen.wait()
        if taken >= self.last:
            await anyio.sleep_forever()

    async def until_each_took(self, pauses: int, connections: int) -> None:
        """Wait until ``connections`` connections each took ``pauses`` pauses: each stream before ended."""
        with anyio.fail_after(STARTUP_SECONDS):
            while sum(taken >= pauses for taken in self.taken.values()) < connections:
                self._paused = anyio.Event()
                await self._paused.wait()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_downstreams_tools_changed_while_no_listen_stream_was_open_are_told_once_one_is_opened_again(
    sqlite_secrets: Secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    for username in ("alice", "bob"):
        sqlite_secrets.set_secret(username, "down", "TOKEN", fresh_value(username))
    pauses = ListenPauses(last=2)
    monkeypatch.setattr(listen_module, "pause_before_listening_again", pauses.pause)
    entry = closing_listen_entry("always", tmp_path / "listens")

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as gw,
        watching(functools.partial(connect, sqlite_secrets, gw, "alice"), mode) as (alice, alices),
        watching(functools.partial(connect, sqlite_secrets, gw, "bob"), mode) as (bob, bobs),
    ):
        await pauses.until_each_took(1, connections=2)  # no stream open on either connection
        before = down_tools((await alice.list_tools()).tools)
        # The downstream says nothing: it would tell open streams only, and there is none.
        unlocked = await alice.call_tool("down__unlock", {"quietly": True})
        assert not unlocked.is_error, text_of(unlocked)
        pauses.reopen.set()
        await pauses.until_each_took(2, connections=2)  # each listened again, and its stream ended again
        await told_of_a_change(alices)
        alices_after = down_tools((await alice.list_tools()).tools)
        # bob's downstream is his own process, whose tools did not change: he is told only of his own change.
        sqlite_secrets.set_secret("bob", "down", "TOKEN", fresh_value("bob"))
        await told_of_a_change(bobs)
        bobs_after = down_tools((await bob.list_tools()).tools)

    assert "down__unlocked" not in before
    assert alices_after == before | {"down__unlocked"}
    assert bobs_after == before
    assert (untold(alices), untold(bobs)) == (0, 0)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_downstream_closing_its_listen_streams_without_changing_its_tools_has_no_client_told(
    sqlite_secrets: Secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # Told at every reopen, a client behind a proxy that ends idle streams would list again every minute.
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    listens = tmp_path / "listens"
    reopens = 5
    pauses = ListenPauses(last=reopens + 1)
    pauses.reopen.set()
    monkeypatch.setattr(listen_module, "pause_before_listening_again", pauses.pause)

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": closing_listen_entry("always", listens)}) as gw,
        watching(functools.partial(connect, sqlite_secrets, gw, "alice"), mode) as (alice, alices),
    ):
        await pauses.until_each_took(reopens + 1, connections=1)
        requests = listen_requests(listens)
        # A change of her own after all those reopens: the one notice she is sent.
        sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
        await told_of_a_change(alices)
        listed = down_tools((await alice.list_tools()).tools)

    assert requests == reopens + 1
    assert "down__unlock" in listed
    assert untold(alices) == 0


async def test_a_downstreams_listing_past_the_bound_at_its_listen_streams_is_logged_by_type_only(
    sqlite_secrets: Secrets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    canary: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    pauses = ListenPauses(last=2)
    pauses.reopen.set()
    monkeypatch.setattr(listen_module, "pause_before_listening_again", pauses.pause)
    entry = closing_listen_entry("always", tmp_path / "listens")
    # Its first page describes its token; the pages after it hold more than the gateway reads of a listing.
    pages = gateway_module.LISTING_CHARS // (1 << 20) + 1
    entry["env"] |= {"DOWNSTREAM_DESCRIBES_TOKEN": "1", "DOWNSTREAM_BULKY_PAGES": str(pages)}

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as gw,
        watching(functools.partial(connect, sqlite_secrets, gw, "alice"), "auto") as (_, alices),
    ):
        # A connection that stays open: a listing past the bound, as the client's was, ends the connection.
        hash_of(await gw.call_tool("alice", "down__token_hash", {}))
        await pauses.until_each_took(2, connections=1)  # listed, and failed, at two streams

    assert_no_spelling_of(canary, caplog.text)  # first: a failure below may print the log
    assert "tools of server down not listed at a listen stream: DownstreamError" in caplog.text
    assert untold(alices) == 0


async def test_the_listing_at_a_listen_stream_has_the_time_the_setting_gives_a_listing(
    sqlite_secrets: Secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # MCP_SECRETS_GATEWAY_START_SECONDS bounds a downstream's start and each listing of its tools.
    caplog.set_level(logging.INFO)
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    every_tool = gateway_module._every_tool
    # Time enough for the downstream to start on a busy machine; the wait below ends before the 60 s
    # a bound of the listing's own would have had.
    start_seconds = 10.0

    async def stuck_at_streams(client: Client, **options: Any) -> Any:
        if options.get("cache_mode") == "refresh":  # the listing at a listen stream
            await anyio.sleep_forever()
        return await every_tool(client, **options)

    monkeypatch.setattr(gateway_module, "_every_tool", stuck_at_streams)
    async with running_gateway(
        sqlite_secrets, tmp_path, {"down": unlocking_entry("2026-07-28")}, start_seconds=start_seconds
    ) as gw:
        hash_of(await gw.call_tool("alice", "down__token_hash", {}))
        with anyio.fail_after(start_seconds + 35):
            while "not listed at a listen stream: TimeoutError" not in caplog.text:
                await anyio.sleep(0.05)


async def test_the_listing_at_a_listen_stream_waits_for_the_users_call_to_end(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    # Made during the call, its answer could be written amid the call's own output (a downstream printing
    # without end), and whatever the downstream said while listing would reach the call's client.
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    listens = tmp_path / "listens"
    entry = unlocking_entry("2026-07-28")
    entry["env"] = {**entry["env"], "DOWNSTREAM_LISTEN_FILE": str(listens)}
    held = anyio.CancelScope()

    async def unlock_and_hold() -> None:
        with held:
            await gw.call_tool("alice", "down__unlock", {"hold": True, "quietly": True})

    async with running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as gw:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                unlock_and_hold
            )  # opens alice's connection, whose first stream is then acknowledged
            with anyio.fail_after(STARTUP_SECONDS):
                while listen_requests(listens) < 1:
                    await anyio.sleep(0.05)
            # Time for a listing that would not wait to be made (a slow machine can only make this pass).
            await anyio.sleep(0.5)
            listed_during_the_call = listen_file(listens).count("list")
            held.cancel()
        with anyio.fail_after(STARTUP_SECONDS):
            while listen_file(listens).count("list") < 1:
                await anyio.sleep(0.05)

    assert listed_during_the_call == 0


async def test_a_listing_during_which_the_downstream_said_its_tools_changed_is_not_kept_as_its_last(
    sqlite_secrets: Secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The listing read the tools of before; kept, it would stand for the downstream's tools while a call
    # of the user runs, or while the downstream is down, although its clients were told to list again.
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    every_tool = gateway_module._every_tool

    async with running_gateway(sqlite_secrets, tmp_path, {"down": STDIO_ENTRY}) as gw:

        async def changed_meanwhile(client: Client, **options: Any) -> Any:
            listed = await every_tool(client, **options)
            if not options:  # the user's listing, not the one at a listen stream
                gw._downstream_tools_changed("alice", "down")  # as the downstream's notice does
            return listed

        monkeypatch.setattr(gateway_module, "_every_tool", changed_meanwhile)
        listed = await gw.list_tools("alice")
        kept = ("alice", "down") in gw._known_tools
        monkeypatch.undo()
        listed_again = await gw.list_tools("alice")

    assert {tool.name for tool in listed} == {tool.name for tool in listed_again}
    assert kept is False
    assert ("alice", "down") in gw._known_tools  # a listing with no change meanwhile is kept


async def test_a_listing_after_a_downstream_said_its_tools_changed_waits_for_the_call_still_running(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    # What the downstream listed before is no longer what it lists: a client told so must not be shown it.
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    listings: list[set[str]] = []
    call = anyio.CancelScope()

    async def unlock_and_hold(client: Client) -> None:
        with call:
            await client.call_tool("down__unlock", {"hold": True})

    async def list_again(client: Client) -> None:
        listings.append(down_tools((await client.list_tools()).tools))

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": unlocking_entry("2026-07-28")}) as gw,
        watching(functools.partial(connect, sqlite_secrets, gw, "alice"), "auto") as (alice, alices),
    ):
        before = down_tools((await alice.list_tools()).tools)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(unlock_and_hold, alice)
            await told_of_a_change(alices)
            tasks.start_soon(list_again, alice)
            await anyio.wait_all_tasks_blocked()
            while_the_call_runs = list(listings)
            call.cancel()

    assert while_the_call_runs == []
    assert listings == [before | {"down__unlocked"}]


async def test_a_listing_does_not_wait_for_a_call_of_the_same_user_still_running(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    started = anyio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        started.set()

    # Two clients of alice (two chats, say): one runs a long call while the other lists the tools.
    async with (
        connect(sqlite_secrets, gateway, "alice") as first,
        connect(sqlite_secrets, gateway, "alice") as second,
    ):
        before = {tool.name for tool in (await first.list_tools()).tools}
        async with anyio.create_task_group() as calls:
            calls.start_soon(
                functools.partial(first.call_tool, "down__hang", {}, progress_callback=on_progress)
            )
            with anyio.fail_after(STARTUP_SECONDS):
                await started.wait()
                during = {tool.name for tool in (await second.list_tools()).tools}
            calls.cancel_scope.cancel()

    assert during == before
    assert {f"down__{name}" for name in DOWNSTREAM_TOOLS} <= during


async def test_a_remote_call_may_take_longer_than_the_connect_timeout(
    sqlite_secrets: Secrets, tmp_path: Path, http_downstream: HttpDownstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tool call has no bound: silence while a remote tool works is not a timeout.
    monkeypatch.setattr(gateway_module, "REMOTE_TIMEOUT_SECONDS", 0.5)
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    http_downstream.ensure_running()

    async with running_gateway(sqlite_secrets, tmp_path, {"down": http_entry(http_downstream)}) as gw:
        answered = await call_server(sqlite_secrets, gw, "alice", "down__hang", {"seconds": 2})

    assert not answered.is_error, text_of(answered)
    assert text_of(answered) == "answered after 2 seconds"


@pytest.mark.parametrize(
    "tool",
    ["x\r\x1b[2K\x1b[1Aforged line", "t" * 129, "two words", ""],
    ids=["control-characters", "too-long", "space", "empty"],
)
async def test_a_malformed_tool_name_is_refused_before_any_secret_is_read(
    sqlite_secrets: Secrets, gateway: Gateway, tool: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))

    async with connect(sqlite_secrets, gateway, "alice") as alice:
        result = await alice.call_tool(f"down__{tool}", {})

    assert result.is_error
    if tool:
        assert "1 to 128 characters" in text_of(result)
        assert tool not in text_of(result)
    assert [event.action for event in sqlite_secrets.list_events("alice")] == ["created"]
    assert gateway.pool.live == 0


async def test_concurrent_callers_each_get_their_own_hash_over_their_own_connection(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    values = {"alice": fresh_value("alice"), "bob": fresh_value("bob")}
    for username, value in values.items():
        sqlite_secrets.set_secret(username, "down", "TOKEN", value)
    hashes: dict[str, list[str]] = {username: [] for username in values}

    async def call_hash(username: str, client: Client) -> None:
        hashes[username].append(hash_of(await client.call_tool("down__token_hash", {})))

    async with (
        connect(sqlite_secrets, gateway, "alice") as alice,
        connect(sqlite_secrets, gateway, "bob") as bob,
        anyio.create_task_group() as calls,
    ):
        for _ in range(CONCURRENT_CALLS):
            calls.start_soon(call_hash, "alice", alice)
            calls.start_soon(call_hash, "bob", bob)

    assert hashes == {username: [sha256(value)] * CONCURRENT_CALLS for username, value in values.items()}
    # One connection per user, whatever the number of calls; never one shared between users.
    assert set(gateway.pool._connections) == {("alice", "down"), ("bob", "down")}
    assert gateway.pool.live == 2
    assert connection_of(gateway, "alice").client is not connection_of(gateway, "bob").client


async def test_the_pool_keeps_nothing_per_user_once_their_connection_is_closed(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    users = [f"user{number}" for number in range(3)]
    for username in users:
        sqlite_secrets.set_secret(username, "down", "TOKEN", fresh_value(username))
        assert not (await call(sqlite_secrets, gateway, username, "token_hash")).is_error
    assert gateway.pool.live == len(users)

    await gateway.pool.close_all()

    # A long-running gateway sees many users come and go: what it keeps must not grow with them.
    assert gateway.pool.live == 0
    assert gateway.pool._turns == {}
    assert gateway._call_turns == {}


async def test_the_gateway_keeps_the_last_listings_of_a_bounded_number_of_users(
    sqlite_secrets: Secrets, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "KNOWN_LISTINGS", 2)
    users = [f"user{number}" for number in range(3)]
    for username in users:
        sqlite_secrets.set_secret(username, "down", "TOKEN", fresh_value(username))
        async with connect(sqlite_secrets, gateway, username) as client:
            assert "down__ping" in {tool.name for tool in (await client.list_tools()).tools}

    # Each listing is kept for its user only; a gateway that many users pass through keeps the latest.
    assert list(gateway._known_tools) == [("user1", "down"), ("user2", "down")]


async def test_only_the_called_servers_secrets_are_injected(
    sqlite_secrets: Secrets, gateway: Gateway, canary: str
) -> None:
    own = fresh_value("down")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", own)
    sqlite_secrets.set_secret("alice", "other", "TOKEN", canary)

    hashed = await call(sqlite_secrets, gateway, "alice", "token_hash")
    echoed = await call(sqlite_secrets, gateway, "alice", "echo_token")

    assert hash_of(hashed) == sha256(own) != sha256(canary)
    assert not echoed.is_error
    assert_no_spelling_of(canary, everything_in(echoed))


async def test_the_downstream_is_given_its_referenced_secrets_and_nothing_else_of_the_user(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    own = fresh_value("down")
    others = {
        ("down", "UNREFERENCED"): fresh_value("unreferenced"),  # the same server, no placeholder names it
        ("other", "TOKEN"): fresh_value("other-same-key"),
        ("other", "OTHER_TOKEN"): fresh_value("other-other-key"),
    }
    sqlite_secrets.set_secret("alice", "down", "TOKEN", own)
    for (server, key), value in others.items():
        sqlite_secrets.set_secret("alice", server, key, value)

    seen = await call(sqlite_secrets, gateway, "alice", "seen_digests")

    assert not seen.is_error, text_of(seen)
    assert seen.structured_content is not None
    given = set(seen.structured_content["env"]) | set(seen.structured_content["headers"])
    # The positive control: the one referenced secret arrived, in the environment or as a bearer token.
    assert sha256(own) in given or sha256(f"Bearer {own}") in given
    for value in others.values():
        assert sha256(value) not in given
        assert sha256(f"Bearer {value}") not in given


@needs_proc
async def test_a_stdio_downstream_can_read_another_users_downstream_environment_as_the_readme_warns(
    sqlite_secrets: Secrets, tmp_path: Path, marker: str
) -> None:
    # Each user has a process of their own, but all of them run as one OS user, as ordinary processes.
    command = [*as_an_ordinary_process(), sys.executable, str(FIXTURE), marker]
    entry = {**STDIO_ENTRY, "command": command[0], "args": command[1:]}
    values = {"alice": fresh_value("alice"), "bob": fresh_value("bob")}
    for username, value in values.items():
        sqlite_secrets.set_secret(username, "down", "TOKEN", value)

    async with running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as running:
        assert not (await call(sqlite_secrets, running, "alice", "ping")).is_error
        [alices] = processes_with(marker)
        by_bob = await call_server(sqlite_secrets, running, "bob", "down__environ_digests", {"pid": alices})

    assert not by_bob.is_error, text_of(by_bob)
    assert by_bob.structured_content is not None
    read_alices = (
        sha256(values["alice"]) in by_bob.structured_content["result"]
    )  # a bare bool: no value shown
    assert read_alices
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    threat_model = " ".join(readme.split("## Threat model", 1)[1].split("\n## ", 1)[0].split())
    assert "(`/proc/<pid>/environ`) of every other stdio downstream" in threat_model


async def test_the_trail_records_as_injected_only_what_reached_the_downstream(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    sqlite_secrets.set_secret("alice", "down", "UNREFERENCED", fresh_value("unreferenced"))
    refused = await call(sqlite_secrets, gateway, "alice", "token_hash")  # TOKEN is missing
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("down"))
    served = await call(sqlite_secrets, gateway, "alice", "token_hash")

    assert refused.is_error
    assert not served.is_error, text_of(served)
    injected = [event for event in sqlite_secrets.list_events("alice") if event.action == "injected"]
    # The served call (and the tool listing it needed), not the refused one; TOKEN only, never UNREFERENCED.
    assert [event.detail for event in injected].count("tools/call token_hash") == 1
    assert {(event.server, event.key) for event in injected} == {("down", "TOKEN")}
    last_used = {info.key: info.last_used_at for info in sqlite_secrets.list_secret_keys("alice", "down")}
    assert last_used["TOKEN"] is not None
    assert last_used["UNREFERENCED"] is None


async def test_a_call_after_the_clock_stepped_back_past_the_secrets_storing_is_its_last_use(
    sqlite_secrets: Secrets, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("down"))
    [stored] = sqlite_secrets.list_secret_keys("alice", "down")
    # An NTP correction, a VM restored: the clock now reads an hour before the secret was stored.
    monkeypatch.setattr(sqlite_secrets, "_clock", lambda: stored.created_at - timedelta(hours=1))

    served = await call(sqlite_secrets, gateway, "alice", "token_hash")

    assert not served.is_error, text_of(served)
    [info] = sqlite_secrets.list_secret_keys("alice", "down")
    assert info.last_used_at == stored.created_at  # not "never"
    assert sqlite_secrets.list_events("alice")[0].action == "injected"  # after the storing, not before it


async def test_a_placeholder_is_never_filled_from_another_servers_secrets(
    sqlite_secrets: Secrets, gateway: Gateway, canary: str
) -> None:
    sqlite_secrets.set_secret("alice", "other", "TOKEN", canary)

    result = await call(sqlite_secrets, gateway, "alice", "token_hash")

    assert result.is_error
    assert "server down needs secret(s) you have not stored: TOKEN." in text_of(result)
    assert gateway.pool.live == 0


async def test_results_and_errors_carry_no_spelling_of_the_injected_secret(
    sqlite_secrets: Secrets, gateway: Gateway, canary: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)

    async with connect(sqlite_secrets, gateway, "alice") as client:
        echoed = await client.call_tool("down__echo_token", {})
        failed = await client.call_tool("down__fail_with_token", {})
        refused = await client.call_tool("down__refuse_with_token", {})

    # The downstream did echo it, in four encodings: each came back as a label.
    assert echoed.structured_content == {
        "plain": "my token is [redacted TOKEN]",
        "base64": "[redacted TOKEN]",
        "url": "[redacted TOKEN]",
        "hex": "[redacted TOKEN]",
    }
    assert failed.is_error
    assert_no_spelling_of(canary, everything_in(echoed))
    assert_no_spelling_of(canary, everything_in(failed))
    assert refused.is_error
    assert "refused credentials: [redacted TOKEN]" in everything_in(refused)
    assert_no_spelling_of(canary, everything_in(refused))


async def test_structured_content_that_redaction_takes_out_of_its_output_schema_is_withheld_with_an_error(
    sqlite_secrets: Secrets, gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account = str(10**11 + _random.randbelow(9 * 10**11))  # a secret of digits: an account id
    sqlite_secrets.set_secret("alice", "down", "TOKEN", account)

    async with connect(sqlite_secrets, gateway, "alice") as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        # The SDK's client checks structured content against the output schema it listed, as the TypeScript
        # SDK's does: the label where the schema says integer would make either refuse the whole result.
        result = await client.call_tool("down__echo_token_as_number", {})

    schema = listed["down__echo_token_as_number"].output_schema
    assert schema is not None
    assert schema["properties"]["number"]["type"] == "integer"
    assert result.is_error
    assert result.structured_content is None
    shown = text_of(result)
    assert "[redacted TOKEN]" in shown  # the downstream's text, redacted
    assert "structured content withheld" in shown
    assert "the value at $.number fails the schema's 'type': 'integer'" in shown
    assert_no_spelling_of(account, everything_in(result))
    assert "structured content of echo_token_as_number of server down withheld" in caplog.text
    assert_no_spelling_of(account, caplog.text)


async def test_a_downstream_result_is_stamped_with_the_gateways_server_info_not_the_downstreams(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))

    # On 2026-07-28 a result's _meta names the server that answered; the client's server is the gateway.
    async with connect(sqlite_secrets, gateway, "alice") as client:
        own = await client.call_tool("list_secret_keys", {})
        relayed = await client.call_tool("down__ping", {})
        server_info = client.server_info

    assert server_info is not None
    assert server_info.name == "mcp-secrets"
    assert relayed.meta is not None
    assert own.meta is not None
    assert relayed.meta[SERVER_INFO_META_KEY] == own.meta[SERVER_INFO_META_KEY]


@pytest.mark.parametrize("size", [1, 5, 13])
async def test_a_secret_cut_across_text_blocks_is_redacted_across_them(
    sqlite_secrets: Secrets, gateway: Gateway, canary: str, size: int
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)

    result = await call_server(sqlite_secrets, gateway, "alice", "down__echo_token_in_chunks", {"size": size})

    # The downstream cut "my token is SECRET" into blocks of ``size`` characters; a reader joins them.
    blocks = [block.text for block in result.content if isinstance(block, TextContent)]
    assert len(blocks) == len(result.content) > 1
    assert_no_spelling_of(canary, "".join(blocks))  # first: a failure below may print the blocks
    assert_no_spelling_of(canary, everything_in(result))
    assert "".join(blocks) == "my token is [redacted TOKEN]"


@pytest.mark.parametrize("into", ["resource", "structured"])
async def test_a_secret_cut_between_a_text_block_and_a_resource_or_between_structured_strings_is_redacted(
    sqlite_secrets: Secrets, gateway: Gateway, canary: str, into: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)

    result = await call_server(sqlite_secrets, gateway, "alice", "down__echo_token_split", {"into": into})

    head, tail = canary[: len(canary) // 2], canary[len(canary) // 2 :]
    shown = everything_in(result)
    leaked = head in shown or tail in shown  # a bare bool: a failure prints neither half
    assert not leaked
    assert "[redacted TOKEN]" in shown


async def test_a_secret_in_a_form_body_as_node_writes_it_is_redacted(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    # The shape of an Azure AD client secret: URLSearchParams escapes its "~" as %7E, which Python never does.
    value = f"Xq8Q~{_random.token_urlsafe(24)}*"
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)

    result = await call(sqlite_secrets, gateway, "alice", "echo_token_in_form")

    leaked = "%7E" in everything_in(result)  # a bare bool: a failure prints no value
    assert not leaked
    assert text_of(result) == "grant_type=client_credentials&client_secret=[redacted TOKEN]"


async def test_a_stored_value_that_would_move_a_remote_url_to_another_host_is_refused_before_connecting(
    sqlite_secrets: Secrets, tmp_path: Path, http_downstream: HttpDownstream, canary: str
) -> None:
    http_downstream.ensure_running()
    # The configured host is the downstream; a placeholder sits in the URL's user part.
    entry = {
        "url": f"http://${{secret:USER}}@127.0.0.1:{http_downstream.port}/mcp",
        "headers": {"Authorization": "Bearer ${secret:TOKEN}"},
    }
    with socket.socket() as elsewhere:  # where alice's stored USER would send her call, and its header
        elsewhere.bind(("127.0.0.1", 0))
        elsewhere.listen()
        elsewhere.setblocking(False)  # noqa: FBT003 - the socket API
        sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
        sqlite_secrets.set_secret("alice", "down", "USER", f"127.0.0.1:{elsewhere.getsockname()[1]}/x")
        sqlite_secrets.set_secret("bob", "down", "TOKEN", fresh_value("bob"))
        sqlite_secrets.set_secret("bob", "down", "USER", "bob")  # a user part that stays one

        async with running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as gateway:
            refused = await call(sqlite_secrets, gateway, "alice", "token_hash")
            served = await call(sqlite_secrets, gateway, "bob", "token_hash")

        with pytest.raises(BlockingIOError):
            elsewhere.accept()  # nobody came: the call was refused before connecting
    assert refused.is_error
    assert "would send it to another host than its configured one" in text_of(refused)
    assert_no_spelling_of(canary, everything_in(refused))
    assert not served.is_error, text_of(served)  # reached the downstream (which reads the user part as auth)


async def test_progress_and_log_messages_reach_the_client_redacted(
    sqlite_secrets: Secrets, gateway: Gateway, canary: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[LoggingMessageNotificationParams] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with connect(
        sqlite_secrets, gateway, "alice", logging_callback=on_log, log_level="debug"
    ) as client:
        result = await client.call_tool("down__work", {"steps": 3}, progress_callback=on_progress)

    assert not result.is_error, text_of(result)
    label = "[redacted TOKEN]"
    assert progress == [(step, 3, f"step {step} as {label}") for step in (1, 2, 3)]
    assert [(log.level, log.logger, log.data) for log in logs] == [
        ("info", f"auth.{label}", f"working with {label}")
    ] * 3
    assert_no_spelling_of(canary, json.dumps([log.model_dump(mode="json") for log in logs]))
    assert_no_spelling_of(canary, json.dumps(progress))


async def test_each_concurrent_call_gets_its_own_log_messages(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    steps = {"first": 2, "second": 5}
    received: dict[str, list[str]] = {name: [] for name in steps}

    def collect(name: str) -> Any:
        async def on_log(params: LoggingMessageNotificationParams) -> None:
            received[name].append(str(params.data))

        return on_log

    # Two sessions of alice (two chats, say) share her one connection to the downstream.
    async with (
        connect(
            sqlite_secrets, gateway, "alice", logging_callback=collect("first"), log_level="debug"
        ) as first,
        connect(
            sqlite_secrets, gateway, "alice", logging_callback=collect("second"), log_level="debug"
        ) as second,
    ):
        hash_of(await first.call_tool("down__token_hash", {}))
        async with anyio.create_task_group() as calls:
            calls.start_soon(first.call_tool, "down__work", {"steps": steps["first"]})
            calls.start_soon(second.call_tool, "down__work", {"steps": steps["second"]})

    assert {name: len(logs) for name, logs in received.items()} == steps


@dataclass
class Heard:
    """What one client was sent during its calls: log messages and progress; an event at its first log."""

    logs: list[LoggingMessageNotificationParams] = field(default_factory=list)
    progress: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    first_log: anyio.Event = field(default_factory=anyio.Event)

    async def on_log(self, params: LoggingMessageNotificationParams) -> None:
        self.logs.append(params)
        self.first_log.set()

    async def on_progress(self, done: float, total: float | None, message: str | None) -> None:
        self.progress.append((done, total, message))


FLOOD_STEPS = 1000  # far past what a call has relayed at once


async def test_a_downstream_flooding_a_call_with_logs_and_progress_reaches_its_client_within_the_bounds(
    sqlite_secrets: Secrets, gateway: Gateway, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing is allowed again while the call runs: a client gets what is relayed at once and no more,
    # however long the flood takes.
    monkeypatch.setattr(relay_module, "LOG_MESSAGES_PER_SECOND", 0)
    monkeypatch.setattr(relay_module, "PROGRESS_PER_SECOND", 0)
    at_once = relay_module.LOG_MESSAGES_AT_ONCE
    progress_at_once = relay_module.PROGRESS_AT_ONCE
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    sqlite_secrets.set_secret("bob", "down", "TOKEN", fresh_value("bob"))
    heard = {"alice": Heard(), "bob": Heard()}
    results: dict[str, CallToolResult] = {}

    async with (
        connect(
            sqlite_secrets, gateway, "alice", logging_callback=heard["alice"].on_log, log_level="debug"
        ) as alice,
        connect(
            sqlite_secrets, gateway, "bob", logging_callback=heard["bob"].on_log, log_level="debug"
        ) as bob,
    ):

        async def flood() -> None:
            results["flood"] = await alice.call_tool(
                "down__work", {"steps": FLOOD_STEPS}, progress_callback=heard["alice"].on_progress
            )

        async with anyio.create_task_group() as calls:
            calls.start_soon(flood)
            with anyio.fail_after(STARTUP_SECONDS):
                await heard["alice"].first_log.wait()
            # bob's call runs meanwhile, on his own connection, with his own bounds.
            results["bob"] = await bob.call_tool(
                "down__work", {"steps": 3}, progress_callback=heard["bob"].on_progress
            )
        flooded = Heard(list(heard["alice"].logs), list(heard["alice"].progress))
        # The bounds are per call: alice's next call is relayed whole.
        results["again"] = await alice.call_tool(
            "down__work", {"steps": 3}, progress_callback=heard["alice"].on_progress
        )

    label = "[redacted TOKEN]"
    assert [text_of(results[name]) for name in ("flood", "bob", "again")] == [
        f"done in {FLOOD_STEPS} steps",
        "done in 3 steps",
        "done in 3 steps",
    ]
    *relayed, dropped = flooded.logs
    assert [(log.level, log.data) for log in relayed] == [("info", f"working with {label}")] * at_once
    assert dropped.level == "warning"
    assert f"{FLOOD_STEPS - at_once} log messages" in str(dropped.data)
    assert len(flooded.progress) == progress_at_once + 1
    assert flooded.progress[:progress_at_once] == [
        (step, FLOOD_STEPS, f"step {step} as {label}") for step in range(1, progress_at_once + 1)
    ]
    assert flooded.progress[-1] == (
        FLOOD_STEPS,
        FLOOD_STEPS,
        f"step {FLOOD_STEPS} as {label}",
    )  # the last one
    assert [log.data for log in heard["alice"].logs[len(flooded.logs) :]] == [f"working with {label}"] * 3
    assert heard["alice"].progress[len(flooded.progress) :] == [
        (step, 3, f"step {step} as {label}") for step in (1, 2, 3)
    ]
    assert [log.data for log in heard["bob"].logs] == [f"working with {label}"] * 3
    assert heard["bob"].progress == [(step, 3, f"step {step} as {label}") for step in (1, 2, 3)]
    shown = json.dumps([log.model_dump(mode="json") for log in heard["alice"].logs]) + json.dumps(
        heard["alice"].progress
    )
    assert_no_spelling_of(canary, shown)
    assert_no_spelling_of(canary, everything_in(results["flood"]))


# logging/setLevel, deprecated as of 2026-07-28, is what the handshake protocols' clients send.
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_log_messages_are_relayed_under_a_declared_logging_capability_at_the_level_set(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    levels: list[str] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        levels.append(params.level)

    # A client of the initialize handshake sets one level for its session with logging/setLevel.
    async with connect(sqlite_secrets, gateway, "alice", logging_callback=on_log, mode="legacy") as client:
        assert client.server_capabilities.logging is not None
        await client.set_logging_level("warning")
        quiet = await client.call_tool("down__work", {"steps": 2})
        await client.set_logging_level("info")
        heard = await client.call_tool("down__work", {"steps": 2})

    assert not quiet.is_error, text_of(quiet)
    assert not heard.is_error, text_of(heard)
    assert levels == ["info", "info"]  # the downstream logs at info: only the second call's


# --- missing secrets ------------------------------------------------------------------------------


def missing_keys(result: CallToolResult) -> list[str]:
    """The keys a missing-secrets error names."""
    assert result.is_error
    found = re.search(r"needs secret\(s\) you have not stored: ([^.]*)\.", text_of(result))
    assert found, text_of(result)
    return found.group(1).split(", ")


async def test_missing_secrets_are_a_tool_error_naming_them_and_nothing_is_started(
    sqlite_secrets: Secrets, tmp_path: Path, downstream: Downstream
) -> None:
    entry = {
        **downstream.entry,
        "secrets": {
            "TOKEN": {"description": "The downstream's token"},
            "ACCOUNT": {"description": "Required, though no placeholder uses it"},
            "NOTE": {"description": "Optional", "required": False},
        },
    }
    async with running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as gateway:
        before = await call(sqlite_secrets, gateway, "alice", "token_hash")
        sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
        after_one = await call(sqlite_secrets, gateway, "alice", "token_hash")

        assert gateway.pool.live == 0

    assert missing_keys(before) == ["ACCOUNT", "TOKEN"]
    assert missing_keys(after_one) == ["ACCOUNT"]
    assert "request_secret" in text_of(before)
    assert "mcp-secrets set down KEY --user alice" in text_of(before)


# --- failures and connections ---------------------------------------------------------------------


async def test_an_error_answer_of_a_downstream_keeps_its_connection(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    # Many servers answer a failed call (a 404 of the API behind them, bad input) with a JSON-RPC
    # error: the server is well, and restarting it would cost a start and what it holds (a browser).
    value = fresh_value("alice")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)

    async with connect(sqlite_secrets, gateway, "alice") as client:
        hash_of(await client.call_tool("down__token_hash", {}))
        before = connection_of(gateway, "alice")
        refused = await client.call_tool("down__refuse_with_token", {})
        after = await client.call_tool("down__token_hash", {})

    assert refused.is_error
    assert "refused credentials: [redacted TOKEN]" in text_of(refused)
    assert hash_of(after) == sha256(value)
    assert connection_of(gateway, "alice") is before
    assert not before.dead


async def test_a_crashed_downstream_is_a_tool_error_and_the_next_call_works(
    sqlite_secrets: Secrets, gateway: Gateway, downstream: Downstream
) -> None:
    value = fresh_value("alice")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)

    async with connect(sqlite_secrets, gateway, "alice") as client:
        crashed = await client.call_tool("down__crash", {})
        await anyio.to_thread.run_sync(downstream.revive)
        after = await client.call_tool("down__token_hash", {})

    assert crashed.is_error
    assert "downstream server down failed during crash" in text_of(crashed)
    assert hash_of(after) == sha256(value)
    assert gateway.pool.live == 1


@pytest.mark.parametrize("answer", [True, False], ids=["one huge answer", "output without end"])
async def test_a_stdio_downstream_writing_a_message_past_the_bound_is_a_tool_error_and_others_go_on(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str, caplog: pytest.LogCaptureFixture, answer: bool
) -> None:
    caplog.set_level(logging.INFO)
    value = fresh_value("alice")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    sqlite_secrets.set_secret("bob", "down", "TOKEN", value)
    floods = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_FLOODS": "1"}}
    megabytes = gateway_stdio.MAX_MESSAGE_BYTES // (1 << 20) + 1

    async with running_gateway(sqlite_secrets, tmp_path, {"down": floods}) as gw:
        async with connect(sqlite_secrets, gw, "bob") as bob:
            hash_of(await bob.call_tool("down__token_hash", {}))
            flooded = await call_server(
                sqlite_secrets, gw, "alice", "down__flood", {"megabytes": megabytes, "answer": answer}
            )
            after_bob = await bob.call_tool("down__token_hash", {})
        after = await call(sqlite_secrets, gw, "alice", "token_hash")

    # The gateway read no more of that line than its bound, ended that connection, and started
    # another for the next call; bob's own downstream never noticed.
    assert_no_spelling_of(canary, everything_in(flooded))  # first: a failure below may print the result
    assert flooded.is_error
    assert f"sent a message over {gateway_stdio.MAX_MESSAGE_BYTES} bytes" in caplog.text
    assert_no_spelling_of(canary, caplog.text)
    # The user is told why, not only that the connection closed.
    assert (
        f"downstream server down failed during flood: it sent a message over "
        f"{gateway_stdio.MAX_MESSAGE_BYTES} bytes" in text_of(flooded)
    )
    assert hash_of(after) == sha256(canary)
    assert hash_of(after_bob) == sha256(value)


@pytest.fixture
def redacted_on(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(characters, on the event loop's thread) of each text redaction from here on, in the test's thread."""
    # Which thread redacted texts of which size: on the loop's, no other user's call could go on.
    redactions: list[tuple[int, bool]] = []
    texts = Redactor.texts
    loop_thread = threading.current_thread()

    def spied_texts(self: Redactor, shown: list[str]) -> list[str]:
        redactions.append((sum(map(len, shown)), threading.current_thread() is loop_thread))
        return texts(self, shown)

    monkeypatch.setattr(Redactor, "texts", spied_texts)
    return redactions


async def test_a_large_result_is_redacted_off_the_event_loop_and_a_small_one_on_it(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str, redacted_on: list[tuple[int, bool]]
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    floods = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_FLOODS": "1"}}
    async with running_gateway(sqlite_secrets, tmp_path, {"down": floods}) as gw:
        small = await call(sqlite_secrets, gw, "alice", "token_hash")
        redacted_small = list(redacted_on)
        redacted_on.clear()
        large = await call_server(sqlite_secrets, gw, "alice", "down__flood", {"megabytes": 1})

    assert_no_spelling_of(canary, everything_in(large))  # first: a failure below may print the result
    assert large.is_error is False
    assert "[redacted TOKEN]" in text_of(large)
    assert hash_of(small) == sha256(canary)
    assert {on_loop for size, on_loop in redacted_on if size > 1 << 20} == {False}
    assert {on_loop for _, on_loop in redacted_small} == {True}


@pytest.mark.parametrize("long", [False, True], ids=["token", "key-file"])
async def test_a_long_values_redactor_is_built_off_the_event_loop_and_a_short_ones_on_it(
    sqlite_secrets: Secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, long: bool
) -> None:
    # A key file or a PEM key takes milliseconds to spell every way: other users' calls go on meanwhile.
    fields = {"type": "service_account", "private_key_id": new_canary(), "client_email": new_canary()}
    value = (
        json.dumps({**fields, "private_key": "\n".join(new_canary() for _ in range(20))})
        if long
        else new_canary()
    )
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)
    loop_thread = threading.current_thread()
    built_on_loop: list[bool] = []

    class SpiedRedactor(Redactor):
        def __init__(self, values: dict[str, str]) -> None:
            built_on_loop.append(threading.current_thread() is loop_thread)
            super().__init__(values)

    monkeypatch.setattr(gateway_module, "Redactor", SpiedRedactor)
    async with running_gateway(sqlite_secrets, tmp_path, {"down": STDIO_ENTRY}) as gw:
        result = await call(sqlite_secrets, gw, "alice", "token_hash")

    assert hash_of(result) == sha256(value)
    assert built_on_loop  # one for the listing the call needs, one for the call
    assert set(built_on_loop) == {not long}


async def test_a_small_result_is_redacted_off_the_event_loop_for_values_of_many_spellings(
    sqlite_secrets: Secrets, tmp_path: Path, redacted_on: list[tuple[int, bool]]
) -> None:
    # Redacting costs about as much per spelling searched: 2,000 short lines have some ten thousand, and
    # even a small text would hold other users' calls for tens of milliseconds on the loop.
    value = "\n".join(new_canary()[:12] for _ in range(2000))
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)
    async with running_gateway(sqlite_secrets, tmp_path, {"down": STDIO_ENTRY}) as gw:
        result = await call(sqlite_secrets, gw, "alice", "token_hash")

    assert hash_of(result) == sha256(value)
    assert redacted_on  # the listing the call needs, and the result
    assert {on_loop for _, on_loop in redacted_on} == {False}


async def work_logged(
    secrets: Secrets, tmp_path: Path, *, log_kilobytes: int
) -> tuple[CallToolResult, list[LoggingMessageNotificationParams], int]:
    """alice's call of one step of ``down__work``, logging that much, through a gateway of her own.

    Returns its result, the log messages her client got, and how many of them came before the result.
    """
    logs: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with (
        running_gateway(secrets, tmp_path, {"down": STDIO_ENTRY}) as gw,
        connect(secrets, gw, "alice", logging_callback=on_log, log_level="debug") as client,
    ):
        result = await client.call_tool("down__work", {"steps": 1, "log_kilobytes": log_kilobytes})
        before_the_result = len(logs)
    return result, logs, before_the_result


async def test_a_large_log_message_is_redacted_off_the_event_loop(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str, redacted_on: list[tuple[int, bool]]
) -> None:
    # A call relays up to a hundred log messages at once, each up to relay.LOG_MESSAGE_CHARS.
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    result, logs, _ = await work_logged(sqlite_secrets, tmp_path, log_kilobytes=12)

    assert_no_spelling_of(canary, json.dumps([log.model_dump(mode="json") for log in logs]))
    assert result.is_error is False
    assert [str(log.data).startswith("working with [redacted TOKEN]") for log in logs] == [True]
    assert {on_loop for size, on_loop in redacted_on if size > REDACT_INLINE_CHARS} == {False}


async def test_a_log_message_past_the_bound_reaches_the_client_as_a_notice_without_being_redacted(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str, redacted_on: list[tuple[int, bool]]
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    result, logs, _ = await work_logged(sqlite_secrets, tmp_path, log_kilobytes=1100)

    assert_no_spelling_of(canary, json.dumps([log.model_dump(mode="json") for log in logs]))
    assert result.is_error is False
    notice, summary = logs
    assert (notice.level, notice.logger) == ("info", "auth.[redacted TOKEN]")
    assert "was withheld" in str(notice.data)
    assert "1 log messages of downstream server down were withheld" in str(summary.data)
    assert max(size for size, _ in redacted_on) <= REDACT_INLINE_CHARS


async def test_a_large_log_message_sent_before_the_result_reaches_the_client_before_it(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its redaction, in a worker thread, is made to end only once the call's result came back.
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    answered = threading.Event()
    redacted_log = relay_module.CallRelay._redacted_log
    finish = relay_module.CallRelay.finish
    send_log = relay_module.CallRelay._send_log
    # The gateway's own order: whether the message was sent once the relay's end (then the result) came.
    sent: list[str] = []

    def redacted_once_answered(relay: relay_module.CallRelay, params: Any) -> tuple[Any, str | None]:
        answered.wait(STARTUP_SECONDS)
        return redacted_log(relay, params)

    async def finish_answered(relay: relay_module.CallRelay) -> None:
        answered.set()
        await finish(relay)
        sent.append("finished")

    async def noted_send_log(relay: relay_module.CallRelay, *args: Any) -> None:
        await send_log(relay, *args)
        sent.append("log")

    monkeypatch.setattr(relay_module.CallRelay, "_redacted_log", redacted_once_answered)
    monkeypatch.setattr(relay_module.CallRelay, "finish", finish_answered)
    monkeypatch.setattr(relay_module.CallRelay, "_send_log", noted_send_log)
    result, logs, logged_before_the_result = await work_logged(sqlite_secrets, tmp_path, log_kilobytes=12)

    assert_no_spelling_of(canary, json.dumps([log.model_dump(mode="json") for log in logs]))
    assert result.is_error is False
    assert answered.is_set()
    assert logged_before_the_result == 1
    assert sent == ["log", "finished"]
    assert str(logs[0].data).startswith("working with [redacted TOKEN]")


async def test_a_result_whose_meta_is_large_is_redacted_off_the_event_loop(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str, redacted_on: list[tuple[int, bool]]
) -> None:
    # A downstream may put its bulk in the result's _meta rather than its content: it is redacted too.
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    floods = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_FLOODS": "1"}}
    async with running_gateway(sqlite_secrets, tmp_path, {"down": floods}) as gw:
        large = await call_server(sqlite_secrets, gw, "alice", "down__flood_meta", {"megabytes": 1})

    assert_no_spelling_of(canary, everything_in(large))  # first: a failure below may print the result
    assert large.is_error is False
    assert large.meta is not None
    assert str(large.meta["detail"]).startswith("[redacted TOKEN]")
    assert {on_loop for size, on_loop in redacted_on if size > 1 << 20} == {False}


async def test_a_large_listing_is_redacted_off_the_event_loop_and_a_small_one_on_it(
    sqlite_secrets: Secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    sqlite_secrets.set_secret("alice", "bulky", "TOKEN", fresh_value("alice"))
    bulky = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_BULKY_PAGES": "2"}}
    redacted_on: dict[str, set[bool]] = {}
    text = Redactor.text

    def spied_text(self: Redactor, shown: str) -> str:
        if shown.startswith(("SHA-256 of the secret", "x" * 1024)):
            redacted_on.setdefault(shown[:3], set()).add(threading.current_thread() is loop_thread)
        return text(self, shown)

    monkeypatch.setattr(Redactor, "text", spied_text)
    loop_thread = threading.current_thread()
    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": STDIO_ENTRY}) as small_gw,
        connect(sqlite_secrets, small_gw, "alice") as client,
    ):
        small = {tool.name for tool in (await client.list_tools()).tools}
    redacted_small = redacted_on.pop("SHA")
    async with (
        running_gateway(sqlite_secrets, tmp_path, {"bulky": bulky}) as large_gw,
        connect(sqlite_secrets, large_gw, "alice") as client,
    ):
        large = {tool.name for tool in (await client.list_tools()).tools}

    assert "down__token_hash" in small
    assert {"bulky__token_hash", "bulky__bulky2"} <= large
    assert redacted_small == {True}
    assert redacted_on["xxx"] == {False}


async def test_a_remote_downstreams_answer_past_the_bound_is_a_tool_error_and_others_go_on(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str
) -> None:
    value = fresh_value("bob")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    sqlite_secrets.set_secret("bob", "down", "TOKEN", value)
    # One JSON body per answer: the SDK bounds the events of a stream, not a body.
    http = HttpDownstream(tmp_path / "downstream.log", "json", env={"DOWNSTREAM_FLOODS": "1"})
    http.ensure_running()
    megabytes = gateway_stdio.MAX_MESSAGE_BYTES // (1 << 20) + 1
    try:
        async with running_gateway(sqlite_secrets, tmp_path, {"down": http_entry(http)}) as gw:
            async with connect(sqlite_secrets, gw, "bob") as bob:
                hash_of(await bob.call_tool("down__token_hash", {}))
                flooded = await call_server(
                    sqlite_secrets, gw, "alice", "down__flood", {"megabytes": megabytes}
                )
                after_bob = await bob.call_tool("down__token_hash", {})
            after = await call(sqlite_secrets, gw, "alice", "token_hash")
    finally:
        http.stop()

    assert_no_spelling_of(canary, everything_in(flooded))  # first: a failure below may print the result
    assert flooded.is_error
    assert f"a message over {gateway_stdio.MAX_MESSAGE_BYTES} bytes" in text_of(flooded)
    assert hash_of(after) == sha256(canary)
    assert hash_of(after_bob) == sha256(value)


async def test_a_remote_downstreams_streamed_answer_is_read_up_to_the_same_bound_as_a_body(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    # Each answer as an event of an event stream, which the SDK alone would cut at 1 MiB.
    http = HttpDownstream(tmp_path / "downstream.log", env={"DOWNSTREAM_FLOODS": "1"})
    http.ensure_running()
    megabytes = gateway_stdio.MAX_MESSAGE_BYTES // (1 << 20)
    try:
        async with running_gateway(sqlite_secrets, tmp_path, {"down": http_entry(http)}) as gw:
            within = await call_server(sqlite_secrets, gw, "alice", "down__flood_streamed", {"megabytes": 2})
            past = await call_server(
                sqlite_secrets, gw, "alice", "down__flood_streamed", {"megabytes": megabytes + 1}
            )
            after = await call(sqlite_secrets, gw, "alice", "token_hash")
    finally:
        http.stop()

    assert_no_spelling_of(canary, everything_in(within))  # first: a failure below may print the result
    assert_no_spelling_of(canary, everything_in(past))
    assert within.is_error is False
    assert len(text_of(within)) > 2 << 20
    assert past.is_error
    assert f"{gateway_stdio.MAX_MESSAGE_BYTES} byte" in text_of(past)
    assert hash_of(after) == sha256(canary)


async def test_idle_connections_are_closed(
    sqlite_secrets: Secrets, tmp_path: Path, downstream: Downstream
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))

    # Idle long enough to outlast closing the calling client on a loaded machine: the connection must
    # still be there to be looked at (at 0.2 s it was once gone already, and the lookup failed).
    async with running_gateway(sqlite_secrets, tmp_path, {"down": downstream.entry}, idle_seconds=1.0) as gw:
        hash_of(await call(sqlite_secrets, gw, "alice", "token_hash"))
        opened = connection_of(gw, "alice")
        await wait_closed(opened)

        assert gw.pool.live == 0


async def call_while_alice_holds_the_one_place(
    secrets: Secrets, tmp_path: Path, marker: str, silent_from: str, holding: Callable[[Gateway], bool]
) -> tuple[CallToolResult, int]:
    """bob's call of ``down`` while alice's call of a silent downstream holds the pool's one place.

    Also how many connections were live then. alice's call waits until it is cancelled.
    """
    secrets.set_secret("bob", "down", "TOKEN", fresh_value("bob"))
    servers = {"down": STDIO_ENTRY, "silent": silent_entry(silent_from, marker)}

    async with running_gateway(secrets, tmp_path, servers, max_live=1) as gw:
        with anyio.fail_after(STARTUP_SECONDS):
            async with anyio.create_task_group() as holder:
                holder.start_soon(gw.call_tool, "alice", "silent__anything", {})
                while not holding(gw):
                    await anyio.sleep(0.01)
                refused = await call(secrets, gw, "bob", "token_hash")
                live = gw.pool.live
                holder.cancel_scope.cancel()
    return refused, live


async def test_a_call_refused_because_every_connection_is_busy_is_not_recorded_as_injected(
    sqlite_secrets: Secrets, tmp_path: Path, marker: str
) -> None:
    refused, _ = await call_while_alice_holds_the_one_place(
        sqlite_secrets,
        tmp_path,
        marker,
        "tools/list",  # alice's downstream starts, then her call never ends
        lambda gw: any(connection.active_calls for connection in gw.pool._connections.values()),
    )

    assert refused.is_error
    assert "downstream connections are busy" in text_of(refused)
    assert [event.action for event in sqlite_secrets.list_events("bob")] == ["created"]


async def test_a_downstream_still_starting_counts_against_the_bound(
    sqlite_secrets: Secrets, tmp_path: Path, marker: str
) -> None:
    refused, live = await call_while_alice_holds_the_one_place(
        sqlite_secrets,
        tmp_path,
        marker,
        "initialize",  # alice's downstream never finishes its start
        lambda _: bool(processes_with(marker)),
    )

    assert refused.is_error
    assert "downstream connections are busy" in text_of(refused)
    assert live == 0


async def test_the_least_recently_used_idle_connection_makes_room_at_the_bound(
    sqlite_secrets: Secrets, tmp_path: Path, downstream: Downstream
) -> None:
    for username in ("alice", "bob", "carol"):
        sqlite_secrets.set_secret(username, "down", "TOKEN", fresh_value(username))

    async with running_gateway(sqlite_secrets, tmp_path, {"down": downstream.entry}, max_live=2) as gw:
        for username in ("alice", "bob", "alice"):
            hash_of(await call(sqlite_secrets, gw, username, "token_hash"))
        bobs = connection_of(gw, "bob")
        hash_of(await call(sqlite_secrets, gw, "carol", "token_hash"))

        assert set(gw.pool._connections) == {("alice", "down"), ("carol", "down")}
        assert gw.pool.live == 2
        await wait_closed(bobs)


@needs_proc
async def test_a_connection_making_room_at_the_bound_has_stopped_before_another_starts(
    sqlite_secrets: Secrets, tmp_path: Path, marker: str
) -> None:
    for username in ("alice", "bob"):
        sqlite_secrets.set_secret(username, "down", "TOKEN", fresh_value(username))
    # A downstream that outlives the end of its stdin stops only at a signal, seconds later.
    servers = {"down": lingering_entry(marker)}

    async with running_gateway(sqlite_secrets, tmp_path, servers, max_live=1) as gw:
        hash_of(await call(sqlite_secrets, gw, "alice", "token_hash"))
        alices = processes_with(marker)
        hash_of(await call(sqlite_secrets, gw, "bob", "token_hash"))
        running = processes_with(marker)

    # The bound is on downstreams running, each holding its user's secrets, not only on those in use.
    assert len(alices) == 1
    assert len(running) == 1
    assert not set(alices) & set(running)


async def test_a_changed_secret_is_used_on_the_next_call_through_a_new_connection(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    first, second = fresh_value("first"), fresh_value("second")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", first)

    async with connect(sqlite_secrets, gateway, "alice") as client:
        before = await client.call_tool("down__token_hash", {})
        old = connection_of(gateway, "alice")
        stored = await client.call_tool("set_secret", {"server": "down", "key": "TOKEN", "value": second})
        after = await client.call_tool("down__token_hash", {})

    assert not stored.is_error
    assert (hash_of(before), hash_of(after)) == (sha256(first), sha256(second))
    assert connection_of(gateway, "alice") is not old
    assert gateway.pool.live == 1
    await wait_closed(old)


async def test_a_deleted_secret_closes_the_connection_holding_it_at_the_next_call(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))

    async with connect(sqlite_secrets, gateway, "alice") as client:
        hash_of(await client.call_tool("down__token_hash", {}))
        old = connection_of(gateway, "alice")
        deleted = await client.call_tool("delete_secret", {"server": "down", "key": "TOKEN"})
        refused = await client.call_tool("down__token_hash", {})

    assert not deleted.is_error, text_of(deleted)
    assert missing_keys(refused) == ["TOKEN"]
    # The downstream still held the deleted value: it does not wait for the idle timeout to end.
    await wait_closed(old)
    assert gateway.pool.live == 0


def marked_entry(marker: str, **env: str) -> dict[str, Any]:
    """The stdio fixture downstream, marked by ``marker`` in its arguments, with ``env`` added."""
    return {**STDIO_ENTRY, "args": [*STDIO_ENTRY["args"], marker], "env": {**STDIO_ENTRY["env"], **env}}


async def started_for(secrets: Secrets, gateway: Gateway, username: str, marker: str) -> int:
    """The process id of the downstream that a call of ``username``'s starts, left idle after it."""
    before = set(processes_with(marker))
    hash_of(await call(secrets, gateway, username, "token_hash"))
    [pid] = set(processes_with(marker)) - before
    return pid


async def ended(pid: int, marker: str) -> None:
    """Wait until the downstream ``pid`` has exited."""
    with anyio.fail_after(CLOSE_SECONDS):
        while pid in processes_with(marker):
            await anyio.sleep(0.01)


async def delete_alices_token(how: str, secrets: Secrets, gateway: Gateway) -> str:
    """Delete alice's TOKEN of ``down`` in this process, ``how``; what a client was shown, if any."""
    if how == "tool":
        async with connect(secrets, gateway, "alice") as client:
            # Listed first, as clients do: the SDK's client lists after a call of a tool it never listed,
            # and a listing with the secret gone closes the downstream that held it, as a call does.
            await client.list_tools()
            deleted = await client.call_tool("delete_secret", {"server": "down", "key": "TOKEN"})
        assert not deleted.is_error, text_of(deleted)
        return everything_in(deleted)
    delete = functools.partial(secrets.update_secret, "alice", "down", "TOKEN", action="delete")
    if how == "worker-thread":
        await anyio.to_thread.run_sync(delete)
    else:  # on the event loop's thread, as a store that answers at once is written
        delete()
    return ""


@needs_proc
@pytest.mark.parametrize("how", ["tool", "worker-thread", "event-loop"])
async def test_a_secret_deleted_in_process_stops_its_users_idle_downstream_at_once_and_no_other(
    sqlite_secrets: Secrets, tmp_path: Path, marker: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    values = {username: new_canary() for username in ("alice", "bob")}
    for username, value in values.items():
        sqlite_secrets.set_secret(username, "down", "TOKEN", value)

    async with running_gateway(sqlite_secrets, tmp_path, {"down": marked_entry(marker)}) as gw:
        alices = await started_for(sqlite_secrets, gw, "alice", marker)
        bobs = await started_for(sqlite_secrets, gw, "bob", marker)
        alices_connection, bobs_connection = connection_of(gw, "alice"), connection_of(gw, "bob")
        shown = await delete_alices_token(how, sqlite_secrets, gw)
        # No call of alice's since, and far within the idle timeout: the process that held the value is gone.
        await ended(alices, marker)
        await wait_closed(alices_connection)
        running = processes_with(marker)
        again = await call(sqlite_secrets, gw, "bob", "token_hash")

        assert set(gw.pool._connections) == {("bob", "down")}
        assert connection_of(gw, "bob") is bobs_connection
    assert running == [bobs]
    assert hash_of(again) == sha256(values["bob"])
    for value in values.values():
        assert_no_fragment_of(value, shown + everything_in(again) + caplog.text)


@needs_proc
async def test_a_change_of_a_server_the_gateway_does_not_proxy_stops_no_downstream(
    sqlite_secrets: Secrets, tmp_path: Path, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    values = {username: new_canary() for username in ("alice", "bob")}
    for username, value in values.items():
        sqlite_secrets.set_secret(username, "down", "TOKEN", value)
    elsewhere = new_canary()

    async with running_gateway(sqlite_secrets, tmp_path, {"down": marked_entry(marker)}) as gw:
        alices = await started_for(sqlite_secrets, gw, "alice", marker)
        bobs = await started_for(sqlite_secrets, gw, "bob", marker)
        alices_connection = connection_of(gw, "alice")
        sqlite_secrets.set_secret("alice", "elsewhere", "TOKEN", elsewhere)
        await anyio.to_thread.run_sync(sqlite_secrets.delete_secret, "alice", "elsewhere", "TOKEN")
        # bob's deletion comes after alice's changes: once it has stopped his downstream, a stop of hers
        # that they caused would have come too.
        await anyio.to_thread.run_sync(sqlite_secrets.delete_secret, "bob", "down", "TOKEN")
        await ended(bobs, marker)
        running = processes_with(marker)
        again = await call(sqlite_secrets, gw, "alice", "token_hash")

        assert connection_of(gw, "alice") is alices_connection
    assert running == [alices]
    assert hash_of(again) == sha256(values["alice"])
    for value in (*values.values(), elsewhere):
        assert_no_fragment_of(value, everything_in(again) + caplog.text)


@needs_proc
async def test_a_call_running_as_its_users_secret_is_deleted_ends_with_its_answer_and_then_its_downstream(
    sqlite_secrets: Secrets, tmp_path: Path, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    value = new_canary()
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)
    # The downstream asks alice in the middle of its call, which runs until she answers.
    entry = marked_entry(marker, DOWNSTREAM_HANDSHAKE_ONLY="1")
    alice = User(answer="the answer")
    alice.go_on = anyio.Event()
    results: list[CallToolResult] = []

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as gw,
        connect(sqlite_secrets, gw, "alice", mode="legacy", **alice.options()) as client,
    ):
        await client.list_tools()  # as clients do: no listing after the call (see delete_alices_token)

        async def ask() -> None:
            results.append(await client.call_tool("down__ask", {"question": "Which project?"}))

        async with anyio.create_task_group() as calls:
            calls.start_soon(ask)
            with anyio.fail_after(STARTUP_SECONDS):
                await alice.asking.wait()
            [pid] = processes_with(marker)
            connection = connection_of(gw, "alice")
            await anyio.to_thread.run_sync(sqlite_secrets.delete_secret, "alice", "down", "TOKEN")
            cut = connection.dead
            alice.go_on.set()
        # Once the call has ended, the downstream holding the deleted value stops without a next call.
        await ended(pid, marker)
        await wait_closed(connection)

        assert gw.pool.live == 0
    [result] = results
    assert not cut
    assert not result.is_error, text_of(result)
    assert text_of(result) == f"accept: the answer ({sha256('the answer')})"
    assert_no_fragment_of(value, everything_in(result) + caplog.text)


@needs_proc
async def test_a_secret_deleted_after_a_call_read_it_stops_the_downstream_that_call_started_once_it_ends(
    sqlite_secrets: Secrets,
    tmp_path: Path,
    marker: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    value = new_canary()
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)
    entry = marked_entry(marker, DOWNSTREAM_HANDSHAKE_ONLY="1")
    alice = User(answer="the answer")
    alice.go_on = anyio.Event()
    read, deleted = anyio.Event(), anyio.Event()
    redactor_of = gateway_module._redactor_of

    async def read_then_wait(values: dict[str, str]) -> Redactor:
        # Between the call's read of the secrets and its start of a downstream with them.
        read.set()
        await deleted.wait()
        return await redactor_of(values)

    results: list[CallToolResult] = []
    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as gw,
        connect(sqlite_secrets, gw, "alice", mode="legacy", **alice.options()) as client,
    ):
        await client.list_tools()  # as clients do: no listing after the call (see delete_alices_token)
        monkeypatch.setattr(gateway_module, "_redactor_of", read_then_wait)

        async def ask() -> None:
            results.append(await client.call_tool("down__ask", {"question": "Which project?"}))

        async with anyio.create_task_group() as calls:
            calls.start_soon(ask)
            with anyio.fail_after(STARTUP_SECONDS):
                await read.wait()
            await anyio.to_thread.run_sync(sqlite_secrets.delete_secret, "alice", "down", "TOKEN")
            deleted.set()
            with anyio.fail_after(STARTUP_SECONDS):
                await alice.asking.wait()
            [pid] = processes_with(marker)
            alice.go_on.set()
        # The call was made with what it read, and then nothing keeps the value deleted meanwhile.
        await ended(pid, marker)

        assert gw.pool.live == 0
    [result] = results
    assert not result.is_error, text_of(result)
    assert_no_fragment_of(value, everything_in(result) + caplog.text)


async def test_a_secret_changed_in_process_closes_its_users_idle_connection_at_once(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    first, second = fresh_value("first"), fresh_value("second")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", first)

    async with connect(sqlite_secrets, gateway, "alice") as client:
        before = await client.call_tool("down__token_hash", {})
        old = connection_of(gateway, "alice")
        await anyio.to_thread.run_sync(sqlite_secrets.set_secret, "alice", "down", "TOKEN", second)
        # Its process or HTTP connection, with the value of before in its environment or headers, is gone.
        await wait_closed(old)
        live = gateway.pool.live
        after = await client.call_tool("down__token_hash", {})

    assert live == 0
    assert (hash_of(before), hash_of(after)) == (sha256(first), sha256(second))


@needs_proc
async def test_a_secret_deleted_by_another_process_closes_the_downstream_holding_it_at_the_next_call(
    sqlite_secrets: Secrets, encryptor: SecretEncryptor, tmp_path: Path, marker: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", new_canary())
    # Another replica over the same database (or the CLI): its writes are not seen by this process.
    replica_store = SQLiteStore(tmp_path / "secrets.db")
    replica = Secrets(replica_store, encryptor)

    async with running_gateway(sqlite_secrets, tmp_path, {"down": marked_entry(marker)}) as gw:
        pid = await started_for(sqlite_secrets, gw, "alice", marker)
        connection = connection_of(gw, "alice")
        await anyio.to_thread.run_sync(replica.delete_secret, "alice", "down", "TOKEN")
        unseen = not connection.dead and pid in processes_with(marker)
        refused = await call(sqlite_secrets, gw, "alice", "token_hash")
        await ended(pid, marker)
    replica.close()
    replica_store.close()

    assert unseen
    assert missing_keys(refused) == ["TOKEN"]


@pytest.mark.parametrize("change", ["changed", "deleted"])
async def test_a_call_that_waited_for_the_users_call_before_it_is_made_with_what_is_stored_as_it_starts(
    sqlite_secrets: Secrets, tmp_path: Path, change: str
) -> None:
    old, new = fresh_value("old"), fresh_value("new")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", old)
    # Of the handshake: no listen stream's listing waits its turn beside the second call.
    entry = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_HANDSHAKE_ONLY": "1"}}
    started = anyio.Event()
    waited: list[CallToolResult] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        started.set()

    async def call_waiting(client: Client) -> None:
        waited.append(await client.call_tool("down__token_hash", {}))

    # Two clients of alice: the second's call waits for the first's, and her secret changes meanwhile.
    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as gateway,
        connect(sqlite_secrets, gateway, "alice") as first,
        connect(sqlite_secrets, gateway, "alice") as second,
    ):
        with anyio.fail_after(STARTUP_SECONDS):
            async with anyio.create_task_group() as calls, anyio.create_task_group() as long_call:
                long_call.start_soon(
                    functools.partial(first.call_tool, "down__hang", {}, progress_callback=on_progress)
                )
                await started.wait()
                calls.start_soon(call_waiting, second)
                while gateway._call_turns[("alice", "down")].calls < 2:
                    await anyio.sleep(0.01)
                if change == "changed":
                    sqlite_secrets.set_secret("alice", "down", "TOKEN", new)
                else:
                    sqlite_secrets.delete_secret("alice", "down", "TOKEN")
                long_call.cancel_scope.cancel()

    [result] = waited
    if change == "changed":
        assert hash_of(result) == sha256(new)
    else:
        assert missing_keys(result) == ["TOKEN"]
    assert_no_spelling_of(old, everything_in(result))


async def test_a_server_whose_secret_was_deleted_still_shows_its_last_listing_and_its_calls_name_the_key(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))

    async with connect(sqlite_secrets, gateway, "alice") as client:
        before = down_tools((await client.list_tools()).tools)
        deleted = await client.call_tool("delete_secret", {"server": "down", "key": "TOKEN"})
        after = down_tools((await client.list_tools()).tools)
        refused = await client.call_tool("down__ping", {})

    assert not deleted.is_error, text_of(deleted)
    assert after == before == {f"down__{name}" for name in DOWNSTREAM_TOOLS}
    assert missing_keys(refused) == ["TOKEN"]


def silent_entry(silent_from: str, marker: str) -> dict[str, Any]:
    """A stdio downstream that answers nothing from ``silent_from`` on, marked by ``marker``."""
    return {"command": sys.executable, "args": [str(SILENT_FIXTURE), silent_from, marker]}


@pytest.mark.parametrize("silent_from", ["initialize", "tools/list"])
async def test_a_downstream_that_stops_answering_leaves_only_its_own_tools_out_of_the_listing(
    sqlite_secrets: Secrets, tmp_path: Path, silent_from: str, marker: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    servers = {"silent": silent_entry(silent_from, marker), "down": STDIO_ENTRY}

    async with running_gateway(sqlite_secrets, tmp_path, servers) as gw:
        with anyio.fail_after(STARTUP_SECONDS):
            # down starts first, at the default bound: a real server may take longer than the short one.
            hash_of(await gw.call_tool("alice", "down__token_hash", {}))
            gw.pool.start_seconds = SILENT_START_SECONDS
            async with connect(sqlite_secrets, gw, "alice") as alice:
                listed = {tool.name for tool in (await alice.list_tools()).tools}
                hashed = await alice.call_tool("down__token_hash", {})
        silent_connected = ("alice", "silent") in gw.pool._connections

    assert "list_secret_keys" in listed
    assert {f"down__{name}" for name in DOWNSTREAM_TOOLS} <= listed
    assert not any(name.startswith("silent__") for name in listed)
    assert not hashed.is_error, text_of(hashed)
    assert not silent_connected


@needs_proc
async def test_a_call_of_a_downstream_that_never_answers_its_start_is_a_tool_error_and_stops_it(
    sqlite_secrets: Secrets, tmp_path: Path, marker: str
) -> None:
    servers = {"silent": silent_entry("initialize", marker)}

    async with running_gateway(sqlite_secrets, tmp_path, servers, start_seconds=SILENT_START_SECONDS) as gw:
        with anyio.fail_after(STARTUP_SECONDS):
            called = await call_server(sqlite_secrets, gw, "alice", "silent__anything")
        live = gw.pool.live

    assert called.is_error
    expected = f"it did not answer within {SILENT_START_SECONDS:g} seconds"
    assert f"downstream server silent could not be started: {expected}" in text_of(called)
    assert live == 0
    assert processes_with(marker) == []


# --- a downstream that needs its user ---------------------------------------------------------------


async def test_a_url_elicitation_required_error_reaches_the_client_with_its_elicitations(
    sqlite_secrets: Secrets, gateway: Gateway
) -> None:
    value = fresh_value("alice")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)

    # The downstream says the user must sign in at a URL first (-32042, 2025-11-25): the client opens
    # the URL and retries, so the gateway must hand on that error, not turn it into a tool error.
    async with connect(sqlite_secrets, gateway, "alice", mode="legacy") as alice:
        with pytest.raises(MCPError) as raised:
            await alice.call_tool("down__sign_in_first", {"elicitation_id": "sign-in-42"})
        retried = await alice.call_tool("down__token_hash", {})

    required = UrlElicitationRequiredError.from_error(raised.value.error)
    assert required.code == URL_ELICITATION_REQUIRED
    assert [(e.url, e.elicitation_id) for e in required.elicitations] == [
        ("https://auth.example.com/sign-in?elicitation=sign-in-42", "sign-in-42")
    ]
    # It says which server asks; its message named the secret, as a careless server's may: not any more.
    assert required.elicitations[0].message == (
        "[down] Sign in to the service again: [redacted TOKEN] has expired"
    )
    assert_no_spelling_of(value, json.dumps(raised.value.error.model_dump(mode="json")))
    # The downstream answered: it is well, and stays.
    assert hash_of(retried) == sha256(value)


# How each kind of downstream asks, and how each kind of client is asked: the downstream by an
# InputRequiredResult (2026-07-28) or by an elicitation/create request (handshake only), the client by a
# request (handshake, "legacy") or an InputRequiredResult ("auto" negotiates 2026-07-28).
ASKING = {
    "stdio-legacy": ("stdio", "legacy"),
    "stdio-2026": ("stdio", "auto"),
    "handshake-only-legacy": ("stdio-handshake-only", "legacy"),
    "http-legacy": ("streamable-http", "legacy"),
    "http-2026": ("streamable-http", "auto"),
}


@dataclass
class Asking:
    """A downstream that asks its user, and the protocol mode of the client asked."""

    entry: dict[str, Any]
    mode: str

    @property
    def says_when_done(self) -> bool:
        """Only on the handshake protocols does the downstream send notifications/elicitation/complete."""
        return bool(self.entry.get("env", {}).get("DOWNSTREAM_HANDSHAKE_ONLY"))


def asking_entry(request: pytest.FixtureRequest, transport: str) -> dict[str, Any]:
    if transport == "stdio":
        return STDIO_ENTRY
    if transport == "stdio-handshake-only":
        return {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_HANDSHAKE_ONLY": "1"}}
    http: HttpDownstream = request.getfixturevalue("http_downstream")
    http.ensure_running()
    return http_entry(http)


@pytest.fixture(params=list(ASKING))
def asking(request: pytest.FixtureRequest) -> Asking:
    """The fixture downstream over each transport and era, with a client of each era."""
    transport, mode = ASKING[request.param]
    return Asking(asking_entry(request, transport), mode)


class User:
    """A user's client side of elicitation: what it was asked, what it answers, what it was told."""

    def __init__(self, answer: str = "", action: Literal["accept", "decline", "cancel"] = "accept") -> None:
        self.answer = answer
        self.action = action
        self.asked: list[ElicitRequestParams] = []
        self.completed: list[str] = []
        self.asking = anyio.Event()  # set while a question waits for ``go_on``
        self.go_on = anyio.Event()
        self.go_on.set()

    async def elicit(self, _context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        self.asked.append(params)
        self.asking.set()
        await self.go_on.wait()
        if isinstance(params, ElicitRequestURLParams) or self.action != "accept":
            return ElicitResult(action=self.action)
        return ElicitResult(action="accept", content={"answer": self.answer})

    async def notice(self, message: object) -> None:
        if isinstance(message, ElicitCompleteNotification):
            self.completed.append(message.params.elicitation_id)

    def options(self) -> dict[str, Any]:
        return {"elicitation_callback": self.elicit, "message_handler": self.notice}


async def asked_at_once(
    users: dict[str, User], clients: dict[str, Client], tool: str
) -> dict[str, CallToolResult]:
    """Each user's client calls ``tool`` with a question of its own; each answers once all are asked."""
    results: dict[str, CallToolResult] = {}

    async def ask(username: str) -> None:
        results[username] = await clients[username].call_tool(tool, {"question": f"Question for {username}?"})

    async with anyio.create_task_group() as calls:
        for username in users:
            calls.start_soon(ask, username)
        with anyio.fail_after(STARTUP_SECONDS):
            for user in users.values():
                await user.asking.wait()
        for user in users.values():
            user.go_on.set()
    return results


async def test_a_downstreams_form_question_reaches_its_caller_and_its_answer_the_downstream_and_no_log(
    sqlite_secrets: Secrets,
    tmp_path: Path,
    asking: Asking,
    caplog: pytest.LogCaptureFixture,
    canary: str,
) -> None:
    # As `serve --log-level DEBUG` logs: the SDK's payload loggers stay at INFO (see mcp_secrets.logs).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="mcp_secrets")
    value = fresh_value("alice")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)
    alice = User(answer=canary)

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": asking.entry}) as gw,
        connect(sqlite_secrets, gw, "alice", mode=asking.mode, **alice.options()) as client,
    ):
        result = await client.call_tool("down__ask", {"question": "Which project?"})

    [asked] = alice.asked
    assert isinstance(asked, ElicitRequestFormParams)
    # It says which server asks, and shows no injected value; the form is the downstream's.
    assert asked.message == "[down] Which project? (asked with [redacted TOKEN])"
    assert asked.requested_schema["properties"]["answer"]["type"] == "string"
    # The downstream got the answer as given (it says it, and its hash), and so does the caller's client,
    # whose user typed it: form mode may not ask for secrets. No log holds it.
    assert not result.is_error
    echoed = text_of(result) == f"accept: {canary} ({sha256(canary)})"  # a bare bool: nothing shown
    assert echoed
    assert_no_fragment_of(canary, caplog.text)
    assert_no_spelling_of(value, caplog.text)


@pytest.mark.parametrize("transport", ["stdio", "streamable-http"])
async def test_a_downstreams_question_whose_key_holds_the_secret_is_refused_and_shows_it_nowhere(
    sqlite_secrets: Secrets, tmp_path: Path, request: pytest.FixtureRequest, transport: str
) -> None:
    # The client answers under the key it was shown, and the downstream looks its answer up by its own: a
    # key cannot be redacted and still work.
    value = fresh_value("alice")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)
    alice = User(answer=new_canary())
    entry = asking_entry(request, transport)

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": entry}) as gw,
        connect(sqlite_secrets, gw, "alice", mode="auto", **alice.options()) as client,
    ):
        result = await client.call_tool("down__ask", {"key_names_token": True})
        after = await client.call_tool("down__ask", {})

    assert result.is_error
    assert "downstream server down named its question with an injected secret" in text_of(result)
    assert_no_spelling_of(value, everything_in(result))
    assert len(alice.asked) == 1  # the second call's question only
    assert text_of(after).startswith("accept: ")


async def test_a_downstreams_url_question_reaches_its_caller_with_the_url_and_its_completion(
    sqlite_secrets: Secrets, tmp_path: Path, asking: Asking
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    alice = User()

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": asking.entry}) as gw,
        connect(sqlite_secrets, gw, "alice", mode=asking.mode, **alice.options()) as client,
    ):
        result = await client.call_tool("down__open_page", {"elicitation_id": "page-7"})

    [asked] = alice.asked
    assert isinstance(asked, ElicitRequestURLParams)
    assert asked.url == "https://page.example.com/form?elicitation=page-7"
    assert asked.message == "[down] Fill in the form on this page"
    if asking.mode == "legacy":  # 2025-11-25 gives each URL question an id (one of the gateway's, if need be)
        assert asked.elicitation_id
    assert text_of(result) == "accept"
    if asking.says_when_done:
        # On the handshake protocols the downstream says when the page is done: the client hears it.
        assert alice.completed == ["page-7"]


async def test_an_elicitation_id_naming_the_secret_reaches_the_client_redacted_in_question_and_completion(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    handshake_only = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_HANDSHAKE_ONLY": "1"}}
    alice = User()

    # The downstream's notifications/elicitation/complete names the id it chose: one holding its secret.
    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": handshake_only}) as gw,
        connect(sqlite_secrets, gw, "alice", mode="legacy", **alice.options()) as client,
    ):
        result = await client.call_tool("down__open_page", {"elicitation_id": "page", "id_names_token": True})

    [asked] = alice.asked
    assert isinstance(asked, ElicitRequestURLParams)
    assert_no_spelling_of(canary, json.dumps(alice.completed))
    assert_no_spelling_of(canary, asked.model_dump_json())
    assert asked.elicitation_id == "page-[redacted TOKEN]"
    # The completion names the question as the client was shown it.
    assert alice.completed == [asked.elicitation_id]
    assert text_of(result) == "accept"


async def test_a_downstream_is_refused_what_its_callers_client_cannot_ask_and_the_answer_is_passed_on(
    sqlite_secrets: Secrets, tmp_path: Path, asking: Asking
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    declining = User(action="decline")

    async with running_gateway(sqlite_secrets, tmp_path, {"down": asking.entry}) as gw:
        # A client that declares no elicitation is never sent one: the downstream hears a refusal.
        async with connect(sqlite_secrets, gw, "alice", mode=asking.mode) as mute:
            refused = await mute.call_tool("down__ask", {})
        async with connect(sqlite_secrets, gw, "alice", mode=asking.mode, **declining.options()) as client:
            declined = await client.call_tool("down__ask", {})
            after = await client.call_tool("down__ping", {})

    assert refused.is_error
    assert text_of(declined).startswith("decline: ")
    assert len(declining.asked) == 1
    assert text_of(after) == "pong"


async def test_a_downstreams_question_reaches_only_the_client_whose_call_asked_it(
    sqlite_secrets: Secrets, tmp_path: Path, asking: Asking
) -> None:
    users = {"alice": User(answer=fresh_value("alice-answer")), "bob": User(answer=fresh_value("bob-answer"))}
    for username, user in users.items():
        sqlite_secrets.set_secret(username, "down", "TOKEN", fresh_value(username))
        user.go_on = anyio.Event()  # each answers only once both have been asked: two questions at once

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": asking.entry}) as gw,
        connect(sqlite_secrets, gw, "alice", mode=asking.mode, **users["alice"].options()) as alice,
        connect(sqlite_secrets, gw, "bob", mode=asking.mode, **users["bob"].options()) as bob,
    ):
        results = await asked_at_once(users, {"alice": alice, "bob": bob}, "down__ask")

    for username, user in users.items():
        assert [asked.message.split(" (")[0] for asked in user.asked] == [f"[down] Question for {username}?"]
        assert text_of(results[username]).endswith(f"({sha256(user.answer)})")


async def test_a_question_by_request_is_refused_for_a_client_on_2026_07_28_which_takes_none(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    handshake_only = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_HANDSHAKE_ONLY": "1"}}
    alice = User()

    # A downstream of the handshake asks in the middle of its call; a client on 2026-07-28 is asked
    # only in a result, which would end that call: the downstream hears a refusal instead.
    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": handshake_only}) as gw,
        connect(sqlite_secrets, gw, "alice", mode="auto", **alice.options()) as client,
    ):
        assert client.protocol_version == "2026-07-28"
        refused = await client.call_tool("down__ask", {})
        after = await client.call_tool("down__ping", {})

    assert refused.is_error
    assert alice.asked == []
    assert text_of(after) == "pong"


@pytest.mark.parametrize("what", ["sampling", "roots"])
async def test_a_downstreams_request_for_the_callers_model_or_roots_is_refused_and_never_reaches_the_client(
    sqlite_secrets: Secrets, tmp_path: Path, asking: Asking, canary: str, what: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    reached: list[str] = []

    async def sample(_context: ClientRequestContext, _params: Any) -> CreateMessageResult:
        reached.append("sampling")
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="ok"), model="m")

    async def list_roots(_context: ClientRequestContext) -> ListRootsResult:
        reached.append("roots")
        return ListRootsResult(roots=[])

    # The caller's client offers both: a downstream is still not let talk to its model (a prompt of the
    # downstream's choosing, at the user's cost) or read where the user works.
    async with (
        running_gateway(sqlite_secrets, tmp_path, {"down": asking.entry}) as gw,
        connect(
            sqlite_secrets,
            gw,
            "alice",
            mode=asking.mode,
            sampling_callback=sample,
            list_roots_callback=list_roots,
        ) as client,
    ):
        result = await client.call_tool("down__ask_client", {"what": what})
        after = await client.call_tool("down__ping", {})

    assert_no_spelling_of(canary, everything_in(result))
    assert reached == []
    if asking.entry.get("env", {}).get("DOWNSTREAM_HANDSHAKE_ONLY"):  # it asks by a request
        # It hears the refusal of a client without the capability, and goes on.
        assert text_of(result) == f"refused: {INVALID_REQUEST}"
    else:
        # Asked in an InputRequiredResult, which has no refusal to give back: the call is a tool error.
        assert result.is_error
        refusal = "which is not relayed" if asking.mode == "auto" else "not supported"
        assert refusal in text_of(result)
    assert text_of(after) == "pong"


async def test_a_call_refused_for_a_stale_tool_listing_is_sent_again_after_listing_anew(
    sqlite_secrets: Secrets, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = fresh_value("alice")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", value)
    sent = ClientSession.call_tool
    refusals = [MCPError(HEADER_MISMATCH, "Mcp-Param header missing")]
    # Each call of the tool and each listing, with the task it ran in: the connection lists its tools
    # in a task of its own too (at each listen stream), which must not pass for the call's listing.
    events: list[tuple[str, int]] = []
    listed = ClientSession.list_tools

    # A downstream on 2026-07-28 refuses a call whose headers do not match the tool it listed (SEP-2243):
    # the SDK's Client lists again and resends once, and so does the gateway for a client asked by result.
    async def refuse_once(self: ClientSession, *args: Any, **kwargs: Any) -> Any:
        if args[0] == "token_hash":  # the downstream's own name: the gateway's call of it
            events.append(("call", anyio.get_current_task().id))
            if refusals:
                raise refusals.pop()
        return await sent(self, *args, **kwargs)

    async def list_tools(self: ClientSession, *args: Any, **kwargs: Any) -> Any:
        events.append(("list", anyio.get_current_task().id))
        return await listed(self, *args, **kwargs)

    monkeypatch.setattr(ClientSession, "call_tool", refuse_once)
    monkeypatch.setattr(ClientSession, "list_tools", list_tools)
    async with connect(sqlite_secrets, gateway, "alice", mode="auto") as alice:
        assert alice.protocol_version == "2026-07-28"
        result = await alice.call_tool("down__token_hash", {})

    assert hash_of(result) == sha256(value)
    assert refusals == []
    calls = [index for index, (kind, _) in enumerate(events) if kind == "call"]
    assert len(calls) == 2
    refused_in = events[calls[0]][1]
    # The call itself asked for the downstream's listing again, between the refusal and the resend.
    assert ("list", refused_in) in events[calls[0] + 1 : calls[1]]


# --- list_secret_keys -----------------------------------------------------------------------------


async def test_list_secret_keys_shows_each_servers_required_and_missing_keys(
    sqlite_secrets: Secrets, tmp_path: Path
) -> None:
    # Servers nobody listens on: what is missing comes from the store alone.
    nowhere = f"http://127.0.0.1:{free_port()}/mcp"
    servers = {
        "down": {
            "url": nowhere,
            "headers": {"Authorization": "Bearer ${secret:TOKEN}"},
            "description": "Where tickets live",
            "secrets": {"TOKEN": {}, "NOTE": {"required": False}},
        },
        "other": {
            "url": nowhere,
            "headers": {"Authorization": "Bearer ${secret:API_KEY}", "X-Region": "${secret:REGION}"},
        },
    }
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    sqlite_secrets.set_secret("alice", "other", "REGION", "eu-west-1")

    async with (
        running_gateway(sqlite_secrets, tmp_path, servers) as gw,
        connect(sqlite_secrets, gw, "alice") as alice,
        connect(sqlite_secrets, gw, "bob") as bob,
    ):
        alices = await alice.call_tool("list_secret_keys", {})
        bobs = await bob.call_tool("list_secret_keys", {})

    assert alices.structured_content is not None
    assert alices.structured_content["servers"] == [
        {"server": "down", "description": "Where tickets live", "required": ["TOKEN"], "missing": []},
        {"server": "other", "description": "", "required": ["API_KEY", "REGION"], "missing": ["API_KEY"]},
    ]
    assert "other still needs: API_KEY" in text_of(alices)
    assert bobs.structured_content is not None
    assert [(status["server"], status["missing"]) for status in bobs.structured_content["servers"]] == [
        ("down", ["TOKEN"]),
        ("other", ["API_KEY", "REGION"]),
    ]


def test_what_each_server_misses_is_read_from_its_required_keys_alone(
    sqlite_secrets: Secrets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every key of the user was read at each list_secret_keys: 37 ms and 7 MB for a user of 11,000 keys.
    nowhere = f"http://127.0.0.1:{free_port()}/mcp"
    servers = {
        "down": {"url": nowhere, "headers": {"Authorization": "Bearer ${secret:TOKEN}"}},
        "other": {"url": nowhere, "headers": {"X-Key": "${secret:API_KEY}", "X-Region": "${secret:REGION}"}},
    }
    for index in range(20):
        sqlite_secrets.set_secret("alice", "down", f"UNUSED_{index:02d}", "v")
        sqlite_secrets.set_secret("alice", f"elsewhere-{index:02d}", "TOKEN", "v")
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    sqlite_secrets.set_secret("alice", "other", "REGION", "eu-west-1")
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    gateway = Gateway(load_gateway_config(path), sqlite_secrets)

    def every_record(*_: object, **__: object) -> list[object]:
        raise AssertionError("the status read whole listings of records")

    monkeypatch.setattr(sqlite_secrets.store, "find_secrets", every_record)
    statuses = gateway.status("alice")

    assert [(status.server, status.required, status.missing) for status in statuses] == [
        ("down", ["TOKEN"], []),
        ("other", ["API_KEY", "REGION"], ["API_KEY"]),
    ]


async def test_a_downstream_that_cannot_be_reached_is_logged_as_a_warning_with_its_cause(
    sqlite_secrets: Secrets, tmp_path: Path, caplog: pytest.LogCaptureFixture, canary: str
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/mcp"
    servers = {"down": {"url": nowhere, "headers": {"Authorization": "Bearer ${secret:TOKEN}"}}}
    sqlite_secrets.set_secret("alice", "down", "TOKEN", canary)
    caplog.set_level(logging.INFO, logger="mcp_secrets.gateway")

    async with (
        running_gateway(sqlite_secrets, tmp_path, servers) as gw,
        connect(sqlite_secrets, gw, "alice") as alice,
    ):
        listed = await alice.list_tools()

    assert not [tool.name for tool in listed.tools if tool.name.startswith("down__")]
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.getMessage().startswith(
        "tools of server down not listed for alice: downstream server down"
    )
    assert_no_fragment_of(canary, caplog.text)


async def test_an_http_error_of_a_remote_downstream_is_shown_without_its_url_holding_a_secret(
    sqlite_secrets: Secrets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # httpx writes a URL its own way, a space as %20 but ':' as it is: a spelling no redaction looks for.
    value = f"pass phrase:{_random.token_hex(12)}"
    sqlite_secrets.set_secret("alice", "moved", "TOKEN", value)
    caplog.set_level(logging.INFO)
    for name in URL_LOGGERS:  # as served: they log each request's URL at INFO
        caplog.set_level(logging.WARNING, logger=name)

    with moved_endpoint() as base:
        servers = {"moved": {"url": base + "/mcp/${secret:TOKEN}/sse", "transport": "sse"}}
        async with (
            running_gateway(sqlite_secrets, tmp_path, servers) as gw,
            connect(sqlite_secrets, gw, "alice") as alice,
        ):
            await alice.list_tools()
            called = await alice.call_tool("moved__anything", {})

    assert called.is_error
    assert_no_fragment_of(value, text_of(called))
    assert_no_fragment_of(value, caplog.text)
    assert "HTTPStatusError: 307 Temporary Redirect" in text_of(called)


RAW_FIXTURE = FIXTURE.with_name("raw_server.py")


def raw_entry(mode: str) -> dict[str, Any]:
    """The hand-written stdio downstream (tests/fixtures/raw_server.py), answering as ``mode`` says."""
    return {
        "command": sys.executable,
        "args": [str(RAW_FIXTURE), mode],
        "env": {"DOWNSTREAM_TOKEN": "${secret:TOKEN}"},
    }


def log_as_served(caplog: pytest.LogCaptureFixture) -> None:
    """Capture what ``serve`` logs at DEBUG, its libraries' loggers at the levels it sets them to."""
    for name in PAYLOAD_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    for name in URL_LOGGERS:
        caplog.set_level(logging.WARNING, logger=name)
    for name in CLIENT_TRANSPORT_LOGGERS:
        caplog.set_level(logging.ERROR, logger=name)
    caplog.set_level(logging.DEBUG)  # last: each call sets the capturing handler's level too


def logged_messages(caplog: pytest.LogCaptureFixture) -> str:
    """Every record's message; a library's traceback is the log handler's to cut (logs.py), not caplog's."""
    return "\n".join(record.getMessage() for record in caplog.records)


async def test_a_result_the_sdk_cannot_read_is_a_tool_error_saying_where_and_quoting_none_of_it(
    sqlite_secrets: Secrets, tmp_path: Path, caplog: pytest.LogCaptureFixture, canary: str
) -> None:
    sqlite_secrets.set_secret("alice", "raw", "TOKEN", canary)
    log_as_served(caplog)

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"raw": raw_entry("unknown-block")}) as gw,
        connect(sqlite_secrets, gw, "alice") as alice,
    ):
        called = await alice.call_tool("raw__run", {})

    # pydantic's error quotes the block, shortened to the start and end of its repr: the end of the secret.
    assert called.is_error
    assert_no_fragment_of(canary, text_of(called))
    assert_no_fragment_of(canary, logged_messages(caplog))
    assert "input_value" not in text_of(called)
    assert "content.0" in text_of(called)  # where the result went wrong


async def test_a_tool_listing_the_sdk_cannot_read_is_logged_saying_where_and_quoting_none_of_it(
    sqlite_secrets: Secrets, tmp_path: Path, caplog: pytest.LogCaptureFixture, canary: str
) -> None:
    sqlite_secrets.set_secret("alice", "raw", "TOKEN", canary)
    log_as_served(caplog)

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"raw": raw_entry("bad-tool")}) as gw,
        connect(sqlite_secrets, gw, "alice") as alice,
    ):
        listed = await alice.list_tools()

    assert not [tool.name for tool in listed.tools if tool.name.startswith("raw__")]
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.getMessage().startswith("tools of server raw not listed for alice: ")
    assert "tools.1.inputSchema" in warning.getMessage()
    assert_no_fragment_of(canary, logged_messages(caplog))


async def test_structured_content_its_schema_refuses_is_a_tool_error_saying_where_and_quoting_none_of_it(
    sqlite_secrets: Secrets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    passphrase = " ".join(_random.token_hex(4) for _ in range(12))  # long, with spaces: a seed phrase
    sqlite_secrets.set_secret("alice", "raw", "TOKEN", passphrase)
    log_as_served(caplog)

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"raw": raw_entry("off-schema")}) as gw,
        connect(sqlite_secrets, gw, "alice") as alice,
    ):
        await alice.list_tools()  # the client checks a result against the schema listed
        called = await alice.call_tool("raw__run", {})

    # jsonschema's error pretty-prints the value, a long string cut at its spaces into quoted pieces.
    assert called.is_error
    for shown in (text_of(called), logged_messages(caplog)):
        leaked = sum(word in shown for word in passphrase.split())
        assert leaked == 0  # a bare count: a failure prints no word of it
    assert "the value at $.balance fails the schema's 'type': 'number'" in text_of(called)


class _AnswersAlike(BaseHTTPRequestHandler):
    """A quiet test endpoint answering GET and DELETE as its ``do_POST`` answers POST."""

    def do_POST(self) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self.do_POST()

    def do_DELETE(self) -> None:
        self.do_POST()

    def log_message(self, *_args: object) -> None:
        """Keep the test output quiet."""


class _EchoingHandler(_AnswersAlike):
    """Answers every request 200 with a JSON body that is no JSON-RPC, quoting the Authorization it was sent.

    As a service (or a proxy before it) answers a key it refuses: ``{"error": "invalid api key", "key": …}``;
    with ``server.html`` set, an HTML page, still called JSON.
    """

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers.get("Authorization", "").partition(" ")[2]
        if self.server.html:  # type: ignore[attr-defined]
            body = f"<html><body>invalid api key {key}</body></html>".encode()
        else:
            body = json.dumps({"error": "invalid api key", "key": key}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def echoing_endpoint(*, html: bool) -> Iterator[str]:
    """A remote endpoint answering every request with the key it was sent; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingHandler)
    server.html = html  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("sent", "body"),
    [("bearer", "json"), ("bearer", "html"), ("basic", "json"), ("bearer holding input_type", "json")],
    ids=["bearer-json", "bearer-html", "basic-json", "bearer-holding-input_type-json"],
)
async def test_a_remote_downstreams_body_that_is_no_json_rpc_is_shown_quoting_none_of_the_key_it_echoes(
    sqlite_secrets: Secrets, tmp_path: Path, caplog: pytest.LogCaptureFixture, sent: str, body: str
) -> None:
    # A value holding what ends pydantic's input_value: what follows it in the value must go too. The tail
    # is short enough for both to be within the end of the body that pydantic shows.
    middle = ", input_type=x" if sent.endswith("holding input_type") else ""
    head, tail = _random.token_hex(20), _random.token_hex(4)
    value = head + middle + tail
    sqlite_secrets.set_secret("alice", "remote", "TOKEN", value)
    log_as_served(caplog)

    with echoing_endpoint(html=body == "html") as base:
        if sent.startswith("bearer"):
            entry: dict[str, Any] = {
                "url": base + "/mcp",
                "headers": {"Authorization": "Bearer ${secret:TOKEN}"},
            }
            echoed = head
        else:  # httpx sends the URL's user part as Basic base64("user:value")
            entry = {"url": base.replace("//", "//user:${secret:TOKEN}@") + "/mcp"}
            echoed = base64.b64encode(f"user:{value}".encode()).decode()
        async with (
            running_gateway(sqlite_secrets, tmp_path, {"remote": entry}) as gw,
            connect(sqlite_secrets, gw, "alice") as alice,
        ):
            await alice.list_tools()
            called = await alice.call_tool("remote__anything", {})

    assert called.is_error
    assert "Failed to parse JSON response" in text_of(called)
    for shown in (text_of(called), logged_messages(caplog)):
        assert_no_fragment_of(echoed, shown)
        leaked = head in shown or tail in shown  # a bare bool: a failure prints neither
        assert not leaked
    assert "input_value" not in text_of(called)


# --- the real CLI over Streamable HTTP ------------------------------------------------------------

SERVED_NAMES = {"stdio": "down", "streamable-http": "web"}


@pytest.fixture(scope="module")
def gateway_deployment(
    tmp_path_factory: pytest.TempPathFactory, http_downstream: HttpDownstream
) -> Iterator[Deployment]:
    """``mcp-secrets serve --transport streamable-http --servers FILE`` with tokens for alice and bob.

    It serves the fixture downstream as ``down`` (stdio; it prints its secret to stdout before
    speaking JSON-RPC, so that the log check covers what the SDK logs of a stray line, and to stderr), ``web``
    (HTTP; its URL carries the secret too, so that the log check covers URLs), and as ``licensed``,
    which needs a key nobody has.
    """
    root = tmp_path_factory.mktemp("gateway")
    down = {**STDIO_ENTRY, "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_STRAY_OUTPUT": "1"}}
    web = http_entry(http_downstream)
    web["url"] += "?probe=${secret:TOKEN}"
    licensed = {**STDIO_ENTRY, "secrets": {"TOKEN": {}, "LICENCE": {"description": "A licence key"}}}
    servers = root / "servers.json"
    servers.write_text(
        json.dumps({"mcpServers": {"down": down, "web": web, "licensed": licensed}}), encoding="utf-8"
    )
    env = isolated_env(root)
    tokens = {username: create_token(env, username) for username in ("alice", "bob")}
    with serving(env, "streamable-http", root / "server.log", "--servers", str(servers)) as deployment:
        deployment.tokens.update(tokens)
        yield deployment


@pytest.fixture
def served(gateway_deployment: Deployment, downstream: Downstream) -> tuple[Deployment, str]:
    """The HTTP deployment and the name it serves the fixture downstream under, per transport."""
    return gateway_deployment, SERVED_NAMES[downstream.transport]


async def store_over_mcp(deployment: Deployment, username: str, server: str, value: str) -> None:
    async with deployment.connect(username) as client:
        stored = await client.call_tool("set_secret", {"server": server, "key": "TOKEN", "value": value})
    assert not stored.is_error, text_of(stored)


async def test_over_http_each_token_holder_gets_the_hash_of_their_own_secret(
    served: tuple[Deployment, str],
) -> None:
    deployment, server = served
    values = {"alice": fresh_value("alice"), "bob": fresh_value("bob")}
    for username, value in values.items():
        await store_over_mcp(deployment, username, server, value)
    hashes: dict[str, list[str]] = {username: [] for username in values}

    async def call_hash(username: str, client: Client) -> None:
        hashes[username].append(hash_of(await client.call_tool(f"{server}__token_hash", {})))

    async with (
        deployment.connect("alice") as alice,
        deployment.connect("bob") as bob,
        anyio.create_task_group() as calls,
    ):
        for _ in range(CONCURRENT_CALLS):
            calls.start_soon(call_hash, "alice", alice)
            calls.start_soon(call_hash, "bob", bob)

    assert hashes == {username: [sha256(value)] * CONCURRENT_CALLS for username, value in values.items()}


async def store_by(how: str, deployment: Deployment, username: str) -> None:
    """Store ``username``'s TOKEN of ``down`` as a user would by the REST API, or on the entry page."""
    value = fresh_value(username)
    if how == "rest":
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            stored = await http.post(
                f"{deployment.base_url}/secrets/set",
                json={"server": "down", "key": "TOKEN", "value": value, "action": "save"},
                headers={"Authorization": f"Bearer {deployment.token(username)}"},
            )
        assert stored.status_code == 200, stored.text
        return
    async with deployment.connect(username) as client:  # it cannot open URLs: the link comes in the result
        requested = await client.call_tool("request_secret", {"server": "down", "key": "TOKEN"})
    assert requested.structured_content is not None, text_of(requested)
    url = str(requested.structured_content["url"])
    async with httpx2.AsyncClient(trust_env=False, timeout=30) as browser:
        page = await browser.get(url)
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None, page.status_code
        posted = await browser.post(url, data={"csrf": found.group(1), "value": value})
    assert posted.status_code == 200, posted.status_code


@pytest.mark.parametrize("how", ["rest", "entry page"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_over_http_a_secret_stored_elsewhere_than_the_tools_tells_only_its_users_clients(
    gateway_deployment: Deployment, how: str, mode: str
) -> None:
    deployment = gateway_deployment

    async with (
        watching(functools.partial(deployment.connect, "alice"), mode) as (_, alices),
        watching(functools.partial(deployment.connect, "bob"), mode) as (_, bobs),
    ):
        await store_by(how, deployment, "alice")
        await told_of_a_change(alices)
        await store_by(how, deployment, "bob")
        await told_of_a_change(bobs)
        await store_by(how, deployment, "alice")
        await told_of_a_change(alices)

    assert (untold(alices), untold(bobs)) == (0, 0)


@needs_proc
async def test_over_http_a_secret_deleted_by_the_rest_api_stops_its_users_idle_downstream_at_once(
    tmp_path: Path, marker: str
) -> None:
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"down": marked_entry(marker)}}), encoding="utf-8")
    env = isolated_env(tmp_path)
    value = new_canary()

    with serving(env, "streamable-http", tmp_path / "server.log", "--servers", str(servers)) as deployment:
        await store_over_mcp(deployment, "alice", "down", value)
        async with deployment.connect("alice") as client:
            hashed = hash_of(await client.call_tool("down__token_hash", {}))
        [pid] = processes_with(marker)
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            deleted = await http.post(
                f"{deployment.base_url}/secrets/set",
                json={"server": "down", "key": "TOKEN", "action": "delete"},
                headers={"Authorization": f"Bearer {deployment.token('alice')}"},
            )
        await ended(pid, marker)

    assert hashed == sha256(value)
    assert deleted.status_code == 200, deleted.status_code
    shown = deleted.text + deployment.log() + stdout_path(deployment.log_path).read_text(encoding="utf-8")
    assert_no_fragment_of(value, shown)


LISTEN_BOUND = 2


@pytest.fixture
def listen_bound_deployment(tmp_path: Path, start_server: Callable[..., Any]) -> Iterator[Deployment]:
    """``mcp-secrets serve --servers`` over Streamable HTTP letting each user keep two listen streams."""
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"down": STDIO_ENTRY}}), encoding="utf-8")
    env = isolated_env(tmp_path, MCP_SECRETS_MAX_LISTEN_STREAMS_PER_USER=str(LISTEN_BOUND))
    tokens = {username: create_token(env, username) for username in ("alice", "bob")}
    with start_server(
        env, "streamable-http", tmp_path / "server.log", "--servers", str(servers)
    ) as deployment:
        deployment.tokens.update(tokens)
        yield deployment


async def refused_listening(deployment: Deployment, token: str) -> MCPError:
    """The error a client of ``token``'s holder gets for one listen stream more."""
    async with deployment.connect(token=token, mode="auto") as client:
        with pytest.raises(MCPError) as refused:
            async with client.listen(tools_list_changed=True):
                pass
    return refused.value


async def test_over_http_a_user_at_the_listen_stream_bound_gets_no_new_one_and_other_users_still_are_told(
    listen_bound_deployment: Deployment,
) -> None:
    deployment = listen_bound_deployment
    as_alice = functools.partial(deployment.connect, "alice")
    async with AsyncExitStack() as streams:
        alices: list[MemoryObjectReceiveStream[None]] = []
        for _ in range(LISTEN_BOUND):
            _, changes = await streams.enter_async_context(watching(as_alice, "auto"))
            alices.append(changes)
        refused = await refused_listening(deployment, deployment.token("alice"))
        async with watching(functools.partial(deployment.connect, "bob"), "auto") as (_, bobs):
            await store_by("rest", deployment, "bob")
            await told_of_a_change(bobs)
        await store_by("rest", deployment, "alice")  # the streams she has go on
        for told in alices:
            await told_of_a_change(told)

    async def listens() -> bool:
        async with as_alice(mode="auto") as client:
            try:
                async with client.listen(tools_list_changed=True):
                    return True
            except MCPError:
                return False

    # Once hers end she may listen again: the server sees a stream end a moment after its client goes.
    for _ in range(200):
        if await listens():
            break
        await anyio.sleep(0.05)
    else:
        pytest.fail("listen streams that ended still count against their user")

    assert f"too many open listen streams for this user (at most {LISTEN_BOUND})" in refused.error.message
    assert "bob" not in refused.error.message
    assert "refused a listen stream of alice" in deployment.log()
    assert not any(token in deployment.log() for token in deployment.tokens.values())


async def test_over_http_listen_streams_of_a_revoked_token_do_not_keep_its_user_from_listening(
    listen_bound_deployment: Deployment,
) -> None:
    # A leaked token revoked: whoever holds it must not keep alice from being told of her changes.
    deployment = listen_bound_deployment
    leaked = deployment.token("alice")
    async with AsyncExitStack() as streams:
        for _ in range(LISTEN_BOUND):
            await streams.enter_async_context(
                watching(functools.partial(deployment.connect, token=leaked), "auto")
            )
        revoked = deployment.cli("token", "revoke", leaked)
        deployment.tokens["alice"] = create_token(deployment.env, "alice")
        async with watching(functools.partial(deployment.connect, "alice"), "auto") as (_, alices):
            await store_by("rest", deployment, "alice")
            await told_of_a_change(alices)

    assert revoked.returncode == 0, revoked.stderr


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_over_http_a_client_of_a_revoked_token_is_no_longer_told_of_its_users_changes(
    listen_bound_deployment: Deployment, mode: str
) -> None:
    # Whoever holds a leaked token, once revoked, must not go on learning when its user changes secrets.
    deployment = listen_bound_deployment
    leaked = deployment.token("alice")
    async with watching(functools.partial(deployment.connect, token=leaked), mode) as (_, leakeds):
        revoked = deployment.cli("token", "revoke", leaked)
        deployment.tokens["alice"] = create_token(deployment.env, "alice")
        async with watching(functools.partial(deployment.connect, "alice"), mode) as (_, alices):
            for _ in range(2):
                await store_by("rest", deployment, "alice")
                await told_of_a_change(alices)

    assert revoked.returncode == 0, revoked.stderr
    assert (untold(leakeds), untold(alices)) == (0, 0)


async def test_over_http_a_missing_secret_error_offers_an_entry_link_per_key(
    gateway_deployment: Deployment,
) -> None:
    async with gateway_deployment.connect("alice") as alice:
        result = await alice.call_tool("licensed__token_hash", {})

    assert missing_keys(result) == ["LICENCE", "TOKEN"]
    for key in ("LICENCE", "TOKEN"):
        assert re.search(rf"{key}: https?://\S+/secrets/entry/\S+", text_of(result)), text_of(result)
    # The error is logged by the SDK; the links' tokens in it must not be.
    tokens = re.findall(r"/secrets/entry/([A-Za-z0-9_-]+)", text_of(result))
    assert len(tokens) == 2
    assert not any(token in gateway_deployment.log() for token in tokens)


async def test_over_http_a_canary_shows_in_no_result_and_no_log(
    served: tuple[Deployment, str], canary: str
) -> None:
    deployment, server = served
    await store_over_mcp(deployment, "alice", server, canary)
    logs: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with deployment.connect("alice", logging_callback=on_log, log_level="debug") as alice:
        listed = await alice.list_tools()
        results = [
            await alice.call_tool(f"{server}__{tool}", {})
            for tool in ("token_hash", "echo_token", "fail_with_token", "work")
        ]
        results.append(await alice.call_tool("list_secret_keys", {}))

    assert hash_of(results[0]) == sha256(canary)
    assert [result.is_error for result in results] == [False, False, True, False, False]
    assert f"{server}__echo_token" in {tool.name for tool in listed.tools}
    assert logs, "the work tool's log messages arrived"
    shown = json.dumps(
        [
            listed.model_dump(mode="json"),
            *(result.model_dump(mode="json") for result in results),
            *(log.model_dump(mode="json") for log in logs),
        ]
    )
    assert_no_spelling_of(canary, shown)
    assert_no_spelling_of(canary, deployment.log())
    assert_no_fragment_of(canary, deployment.log())
    assert_no_spelling_of(canary, stdout_path(deployment.log_path).read_text(encoding="utf-8"))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_over_http_two_users_asked_at_once_each_get_only_their_own_question(
    served: tuple[Deployment, str], mode: str
) -> None:
    deployment, server = served
    users = {"alice": User(answer=new_canary()), "bob": User(answer=new_canary())}
    for username, user in users.items():
        await store_over_mcp(deployment, username, server, fresh_value(username))
        user.go_on = anyio.Event()  # each answers only once both have been asked

    async with (
        deployment.connect("alice", mode=mode, **users["alice"].options()) as alice,
        deployment.connect("bob", mode=mode, **users["bob"].options()) as bob,
    ):
        results = await asked_at_once(users, {"alice": alice, "bob": bob}, f"{server}__ask")

    for username, user in users.items():
        questions = [asked.message.split(" (")[0] for asked in user.asked]
        assert questions == [f"[{server}] Question for {username}?"]
        assert text_of(results[username]).endswith(f"({sha256(user.answer)})")
        others = [other.answer for name, other in users.items() if name != username]
        heard_another = any(answer in everything_in(results[username]) for answer in others)
        assert not heard_another  # a bare bool: nothing shown
        assert_no_fragment_of(user.answer, deployment.log())


async def test_over_http_one_users_question_state_cannot_be_answered_by_another(
    served: tuple[Deployment, str],
) -> None:
    deployment, server = served
    for username in ("alice", "bob"):
        await store_over_mcp(deployment, username, server, fresh_value(username))
    answer = {"ask": ElicitResult(action="accept", content={"answer": new_canary()})}

    # On 2026-07-28 the question comes back in a result whose state the client echoes: one user's
    # state is bound to that user, so another cannot answer (or learn) that user's question.
    asker = User().options()  # declares elicitation; each round is driven by hand here
    async with deployment.connect("alice", **asker) as alice:
        asked = await alice.session.call_tool(f"{server}__ask", {}, allow_input_required=True)
    assert isinstance(asked, InputRequiredResult)
    assert asked.request_state is not None
    async with deployment.connect("bob", **asker) as bob:
        with pytest.raises(MCPError) as refused:
            await bob.session.call_tool(
                f"{server}__ask", {}, input_responses=answer, request_state=asked.request_state
            )
    assert refused.value.code == INVALID_PARAMS
    async with deployment.connect("alice", **asker) as alice:
        answered = await alice.session.call_tool(
            f"{server}__ask", {}, input_responses=answer, request_state=asked.request_state
        )
    assert text_of(answered).startswith("accept: ")


class _MovedHandler(_AnswersAlike):
    """Answers every request with a redirect to the same path on another origin (localhost for 127.0.0.1)."""

    def do_POST(self) -> None:
        self.send_response(307)
        self.send_header("Location", f"http://localhost:{self.server.server_address[1]}{self.path}/")
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextlib.contextmanager
def moved_endpoint() -> Iterator[str]:
    """A remote MCP endpoint that has moved to another origin; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MovedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_over_http_a_redirect_of_a_url_holding_a_secret_in_its_path_is_logged_without_it(
    tmp_path: Path, canary: str
) -> None:
    # Some services give a key in the URL path (https://…/mcp/KEY/sse); the SDK's transport names a
    # redirect it does not follow, path and all.
    with moved_endpoint() as base:
        servers = tmp_path / "servers.json"
        entry = {"url": base + "/mcp/${secret:TOKEN}"}
        servers.write_text(json.dumps({"mcpServers": {"moved": entry}}), encoding="utf-8")
        env = isolated_env(tmp_path)
        token = create_token(env, "alice")
        with serving(
            env, "streamable-http", tmp_path / "server.log", "--servers", str(servers)
        ) as deployment:
            deployment.tokens["alice"] = token
            await store_over_mcp(deployment, "alice", "moved", canary)
            async with deployment.connect("alice") as alice:
                await alice.list_tools()
                called = await alice.call_tool("moved__anything", {})
            log = deployment.log()

    assert called.is_error
    assert "/mcp/[redacted TOKEN]/ not followed" in text_of(called)
    assert "tools of server moved not listed for alice" in log
    assert_no_fragment_of(canary, log)


def audited_calls(env: dict[str, str], server: str, tool: str) -> int:
    """How many of alice's gateway calls of ``tool`` ``mcp-secrets audit``, another process, shows."""
    done = run_cli(env, "audit", "--user", "alice", "--server", server, "--limit", "1000")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[1:]
    return sum(1 for row in rows if " injected " in row and row.endswith(f"tools/call {tool}"))


async def test_over_http_a_gateway_call_reaches_another_process_audit_soon_and_surely_at_a_clean_exit(
    tmp_path: Path, canary: str
) -> None:
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"down": STDIO_ENTRY}}), encoding="utf-8")
    env = isolated_env(tmp_path)
    token = create_token(env, "alice")
    with serving(env, "streamable-http", tmp_path / "server.log", "--servers", str(servers)) as deployment:
        deployment.tokens["alice"] = token
        await store_over_mcp(deployment, "alice", "down", canary)
        async with deployment.connect("alice") as alice:
            assert hash_of(await alice.call_tool("down__token_hash", {})) == sha256(canary)
            # The server writes uses in the background: another process sees this one within moments.
            deadline = time.monotonic() + AUDIT_SECONDS
            while await anyio.to_thread.run_sync(audited_calls, env, "down", "token_hash") < 1:
                assert time.monotonic() < deadline, "the use never reached the audit trail"
                await anyio.sleep(0.1)
            assert hash_of(await alice.call_tool("down__token_hash", {})) == sha256(canary)

    # The server has stopped (SIGTERM, a clean exit): a use still pending was written on the way out.
    assert audited_calls(env, "down", "token_hash") == 2
    assert canary not in (tmp_path / "server.log").read_text()


@asynccontextmanager
async def serving_down_with_cancels_noted(
    tmp_path: Path, canary: str, era: str = "2026-07-28", *options: str, transport: str = "streamable-http"
) -> AsyncIterator[tuple[Deployment, Path]]:
    """``serve --servers ... OPTIONS`` over ``transport`` with ``stored_down_with_cancels_noted``."""
    env, servers, cancelled = stored_down_with_cancels_noted(tmp_path, canary, era)
    token = create_token(env, "alice")
    with serving(env, transport, tmp_path / "server.log", "--servers", str(servers), *options) as deployment:
        deployment.tokens["alice"] = token
        yield deployment, cancelled
    assert canary not in (tmp_path / "server.log").read_text()


def stored_down_with_cancels_noted(
    tmp_path: Path, canary: str, era: str
) -> tuple[dict[str, str], Path, Path]:
    """Settings where alice's secret of ``down`` is stored and her tools never listed, the servers file; and
    where ``down`` notes each call of ``hang``, ``ask`` or ``open_page`` that is cancelled.

    ``down`` speaks protocol 2026-07-28 to the gateway, or (``era`` "handshake") only those before it.
    """
    cancelled = tmp_path / "cancelled"
    env_of_down = {**STDIO_ENTRY["env"], "DOWNSTREAM_CANCEL_FILE": str(cancelled)}
    if era == "handshake":
        env_of_down["DOWNSTREAM_HANDSHAKE_ONLY"] = "1"
    entry = {**STDIO_ENTRY, "env": env_of_down}
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"down": entry}}), encoding="utf-8")
    env = isolated_env(tmp_path)
    # Stored by the CLI, not by a client: one would list alice's tools first, and none has been listed yet.
    stored = subprocess.run(
        [*MCP_SECRETS, "set", "down", "TOKEN", "--user", "alice"],
        env=env,
        input=canary,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert stored.returncode == 0, stored.stderr
    return env, servers, cancelled


# How a client is served a call, for one that vanishes mid-call: on a Streamable HTTP session (protocols of
# the handshake), over stateless Streamable HTTP, on 2026-07-28 (each request on its own), or over SSE.
SESSION, STATELESS, MODERN, SSE = "session", "stateless", "2026-07-28", "sse"


async def vanish_mid_call(deployment: Deployment, tool: str, way: str = SESSION) -> None:
    """A client of alice calls ``tool`` of ``down`` served the ``way`` given, then goes without cancelling.

    It drops the call's stream (over SSE, the session's stream) once the downstream reported progress or
    asked its user, as a client that is killed or loses its network does: no ``notifications/cancelled``,
    no ``DELETE`` of its session.
    """
    if way == SESSION:
        await vanish_mid_session_call(deployment, tool)
        return
    headers = {
        "Authorization": f"Bearer {deployment.token('alice')}",
        "Accept": "application/json, text/event-stream",
    }
    params: dict[str, Any] = {"name": f"down__{tool}", "arguments": {}, "_meta": {"progressToken": 1}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
    async with httpx2.AsyncClient(trust_env=False, timeout=30, headers=headers) as http:
        if way == SSE:
            assert deployment.base_url is not None
            host, port = deployment.base_url.removeprefix("http://").rsplit(":", 1)
            with contextlib.ExitStack() as held:
                stream, path = legacy_sse_stream(deployment.token("alice"), host, int(port), held)
                messages = f"{deployment.base_url}{path}"
                for message in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, call):
                    assert (await http.post(messages, json=message)).status_code == 202
                received = b""
                while b'"notifications/progress"' not in received:
                    chunk = stream.recv(65536)
                    assert chunk, "the SSE stream ended before the call reported progress"
                    received += chunk
            return  # its stream closed, the client gone
        version = {"mcp-protocol-version": LATEST_HANDSHAKE_VERSION}
        if way == MODERN:
            version = {
                "mcp-protocol-version": MODERN,
                "mcp-method": "tools/call",
                "mcp-name": f"down__{tool}",
            }
            params["_meta"] |= {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        async with http.stream("POST", deployment.endpoint, json=call, headers=version) as answer:
            assert answer.status_code == 200
            async for line in answer.aiter_lines():
                if '"notifications/progress"' in line:
                    break  # leaving the stream unread: its connection is closed, and the client gone


async def vanish_mid_session_call(deployment: Deployment, tool: str) -> None:
    """A client of alice on the handshake's protocol calls ``tool`` of ``down``, then goes without cancelling.

    It drops the call's stream once the downstream reported progress or asked its user, as a client that is
    killed or loses its network does: no ``notifications/cancelled``, no ``DELETE`` of its session.
    """
    elicitation = {"elicitation": {"form": {}, "url": {}}}
    initialize = {**INITIALIZE, "params": {**INITIALIZE["params"], "capabilities": elicitation}}
    headers = {
        "Authorization": f"Bearer {deployment.token('alice')}",
        "Accept": "application/json, text/event-stream",
    }
    async with httpx2.AsyncClient(trust_env=False, timeout=30, headers=headers) as http:
        opened = await http.post(deployment.endpoint, json=initialize)
        assert opened.status_code == 200, opened.text
        session = {
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": LATEST_HANDSHAKE_VERSION,
        }
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(deployment.endpoint, json=initialized, headers=session)).status_code == 202
        params = {"name": f"down__{tool}", "arguments": {}, "_meta": {"progressToken": 1}}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
        async with http.stream("POST", deployment.endpoint, json=call, headers=session) as stream:
            async for line in stream.aiter_lines():
                if '"notifications/progress"' in line or '"elicitation/create"' in line:
                    break  # leaving the stream unread: its connection is closed, and the client gone


CUT_SECONDS = 60.0  # generous: a call whose client is gone is cut as soon as its connection closes


async def noted_cancelled(cancelled: Path, seconds: float = CUT_SECONDS) -> str:
    """What the downstream noted in ``cancelled``, once it has: it may stop a call after answering another."""
    with anyio.fail_after(seconds):
        while not cancelled.exists():
            await anyio.sleep(0.05)
    return cancelled.read_text(encoding="utf-8")


@pytest.mark.parametrize("era", ["handshake", "2026-07-28"])
@pytest.mark.parametrize("tool", ["hang", "ask", "open_page"])  # a long job; a form and a URL asked
async def test_over_http_a_call_whose_client_vanished_is_cancelled_once_another_call_of_its_user_waits(
    tmp_path: Path, canary: str, tool: str, era: str
) -> None:
    async with serving_down_with_cancels_noted(tmp_path, canary, era) as (deployment, cancelled):
        await vanish_mid_call(deployment, tool)
        async with deployment.connect("alice", mode="legacy") as alice:
            with anyio.fail_after(CUT_SECONDS):
                pinged = await alice.call_tool("down__ping", {})

        assert text_of(pinged) == "pong"
        if era == "handshake" or tool == "hang":
            # The downstream was told, as for a client's own cancellation: it stopped the call.
            assert await noted_cancelled(cancelled) == f"{tool}\n"
        else:  # it asked in its result, and holds nothing between the rounds: the gateway's were cut
            assert not cancelled.exists()


@pytest.mark.parametrize("tool", ["ask", "open_page"])  # a form, and a URL
async def test_over_stateless_http_a_downstreams_question_to_a_handshake_client_is_refused_saying_why(
    tmp_path: Path, canary: str, tool: str
) -> None:
    # Its answer would come in a request of its own, which reaches no call: the client declared both modes,
    # but a stateless server never learns it, and the downstream must not be told the client refuses them.
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"down": STDIO_ENTRY}}), encoding="utf-8")
    env = isolated_env(tmp_path)
    token = create_token(env, "alice")
    asked: list[ElicitRequestParams] = []

    async def answer(_context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params)
        return ElicitResult(action="decline")

    log = tmp_path / "server.log"
    with serving(env, "streamable-http", log, "--stateless", "--servers", str(servers)) as deployment:
        deployment.tokens["alice"] = token
        await store_over_mcp(deployment, "alice", "down", canary)
        async with deployment.connect("alice", mode="legacy", elicitation_callback=answer) as alice:
            called = await alice.call_tool(f"down__{tool}", {})

    assert called.is_error
    assert "stateless" in text_of(called)
    assert "does not take" not in text_of(called)
    assert asked == []
    assert canary not in everything_in(called) + log.read_text()


async def test_over_http_a_first_listing_after_a_call_whose_client_vanished_lists_that_servers_tools(
    tmp_path: Path, canary: str
) -> None:
    async with serving_down_with_cancels_noted(tmp_path, canary) as (deployment, cancelled):
        await vanish_mid_call(deployment, "hang")
        async with deployment.connect("alice", mode="legacy") as alice:
            # It would wait for the call a minute (the start bound), and then leave out the tools of down.
            listed = await alice.list_tools()

        assert {tool.name.removeprefix("down__") for tool in listed.tools} >= DOWNSTREAM_TOOLS
        assert await noted_cancelled(cancelled) == "hang\n"


async def test_over_http_a_call_whose_client_is_still_there_is_never_cut_for_another_that_waits(
    tmp_path: Path, canary: str
) -> None:
    answers: dict[str, str] = {}
    async with serving_down_with_cancels_noted(tmp_path, canary) as (deployment, cancelled):
        async with (
            deployment.connect("alice", mode="legacy") as first,
            deployment.connect("alice", mode="legacy") as second,
        ):
            started = anyio.Event()

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                started.set()

            async def call_long() -> None:
                # Long enough for the waiting call to ask several times whether its client is gone.
                long = await first.call_tool("down__hang", {"seconds": 3}, progress_callback=on_progress)
                answers["long"] = text_of(long)

            async with anyio.create_task_group() as calls:
                calls.start_soon(call_long)
                await started.wait()
                answers["waiting"] = text_of(await second.call_tool("down__ping", {}))

        assert answers == {"long": "answered after 3 seconds", "waiting": "pong"}
        assert not cancelled.exists()


@pytest.mark.parametrize(
    ("way", "tool"),
    [
        (SESSION, "hang"),
        (SESSION, "ask"),
        (SESSION, "open_page"),
        (STATELESS, "hang"),
        (MODERN, "hang"),
        (SSE, "hang"),
    ],
)
async def test_over_http_a_call_whose_client_vanished_is_cancelled_though_no_other_call_waits(
    tmp_path: Path, canary: str, way: str, tool: str
) -> None:
    # A downstream of the handshake's protocols: one on 2026-07-28 is listed at the start of its listen
    # stream, and that listing waits its turn behind the call.
    transport = "sse" if way == SSE else "streamable-http"
    options = ("--stateless",) if way == STATELESS else ()
    serving_down = serving_down_with_cancels_noted(
        tmp_path, canary, "handshake", *options, transport=transport
    )
    async with serving_down as (deployment, cancelled):
        await vanish_mid_call(deployment, tool, way)

        # The downstream was told, as for a client's own cancellation: it stopped the call.
        assert await noted_cancelled(cancelled) == f"{tool}\n"


# --- a client's network gone without a close (root only) -------------------------------------------

# Generous: the server's TCP connection fails about two minutes after the client's link goes down (a
# failure, not a limit); with the system's own retransmissions alone it took about 15 minutes.
NETWORK_GONE_SECONDS = 600.0
SERVER_ADDRESS = "10.213.0.1"
# In the client's network namespace: opens a session at argv[1] with the token argv[2], calls hang of down,
# says "started" once it reports progress, and then holds the call's connection, never closing it.
CALLS_AND_HOLDS = """
import sys, anyio, httpx2
url, token = sys.argv[1], sys.argv[2]
version = "2025-11-25"
client = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": client}
hang = {"name": "down__hang", "arguments": {}, "_meta": {"progressToken": 1}}
call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": hang}
async def main():
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    timeout = httpx2.Timeout(30, read=None)
    async with httpx2.AsyncClient(trust_env=False, timeout=timeout, headers=headers) as http:
        for _ in range(400):
            try:
                if (await http.get(url.replace("/mcp", "/healthz"))).status_code == 200:
                    break
            except httpx2.TransportError:
                await anyio.sleep(0.05)
        opened = await http.post(url, json=initialize)
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": version}
        await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        async with http.stream("POST", url, json=call, headers=session) as stream:
            async for line in stream.aiter_lines():
                if '"notifications/progress"' in line:
                    print("started", flush=True)
                    await anyio.sleep_forever()
anyio.run(main)
"""


@dataclass(frozen=True)
class TwoHosts:
    """Two network namespaces joined by a veth pair, as two machines on one link."""

    server: str
    client: str
    client_link: str  # the client's end of the pair: down, and its packets go nowhere, with no FIN or RST


@pytest.fixture
def two_hosts() -> Iterator[TwoHosts]:
    """``TwoHosts``, the server's at ``SERVER_ADDRESS``: skipped unless this process may make them (root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("only root, with iproute2, may make network namespaces")
    tag = _random.token_hex(3)
    server, client, link = f"mcp-secrets-s{tag}", f"mcp-secrets-c{tag}", f"mcps{tag}"
    pair = ["ip", "link", "add", f"{link}s", "netns", server, "type", "veth"]
    made = [
        ["ip", "netns", "add", server],
        ["ip", "netns", "add", client],
        [*pair, "peer", "name", f"{link}c", "netns", client],
        ["ip", "-n", server, "addr", "add", f"{SERVER_ADDRESS}/24", "dev", f"{link}s"],
        ["ip", "-n", client, "addr", "add", "10.213.0.2/24", "dev", f"{link}c"],
        *(
            ["ip", "-n", namespace, "link", "set", device, "up"]
            for namespace, device in (
                (server, "lo"),
                (server, f"{link}s"),
                (client, "lo"),
                (client, f"{link}c"),
            )
        ),
    ]
    try:
        for command in made:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
            if done.returncode != 0:
                pytest.skip(f"network namespaces cannot be made here: {done.stderr.strip()}")
        yield TwoHosts(server, client, f"{link}c")
    finally:
        for namespace in (server, client):  # the pair goes with them
            subprocess.run(
                ["ip", "netns", "del", namespace], capture_output=True, timeout=CLI_TIMEOUT, check=False
            )


@pytest.mark.timeout(NETWORK_GONE_SECONDS + STARTUP_SECONDS)
async def test_a_call_whose_clients_network_is_gone_without_a_close_is_cancelled_within_minutes(
    two_hosts: TwoHosts, tmp_path: Path, canary: str
) -> None:
    env, servers, cancelled = stored_down_with_cancels_noted(tmp_path, canary, "handshake")
    token = create_token(env, "alice")
    url = f"http://{SERVER_ADDRESS}:8000/mcp"
    serve = [
        *MCP_SECRETS,
        "serve",
        "--transport",
        "streamable-http",
        "--host",
        SERVER_ADDRESS,
        "--port",
        "8000",
    ]
    log_path = tmp_path / "server.log"
    with log_path.open("a", encoding="utf-8") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", two_hosts.server, *serve, "--servers", str(servers)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    client = subprocess.Popen(
        ["ip", "netns", "exec", two_hosts.client, sys.executable, "-c", CALLS_AND_HOLDS, url, token],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        started = await anyio.to_thread.run_sync(client.stdout.readline)
        assert started == "started\n", log_path.read_text(encoding="utf-8")
        subprocess.run(
            ["ip", "-n", two_hosts.client, "link", "set", two_hosts.client_link, "down"], check=True
        )

        assert await noted_cancelled(cancelled, NETWORK_GONE_SECONDS) == "hang\n"
    finally:
        client.kill()
        client.wait()
        process.terminate()
        process.wait()
    assert canary not in log_path.read_text(encoding="utf-8")


LONG_CALL_SECONDS = 5


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
async def test_over_http_a_long_call_whose_client_is_still_there_is_never_cut(
    tmp_path: Path, canary: str, transport: str
) -> None:
    serving_down = serving_down_with_cancels_noted(tmp_path, canary, "handshake", transport=transport)
    async with serving_down as (deployment, cancelled), deployment.connect("alice", mode="legacy") as alice:
        long = await alice.call_tool("down__hang", {"seconds": LONG_CALL_SECONDS})

    assert text_of(long) == f"answered after {LONG_CALL_SECONDS} seconds"
    assert not cancelled.exists()


def lingering_entry(marker: str) -> dict[str, Any]:
    """The stdio fixture downstream, marked by ``marker`` in its arguments, outliving the end of its stdin."""
    return {
        **STDIO_ENTRY,
        "args": [*STDIO_ENTRY["args"], marker],
        "env": {**STDIO_ENTRY["env"], "DOWNSTREAM_IGNORES_EOF": "1"},
    }


@needs_proc
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda stop: stop.name)
@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
async def test_over_http_a_stop_signal_with_a_session_open_is_a_clean_exit(
    tmp_path: Path, canary: str, transport: str, marker: str, stop: signal.Signals
) -> None:
    """SIGHUP too: a closing terminal sends it, and the downstream servers run in sessions of their own."""
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"down": lingering_entry(marker)}}), encoding="utf-8")
    env = isolated_env(tmp_path)
    token = create_token(env, "alice")
    with serving(env, transport, tmp_path / "server.log", "--servers", str(servers)) as deployment:
        assert deployment.process is not None
        deployment.tokens["alice"] = token
        await store_over_mcp(deployment, "alice", "down", canary)
        session = AsyncExitStack()
        alice = await session.enter_async_context(deployment.connect("alice"))
        hashed = hash_of(await alice.call_tool("down__token_hash", {}))
        # At once, the session still open: the use is most likely still waiting for the background writer.
        deployment.process.send_signal(stop)
        returncode = await anyio.to_thread.run_sync(functools.partial(deployment.process.wait, CLOSE_SECONDS))
        with contextlib.suppress(Exception):  # the server went away under the open session, as meant here
            await session.aclose()

    assert hashed == sha256(canary)
    assert returncode == (130 if stop == signal.SIGINT else 0)  # Ctrl-C, as on the command line
    assert audited_calls(env, "down", "token_hash") == 1
    assert processes_with(marker) == []  # the downstream server was stopped, though it ignores EOF
    assert canary not in (tmp_path / "server.log").read_text()


def serve_stdio_by_hand(
    tmp_path: Path, servers: dict[str, Any]
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """``serve --servers`` over ``servers`` on stdio, for alice, driven by hand; and its environment."""
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    env = isolated_env(tmp_path, MCP_SECRETS_USER="alice")
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [*MCP_SECRETS, "serve", "--servers", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
        )
    return process, env


def serve_stdio_call_then_stop(
    tmp_path: Path, entry: dict[str, Any], value: str, stop: signal.Signals | None
) -> tuple[int, dict[str, str]]:
    """``serve --servers`` on stdio by hand: store ``value``, one gateway call, then ``stop`` at once.

    ``stop`` is a signal, sent with stdin still open (the call's use most likely still waits for the
    background writer), or None to close stdin, as a client ends a session. Returns the server's exit
    status and its environment.
    """
    process, env = serve_stdio_by_hand(tmp_path, {"down": entry})
    assert process.stdin is not None
    assert process.stdout is not None
    answers: dict[int, dict[str, Any]] = {}

    def send(message: dict[str, Any]) -> None:
        process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        process.stdin.flush()

    def request(request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        send({"id": request_id, "method": method, "params": params})
        while request_id not in answers:
            line = process.stdout.readline()
            assert line, "the server closed stdout before answering"
            answer = json.loads(line)
            answers[answer.get("id", -1)] = answer
        return answers[request_id]

    try:
        request(1, "initialize", INITIALIZE["params"])
        send({"method": "notifications/initialized"})
        request(
            2,
            "tools/call",
            {"name": "set_secret", "arguments": {"server": "down", "key": "TOKEN", "value": value}},
        )
        called = request(3, "tools/call", {"name": "down__token_hash", "arguments": {}})
        assert called["result"]["content"][0]["text"] == sha256(value), called
        if stop is None:
            process.stdin.close()
        else:
            process.send_signal(stop)
        return process.wait(timeout=CLOSE_SECONDS), env
    finally:
        process.kill()
        process.wait()
        if not process.stdin.closed:
            process.stdin.close()
        process.stdout.close()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda stop: stop.name)
def test_over_stdio_a_stop_signal_is_a_clean_exit_that_writes_a_pending_use(
    tmp_path: Path, canary: str, stop: signal.Signals
) -> None:
    returncode, env = serve_stdio_call_then_stop(tmp_path, STDIO_ENTRY, canary, stop)

    assert returncode == 0
    assert audited_calls(env, "down", "token_hash") == 1
    assert canary not in (tmp_path / "server.log").read_text(encoding="utf-8")


@needs_proc
@pytest.mark.parametrize("stop", [signal.SIGTERM, None], ids=["SIGTERM", "stdin-closed"])
def test_over_stdio_stopping_stops_a_downstream_server_that_ignores_the_end_of_its_stdin(
    tmp_path: Path, canary: str, marker: str, stop: signal.Signals | None
) -> None:
    returncode, _ = serve_stdio_call_then_stop(tmp_path, lingering_entry(marker), canary, stop)

    assert returncode == 0
    assert processes_with(marker) == []


@needs_proc
def test_over_stdio_a_stop_signal_while_stopping_after_stdin_ended_lets_the_stop_finish(
    tmp_path: Path, canary: str, marker: str
) -> None:
    """As the SDK's client does: close stdin, then send SIGTERM when the server has not exited yet."""
    stdin_ended = tmp_path / "downstream-stdin-ended"
    entry = lingering_entry(marker)
    entry = {**entry, "env": {**entry["env"], "DOWNSTREAM_EOF_FILE": str(stdin_ended)}}
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"down": entry}}), encoding="utf-8")
    env = isolated_env(tmp_path, MCP_SECRETS_USER="alice")
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [*MCP_SECRETS, "serve", "--servers", str(servers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
        )
    assert process.stdin is not None
    assert process.stdout is not None
    store = {"name": "set_secret", "arguments": {"server": "down", "key": "TOKEN", "value": canary}}
    try:
        for message in (
            {"id": 1, "method": "initialize", "params": INITIALIZE["params"]},
            {"method": "notifications/initialized"},
            {"id": 2, "method": "tools/call", "params": store},
            {"id": 3, "method": "tools/call", "params": {"name": "down__token_hash", "arguments": {}}},
        ):
            process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
            process.stdin.flush()
        answers = [json.loads(process.stdout.readline()) for _ in range(3)]
        assert answers[-1]["result"]["content"][0]["text"] == sha256(canary), answers
        process.stdin.close()
        deadline = time.monotonic() + CLOSE_SECONDS
        while not stdin_ended.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stdin_ended.exists(), "the server did not start stopping its downstream server"
        # The server is stopping its downstream server, which ignores the end of its stdin.
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=CLOSE_SECONDS)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()

    assert returncode == 0
    assert processes_with(marker) == []
    assert audited_calls(env, "down", "token_hash") == 1
    assert canary not in (tmp_path / "server.log").read_text(encoding="utf-8")


@needs_proc
def test_over_stdio_a_stop_signal_stops_a_downstream_server_still_starting(
    tmp_path: Path, marker: str
) -> None:
    entry = {**silent_entry("initialize", marker), "env": {"SILENT_IGNORES_EOF": "1"}}
    process, _ = serve_stdio_by_hand(tmp_path, {"silent": entry})
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        for message in (
            {"id": 1, "method": "initialize", "params": INITIALIZE["params"]},
            {"method": "notifications/initialized"},
            {"id": 2, "method": "tools/call", "params": {"name": "silent__anything", "arguments": {}}},
        ):
            process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
            process.stdin.flush()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(marker), "the downstream server was not started"
        # Its start never ends: the server stops with the downstream still starting.
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=CLOSE_SECONDS)
    finally:
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()

    assert returncode == 0
    assert processes_with(marker) == []


@needs_proc
async def test_a_call_waiting_its_turn_as_the_gateway_stops_starts_no_downstream_server(
    sqlite_secrets: Secrets, tmp_path: Path, marker: str
) -> None:
    sqlite_secrets.set_secret("alice", "down", "TOKEN", fresh_value("alice"))
    outcomes: dict[str, CallToolResult | Exception] = {}

    async def call_tool(gw: Gateway, tool: str) -> None:
        try:
            outcomes[tool] = await gw.call_tool("alice", f"down__{tool}", {})
        except gateway_module.DownstreamError as exc:
            outcomes[tool] = exc

    async with running_gateway(sqlite_secrets, tmp_path, {"down": lingering_entry(marker)}) as gw:
        with anyio.fail_after(STARTUP_SECONDS):
            async with anyio.create_task_group() as calls:
                calls.start_soon(call_tool, gw, "hang")
                while not any(connection.active_calls for connection in gw.pool._connections.values()):
                    await anyio.sleep(0.01)
                # A second call of alice's waits for the first: stopping ends the first, not the second.
                calls.start_soon(call_tool, gw, "token_hash")
                while gw._call_turns[("alice", "down")].calls < 2:
                    await anyio.sleep(0.01)
                await gw.stop()
        left = processes_with(marker)

    assert isinstance(outcomes["token_hash"], gateway_module.DownstreamError)
    assert "the gateway is stopping" in str(outcomes["token_hash"])
    assert left == []
