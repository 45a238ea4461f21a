"""mcp-secrets as users run it: `mcp-secrets serve` as a subprocess, reached by the SDK's clients.

stdio, Streamable HTTP and SSE share the behaviour tests; the HTTP ones add
bearer tokens made by the real CLI and the Host/Origin guard.
"""

from __future__ import annotations

import json
import os
import re
import secrets as _random
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from conftest import text_of
from mcp_secrets.crypto import generate_master_key

from .conftest import (
    INITIALIZE,
    MCP_SECRETS,
    Deployment,
    create_token,
    isolated_env,
    legacy_sse_messages_path,
    run_cli,
    with_ctrl_c,
)

pytestmark = pytest.mark.anyio

EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 - for seconds, over a fresh store, to read what the start says
TOKEN = re.compile(r"mcps_[0-9a-f]{10}_[A-Za-z0-9_-]{43}")
STOP_POLLS = 400  # x 0.05 s: a generous bound on how long a stop may take to get under way
COULD_NOT_LISTEN = 3  # the exit status the README gives a serve that could not listen
ACCEPT = {"Accept": "application/json, text/event-stream"}
LIST_KEYS = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_secret_keys"}}


async def keys_of(client: Any, server: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The username a listing is for and the (server, key) pairs it lists."""
    listed = await client.call_tool("list_secret_keys", {} if server is None else {"server": server})
    assert not listed.is_error, text_of(listed)
    assert listed.structured_content is not None
    keys = [(entry["server"], entry["key"]) for entry in listed.structured_content["keys"]]
    return listed.structured_content["username"], keys


@pytest.fixture
def server() -> str:
    """An MCP server name no other test uses, since a module's tests share each deployment's store."""
    return f"server-{_random.token_hex(4)}"


async def test_each_user_stores_and_lists_only_their_own_keys(deployment, server: str) -> None:
    async with deployment.connect("alice") as alice, deployment.connect("bob") as bob:
        by_alice = await alice.call_tool("set_secret", {"server": server, "key": "ALICE", "value": "a"})
        by_bob = await bob.call_tool("set_secret", {"server": server, "key": "BOB", "value": "b"})

        assert not by_alice.is_error, text_of(by_alice)
        assert not by_bob.is_error, text_of(by_bob)
        assert await keys_of(alice, server) == ("alice", [(server, "ALICE")])
        assert await keys_of(bob, server) == ("bob", [(server, "BOB")])
        assert (server, "BOB") not in (await keys_of(alice))[1]
        assert (server, "ALICE") not in (await keys_of(bob))[1]


async def test_bob_cannot_delete_alices_key_but_alice_can(deployment, server: str) -> None:
    async with deployment.connect("alice") as alice, deployment.connect("bob") as bob:
        await alice.call_tool("set_secret", {"server": server, "key": "WEBHOOK", "value": "a"})

        by_bob = await bob.call_tool("delete_secret", {"server": server, "key": "WEBHOOK"})
        after_bob = await keys_of(alice, server)
        by_alice = await alice.call_tool("delete_secret", {"server": server, "key": "WEBHOOK"})
        after_alice = await keys_of(alice, server)

    assert by_bob.is_error
    assert "no secrets for server" in text_of(by_bob)
    assert after_bob == ("alice", [(server, "WEBHOOK")])
    assert by_alice.structured_content == {"server": server, "key": "WEBHOOK", "status": "deleted"}
    assert after_alice == ("alice", [])


async def test_canary_appears_in_no_result_log_or_database_file(deployment, server: str, canary: str) -> None:
    async with deployment.connect("alice") as alice:
        results = [
            await alice.call_tool("set_secret", {"server": server, "key": "VALUE", "value": canary}),
            await alice.call_tool("set_secret", {"server": server, "key": "VALUE", "value": canary + "-2"}),
            await alice.call_tool("set_secret", {"server": server, "key": "BAD KEY", "value": canary}),
            await alice.call_tool("set_secret", {"server": server, "key": "X", "value": {"$ne": canary}}),
            await alice.call_tool("set_secret", {"server": server, "key": "EMPTY", "value": ""}),
            await alice.call_tool("list_secret_keys", {"server": server}),
        ]

    assert [result.is_error for result in results] == [False, False, True, True, True, False]
    for result in results:
        assert canary not in json.dumps(result.model_dump(mode="json"))
    assert "DEBUG" in deployment.log(), "the server must have logged at DEBUG for this check to mean anything"
    assert canary not in deployment.log()
    assert canary.encode() not in deployment.database_bytes()


async def test_request_secret_on_stdio_gives_the_terminal_command_the_readme_promises(
    stdio_deployment, server: str
) -> None:
    """stdio is the default transport, with no page of ours to link to: the README's first advice says so."""
    # The install on the PATH, as after activating its virtual environment (else the hint names it by path).
    env = stdio_deployment.env
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    deployment = Deployment("stdio", {**env, "PATH": path}, stdio_deployment.log_path)
    async with deployment.connect("alice") as alice:
        result = await alice.call_tool("request_secret", {"server": server, "key": "API_KEY"})

    assert not result.is_error, text_of(result)
    assert f"mcp-secrets set {server} API_KEY --user alice" in text_of(result)
    assert "http" not in text_of(result)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    recommended = readme.split("**Store secrets the recommended way:**", 1)[1].split("\n\n", 1)[0]
    assert "On stdio" in recommended
    assert "`mcp-secrets set`" in recommended


@pytest.mark.parametrize("on_path", [False, True], ids=["off-the-path", "on-the-path"])
@pytest.mark.parametrize("started_as", ["script", "module"], ids=["by-its-path", "python-m"])
async def test_request_secret_on_stdio_names_the_command_by_the_path_it_was_started_by(
    tmp_path: Path, on_path: bool, started_as: str
) -> None:
    """A client config may name ``.venv/bin/mcp-secrets`` by its path, as the README offers, or start
    ``python -m mcp_secrets``: a terminal's ``mcp-secrets`` may then be none, or another install with another
    store."""
    from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: PLC0415

    script = Path(sys.executable).parent / "mcp-secrets"
    path = os.pathsep.join([*([str(script.parent)] if on_path else []), "/usr/bin", "/bin"])
    env = {**isolated_env(tmp_path), "MCP_SECRETS_USER": "alice", "PATH": path}
    if started_as == "script":
        params = StdioServerParameters(command=str(script), args=["serve"], env=env)
    else:
        params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_secrets", "serve"], env=env)
    with (tmp_path / "serve.log").open("a", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as alice:
            result = await alice.call_tool("request_secret", {"server": "github", "key": "API_KEY"})

    assert not result.is_error, text_of(result)
    by_path = str(script) if started_as == "script" else f"{shlex.quote(sys.executable)} -m mcp_secrets"
    program = "mcp-secrets" if on_path else by_path
    assert f" {program} set github API_KEY --user alice  " in text_of(result)


def raw_handshake(process: subprocess.Popen[str]) -> None:
    """Initialize a session of ``raw_stdio_serve`` by hand, as a client does, up to its next message."""
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(json.dumps({**INITIALIZE, "id": 1}) + "\n")
    process.stdin.flush()
    assert json.loads(process.stdout.readline())["id"] == 1
    process.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")


def rest_of_session(process: subprocess.Popen[str]) -> tuple[list[dict[str, Any]], int]:
    """End a session of ``raw_stdio_serve`` (its stdin closed): every answer it still gives, its exit code."""
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.close()
    answers = [json.loads(line) for line in process.stdout.read().splitlines()]
    return answers, process.wait(timeout=30)


def raw_stdio_serve(
    deployment: Any, log_path: Path, ctrl_c: signal.Handlers = signal.SIG_DFL
) -> subprocess.Popen[str]:
    """``serve`` on stdio for alice, talked to by hand; its stderr goes to ``log_path``.

    ``ctrl_c`` is the SIGINT disposition it starts with (see ``with_ctrl_c``).
    """
    with log_path.open("w") as log:
        return subprocess.Popen(
            with_ctrl_c(ctrl_c, [*MCP_SECRETS, "serve"]),
            env={**deployment.env, "MCP_SECRETS_USER": "alice"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )


def test_stdio_stdout_carries_only_protocol_and_the_summary_goes_to_stderr(stdio_deployment) -> None:
    """Talk JSON-RPC by hand, so every byte the server writes to stdout is seen."""
    log_path = stdio_deployment.log_path.with_name("raw-stdio.log")
    process = raw_stdio_serve(stdio_deployment, log_path)
    assert process.stdin is not None
    assert process.stdout is not None

    lines: list[dict[str, Any]] = []

    def send(message: dict[str, Any]) -> None:
        process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        process.stdin.flush()

    def request(request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        send({"id": request_id, "method": method, "params": params})
        while not lines or lines[-1].get("id") != request_id:
            line = process.stdout.readline()
            assert line, "the server closed stdout before answering"
            lines.append(json.loads(line))  # anything but JSON on stdout fails here
        return lines[-1]

    try:
        initialised = request(1, "initialize", INITIALIZE["params"])
        send({"method": "notifications/initialized"})
        stored = request(
            2, "tools/call", {"name": "set_secret", "arguments": {"server": "s", "key": "k", "value": "v"}}
        )
        listed = request(3, "tools/call", {"name": "list_secret_keys", "arguments": {"server": "s"}})
        process.stdin.close()
        lines.extend(json.loads(line) for line in process.stdout.read().splitlines())
    finally:
        process.stdout.close()
        process.terminate()
        process.wait(timeout=10)

    assert all(line["jsonrpc"] == "2.0" for line in lines)
    assert initialised["result"]["serverInfo"]["name"] == "mcp-secrets"
    assert stored["result"]["structuredContent"] == {"server": "s", "key": "k", "status": "created"}
    assert listed["result"]["structuredContent"]["username"] == "alice"
    summary = log_path.read_text()
    assert "serving stdio\n" in summary
    assert re.search(r"user:\s+alice", summary)
    assert "master key: MCP_SECRETS_MASTER_KEY" in summary
    assert stdio_deployment.env["MCP_SECRETS_MASTER_KEY"] not in summary


def test_stdio_a_client_gone_before_its_answer_is_written_is_a_clean_exit(stdio_deployment) -> None:
    """As when the client quits or dies with a call in flight: its ends of both pipes close."""
    log_path = stdio_deployment.log_path.with_name("client-gone.log")
    process = raw_stdio_serve(stdio_deployment, log_path)
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        process.stdin.write(json.dumps({**INITIALIZE, "id": 1}) + "\n")
        process.stdin.flush()
        assert json.loads(process.stdout.readline())["id"] == 1
        process.stdout.close()
        for message in (
            {"method": "notifications/initialized"},
            {"id": 2, "method": "tools/call", "params": {"name": "list_secret_keys", "arguments": {}}},
        ):
            process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        process.stdin.close()
        returncode = process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()

    assert returncode == 0
    assert "Traceback" not in log_path.read_text()


@pytest.mark.parametrize("line_end", [True, False], ids=["ended", "then-eof"])
def test_stdio_a_message_over_the_bound_is_refused_and_the_session_goes_on(
    stdio_deployment, server: str, canary: str, line_end: bool
) -> None:
    """The SDK held a whole line in memory however long it grew: a client could exhaust the server's."""
    log_path = stdio_deployment.log_path.with_name(f"over-long-{line_end}.log")
    process = raw_stdio_serve(stdio_deployment, log_path)
    assert process.stdin is not None
    assert process.stdout is not None
    # A set_secret whose value is the canary, padded past the bound (the README's 4 MiB).
    value = canary + "x" * (4 * 1024 * 1024)
    arguments = {"server": server, "key": "TOKEN", "value": value}
    over = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "set_secret", "arguments": arguments},
    }
    try:
        raw_handshake(process)
        process.stdin.write(json.dumps(over) + ("\n" if line_end else ""))
        answers = []
        if line_end:
            listing = {"name": "list_secret_keys", "arguments": {"server": server}}
            process.stdin.write(json.dumps({**LIST_KEYS, "id": 3, "params": listing}) + "\n")
            process.stdin.flush()
            # Both answers before end-of-input: a call still running at EOF is dropped, as the SDK does.
            answers = [json.loads(process.stdout.readline()) for _ in range(2)]
        remaining, returncode = rest_of_session(process)
        answers += remaining
    finally:
        process.kill()
        process.wait()

    refused, *rest = answers
    assert refused["id"] == 2
    assert refused["error"]["code"] == -32600  # Invalid Request
    assert "over 4194304 bytes" in refused["error"]["message"]
    if line_end:
        assert [answer["id"] for answer in rest] == [3]
        assert rest[0]["result"]["structuredContent"]["keys"] == []
    assert returncode == 0
    log = log_path.read_text()
    assert "Traceback" not in log
    assert "over 4194304 bytes" in log
    leaked = canary in log or any(canary in json.dumps(answer) for answer in answers)  # a bare bool
    assert not leaked


def test_stdio_a_message_that_is_not_utf8_is_refused_not_stored_altered(
    stdio_deployment, server: str, canary: str
) -> None:
    """A value sent in Latin-1 was decoded with U+FFFD in place of its byte, stored so, and called created."""
    log_path = stdio_deployment.log_path.with_name("not-utf8.log")
    process = raw_stdio_serve(stdio_deployment, log_path)
    assert process.stdin is not None
    assert process.stdout is not None
    arguments = {"server": server, "key": "TOKEN", "value": f"{canary}-pass\u00e9word"}
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "set_secret", "arguments": arguments},
    }
    latin1 = json.dumps(call, ensure_ascii=False).encode("latin-1") + b"\n"
    try:
        raw_handshake(process)
        process.stdin.flush()
        process.stdin.buffer.write(latin1)
        process.stdin.buffer.flush()
        listing = {"name": "list_secret_keys", "arguments": {"server": server}}
        process.stdin.write(json.dumps({**LIST_KEYS, "id": 3, "params": listing}) + "\n")
        process.stdin.flush()
        answers = [json.loads(process.stdout.readline()) for _ in range(2)]
        process.stdin.close()
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()

    refused, listed = answers
    assert refused["id"] == 2
    assert refused["error"]["code"] == -32700  # Parse error, as the SDK answers it over HTTP
    assert "not UTF-8" in refused["error"]["message"]
    assert listed["id"] == 3
    assert listed["result"]["structuredContent"]["keys"] == []
    log = log_path.read_text()
    assert "Traceback" not in log
    leaked = canary in log or any(canary in json.dumps(answer) for answer in answers)  # a bare bool
    assert not leaked


