"""The Python SDK 1.x's client, or FastMCP's on it, against mcp-secrets as services run them; prints a report.

Run by test_python_clients.py with the Python of a virtual environment that has ``mcp`` 1.x (and, for
PY_CLIENT=fastmcp, ``fastmcp`` 2.x) installed, never this project's. Its settings come from the
environment: PY_CLIENT (mcp or fastmcp), PY_TRANSPORT (stdio, streamable-http or sse), PY_URL and PY_TOKEN
over HTTP, PY_COMMAND and PY_SERVER_ENV (JSON) on stdio, PY_VALUE (the value to store and to type into the
entry page), PY_PAGED_USER and PY_PAGED_TOKEN (a user holding more than one page of keys) and, with the
gateway in front of the fixture downstream server, PY_NUMBER (a secret of digits for it). The report never
holds PY_VALUE, PY_TOKEN or the entry link: the test looks for them in all it printed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import jsonschema
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

env = os.environ
kind = env["PY_TRANSPORT"]
value = env["PY_VALUE"]
fastmcp = env["PY_CLIENT"] == "fastmcp"
Elicit = Callable[[Any], Awaitable[types.ElicitResult]]


class Connection:
    """One client session, the same calls whichever client library holds it."""

    def __init__(self, session: ClientSession, client: Any = None) -> None:
        self.session = session  # FastMCP's client holds one of the SDK's own
        self.client = client
        self.notes: list[str] = []

    async def call(self, name: str, arguments: dict[str, Any], **options: Any) -> dict[str, Any]:
        """A call as a service makes it; the client checks structured content, and a throw is reported."""
        try:
            if self.client is not None:
                got = await self.client.call_tool(name, arguments, raise_on_error=False, **options)
                result = {"isError": got.is_error, "structured": got.structured_content}
                # FastMCP reads structured content into a type made from the output schema; None if it can't.
                result["read"] = got.structured_content is None or got.data is not None
                blocks = got.content
            else:
                raw = await self.session.call_tool(name, arguments, **options)
                result = {"isError": raw.isError, "structured": raw.structuredContent}
                blocks = raw.content
        except Exception as error:
            return {"threw": f"{type(error).__name__}: {error}"}
        result["text"] = "\n".join(getattr(block, "text", "") for block in blocks)
        return result


@asynccontextmanager
async def connected(
    elicit: Elicit | None = None, token: str | None = None, user: str = "alice"
) -> AsyncIterator[Connection]:
    """A session of the chosen client; ``elicit``, if given, answers elicitations (and declares them)."""
    notes: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ServerNotification):
            notes.append(message.root.method)

    opened = fastmcp_client if fastmcp else sdk_client
    async with opened(on_message, elicit, token or env.get("PY_TOKEN", ""), user) as connection:
        connection.notes = notes
        yield connection


def server_env(user: str) -> dict[str, str]:
    """The environment of a stdio server of ``user``."""
    return {**json.loads(env["PY_SERVER_ENV"]), "MCP_SECRETS_USER": user}


@asynccontextmanager
async def fastmcp_client(
    on_message: Any, elicit: Elicit | None, token: str, user: str
) -> AsyncIterator[Connection]:
    from fastmcp import Client  # noqa: PLC0415 - only in FastMCP's environment
    from fastmcp.client.transports import SSETransport, StdioTransport, StreamableHttpTransport  # noqa: PLC0415

    if kind == "stdio":
        transport: Any = StdioTransport(env["PY_COMMAND"], ["serve"], env=server_env(user))
    elif kind == "sse":
        transport = SSETransport(env["PY_URL"], auth=token)
    else:
        transport = StreamableHttpTransport(env["PY_URL"], auth=token)

    async def answer(_message: str, _type: Any, params: Any, _context: Any) -> Any:
        assert elicit is not None
        return await elicit(params)

    options: dict[str, Any] = {"message_handler": on_message}
    if elicit is not None:
        options["elicitation_handler"] = answer
    async with Client(transport, **options) as client:
        report.setdefault("answered", client.initialize_result.protocolVersion)
        yield Connection(client.session, client)


@asynccontextmanager
async def sdk_client(
    on_message: Any, elicit: Elicit | None, token: str, user: str
) -> AsyncIterator[Connection]:
    options: dict[str, Any] = {"message_handler": on_message}
    if elicit is not None:

        async def callback(_context: Any, params: Any) -> types.ElicitResult:
            return await elicit(params)

        options["elicitation_callback"] = callback
    async with (
        sdk_streams(token, user) as (read, write, session_id),
        ClientSession(read, write, **options) as session,
    ):
        report.setdefault("answered", (await session.initialize()).protocolVersion)
        yield Connection(session)
        if session_id is not None:
            report["sessionId"] = session_id()


@asynccontextmanager
async def sdk_streams(token: str, user: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    """The SDK 1.x's streams for ``kind``, and what tells a Streamable HTTP session's id (None elsewhere)."""
    if kind == "stdio":
        params = StdioServerParameters(command=env["PY_COMMAND"], args=["serve"], env=server_env(user))
        async with stdio_client(params) as (read, write):
            yield read, write, None
        return
    headers = {"Authorization": f"Bearer {token}"}
    if kind == "sse":
        async with sse_client(env["PY_URL"], headers=headers) as (read, write):
            yield read, write, None
        return
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=300)) as http,
        streamable_http_client(env["PY_URL"], http_client=http) as streams,
    ):
        yield streams


def fill_in(url: str) -> int:
    """What a user does in a browser: open the link, type the value, submit. The status of the POST."""
    with httpx.Client() as http:
        page = http.get(url)
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None
        return http.post(url, data={"csrf": found.group(1), "value": value}).status_code


report: dict[str, Any] = {"offered": types.LATEST_PROTOCOL_VERSION}


async def probe() -> None:
    """The client's view of mcp-secrets, in the order a service meets it."""
    asked: list[dict[str, Any]] = []
    filled: list[int] = []

    async with anyio.create_task_group() as users:

        async def open_page(params: Any) -> types.ElicitResult:
            asked.append({"mode": params.mode})
            if params.mode != "url":
                return types.ElicitResult(action="decline")
            asked[-1]["sameOrigin"] = urlsplit(params.url).netloc == urlsplit(env.get("PY_URL", "")).netloc

            async def submit() -> None:  # once the client said it opens the link
                await anyio.sleep(0.2)
                filled.append(await anyio.to_thread.run_sync(fill_in, params.url))

            users.start_soon(submit)
            return types.ElicitResult(action="accept")

        async with connected(open_page) as connection:
            capabilities = connection.session.get_server_capabilities()
            report["capabilities"] = (
                sorted(capabilities.model_dump(exclude_none=True)) if capabilities else []
            )
            report["schemas"] = await schemas(connection.session)
            report["calls"] = await tool_calls(connection)
            report["request"] = await requested(connection)
            report["request"] |= {"asked": asked, "filled": filled}
            if env.get("PY_NUMBER"):
                report["gateway"] = await through_the_gateway(connection)
        users.cancel_scope.cancel()
    if kind != "stdio":
        await without_elicitation()
    await paged()


