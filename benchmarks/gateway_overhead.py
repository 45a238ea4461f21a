"""The gateway's overhead per call: ``ping`` through mcp-secrets, as a ratio to calling it directly.

    python benchmarks/gateway_overhead.py [--pairs 15] [--calls 100]

The downstream is the tests' fixture server (tests/fixtures/downstream_server.py),
whose ``ping`` returns a constant. Each row compares two ways of calling it with
the MCP SDK client (``mcp.Client``), over stdio and over Streamable HTTP:

- direct (the floor): the client talks to the downstream itself, the token given
  as the gateway would give it (environment on stdio, Authorization header over HTTP);
- in-process gateway: ``mcp.Client(build_server(..., gateway=...))`` calls ``down__ping``;
  what is added is the gateway's own work per call (identity, reading and decrypting
  the caller's secrets, the pool, redaction of the result), plus the in-process hop;
- mcp-secrets serve: a real ``mcp-secrets serve --servers FILE`` over the same
  transport as the downstream, so every call makes two hops instead of one.

Blocks of ``--calls`` sequential calls alternate floor and subject, swapping which
goes first at each pair so that drift on a shared machine hits both alike; a first
pair warms up and is dropped. The ratio is subject time ÷ direct time per call
(1.00 would be free), the median of the block pairs with its quartiles. About a
minute and a half on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import secrets as _random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from mcp_secrets.app import build_server
from mcp_secrets.crypto import SecretEncryptor, generate_master_key, parse_master_key
from mcp_secrets.gateway import Gateway, load_gateway_config
from mcp_secrets.identity import LocalIdentity
from mcp_secrets.secrets import Secrets
from mcp_secrets.store.sqlite import SQLiteStore

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "downstream_server.py"
PYTHON = sys.executable
MCP_SECRETS = [PYTHON, "-m", "mcp_secrets"]
STARTUP_SECONDS = 30.0
USERNAME = "alice"
# The gateway's server name for the downstream over each transport.
SERVER_OF = {"stdio": "down", "streamable-http": "web"}
Call = Callable[[], Awaitable[object]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not come up within {STARTUP_SECONDS:.0f} s")


def listening(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    return ready


def healthy(base_url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx2.get(f"{base_url}/healthz", timeout=2, trust_env=False).status_code == 200
        except httpx2.TransportError:
            return False

    return ready


@contextmanager
def background(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - this interpreter, our own arguments
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cli(env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(  # noqa: S603 - this interpreter, our own arguments
        [*MCP_SECRETS, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"mcp-secrets {' '.join(args[:2])} failed:\n{done.stderr}")
    return done.stdout.strip()


def isolated_env(root: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MCP_SECRETS_")}
    env.update(
        MCP_SECRETS_DATA_DIR=str(root / "data"),
        MCP_SECRETS_CONFIG_DIR=str(root / "config"),
        MCP_SECRETS_MASTER_KEY=generate_master_key(),
        MCP_SECRETS_USER=USERNAME,
        MCP_SECRETS_LOG_LEVEL="WARNING",
    )
    return env


async def per_call(call: Call, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - start) / calls


async def block_pairs(direct: Call, subject: Call, pairs: int, calls: int) -> tuple[list[float], list[float]]:
    """Per-call seconds of ``direct`` and ``subject`` in each of ``pairs`` block pairs, after a warm-up."""
    direct_times: list[float] = []
    subject_times: list[float] = []
    for index in range(pairs + 1):
        if index % 2 == 0:
            direct_time = await per_call(direct, calls)
            subject_time = await per_call(subject, calls)
        else:
            subject_time = await per_call(subject, calls)
            direct_time = await per_call(direct, calls)
        if index > 0:
            direct_times.append(direct_time)
            subject_times.append(subject_time)
    return direct_times, subject_times


def pinger(client: Client, tool: str) -> Call:
    async def ping() -> object:
        result = await client.call_tool(tool, {})
        if result.is_error:
            raise SystemExit(f"{tool} failed: {result.content}")
        return result

    return ping


async def direct_client(stack: AsyncExitStack, transport: str, token: str, url: str) -> Client:
    if transport == "stdio":
        params = StdioServerParameters(command=PYTHON, args=[str(FIXTURE)], env={"DOWNSTREAM_TOKEN": token})
        return await stack.enter_async_context(Client(params))
    http = await stack.enter_async_context(
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, trust_env=False)
    )
    return await stack.enter_async_context(Client(streamable_http_client(url, http_client=http)))


async def served_client(stack: AsyncExitStack, transport: str, env: dict[str, str], where: str) -> Client:
    """A client of ``mcp-secrets serve``: a process of its own on stdio, ``where`` over HTTP."""
    if transport == "stdio":
        params = StdioServerParameters(
            command=PYTHON, args=[*MCP_SECRETS[1:], "serve", "--servers", where], env=env
        )
        # The summary `serve` prints at start-up would interleave with the table; os.devnull never blocks.
        log = stack.enter_context(open(os.devnull, "w", encoding="utf-8"))  # noqa: PTH123, SIM115, ASYNC230
        return await stack.enter_async_context(Client(stdio_client(params, errlog=log)))
    url, token = where.split(" ")
    http = await stack.enter_async_context(
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, trust_env=False)
    )
    return await stack.enter_async_context(Client(streamable_http_client(url, http_client=http)))


def summary(direct: list[float], subject: list[float]) -> tuple[str, str, str]:
    ratios = [s / d for d, s in zip(direct, subject, strict=True)]
    p25, median, p75 = statistics.quantiles(ratios, n=4, method="inclusive")
    return (
        f"{statistics.median(direct) * 1000:.2f}",
        f"{statistics.median(subject) * 1000:.2f}",
        f"{median:.2f} ({p25:.2f}-{p75:.2f})",
    )


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]
    for row in [headers, *rows]:
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)),
        ]
        print("  ".join(cells))


async def main(pairs: int, calls: int) -> None:
    """Measure in a temporary directory, removed at the end: it holds stores and a master key."""
    with tempfile.TemporaryDirectory(prefix="mcp-secrets-gateway-bench-") as root:
        await measure(Path(root), pairs, calls)


async def measure(root: Path, pairs: int, calls: int) -> None:
    """Every path's block pairs against the direct calls, then the table."""
    logging.disable(logging.INFO)  # the HTTP clients log every request at INFO
    token = f"bench-{_random.token_hex(16)}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    servers = root / "servers.json"
    servers.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "down": {
                        "command": PYTHON,
                        "args": [str(FIXTURE)],
                        "env": {"DOWNSTREAM_TOKEN": "${secret:TOKEN}"},
                    },
                    "web": {"url": url, "headers": {"Authorization": "Bearer ${secret:TOKEN}"}},
                }
            }
        ),
        encoding="utf-8",
    )
    env = isolated_env(root)
    for server in SERVER_OF.values():
        cli(env, "set", server, "TOKEN", stdin=token + "\n")
    api_token = cli(env, "token", "create", USERNAME)
    serve_port = free_port()
    serve_url = f"http://127.0.0.1:{serve_port}"

    secrets = Secrets(
        SQLiteStore(root / "in-process.db"), SecretEncryptor([parse_master_key(generate_master_key())])
    )
    for server in SERVER_OF.values():
        secrets.set_secret(USERNAME, server, "TOKEN", token)
    gateway = Gateway(load_gateway_config(servers), secrets)

    print(f"gateway overhead per call of `ping`: {pairs} block pairs x {calls} calls, median (quartiles)")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs\n")
    rows: list[list[str]] = []
    serve_command = [*MCP_SECRETS, "serve", "--transport", "streamable-http", "--port", str(serve_port)]
    with (
        background(
            [PYTHON, str(FIXTURE), "streamable-http", str(port)], env, root / "downstream.log"
        ) as downstream,
        background([*serve_command, "--servers", str(servers)], env, root / "serve.log") as served,
    ):
        wait_until(listening(port), downstream, "the HTTP downstream")
        wait_until(healthy(serve_url), served, "mcp-secrets serve")
        async with gateway.running(), AsyncExitStack() as stack:
            in_process = await stack.enter_async_context(
                Client(build_server(secrets, LocalIdentity(USERNAME), gateway=gateway))
            )
            for transport, server in SERVER_OF.items():
                direct = pinger(await direct_client(stack, transport, token, url), "ping")
                where = str(servers) if transport == "stdio" else f"{serve_url}/mcp {api_token}"
                subjects = {
                    "in-process gateway": pinger(in_process, f"{server}__ping"),
                    "mcp-secrets serve": pinger(
                        await served_client(stack, transport, env, where), f"{server}__ping"
                    ),
                }
                for path, subject in subjects.items():
                    direct_times, subject_times = await block_pairs(direct, subject, pairs, calls)
                    rows.append([transport, path, *summary(direct_times, subject_times)])
    print_table(["downstream over", "via", "direct ms/call", "via ms/call", "via / direct"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15, help="block pairs measured (default 15)")
    parser.add_argument("--calls", type=int, default=100, help="calls per block (default 100)")
    options = parser.parse_args()
    anyio.run(main, options.pairs, options.calls)