def _call_line(request_id: object, arguments: str) -> str:
    """A tools/call of set_secret by hand: ``arguments`` is JSON text, as a hostile client writes it."""
    params = f'{{"name": "set_secret", "arguments": {arguments}}}'
    return f'{{"jsonrpc": "2.0", "id": {json.dumps(request_id)}, "method": "tools/call", "params": {params}}}'


# Lines the SDK's parser cannot read as a JSON-RPC message: (the line, the error code, the id answered).
# The SDK dropped each without a word (its log stays at INFO), and the client waited on it for ever.
UNREADABLE_LINES = {
    "json cut short": (lambda canary: _call_line(2, f'{{"value": "{canary}"')[:-5], -32700, 2),
    "lone surrogate": (
        lambda canary: _call_line(2, f'{{"server": "s", "key": "K", "value": "{canary}\\ud800"}}'),
        -32700,
        2,
    ),
    "nested 300 deep": (
        lambda canary: _call_line(
            2, f'{{"server": "s", "key": "K", "value": {"[" * 300}"{canary}"{"]" * 300}}}'
        ),
        -32700,
        2,
    ),
    "a 5000-digit number": (
        lambda canary: _call_line(2, f'{{"value": "{canary}", "n": {"9" * 5000}}}'),
        -32700,
        2,
    ),
    "a batch": (lambda canary: f"[{_call_line(2, json.dumps({'value': canary}))}]", -32600, None),
    "json-rpc 1.0": (
        lambda canary: _call_line(2, json.dumps({"value": canary})).replace('"2.0"', '"1.0"'),
        -32600,
        2,
    ),
    # A response whose id is the client's next request's: answered by it, it would answer that request.
    "a response": (
        lambda canary: f'{{"jsonrpc": "2.0", "id": 3, "result": {{"v": "{canary}\\ud800"}}}}',
        -32700,
        None,
    ),
    # Its id leads its line as a request's does: read from there, it would answer the request of that id.
    "a response cut short": (
        lambda canary: f'{{"jsonrpc": "2.0", "id": 3, "result": {{"v": "{canary}"}}}}'[:-3],
        -32700,
        None,
    ),
    "params not an object": (
        lambda canary: f'{{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": ["{canary}"]}}',
        -32600,
        2,
    ),
}