async def schemas(session: ClientSession) -> dict[str, str]:
    """Each tool's input and output schema, as the client's validator (and FastMCP's types) take it."""
    taken = {}
    for tool in (await session.list_tools()).tools:
        for which in ("inputSchema", "outputSchema"):
            schema = getattr(tool, which)
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
                if fastmcp:
                    from fastmcp.utilities.json_schema_type import json_schema_to_type  # noqa: PLC0415

                    json_schema_to_type(schema)
                taken[f"{tool.name}.{which}"] = "compiled"
            except Exception as error:
                taken[f"{tool.name}.{which}"] = f"refused: {error}"
    return taken


async def tool_calls(connection: Connection) -> dict[str, Any]:
    call = connection.call
    github = {"server": "github", "key": "GITHUB_TOKEN"}
    return {
        "set": await call("set_secret", {**github, "value": value}),
        "replace": await call("set_secret", {**github, "value": f"{value}-2"}),
        "keys": await call("list_secret_keys", {"server": "github"}),
        "events": await call("list_secret_events", {"limit": 2}),
        "delete": await call("delete_secret", github),
        "deleteAgain": await call("delete_secret", github),
        "badName": await call("set_secret", {"server": "git hub", "key": "K", "value": value}),
        "noValue": await call("set_secret", {"server": "github", "key": "K"}),
        "badLimit": await call("list_secret_events", {"limit": "5"}),
        "badCursor": await call("list_secret_keys", {"cursor": "no-slash"}),
    }


