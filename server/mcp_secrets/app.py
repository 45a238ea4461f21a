"""The MCP server: the secrets tools, thin, each acting for the caller only.

No tool takes a username: the caller comes from ``Identity``. No tool result
carries a value: values are write-only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from mcp_secrets import __version__
from mcp_secrets.errors import SecretsError
from mcp_secrets.identity import Identity
from mcp_secrets.secrets import Secrets

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

INSTRUCTIONS = """\
mcp-secrets stores the user's secrets (API keys, passwords, tokens) encrypted, per MCP server.
Values are write-only: no tool ever returns a stored value, and you never need to read one.
Secrets belong to the user this session is authenticated as; you cannot reach anyone else's."""

SERVER_ARG = Field(description="Name of the MCP server the secret is for, e.g. 'github'.")
KEY_ARG = Field(description="Name of the secret, e.g. 'GITHUB_TOKEN'.")


class SecretChange(BaseModel):
    """What a write did: the record's names and ``created``, ``updated`` or ``deleted``."""

    server: str
    key: str
    status: Literal["created", "updated", "deleted"]


class SecretKeyEntry(BaseModel):
    """One stored secret's name and timestamps; never its value."""

    server: str
    key: str
    created_at: datetime
    updated_at: datetime


class SecretKeyList(BaseModel):
    """The caller's stored secret names."""

    username: str
    keys: list[SecretKeyEntry]


def _result(text: str, structured: BaseModel) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=structured.model_dump(mode="json")
    )


async def _run(work: Callable[[], _T]) -> _T:
    """Run a blocking ``Secrets`` call off the event loop; its errors become tool errors."""
    try:
        return await anyio.to_thread.run_sync(work)
    except SecretsError as exc:
        raise ToolError(str(exc)) from None


def _caller(identity: Identity, ctx: Context[Any, Any]) -> str:
    try:
        return identity.username(ctx)
    except SecretsError as exc:
        raise ToolError(str(exc)) from None


class _SecretsServer(MCPServer[Any]):
    """``MCPServer`` whose argument errors name fields but never quote the input."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            # pydantic's message quotes the rejected input, which may be a secret value.
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.__cause__.errors(include_input=False, include_url=False)
            )
            raise ToolError(f"invalid arguments for {name}: {problems}") from None


def build_server(
    secrets: Secrets,
    identity: Identity,
    *,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO",
) -> MCPServer[Any]:
    """The mcp-secrets MCP server over ``secrets``, for callers named by ``identity``."""
    mcp = _SecretsServer(
        "mcp-secrets",
        title="mcp-secrets",
        version=__version__,
        instructions=INSTRUCTIONS,
        token_verifier=token_verifier,
        auth=auth,
        log_level=log_level,
    )

    @mcp.tool(
        annotations=ToolAnnotations(
            title="Store a secret",
            readOnlyHint=False,
            destructiveHint=True,
            idempotentHint=True,
            openWorldHint=False,
        )
    )
    async def set_secret(
        server: Annotated[str, SERVER_ARG],
        key: Annotated[str, KEY_ARG],
        value: Annotated[str, Field(description="The secret value. Write-only: it is never shown again.")],
        ctx: Context[Any, Any],
    ) -> Annotated[CallToolResult, SecretChange]:
        """Store one of your secrets for an MCP server, encrypted; replaces an existing one.

        The value is write-only: no tool ever returns it, and it is never logged.
        """
        username = _caller(identity, ctx)
        change = await _run(lambda: secrets.set_secret(username, server, key, value))
        return _result(
            f"Secret {change.key} for server {change.server} {change.status}. The value is stored encrypted "
            "and will not be shown again.",
            SecretChange(server=change.server, key=change.key, status=change.status),
        )

    @mcp.tool(
        annotations=ToolAnnotations(
            title="Delete a secret",
            readOnlyHint=False,
            destructiveHint=True,
            idempotentHint=False,
            openWorldHint=False,
        )
    )
    async def delete_secret(
        server: Annotated[str, SERVER_ARG], key: Annotated[str, KEY_ARG], ctx: Context[Any, Any]
    ) -> Annotated[CallToolResult, SecretChange]:
        """Delete one of your secrets for an MCP server."""
        username = _caller(identity, ctx)
        change = await _run(lambda: secrets.delete_secret(username, server, key))
        return _result(
            f"Secret {change.key} for server {change.server} deleted.",
            SecretChange(server=change.server, key=change.key, status=change.status),
        )

    @mcp.tool(annotations=ToolAnnotations(title="List secret names", readOnlyHint=True, openWorldHint=False))
    async def list_secret_keys(
        ctx: Context[Any, Any],
        server: Annotated[
            str | None, Field(description="Only this MCP server's secrets; all when omitted.")
        ] = None,
    ) -> Annotated[CallToolResult, SecretKeyList]:
        """List the names of your stored secrets and when each was created and updated; never their values."""
        username = _caller(identity, ctx)
        infos = await _run(lambda: secrets.list_secret_keys(username, server))
        entries = [
            SecretKeyEntry(
                server=info.server, key=info.key, created_at=info.created_at, updated_at=info.updated_at
            )
            for info in infos
        ]
        scope = f" for server {server}" if server else ""
        lines = [
            f"- {entry.server}/{entry.key} (updated {entry.updated_at:%Y-%m-%d %H:%M} UTC)"
            for entry in entries
        ]
        text = f"{len(entries)} secret(s){scope} stored for {username}" + (
            ":\n" + "\n".join(lines) if lines else "."
        )
        return _result(text, SecretKeyList(username=username, keys=entries))

    return mcp