@pytest.mark.parametrize("case", UNREADABLE_LINES.values(), ids=UNREADABLE_LINES.keys())
def test_stdio_a_line_that_is_no_readable_json_rpc_message_is_answered_and_the_session_goes_on(
    stdio_deployment, server: str, canary: str, case: tuple[Callable[[str], str], int, int | None]
) -> None:
    make_line, code, request_id = case
    log_path = stdio_deployment.log_path.with_name(f"unreadable-{_random.token_hex(4)}.log")
    process = raw_stdio_serve(stdio_deployment, log_path)
    assert process.stdin is not None
    assert process.stdout is not None
    listing = {"name": "list_secret_keys", "arguments": {"server": server}}
    try:
        raw_handshake(process)
        process.stdin.write("\n")  # a blank line is no message, and is not answered
        process.stdin.write(make_line(canary).replace('"s"', json.dumps(server)) + "\n")
        process.stdin.write(json.dumps({**LIST_KEYS, "id": 3, "params": listing}) + "\n")
        process.stdin.flush()
        answers = [json.loads(process.stdout.readline()) for _ in range(2)]
        remaining, returncode = rest_of_session(process)
        answers += remaining
    finally:
        process.kill()
        process.wait()

    refused, listed = answers
    assert refused["id"] == request_id
    assert refused["error"]["code"] == code
    assert listed["id"] == 3
    assert listed["result"]["structuredContent"]["keys"] == []
    assert returncode == 0
    log = log_path.read_text()
    assert "Traceback" not in log
    assert "refused" in log
    leaked = canary in log or any(canary in json.dumps(answer) for answer in answers)  # a bare bool
    assert not leaked


def test_stdio_a_message_of_exactly_the_bound_is_read(stdio_deployment, server: str) -> None:
    log_path = stdio_deployment.log_path.with_name("at-the-bound.log")
    process = raw_stdio_serve(stdio_deployment, log_path)
    assert process.stdin is not None
    assert process.stdout is not None

    def set_secret(value: str) -> str:
        arguments = {"server": server, "key": "TOKEN", "value": value}
        params = {"name": "set_secret", "arguments": arguments}
        return json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}) + "\n"

    bound = 4 * 1024 * 1024  # the README's, its line end included
    line = set_secret("x" * (bound - len(set_secret(""))))
    assert len(line.encode()) == bound
    try:
        raw_handshake(process)
        process.stdin.write(line)
        process.stdin.close()
        answers = [json.loads(line) for line in process.stdout.read().splitlines()]
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()

    # Read and answered by the tool itself, which refuses a value over 64 KiB.
    assert [answer["id"] for answer in answers] == [2]
    assert answers[0]["result"]["isError"] is True
    assert "value" in answers[0]["result"]["content"][0]["text"]