async def requested(connection: Connection) -> dict[str, Any]:
    """``request_secret``, its progress followed; the entry page is filled by the elicitation's answer."""
    progress: list[float] = []

    async def progressed(done: float, _total: float | None, _message: str | None) -> None:
        progress.append(done)

    option = "progress_handler" if fastmcp else "progress_callback"
    result = await connection.call(
        "request_secret", {"server": "github", "key": "ENTERED"}, **{option: progressed}
    )
    keys = await connection.call("list_secret_keys", {"server": "github"})
    return {
        "result": result,
        "completed": "notifications/elicitation/complete" in connection.notes,
        "progressed": bool(progress),
        "stored": [key["key"] for key in (keys["structured"] or {}).get("keys", [])],
    }


async def through_the_gateway(connection: Connection) -> dict[str, Any]:
    """The tools a stored secret brings, called; with the SDK 1.x, a call cancelled by the service."""
    call, session = connection.call, connection.session
    await call("set_secret", {"server": "down", "key": "TOKEN", "value": env["PY_NUMBER"]})
    offered = [tool.name for tool in (await session.list_tools()).tools]
    seen = {
        "told": "notifications/tools/list_changed" in connection.notes,
        "offered": "down__echo_token_as_number" in offered,
        "number": await call("down__echo_token_as_number", {}),
        "text": await call("down__echo_token", {}),
    }
    if not fastmcp:
        # The SDK 1.x sends no cancellation of a call it stops waiting for: a service sends its own.
        request_id = session._request_id  # the id the next request takes
        async with anyio.create_task_group() as calls:
            calls.start_soon(call, "down__hang", {})
            await anyio.sleep(1)
            cancel = types.CancelledNotification(
                params=types.CancelledNotificationParams(requestId=request_id, reason="gave up")
            )
            await session.send_notification(types.ClientNotification(cancel))
            calls.cancel_scope.cancel()
        seen["afterCancel"] = await call("down__ping", {})
    return seen


async def without_elicitation() -> None:
    """A client that declares no elicitation is given the link in the result."""
    async with connected() as plain:
        got = await plain.call("request_secret", {"server": "github", "key": "LINKED"})
    structured = got.get("structured") or {}
    report["noElicitation"] = {
        "isError": got.get("isError"),
        "status": structured.get("status"),
        "hasUrl": isinstance(structured.get("url"), str),
    }
    if "sessionId" in report:
        # The session the client closed (DELETE) is gone.
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {env['PY_TOKEN']}"}) as http:
            gone = await http.post(
                env["PY_URL"],
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={
                    "Accept": "application/json, text/event-stream",
                    "mcp-session-id": report.pop("sessionId"),
                    "mcp-protocol-version": types.LATEST_PROTOCOL_VERSION,
                },
            )
        report["afterTermination"] = gone.status_code


async def paged() -> None:
    """Every page of ``list_secret_keys``, the cursor sent back as the client got it."""
    pages: list[Any] = []
    listed: list[str] = []
    async with connected(token=env.get("PY_PAGED_TOKEN"), user=env["PY_PAGED_USER"]) as connection:
        cursor = None
        while True:
            page = await connection.call("list_secret_keys", {} if cursor is None else {"cursor": cursor})
            if not page.get("structured") or page.get("read") is False:
                pages.append(page)
                break
            pages.append(len(page["structured"]["keys"]))
            listed += [f"{key['server']}/{key['key']}" for key in page["structured"]["keys"]]
            cursor = page["structured"].get("next_cursor")
            if cursor is None:
                break
    report["pages"] = pages
    report["listed"] = listed


anyio.run(probe)
sys.stdout.write(json.dumps(report))
