"""End-to-end fixtures: isolated settings, the real CLI, and `mcp-secrets serve` as a subprocess.

Every subprocess gets its own data and config directories and a fresh master
key, logs at DEBUG to a file the tests read back, and is stopped at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, cast

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import LATEST_HANDSHAKE_VERSION
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from conftest import isolated_env as base_isolated_env

MCP_SECRETS = [sys.executable, "-m", "mcp_secrets"]
# Sets SIGINT's disposition (argv[1]), then becomes the command that follows: an exec keeps it when ignored.
_WITH_CTRL_C = (
    "import os, signal, sys; signal.signal(signal.SIGINT, int(sys.argv[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)
# Exec a command with at most this many file descriptors open (its soft and hard RLIMIT_NOFILE).
_WITH_NOFILE = (
    "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)
HTTP_TRANSPORTS = ["streamable-http", "sse"]
# The timeouts of the SDK's own HTTP client (30 s, and 300 s to read a stream), as clients run it: httpx's
# default 5 s read would end a listen stream told nothing for 5 s, as a client of a revoked token is.
SDK_CLIENT_TIMEOUT = httpx2.Timeout(30, read=300)
STARTUP_POLLS = 400  # x POLL_INTERVAL: a generous bound on how long a server may take to come up
POLL_INTERVAL = 0.05
CLI_TIMEOUT = 60
MASKED_SETTING_CHARS = 16  # a setting this long may be a secret: a failure names it
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    # No update checks, sync or other traffic of its own: the browser talks only to the server under test.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
BROWSER_TIMEOUT = 30


# A raw JSON-RPC `initialize` body, for tests that speak HTTP by hand.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": LATEST_HANDSHAKE_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}


def isolated_env(root: Path, **overrides: str) -> dict[str, str]:
    """``conftest.isolated_env`` at DEBUG: the leak checks read every log line a server writes."""
    return base_isolated_env(root, **{"MCP_SECRETS_LOG_LEVEL": "DEBUG", **overrides})


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Settings for one test's subprocesses: tmp data and config dirs, a fresh master key, DEBUG logs."""
    return isolated_env(tmp_path)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``mcp-secrets ARGS`` to completion; stdin is closed so nothing waits on it."""
    return run_program(env, [*MCP_SECRETS, *args])


def run_program(env: dict[str, str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion, as ``run_cli`` runs the CLI."""
    return subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def run_client_script(
    argv: list[str], settings: dict[str, str], printed: list[str], timeout: float
) -> dict[str, Any]:
    """Run a foreign client's script given ``settings`` alone, and return the JSON report it prints.

    All it printed (a stdio server's log too) is added to ``printed``, for its caller to search. A failed
    run is told with its stderr less every long setting (a value, a key, a token), named instead, so that
    a traceback that held one cannot put it in the test's output.
    """
    done = subprocess.run(
        argv,
        env={"PATH": os.environ["PATH"], "HOME": str(Path.home()), **settings},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    printed += [done.stdout, done.stderr]
    if done.returncode != 0:
        told = done.stderr[-3000:]
        for name, value in settings.items():
            if len(value) >= MASKED_SETTING_CHARS:
                told = told.replace(value, f"[{name}]")
        pytest.fail(f"{argv[-1]} exited with {done.returncode}: {told}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def create_token(env: dict[str, str], username: str) -> str:
    """A new API token for ``username``, made by ``mcp-secrets token create``."""
    created = run_cli(env, "token", "create", username)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def stdout_path(log_path: Path) -> Path:
    """Where a server whose stderr goes to ``log_path`` writes its stdout."""
    return log_path.with_suffix(".stdout")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Deployment:
    """One way of running mcp-secrets for real: stdio, or an HTTP server subprocess.

    ``connect(username)`` opens an SDK client acting as that user: on stdio by
    ``MCP_SECRETS_USER``, over HTTP with an API token made by the real CLI.
    """

    def __init__(
        self,
        transport: str,
        env: dict[str, str],
        log_path: Path,
        base_url: str | None = None,
        process: subprocess.Popen[bytes] | None = None,
    ):
        self.transport = transport
        self.env = env
        self.log_path = log_path
        self.base_url = base_url
        self.process = process  # the HTTP server's process; None on stdio, where each client spawns one
        self.tokens: dict[str, str] = {}

    @property
    def data_dir(self) -> Path:
        return Path(self.env["MCP_SECRETS_DATA_DIR"])

    @property
    def endpoint(self) -> str:
        assert self.base_url is not None, "stdio has no URL"
        return self.base_url + ("/sse" if self.transport == "sse" else "/mcp")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the CLI against this deployment's store."""
        return run_cli(self.env, *args)

    def token(self, username: str) -> str:
        """This user's API token, made once by the CLI and reused."""
        if username not in self.tokens:
            self.tokens[username] = create_token(self.env, username)
        return self.tokens[username]

    def log(self) -> str:
        """Everything the server processes wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def database_bytes(self) -> bytes:
        """The raw bytes of the SQLite file and its -wal and -shm files."""
        files = sorted(self.data_dir.glob("secrets.db*"))
        assert files, "the store has no SQLite file yet"
        return b"".join(path.read_bytes() for path in files)

    @asynccontextmanager
    async def connect(
        self, username: str = "alice", *, token: str | None = None, **client_options: Any
    ) -> AsyncIterator[Client]:
        """An SDK client session acting as ``username`` (or as the holder of ``token``).

        ``client_options`` go to ``mcp.Client`` as they are, e.g. ``mode`` or ``elicitation_callback``.
        """
        if self.transport == "stdio":
            params = StdioServerParameters(
                command=MCP_SECRETS[0],
                args=[*MCP_SECRETS[1:], "serve"],
                env={**self.env, "MCP_SECRETS_USER": username},
            )
            with self.log_path.open("a", encoding="utf-8") as errlog:
                async with Client(stdio_client(params, errlog=errlog), **client_options) as client:
                    yield client
            return
        headers = {"Authorization": f"Bearer {token or self.token(username)}"}
        if self.transport == "sse":
            async with Client(sse_client(self.endpoint, headers=headers), **client_options) as client:
                yield client
            return
        async with (
            httpx2.AsyncClient(headers=headers, trust_env=False, timeout=SDK_CLIENT_TIMEOUT) as http,
            Client(streamable_http_client(self.endpoint, http_client=http), **client_options) as client,
        ):
            yield client


def _wait_until_healthy(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    with httpx2.Client(trust_env=False, timeout=2) as http:
        for _ in range(STARTUP_POLLS):
            if process.poll() is not None:
                pytest.fail(f"mcp-secrets serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if http.get(f"{base_url}/healthz").status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(POLL_INTERVAL)
    pytest.fail(f"mcp-secrets serve did not answer /healthz:\n{log_path.read_text()}")


def with_ctrl_c(disposition: signal.Handlers, command: list[str]) -> list[str]:
    """``command`` (a path first) started with SIGINT at ``disposition``, not at what this test run inherited.

    A shell script's ``cmd &`` starts ``cmd`` with SIGINT ignored, and so would every server a test
    run started that way spawns; the default is what a terminal gives.
    """
    return [sys.executable, "-c", _WITH_CTRL_C, str(int(disposition)), *command]


@contextmanager
def serving(
    env: dict[str, str],
    transport: str,
    log_path: Path,
    *args: str,
    host: str = "127.0.0.1",
    ctrl_c: signal.Handlers = signal.SIG_DFL,
    nofile: int | None = None,
) -> Iterator[Deployment]:
    """``mcp-secrets serve --transport TRANSPORT`` on a free port of ``host``, healthy, stopped on exit.

    ``ctrl_c`` is the SIGINT disposition it starts with (see ``with_ctrl_c``); ``nofile``, when given, the
    number of file descriptors it may open.
    """
    port = free_port()
    serve = [*MCP_SECRETS, "serve", "--transport", transport, "--host", host, "--port", str(port), *args]
    command = with_ctrl_c(ctrl_c, serve)
    if nofile is not None:
        command = [sys.executable, "-c", _WITH_NOFILE, str(nofile), *command]
    with log_path.open("a", encoding="utf-8") as log, stdout_path(log_path).open("a") as out:
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=log)
    try:
        base_url = f"http://{host}:{port}"
        _wait_until_healthy(process, base_url, log_path)
        yield Deployment(transport, env, log_path, base_url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def start_server() -> Callable[..., AbstractContextManager[Deployment]]:
    """``start_server(env, transport, log_path, *args)``: a server for one test, as a context manager."""
    return serving


def _module_server(
    tmp_path_factory: pytest.TempPathFactory,
    transport: str,
    *args: str,
    usernames: tuple[str, ...] = ("alice", "bob"),
    **settings: str,
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp(transport)
    env = isolated_env(root, **settings)
    # Tokens first, so the server starts as an established deployment rather than a first run.
    tokens = {username: create_token(env, username) for username in usernames}
    with serving(env, transport, root / "server.log", *args) as deployment:
        deployment.tokens.update(tokens)
        yield deployment


@pytest.fixture(scope="module")
def streamable_http_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One Streamable HTTP server per test module, with tokens for alice and bob."""
    yield from _module_server(tmp_path_factory, "streamable-http")


@pytest.fixture(scope="module")
def sse_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One SSE server per test module, with tokens for alice and bob."""
    yield from _module_server(tmp_path_factory, "sse")


@pytest.fixture(scope="module")
def stateless_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One ``--stateless`` Streamable HTTP server per test module."""
    yield from _module_server(tmp_path_factory, "streamable-http", "--stateless", usernames=("alice",))


@pytest.fixture(scope="module")
def impatient_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A Streamable HTTP server whose ``request_secret`` waits only 1 s for the entry page."""
    yield from _module_server(tmp_path_factory, "streamable-http", MCP_SECRETS_ENTRY_WAIT_SECONDS="1")


@pytest.fixture(scope="module")
def short_link_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A Streamable HTTP server whose entry links expire after 6 s, long enough on a loaded machine."""
    yield from _module_server(tmp_path_factory, "streamable-http", MCP_SECRETS_ENTRY_LINK_MINUTES="0.1")


@pytest.fixture(scope="module")
def stdio_deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """stdio settings shared by a module; each ``connect`` starts its own server process."""
    root = tmp_path_factory.mktemp("stdio")
    return Deployment("stdio", isolated_env(root), root / "server.log")


DEPLOYMENT_FIXTURES = {
    "stdio": "stdio_deployment",
    "streamable-http": "streamable_http_deployment",
    "sse": "sse_deployment",
}


@pytest.fixture(params=list(DEPLOYMENT_FIXTURES))
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """Each real transport in turn: stdio, Streamable HTTP and SSE."""
    return cast("Deployment", request.getfixturevalue(DEPLOYMENT_FIXTURES[request.param]))


@pytest.fixture(params=HTTP_TRANSPORTS)
def http_deployment(request: pytest.FixtureRequest) -> Deployment:
    """Each HTTP transport in turn: Streamable HTTP and SSE."""
    return cast("Deployment", request.getfixturevalue(DEPLOYMENT_FIXTURES[request.param]))


def legacy_sse_messages_path(token: str, host: str, port: int, held: ExitStack) -> str:
    """The path a legacy SSE stream opened with ``token`` names for its messages; ``held`` keeps it open."""
    return legacy_sse_stream(token, host, port, held)[1]


def legacy_sse_stream(
    token: str, host: str, port: int, held: ExitStack, receive_buffer: int | None = None
) -> tuple[socket.socket, str]:
    """A legacy SSE stream opened with ``token`` on a raw socket, and the path it names for messages.

    ``held`` keeps it open; ``receive_buffer`` sets the socket's (small: the server's sends soon wait).
    """
    stream = held.enter_context(socket.socket())
    if receive_buffer is not None:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    stream.settimeout(30)
    stream.connect((host, port))
    stream.sendall(
        f"GET /sse HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    received = b""
    while b"session_id=" not in received or not received.split(b"session_id=", 1)[1].strip():
        chunk = stream.recv(4096)
        assert chunk, "the SSE stream ended before its endpoint event"
        received += chunk
    path = received.split(b"data: ", 1)[1].split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    return stream, path.decode()


async def request_entry_link(deployment: Deployment, username: str, server: str, key: str) -> str:
    """An entry link from ``request_secret``: a client without elicitation gets the URL in the result."""
    async with deployment.connect(username) as client:
        result = await client.call_tool("request_secret", {"server": server, "key": key})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert result.structured_content["status"] == "link_sent", result.structured_content
    return str(result.structured_content["url"])


def missing_browser() -> str | None:
    """Why headless Chromium cannot run here, or None when it can."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not found (Debian: apt-get install chromium chromium-driver)"
    return None


@contextmanager
def headless_chromium(width: int = 900, height: int = 700) -> Iterator[webdriver.Chrome]:
    """The system's Chromium under its own chromedriver, headless, with a throwaway profile.

    Pages see a ``width`` x ``height`` viewport. Both paths are given, so Selenium
    Manager never tries to download a browser or a driver.
    """
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium is not None, missing_browser()
    assert chromedriver is not None, missing_browser()
    with tempfile.TemporaryDirectory(prefix="mcp-secrets-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
        try:
            driver.set_page_load_timeout(BROWSER_TIMEOUT)
            # --window-size counts the window's frame too; this sets what the page gets.
            viewport = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", viewport)
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium for one test: skipped where it is not installed, failed if CI requires it."""
    reason = missing_browser()
    if reason is not None:
        if os.environ.get("MCP_SECRETS_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"MCP_SECRETS_REQUIRE_BROWSER is set, but {reason}")
        pytest.skip(reason)
    with headless_chromium() as driver:
        yield driver
