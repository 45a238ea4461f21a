"""What our MCP tools cost over a trivial tool on the same server, client and transport.

    .venv/bin/python benchmarks/tools.py [--blocks 15] [--calls 200]

The floor is a tool that returns a constant, registered on the very MCPServer
``build_server`` returns (in-process) or that ``mcp-secrets serve`` runs
(stdio and Streamable HTTP, through ``_serve_with_floor.py``). Each ratio is
floor time ÷ tool time, the median of block pairs (higher is better, 1.0 means
the tool costs nothing over the MCP round trip). The floor is a plain function,
which the SDK runs in a worker thread; our tools are coroutines whose SQLite
calls run on the event loop when they need not wait (see ``mcp_secrets.offload``),
so a ratio above 1.0 is possible: the tool's own work then costs less than that hop.

- in-process (``mcp.Client(server)``), SQLite: set_secret, delete_secret,
  list_secret_keys returning 40 keys;
- over stdio and Streamable HTTP (real subprocess, real SDK client): set_secret;
- over Streamable HTTP, the server process's CPU time per call (/proc), set_secret
  ÷ floor (lower is better), with 1 and with 8 concurrent clients.

Every delete needs a record: they are made in bulk through the Secrets API
before the timed blocks, one distinct key per delete. set_secret cycles over 50
keys of one server, so after the warm-up block it replaces existing records.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import httpx2
from _harness import (
    BENCHMARKS,
    PYTHON,
    WALL,
    AsyncCall,
    Pairs,
    block_pairs,
    cli,
    cpu_meter,
    free_port,
    http_server,
    isolated_env,
    machine,
    micros,
    table,
    verdict,
)
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from mcp_secrets.app import build_server
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.identity import LocalIdentity
from mcp_secrets.logs import configure_logging
from mcp_secrets.secrets import Secrets
from mcp_secrets.store.sqlite import SQLiteStore

LAUNCHER = BENCHMARKS / "_serve_with_floor.py"
USERNAME = "alice"
VALUE = "ghp_" + "x" * 36  # the size of a GitHub token
SET_KEYS = 50
LIST_KEYS = 40


class Results:
    """Rows of the final table."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def add(self, transport: str, what: str, pairs: Pairs, target: float, *, cost: bool = False) -> None:
        """One row: per-call medians, the ratio with its quartiles, and the verdict against ``target``."""
        ratio = pairs.cost_ratio() if cost else pairs.ratio()
        sign = "≤" if cost else "≥"
        unit = (lambda s: f"{s * 1e3:.2f} ms") if cost else micros
        self.rows.append(
            [
                transport,
                what,
                unit(pairs.floor_median),
                unit(pairs.subject_median),
                str(ratio),
                f"{sign} {target}",
                verdict(ratio.median, target, higher_is_better=not cost),
            ]
        )

    def print(self) -> None:
        """The table."""
        table(
            ["transport", "measure", "floor/call", "tool/call", "ratio median (p25-p75)", "target", ""],
            self.rows,
            title=f"Tools vs a constant-returning floor tool ({machine()})",
        )


def _call(client: Client, name: str, arguments: dict[str, Any] | Iterator[dict[str, Any]]) -> AsyncCall:
    """One tool call; a failed call stops the benchmark instead of timing an error path."""

    async def call() -> None:
        args = arguments if isinstance(arguments, dict) else next(arguments)
        result = await client.call_tool(name, args)
        if result.is_error:
            raise RuntimeError(f"{name} failed: {result.content}")

    return call


def _set_args() -> Iterator[dict[str, Any]]:
    for index in count():
        yield {"server": "github", "key": f"KEY_{index % SET_KEYS}", "value": VALUE}