README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    ("transport", "stop", "code"),
    [
        ("streamable-http", signal.SIGTERM, 0),
        ("sse", signal.SIGTERM, 0),
        ("streamable-http", signal.SIGHUP, 0),
        ("sse", signal.SIGHUP, 0),
        ("streamable-http", signal.SIGINT, 130),
        ("stdio", signal.SIGTERM, 0),
        ("stdio", signal.SIGINT, 0),
        ("stdio", signal.SIGHUP, 0),
    ],
    ids=lambda value: value.name if isinstance(value, signal.Signals) else str(value),
)
# A script's `serve &` starts it with Ctrl-C ignored; it stops on SIGINT all the same, so the same code.
@pytest.mark.parametrize("ctrl_c", [signal.SIG_DFL, signal.SIG_IGN], ids=["terminal", "ctrl-c-ignored"])
def test_serve_stopped_by_a_signal_exits_with_the_code_the_readme_gives(
    start_server, tmp_path: Path, transport: str, *, stop: signal.Signals, code: int, ctrl_c: signal.Handlers
) -> None:
    """Supervisors and clients stop a server with SIGTERM: a clean stop (exit 0), not a command's 143."""
    env = isolated_env(tmp_path)
    if transport == "stdio":
        deployment = Deployment("stdio", env, tmp_path / "server.log")
        process = raw_stdio_serve(deployment, tmp_path / "server.log", ctrl_c)
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            # An answer to initialize: the server is serving, its signal handlers in place.
            process.stdin.write(json.dumps(INITIALIZE) + "\n")
            process.stdin.flush()
            assert json.loads(process.stdout.readline())["id"] == 1
            process.send_signal(stop)
            returncode = process.wait(timeout=30)
        finally:
            process.kill()
            process.wait()
    else:
        with start_server(env, transport, tmp_path / "server.log", ctrl_c=ctrl_c) as deployment:
            assert deployment.process is not None
            deployment.process.send_signal(stop)
            returncode = deployment.process.wait(timeout=30)

    assert returncode == code
    exit_codes = README.read_text(encoding="utf-8").split("\nExit codes:", 1)[1].split("\n\n", 1)[0]
    assert "`serve` stops cleanly on SIGTERM and exits 0" in " ".join(exit_codes.split())


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_a_second_ctrl_c_while_requests_finish_stops_at_once_without_the_lifespans_traceback(
    start_server, tmp_path: Path, transport: str
) -> None:
    """Uvicorn forces its way out on a second Ctrl-C ("CTRL+C to force quit"), skipping the app's shutdown.

    The lifespan it leaves behind is cancelled with the event loop, which Starlette reported as a failed
    shutdown, a traceback in the log, though the stop went as it should. The request cut keeps uvicorn's
    own error, as when the grace period ends.
    """
    env = isolated_env(tmp_path)
    token = create_token(env, "alice")
    canary = f"canary-{_random.token_hex(16)}"
    path = "/mcp" if transport == "streamable-http" else "/secrets/set"
    log_path = tmp_path / "server.log"
    with start_server(env, transport, log_path) as deployment:
        assert deployment.process is not None
        host, port = urlsplit(deployment.base_url).hostname, urlsplit(deployment.base_url).port
        with socket.create_connection((host, port)) as unfinished:
            # A request whose body never ends: uvicorn waits for it before the app's shutdown.
            body = json.dumps({"server": "s", "key": "K", "value": canary}).encode()
            unfinished.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nAccept: {ACCEPT['Accept']}\r\n"
                f"Content-Length: {len(body) + 100}\r\n\r\n".encode()
                + body
            )
            deployment.process.send_signal(signal.SIGINT)
            for _ in range(STOP_POLLS):
                if "Waiting for connections to close" in log_path.read_text(encoding="utf-8"):
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"the server did not wait for the request:\n{log_path.read_text()}")
            deployment.process.send_signal(signal.SIGINT)
            returncode = deployment.process.wait(timeout=30)

    log = log_path.read_text(encoding="utf-8")
    assert returncode == 130
    errors = [line for line in log.splitlines() if " ERROR " in line]
    # The request cut, as uvicorn reports it. From Python 3.12.1 asyncio's wait_closed() waits for open
    # connections even once forced out, so the cut comes at the end of the grace period, which says so.
    cut = ("Exception in ASGI application", "timeout graceful shutdown exceeded")
    assert all(any(report in line for report in cut) for line in errors), errors
    assert "the application's shutdown was skipped" in log
    assert canary not in log


def probe(deployment, token: str | None, **headers: str) -> httpx2.Response:
    """One plain HTTP request to the MCP endpoint that is answered at once unless it is let in."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    with httpx2.Client(trust_env=False, timeout=10) as http:
        if deployment.transport == "sse":
            return http.get(deployment.endpoint, headers=headers)
        return http.post(deployment.endpoint, headers={**ACCEPT, **headers}, json=INITIALIZE)


@contextmanager
def session_of(deployment, http: httpx2.Client, token: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A session opened with ``token``: the URL and headers (minus a token) that post into it."""
    authorization = {"Authorization": f"Bearer {token}"}
    if deployment.transport == "sse":
        with http.stream("GET", deployment.endpoint, headers=authorization) as events:
            lines = events.iter_lines()  # kept: closing the iterator would close the stream, and the session
            endpoint = next(line for line in lines if line.startswith("data:"))
            yield deployment.base_url + endpoint.removeprefix("data:").strip(), {}
        return
    opened = http.post(deployment.endpoint, headers={**ACCEPT, **authorization}, json=INITIALIZE)
    assert opened.status_code == 200, opened.text
    session = {
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": LATEST_HANDSHAKE_VERSION,
    }
    yield deployment.endpoint, {**ACCEPT, **session}
    http.delete(deployment.endpoint, headers={**session, **authorization})  # ended, as a client ends it


