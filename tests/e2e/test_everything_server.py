"""The gateway in front of the MCP reference server that exercises every protocol feature, as users run it.

``@modelcontextprotocol/server-everything`` is a Node.js program that ``npx`` fetches from the npm registry
at a pinned version. Skipped where ``npx`` is not installed; CI installs it and sets
MCP_SECRETS_REQUIRE_INSPECTOR, so that there it fails instead of skipping. Each result is compared with the
same call made without the gateway.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets as _random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types import SERVER_INFO_META_KEY, CallToolResult, ElicitRequestParams, ElicitResult

from conftest import assert_no_fragment_of
from mcp_secrets.secrets import Secrets

from .test_gateway import connect, running_gateway
from .test_inspector import INSPECTOR_TIMEOUT, npx

pytestmark = pytest.mark.anyio

EVERYTHING = "@modelcontextprotocol/server-everything@2026.8.31"
ENV = {"EV_TOKEN": "${secret:TOKEN}", "EV_PEM": "${secret:PEM}"}
# What it offers a client that takes elicitation and neither sampling nor roots, as the gateway is;
# simulate-research-query, which runs only as a task, is not among what the gateway offers.
CALLED: dict[str, dict[str, Any]] = {
    "echo": {"message": "hello"},
    "get-annotated-message": {"messageType": "error", "includeImage": True},
    "get-resource-links": {"count": 2},
    "get-resource-reference": {"resourceType": "Blob", "resourceId": 3},
    "get-structured-content": {"location": "Chicago"},
    "get-sum": {"a": 2, "b": 3.5},
    "get-tiny-image": {},
    "trigger-long-running-operation": {"duration": 0.2, "steps": 2},
    "trigger-elicitation-request": {},
}
NOT_COMPARED = {
    "get-env",  # the environments differ, and the gateway's has its values taken out
    "gzip-file-as-resource",  # its default fetches a URL
    "toggle-simulated-logging",  # each names its own session
    "toggle-subscriber-updates",
    "trigger-url-elicitation",  # needs a URL of the caller's
}


def pem() -> str:
    encoded = _random.token_urlsafe(200)
    lines = [encoded[start : start + 64] for start in range(0, len(encoded), 64)]
    return "\n".join(["-----BEGIN PRIVATE KEY-----", *lines, "-----END PRIVATE KEY-----", ""])


async def answer(context: Any, params: ElicitRequestParams) -> ElicitResult:
    return ElicitResult(action="accept", content={"name": "Ann", "check": True})


# The reference server's blob resources say when they were made, to the second ("... created at 4:08:09
# AM"): a call made a second after the other would differ there alone.
_MADE_AT = re.compile(r"(?<= created at ).*\Z")


def compared(result: CallToolResult) -> dict[str, Any]:
    """What a client reads of ``result``, less the stamp of the server that answered, and a blob's time."""
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    meta = dumped.pop("_meta", {})
    meta.pop(SERVER_INFO_META_KEY, None)
    for block in dumped.get("content", []):
        resource = block.get("resource", {})
        if "blob" in resource:
            resource["blob"] = _MADE_AT.sub("...", base64.b64decode(resource["blob"]).decode("utf-8"))
    return {**dumped, "_meta": meta}


@asynccontextmanager
async def direct(command: str, env: dict[str, str]) -> AsyncIterator[Client]:
    """A client of the reference server without the gateway, its environment given ``env``."""
    params = StdioServerParameters(command=command, args=["--yes", EVERYTHING], env=env)
    with Path(os.devnull).open("w", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog), elicitation_callback=answer) as client:
            yield client


# pytest-timeout's bound, for a run that has to fetch the server first.
@pytest.mark.timeout(INSPECTOR_TIMEOUT)
async def test_the_reference_server_answers_through_the_gateway_as_without_it_less_the_injected_values(
    sqlite_secrets: Secrets, tmp_path: Path, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = npx("the MCP reference server")
    # The gateway's own settings are no downstream's business: the canary, the TOKEN, is looked for below.
    monkeypatch.setenv("MCP_SECRETS_DATABASE_URL", f"sqlite:///{tmp_path}/{canary}.db")
    values = {"TOKEN": canary, "PEM": pem()}
    for key, value in values.items():
        sqlite_secrets.set_secret("alice", "everything", key, value)
    entry = {"command": command, "args": ["--yes", EVERYTHING], "env": ENV}

    async with (
        running_gateway(sqlite_secrets, tmp_path, {"everything": entry}) as gw,
        connect(sqlite_secrets, gw, "alice", mode="legacy", elicitation_callback=answer) as client,
        direct(command, {"EV_TOKEN": values["TOKEN"], "EV_PEM": values["PEM"]}) as reference,
    ):
        offered = {
            tool.name.removeprefix("everything__"): tool
            for tool in (await client.list_tools()).tools
            if tool.name.startswith("everything__")
        }
        listed = {tool.name: tool for tool in (await reference.list_tools()).tools}
        assert set(offered) == set(listed) - {"simulate-research-query"}
        assert set(offered) == set(CALLED) | NOT_COMPARED | {"get-env"}
        for name, tool in offered.items():
            assert tool.input_schema == listed[name].input_schema, name
            assert tool.output_schema == listed[name].output_schema, name
            assert tool.annotations == listed[name].annotations, name

        for name, arguments in CALLED.items():
            progress: list[float] = []

            async def heard(done: float, total: float | None, message: str | None) -> None:
                progress.append(done)  # noqa: B023 - read before the next call

            through = await client.call_tool(f"everything__{name}", arguments, progress_callback=heard)
            without = await reference.call_tool(name, arguments)
            assert compared(through) == compared(without), name
            if name == "trigger-long-running-operation":
                assert progress == [1, 2]

        environment = await client.call_tool("everything__get-env", {})
    assert not environment.is_error
    printed = environment.content[0].text if environment.content[0].type == "text" else ""
    shown = json.loads(printed)
    assert {name: shown[name] for name in ENV} == {"EV_TOKEN": "[redacted TOKEN]", "EV_PEM": "[redacted PEM]"}
    assert not [name for name in shown if name.startswith("MCP_SECRETS_")]
    for value in values.values():
        assert_no_fragment_of(value, printed)