async def in_process(results: Results, root: Path, blocks: int, calls: int) -> None:
    """set_secret, delete_secret and list_secret_keys through ``mcp.Client(server)``, SQLite store."""
    store = SQLiteStore(root / "in-process.db")
    # Room for one key per timed delete, which may be more than the limit a real user has.
    room = SET_KEYS + (blocks + 1) * calls
    secrets = Secrets(store, SecretEncryptor([os.urandom(32)]), max_secrets_per_user=room)
    server = build_server(secrets, LocalIdentity(USERNAME))
    server.add_tool(lambda: "ok", name="floor")
    try:
        async with Client(server) as client:
            floor = _call(client, "floor", {})

            pairs = await block_pairs(
                floor, _call(client, "set_secret", _set_args()), blocks=blocks, calls=calls
            )
            results.add("in-process", "set_secret", pairs["wall"], 0.85)

            doomed = [f"DEL_{index}" for index in range((blocks + 1) * calls)]
            for key in doomed:  # untimed: one record for each delete below
                secrets.set_secret(USERNAME, "doomed", key, VALUE)
            deletes = iter({"server": "doomed", "key": key} for key in doomed)
            pairs = await block_pairs(
                floor, _call(client, "delete_secret", deletes), blocks=blocks, calls=calls
            )
            results.add("in-process", "delete_secret", pairs["wall"], 0.9)

            for info in secrets.list_secret_keys(USERNAME):  # untimed: leave alice exactly 40 keys
                secrets.delete_secret(USERNAME, info.server, info.key)
            for index in range(LIST_KEYS):
                secrets.set_secret(USERNAME, f"server{index % 4}", f"KEY_{index}", VALUE)
            listing = _call(client, "list_secret_keys", {})
            check = await client.call_tool("list_secret_keys", {})
            if check.structured_content is None or len(check.structured_content["keys"]) != LIST_KEYS:
                raise RuntimeError("list_secret_keys did not return the 40 keys set up")
            pairs = await block_pairs(floor, listing, blocks=blocks, calls=calls)
            results.add("in-process", f"list_secret_keys ({LIST_KEYS} keys)", pairs["wall"], 0.65)
    finally:
        store.close()


async def over_stdio(results: Results, root: Path, blocks: int, calls: int) -> None:
    """set_secret over stdio, the launcher as the subprocess, the SDK's stdio client."""
    env = isolated_env(root / "stdio", MCP_SECRETS_USER=USERNAME)
    params = StdioServerParameters(command=PYTHON, args=[str(LAUNCHER)], env=env)
    with (root / "stdio.log").open("a", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            floor = _call(client, "floor", {})
            pairs = await block_pairs(
                floor, _call(client, "set_secret", _set_args()), blocks=blocks, calls=calls
            )
    results.add("stdio", "set_secret", pairs["wall"], 0.9)


@asynccontextmanager
async def _http_clients(endpoint: str, token: str, how_many: int) -> AsyncIterator[list[Client]]:
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(how_many):
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, trust_env=False)
            )
            transport = streamable_http_client(endpoint, http_client=http)
            clients.append(await stack.enter_async_context(Client(transport)))
        yield clients


async def over_http(results: Results, root: Path, blocks: int, calls: int) -> None:
    """set_secret over Streamable HTTP: wall-clock ratio, and the server's CPU time with 1 and 8 clients."""
    env = isolated_env(root / "http")
    token = cli(env, "token", "create", USERNAME)  # before the start, so no first-run token is printed
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [PYTHON, str(LAUNCHER), "--transport", "streamable-http", "--port", str(port)]
    with http_server(command, env, root / "http.log", base_url) as pid:
        meters = {**WALL, "cpu": cpu_meter(pid)}
        for how_many in (1, 8):
            async with _http_clients(f"{base_url}/mcp", token, how_many) as clients:
                floors: Sequence[AsyncCall] = [_call(client, "floor", {}) for client in clients]
                sets = [_call(client, "set_secret", _set_args()) for client in clients]
                pairs = await block_pairs(floors, sets, blocks=blocks, calls=calls, meters=meters)
            label = "1 client" if how_many == 1 else f"{how_many} clients"
            if how_many == 1:
                results.add("streamable-http", "set_secret", pairs["wall"], 0.9)
            results.add("streamable-http", f"server CPU/call, {label}", pairs["cpu"], 1.15, cost=True)


async def main(blocks: int, calls: int) -> None:
    """Run every scenario, then print the table."""
    # Logging as `mcp-secrets serve` sets it up (this process hosts the in-process server); this
    # also keeps httpx2 from logging every request of the HTTP clients.
    configure_logging("INFO")
    results = Results()
    with tempfile.TemporaryDirectory(prefix="mcp-secrets-bench-") as tmp:
        root = Path(tmp)
        await in_process(results, root, blocks, calls)
        await over_stdio(results, root, blocks, calls)
        await over_http(results, root, blocks, calls)
    results.print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15, help="block pairs per ratio (default 15)")
    parser.add_argument("--calls", type=int, default=200, help="calls per block (default 200)")
    options = parser.parse_args()
    anyio.run(main, options.blocks, options.calls)