def opening(deployment, http: httpx2.Client, token: str) -> httpx2.Response:
    """The answer to a request that would open a session for ``token``; an SSE stream let in is closed."""
    authorization = {"Authorization": f"Bearer {token}"}
    if deployment.transport == "sse":
        with http.stream("GET", deployment.endpoint, headers=authorization) as events:
            if events.status_code != HTTPStatus.OK:
                events.read()  # a refusal is short; a stream let in would never end
            return events
    return http.post(deployment.endpoint, headers={**ACCEPT, **authorization}, json=INITIALIZE)


SESSION_BOUND = 2


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_a_user_at_the_session_bound_gets_no_new_session_and_other_users_still_do(
    tmp_path: Path, start_server, transport: str
) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_MAX_SESSIONS_PER_USER=str(SESSION_BOUND))
    alice, bob = create_token(env, "alice"), create_token(env, "bob")
    with (
        start_server(env, transport, tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        with ExitStack() as sessions:
            for _ in range(SESSION_BOUND):
                url, headers = sessions.enter_context(session_of(deployment, http, alice))
            refused = opening(deployment, http, alice)
            in_use = http.post(url, headers={**headers, "Authorization": f"Bearer {alice}"}, json=LIST_KEYS)
            with session_of(deployment, http, bob) as (url, headers):
                as_bob = http.post(url, headers={**headers, "Authorization": f"Bearer {bob}"}, json=LIST_KEYS)
        # Once one of hers ends, alice may open one again; an SSE server sees a stream end a moment later.
        again = [opening(deployment, http, alice).status_code]
        while again[-1] == HTTPStatus.TOO_MANY_REQUESTS and len(again) < 200:
            time.sleep(0.05)
            again.append(opening(deployment, http, alice).status_code)

    assert refused.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert f"too many open sessions for this user (at most {SESSION_BOUND})" in refused.text
    assert in_use.status_code in (200, 202), in_use.text  # the sessions she has go on
    assert as_bob.status_code in (200, 202), as_bob.text
    assert again[-1] == HTTPStatus.OK
    assert "refused a new session of alice" in deployment.log()
    assert alice not in deployment.log()


async def test_many_sessions_opened_at_once_by_one_user_stay_within_the_bound(
    tmp_path: Path, start_server
) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_MAX_SESSIONS_PER_USER=str(SESSION_BOUND))
    alice = create_token(env, "alice")
    headers = {**ACCEPT, "Authorization": f"Bearer {alice}"}
    at_once = 20
    with start_server(env, "streamable-http", tmp_path / "server.log") as deployment:
        limits = httpx2.Limits(max_connections=at_once)
        async with httpx2.AsyncClient(trust_env=False, timeout=30, limits=limits) as http:
            statuses: list[int] = []

            async def open_one() -> None:
                response = await http.post(deployment.endpoint, headers=headers, json=INITIALIZE)
                statuses.append(response.status_code)

            async with anyio.create_task_group() as openings:
                for _ in range(at_once):
                    openings.start_soon(open_one)

    assert statuses.count(HTTPStatus.OK) == SESSION_BOUND, statuses
    assert statuses.count(HTTPStatus.TOO_MANY_REQUESTS) == at_once - SESSION_BOUND, statuses


async def test_a_user_at_the_session_bound_is_still_served_over_the_sessionless_protocol(
    tmp_path: Path, start_server
) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_MAX_SESSIONS_PER_USER=str(SESSION_BOUND))
    alice = create_token(env, "alice")
    with (
        start_server(env, "streamable-http", tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
        ExitStack() as sessions,
    ):
        for _ in range(SESSION_BOUND):
            sessions.enter_context(session_of(deployment, http, alice))
        # 2026-07-28 opens no session: each request stands alone, so the bound is not its to refuse.
        async with deployment.connect(token=alice, mode="auto") as client:
            listed = await client.call_tool("list_secret_keys", {})

    assert not listed.is_error, text_of(listed)


def test_a_second_protocol_version_header_does_not_get_past_the_session_bound(
    tmp_path: Path, start_server
) -> None:
    # The SDK routes by the first header: a handshake version there opens a session whatever follows it.
    env = isolated_env(tmp_path, MCP_SECRETS_MAX_SESSIONS_PER_USER=str(SESSION_BOUND))
    alice = create_token(env, "alice")
    headers = [
        *ACCEPT.items(),
        ("Authorization", f"Bearer {alice}"),
        ("mcp-protocol-version", LATEST_HANDSHAKE_VERSION),
        ("mcp-protocol-version", "2026-07-28"),
    ]
    with (
        start_server(env, "streamable-http", tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        statuses = [
            http.post(deployment.endpoint, headers=headers, json=INITIALIZE).status_code
            for _ in range(SESSION_BOUND + 1)
        ]

    assert statuses == [HTTPStatus.OK] * SESSION_BOUND + [HTTPStatus.TOO_MANY_REQUESTS]


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_sessions_left_open_by_a_revoked_token_do_not_keep_its_user_from_opening_new_ones(
    tmp_path: Path, start_server, transport: str
) -> None:
    # A leaked token revoked: whoever holds it can use none of its sessions, nor keep alice out of hers.
    env = isolated_env(tmp_path, MCP_SECRETS_MAX_SESSIONS_PER_USER=str(SESSION_BOUND))
    leaked = create_token(env, "alice")
    with (
        start_server(env, transport, tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
        ExitStack() as sessions,
    ):
        for _ in range(SESSION_BOUND):
            sessions.enter_context(session_of(deployment, http, leaked))
        revoked = deployment.cli("token", "revoke", leaked)
        fresh = create_token(env, "alice")
        opened = opening(deployment, http, fresh)
        refused = opening(deployment, http, leaked)

    assert revoked.returncode == 0, revoked.stderr
    assert opened.status_code == HTTPStatus.OK, opened.text
    assert refused.status_code == HTTPStatus.UNAUTHORIZED


def test_bob_cannot_post_into_alices_session(http_deployment) -> None:
    alice = {"Authorization": f"Bearer {http_deployment.token('alice')}"}
    bob = {"Authorization": f"Bearer {http_deployment.token('bob')}"}
    with (
        httpx2.Client(trust_env=False, timeout=10) as http,
        session_of(http_deployment, http, http_deployment.token("alice")) as (url, headers),
    ):
        as_bob = http.post(url, headers={**headers, **bob}, json=LIST_KEYS)
        without_token = http.post(url, headers=headers, json=LIST_KEYS)
        as_alice = http.post(url, headers={**headers, **alice}, json=LIST_KEYS)

    assert as_alice.status_code in (200, 202), as_alice.text  # the session is there, for its owner
    assert as_bob.status_code == 404
    assert "alice" not in as_bob.text
    assert without_token.status_code == 401


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="no-token"),
        pytest.param("garbage", id="garbage"),
        pytest.param("mcps_0123456789_" + "A" * 43, id="well-formed-but-unknown"),
    ],
)
def test_request_without_a_known_token_gets_401_with_www_authenticate(http_deployment, token) -> None:
    response = probe(http_deployment, token)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_revoked_token_gets_401(http_deployment) -> None:
    token = http_deployment.cli("token", "create", "erin").stdout.strip()
    async with http_deployment.connect(token=token) as erin:
        assert (await keys_of(erin))[0] == "erin"
    token_id = token.split("_")[1]

    revoked = http_deployment.cli("token", "revoke", token_id)

    assert revoked.returncode == 0, revoked.stderr
    assert probe(http_deployment, token).status_code == 401


async def test_a_session_its_token_opened_can_make_no_call_once_the_token_is_revoked(
    streamable_http_deployment: Deployment, canary: str
) -> None:
    # Revocation must not wait for the sessions a leaked token opened: each request is checked anew.
    deployment = streamable_http_deployment
    token = deployment.cli("token", "create", "frank").stdout.strip()
    statuses: list[int] = []

    async def note_status(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    refused: list[BaseException] = []
    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            event_hooks={"response": [note_status]},
        ) as http,
        Client(streamable_http_client(deployment.endpoint, http_client=http)) as frank,
    ):
        assert (await keys_of(frank))[0] == "frank"
        revoked = deployment.cli("token", "revoke", token.split("_")[1])
        answered = len(statuses)
        try:
            result = await frank.call_tool("set_secret", {"server": "s", "key": "K", "value": canary})
        except MCPError as error:  # the SDK client's word for a 401
            refused.append(error)
        else:
            pytest.fail(f"a call on a revoked token's session was answered: {text_of(result)}")

    assert revoked.returncode == 0, revoked.stderr
    assert len(refused) == 1
    assert HTTPStatus.UNAUTHORIZED in statuses[answered:]
    await _frank_holds_nothing(deployment, canary)


