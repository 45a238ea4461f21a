"""What a client can be asked, and how: by the elicitation modes it declared and its protocol revision."""

from __future__ import annotations

from typing import Any, Literal

from mcp.server.mcpserver import Context
from mcp_types.version import is_version_at_least

# The first protocol revision whose clients are asked in a call's result, not by a request.
INPUT_REQUIRED_VERSION = "2026-07-28"


def asks_by_result(ctx: Context[Any, Any]) -> bool:
    """True for a client on 2026-07-28 or later: it is asked in a call's result, never by a request."""
    version = ctx.protocol_version
    return version is not None and is_version_at_least(version, INPUT_REQUIRED_VERSION)


def takes_elicitation(ctx: Context[Any, Any], mode: Literal["form", "url"]) -> bool:
    """True when the client of ``ctx`` declared elicitation in ``mode``."""
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None:
        return False
    if mode == "url":
        return elicitation.url is not None
    return elicitation.form is not None or elicitation.url is None  # {} means form, as the specification says
