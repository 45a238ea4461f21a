"""Store, list and delete a secret over Streamable HTTP with a bearer token.

Run a server (`mcp-secrets serve --transport streamable-http`), make a token
(`mcp-secrets token create alice`), then:

    MCP_SECRETS_URL=http://127.0.0.1:8000/mcp MCP_SECRETS_TOKEN=mcps_... python examples/http_client.py

The value is read from a hidden prompt, or from stdin when it is not a terminal.
"""

from __future__ import annotations

import getpass
import os
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    url = os.environ.get("MCP_SECRETS_URL", "http://127.0.0.1:8000/mcp")
    token = os.environ["MCP_SECRETS_TOKEN"]
    value = (
        getpass.getpass("Value for example/API_KEY: ")
        if sys.stdin.isatty()
        else sys.stdin.readline().rstrip("\n")
    )
    headers = {"Authorization": f"Bearer {token}"}
    # The SDK's own client's timeouts: httpx's default of 5 s would end a call that waits for a busy
    # store or a gateway's downstream server.
    timeout = httpx2.Timeout(30, read=300)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        stored = await client.call_tool("set_secret", {"server": "example", "key": "API_KEY", "value": value})
        print(stored.content[0].text)
        listed = await client.call_tool("list_secret_keys", {"server": "example"})
        print(listed.content[0].text)
        deleted = await client.call_tool("delete_secret", {"server": "example", "key": "API_KEY"})
        print(deleted.content[0].text)


if __name__ == "__main__":
    anyio.run(main)