def test_an_sse_stream_its_token_opened_takes_no_message_once_the_token_is_revoked(
    sse_deployment: Deployment, canary: str
) -> None:
    # The SDK's SSE client does not fail a call whose message is refused (modelcontextprotocol/python-sdk
    # issue 2110): it waits. So this is asked at the HTTP level.
    deployment = sse_deployment
    token = deployment.cli("token", "create", "frank").stdout.strip()
    assert deployment.base_url is not None
    host, port = str(urlsplit(deployment.base_url).hostname), int(urlsplit(deployment.base_url).port or 80)
    call = {"name": "set_secret", "arguments": {"server": "s", "key": "K", "value": canary}}
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}
    with ExitStack() as held, httpx2.Client(trust_env=False, timeout=30) as http:
        path = legacy_sse_messages_path(token, host, port, held)
        revoked = deployment.cli("token", "revoke", token.split("_")[1])
        bearer = {"Authorization": f"Bearer {token}"}
        answer = http.post(urljoin(deployment.base_url, path), headers=bearer, json=message)

    assert revoked.returncode == 0, revoked.stderr
    assert answer.status_code == 401
    assert canary not in answer.text
    anyio.run(_frank_holds_nothing, deployment, canary)


async def _frank_holds_nothing(deployment: Deployment, canary: str) -> None:
    """With a new token, frank's keys: none, since the refused call stored nothing; the log has no canary."""
    token = deployment.cli("token", "create", "frank").stdout.strip()
    async with deployment.connect(token=token) as frank:
        assert await keys_of(frank) == ("frank", [])
    assert canary not in deployment.log()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Host": "evil.example"}, 421, id="foreign-host"),
        pytest.param({"Host": "evil.example:80"}, 421, id="foreign-host-with-port"),
        pytest.param({"Origin": "http://evil.example"}, 403, id="foreign-origin"),
        pytest.param({"Origin": "null"}, 403, id="null-origin"),
    ],
)
def test_foreign_host_or_origin_is_refused_even_with_a_valid_token(http_deployment, headers, status) -> None:
    response = probe(http_deployment, http_deployment.token("alice"), **headers)

    assert response.status_code == status


@pytest.mark.parametrize(
    "spelling",  # the allowed origin configured; the Host and Origin sent
    [
        # What a browser sends: the host in lower case, an origin without a path.
        pytest.param(
            ("https://Secrets.Example.COM/", "secrets.example.com:443", "https://secrets.example.com"),
            id="as-browsers-send-them",
        ),
        # What curl sends for the URL as it is written: host names are the same in any case.
        pytest.param(
            ("https://Secrets.Example.COM", "Secrets.Example.COM:443", "https://Secrets.Example.COM"),
            id="in-mixed-case-as-configured",
        ),
    ],
)
def test_allowed_hosts_and_origins_match_however_either_side_spells_them(
    start_server, env, tmp_path: Path, spelling: tuple[str, str, str]
) -> None:
    allowed_origin, host, origin = spelling
    env["MCP_SECRETS_ALLOWED_HOSTS"] = "Secrets.Example.COM:*"
    env["MCP_SECRETS_ALLOWED_ORIGINS"] = allowed_origin
    token = create_token(env, "alice")
    with start_server(env, "streamable-http", tmp_path / "server.log") as deployment:
        admitted = probe(deployment, token, Host=host, Origin=origin)
        foreign = probe(deployment, token, Host="evil.example.com:443")

    assert admitted.status_code == HTTPStatus.OK, admitted.text
    assert foreign.status_code == HTTPStatus.MISDIRECTED_REQUEST


async def test_stateless_streamable_http_keeps_secrets_across_connections(stateless_deployment) -> None:
    async with stateless_deployment.connect("alice") as first:
        stored = await first.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": "v"})
    async with stateless_deployment.connect("alice") as second:
        listed = await keys_of(second)

    assert not stored.is_error, text_of(stored)
    assert listed == ("alice", [("github", "TOKEN")])
    assert "(stateless)" in stateless_deployment.log()


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
@pytest.mark.parametrize("session_id", [None, "a-session-id-sent-anyway"])
def test_stateless_streamable_http_takes_only_post_and_says_so_with_405(
    stateless_deployment, method: str, session_id: str | None
) -> None:
    # With no session, a GET stream would never carry a message, yet be held open, with no bound per user,
    # until its client goes; and there is no session to DELETE. A 405's Allow names what is allowed.
    headers = {
        "Authorization": f"Bearer {stateless_deployment.token('alice')}",
        "Accept": "text/event-stream, application/json",
        "MCP-Protocol-Version": LATEST_HANDSHAKE_VERSION,
    }
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
    with (
        httpx2.Client(trust_env=False, timeout=30) as http,
        http.stream(method, stateless_deployment.endpoint, headers=headers) as answer,
    ):
        status, allowed = answer.status_code, answer.headers.get("allow")
        without_token = http.request(method, stateless_deployment.endpoint)

    assert (status, allowed) == (HTTPStatus.METHOD_NOT_ALLOWED, "POST")
    assert without_token.status_code == HTTPStatus.UNAUTHORIZED


@pytest.mark.parametrize(
    ("arguments", "noted"),
    [
        (["--host", EVERY_INTERFACE], True),
        (["--host", EVERY_INTERFACE, "--public-url", "http://192.0.2.1:8000"], False),
        ([], False),
    ],
    ids=["every-interface", "every-interface-with-its-url", "loopback"],
)
def test_listening_on_every_interface_says_how_other_machines_get_in(
    start_server, env, tmp_path: Path, arguments: list[str], noted: bool
) -> None:
    with start_server(env, "streamable-http", tmp_path / "server.log", *arguments) as deployment:
        summary = deployment.log()

    assert ("note:       listening on every interface" in summary) is noted
    assert ("set --public-url, or MCP_SECRETS_ALLOWED_HOSTS" in summary) is noted


def _can_bind(address: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


ANOTHER_LOOPBACK = "127.0.0.2"  # an address of this machine other than 127.0.0.1, as a LAN address is


@pytest.mark.skipif(not _can_bind(ANOTHER_LOOPBACK), reason=f"{ANOTHER_LOOPBACK} is not an address here")
async def test_a_server_bound_to_one_address_takes_requests_that_name_it(
    start_server, env, tmp_path: Path
) -> None:
    with start_server(env, "streamable-http", tmp_path / "server.log", host=ANOTHER_LOOPBACK) as deployment:
        summary = deployment.log()
        async with deployment.connect("alice") as alice:
            username, _ = await keys_of(alice)
        with httpx2.Client(trust_env=False, timeout=10) as http:
            own_origin = http.get(f"{deployment.base_url}/healthz", headers={"Origin": deployment.base_url})
            other_address = http.get(f"{deployment.base_url}/healthz", headers={"Host": "127.0.0.3"})

    # The start names this URL, and entry links are made on it: a browser sends its Host and Origin.
    assert f"serving streamable-http at {deployment.endpoint}" in summary
    assert username == "alice"
    assert own_origin.status_code == 200
    assert other_address.status_code == 421


@pytest.mark.parametrize(
    "public_url",
    ["https://secrets.example.com", "https://secrets.example.com:443/", "https://Secrets.Example.COM"],
    ids=["plain", "default-port", "capitals"],
)
def test_the_public_url_gets_in_as_browsers_and_clients_name_it(
    start_server, env, tmp_path: Path, public_url: str
) -> None:
    env["MCP_SECRETS_PUBLIC_URL"] = public_url
    # Browsers and HTTP clients write the host in lower case, and leave out the scheme's default port.
    named = {"Host": "secrets.example.com", "Origin": "https://secrets.example.com"}
    with (
        start_server(env, "streamable-http", tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        answers = [
            http.get(f"{deployment.base_url}/healthz", headers=headers).status_code
            for headers in (named, {"Host": "secrets.example.com:443"}, {"Host": "secrets.example.com:8443"})
        ]

    assert answers == [200, 200, 421]


def test_a_public_url_on_its_own_port_gets_in_by_its_host_name_as_a_proxy_forwards_it(
    start_server, env, tmp_path: Path
) -> None:
    env["MCP_SECRETS_PUBLIC_URL"] = "https://secrets.example.com:8443/team-a"
    # nginx's `proxy_set_header Host $host` forwards the host name without the port the client named.
    with (
        start_server(env, "streamable-http", tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        hosts = ["secrets.example.com", "secrets.example.com:8443", "evil.example", "evil.example:8443"]
        answers = [
            http.get(f"{deployment.base_url}/healthz", headers={"Host": host}).status_code for host in hosts
        ]

    assert answers == [200, 200, 421, 421]


def test_the_access_log_names_the_address_that_connected_not_one_a_header_claims(
    start_server, env, tmp_path: Path
) -> None:
    claimed = "203.0.113.66"  # what any client, or one through a proxy that passes the header on, can send
    with (
        start_server(env, "streamable-http", tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        answer = http.get(
            f"{deployment.base_url}/healthz",
            headers={"X-Forwarded-For": claimed, "X-Forwarded-Proto": "https", "Forwarded": f"for={claimed}"},
        )
        log = deployment.log()

    assert answer.status_code == 200
    access = [line for line in log.splitlines() if '"GET /healthz' in line]
    assert access
    assert all("uvicorn.access: 127.0.0.1:" in line for line in access)
    assert claimed not in log


def test_behind_a_public_url_with_a_path_sse_clients_post_their_messages_under_it(
    start_server, env, tmp_path: Path
) -> None:
    public = "https://secrets.example.com/team-a"
    env["MCP_SECRETS_PUBLIC_URL"] = public
    token = create_token(env, "alice")
    # The proxy in front takes /team-a off and forwards the request with the public Host.
    headers = {"Authorization": f"Bearer {token}", "Host": "secrets.example.com"}
    with (
        start_server(env, "sse", tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
        http.stream("GET", f"{deployment.base_url}/sse", headers=headers) as events,
    ):
        lines = events.iter_lines()  # kept: closing the line iterator would close the stream, and the session
        endpoint = next(line for line in lines if line.startswith("data:"))
        # As the SDK's client resolves the endpoint it is sent: against the URL it connected to.
        message_url = urljoin(f"{public}/sse", endpoint.removeprefix("data:").strip())
        assert message_url.startswith(f"{public}/messages/"), "the endpoint is outside the public URL"
        posted = http.post(
            deployment.base_url + message_url.removeprefix(public), headers=headers, json=INITIALIZE
        )

    assert posted.status_code == 202, posted.text


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_first_http_run_makes_a_private_key_file_and_shows_one_token_once(
    start_server, env, tmp_path: Path, transport: str
) -> None:
    del env["MCP_SECRETS_MASTER_KEY"]
    env["MCP_SECRETS_USER"] = "alice"
    config_dir = Path(env["MCP_SECRETS_CONFIG_DIR"])
    data_dir = Path(env["MCP_SECRETS_DATA_DIR"])

    with start_server(env, transport, tmp_path / "first.log") as first:
        key_file = config_dir / "master.key"
        first_log = first.log()
        tokens = set(TOKEN.findall(first_log))
        assert len(tokens) == 1, first_log
        (token,) = tokens
        async with first.connect(token=token) as alice:
            assert (await keys_of(alice))[0] == "alice"
    with start_server(env, transport, tmp_path / "second.log") as second:
        second_log = second.log()

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not (data_dir / "master.key").exists()
    assert all(path.name.startswith("secrets.db") for path in data_dir.iterdir())
    master_key = key_file.read_text().strip()
    assert len(master_key) == 43
    assert master_key not in first_log
    assert master_key not in second_log
    assert "MCP Inspector" in first_log
    assert f"Authorization: Bearer {token}" in first_log
    # The Claude Desktop config keeps the token out of the bridge's arguments, which `ps` shows everyone.
    intro = "Claude Desktop (claude_desktop_config.json), through the mcp-remote bridge:\n"
    desktop, _ = json.JSONDecoder().raw_decode(first_log[first_log.index(intro) + len(intro) :])
    bridge = desktop["mcpServers"]["mcp-secrets"]
    assert not any(token in argument for argument in bridge["args"])
    assert bridge["args"][-2:] == ["--header", "Authorization:${AUTH_HEADER}"]
    assert bridge["env"] == {"AUTH_HEADER": f"Bearer {token}"}
    assert "mcp-secrets token create" in second_log  # later starts say how to make a token
    assert f"store:      SQLite {data_dir / 'secrets.db'}" in first_log
    assert f"master key: key file {key_file} (generated now)" in first_log
    assert (tmp_path / "first.stdout").read_text() == ""
    assert not TOKEN.search(second_log)
    # Made by the server at its start, not by the token command: the trail says which.
    audit = run_cli(env, "audit", "--json")
    assert audit.returncode == 0, audit.stderr
    created = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [(e["actor"], e["action"], e["transport"]) for e in created] == [
        ("alice", "token-created", transport)
    ]
    assert f"master key: key file {key_file}\n" in second_log


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_a_first_http_run_on_a_port_in_use_makes_no_token_and_the_next_start_shows_one(
    start_server, env, tmp_path: Path, transport: str
) -> None:
    """It made and showed one before it failed to listen: left valid, and no later start showed one."""
    env["MCP_SECRETS_USER"] = "alice"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        refused = run_cli(env, "serve", "--transport", transport, "--port", port)

    shown = TOKEN.search(refused.stdout + refused.stderr) is not None  # a bare bool: a failure shows no token
    assert not shown
    assert "No API token existed yet" not in refused.stderr
    assert f"could not serve on 127.0.0.1 port {port}" in refused.stderr
    assert refused.returncode == COULD_NOT_LISTEN
    listed = run_cli(env, "token", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1:] == []  # the header alone
    with start_server(env, transport, tmp_path / "next.log") as next_start:
        tokens = set(TOKEN.findall(next_start.log()))
        made = len(tokens)
        assert made == 1
        (token,) = tokens
        async with next_start.connect(token=token) as alice:
            assert (await keys_of(alice))[0] == "alice"
    assert "No API token existed yet, so one was created for alice" in next_start.log()


async def stored_from_a_terminal(
    deployment: Deployment, home: Path, value: str, **terminal_env: str
) -> tuple[str, list[str]]:
    """Ask alice's stdio server for the terminal command, run it in a terminal of its own, and list.

    The terminal has none of the server's settings, a home of its own, and ``terminal_env``. Returns the
    server's answer and the keys it then lists for ``github``.
    """
    async with deployment.connect("alice") as alice:
        asked = await alice.call_tool("request_secret", {"server": "github", "key": "TOKEN"})
    command = re.search(r"terminal:  (.+?)  \(", text_of(asked))
    assert command, text_of(asked)
    terminal = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        **terminal_env,
    }

    done = subprocess.run(
        ["bash", "-c", command.group(1)],
        input=value + "\n",
        env=terminal,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    async with deployment.connect("alice") as alice:
        listed = await alice.call_tool("list_secret_keys", {"server": "github"})
    assert listed.structured_content is not None
    return text_of(asked), [entry["key"] for entry in listed.structured_content["keys"]]


async def test_the_terminal_command_request_secret_gives_on_stdio_reaches_the_servers_store(
    tmp_path: Path, canary: str
) -> None:
    """A client config's MCP_SECRETS_* are not the terminal's: the command stored the value elsewhere."""
    key_file = tmp_path / "keys" / "master.key"
    key_file.parent.mkdir()
    key_file.write_text(generate_master_key() + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    env = isolated_env(tmp_path / "server", MCP_SECRETS_MASTER_KEY_FILE=str(key_file))
    del env["MCP_SECRETS_MASTER_KEY"]
    deployment = Deployment("stdio", env, tmp_path / "server.log")

    _, listed = await stored_from_a_terminal(deployment, tmp_path / "home", canary)

    assert listed == ["TOKEN"]


async def test_the_terminal_command_on_stdio_names_the_secret_settings_it_cannot_show(
    tmp_path: Path, canary: str
) -> None:
    """A master key given in the environment: the command stored the value in a store of its own."""
    master_key = generate_master_key()
    env = isolated_env(tmp_path / "server", MCP_SECRETS_MASTER_KEY=master_key)
    deployment = Deployment("stdio", env, tmp_path / "server.log")

    # The terminal sets the master key, as the answer says it must.
    answer, listed = await stored_from_a_terminal(
        deployment, tmp_path / "home", canary, MCP_SECRETS_MASTER_KEY=master_key
    )

    assert "The terminal needs MCP_SECRETS_MASTER_KEY set as this server's configuration sets it" in answer
    assert (master_key in answer) is False
    assert listed == ["TOKEN"]
