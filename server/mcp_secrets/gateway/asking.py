"""Asking a call's user on a downstream's behalf: its elicitations, passed on to the caller's client.

A question goes on only in a mode the client declared, with the asking server named first and no
injected value in it; the answer goes back as it came, and is logged nowhere.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError
from mcp.shared.message import ServerMessageMetadata
from mcp_types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    URL_ELICITATION_REQUIRED,
    ElicitRequest,
    ElicitRequestParams,
    ElicitRequestURLParams,
    ElicitResult,
    ErrorData,
)
from pydantic import ValidationError

from mcp_secrets.elicitation import asks_by_result, takes_elicitation
from mcp_secrets.gateway.redact import Redactor

# What a downstream is told of a question a client cannot be asked by a request on the call's stream.
STATELESS_REFUSAL = (
    "the client cannot be asked during a call over stateless HTTP (only in a call's result, from 2026-07-28)"
)


def elicitation_forwarder(
    ctx: Context[Any, Any] | None, redactor: Redactor, server: str
) -> Callable[[ElicitRequestParams], Awaitable[ElicitResult | ErrorData]] | None:
    """What asks the client of ``ctx``'s call a question of ``server``'s; None outside a call."""
    if ctx is None:
        return None

    async def forward(params: ElicitRequestParams) -> ElicitResult | ErrorData:
        mode = mode_of(params)
        if not asks_by_result(ctx) and not ctx.session.can_send_request:
            # Stateless HTTP: the answer would come in a request of its own, which reaches no call, and
            # what the client declared in its handshake is not known here: it may take the mode.
            return ErrorData(code=INVALID_REQUEST, message=STATELESS_REFUSAL)
        if not takes_elicitation(ctx, mode):
            # What a client answers when asked in a mode it did not declare (-32602).
            return ErrorData(code=INVALID_PARAMS, message=f"the client does not take {mode} elicitation")
        if asks_by_result(ctx):
            # Such a client is asked in a call's result, which would end the call that asks.
            return ErrorData(
                code=INVALID_REQUEST, message="the client takes questions only in a call's result"
            )
        shown = shown_question(params, redactor, server)
        if isinstance(shown, ElicitRequestURLParams) and shown.elicitation_id is None:
            shown.elicitation_id = _random.token_urlsafe(16)  # 2026-07-28 has none; 2025-11-25 needs one
        session = ctx.request_context.session
        try:
            answer = await session.send_request(
                ElicitRequest(params=shown),
                ElicitResult,
                metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
            )
        except MCPError as exc:  # the client's refusal is the downstream's to handle
            return exc.error
        # The answer goes back as it came, and is logged nowhere. It is not redacted from what the call
        # returns: it came from this client, and form mode may not ask for secrets (URL mode is for those).
        return answer

    return forward


def mode_of(params: ElicitRequestParams) -> Literal["form", "url"]:
    """The elicitation mode a question is asked in."""
    return "url" if isinstance(params, ElicitRequestURLParams) else "form"


def shown_question(params: ElicitRequestParams, redactor: Redactor, server: str) -> ElicitRequestParams:
    """A downstream's question as its user sees it: which server asks first, no injected value in it."""
    shown = redactor.data(params.model_dump(by_alias=True, mode="json", exclude_none=True))
    shown["message"] = f"[{server}] {shown['message']}"
    return type(params).model_validate(shown)


def completion_forwarder(
    ctx: Context[Any, Any] | None, redactor: Redactor
) -> Callable[[str], Awaitable[None]] | None:
    """What tells the client of ``ctx``'s call that a URL-mode question was answered; None outside a call."""
    if ctx is None:
        return None

    async def forward(elicitation_id: str) -> None:
        # Redacted as the question's id was, so that the client finds the question it was shown.
        shown = redactor.text(elicitation_id)
        await ctx.request_context.session.send_elicit_complete(shown, ctx.request_id)

    return forward


def url_elicitation_required(
    exc: Exception, redactor: Redactor, server: str
) -> UrlElicitationRequiredError | None:
    """The downstream's -32042 error as the client is to see it, or None for any other failure.

    The user must open a URL (to sign in, say) before the call can work: the client shows it and
    retries, so the error goes on as it is, each message saying which server asks, injected values out.
    """
    if not isinstance(exc, MCPError) or exc.code != URL_ELICITATION_REQUIRED:
        return None
    try:
        required = UrlElicitationRequiredError.from_error(
            ErrorData.model_validate(redactor.data(exc.error.model_dump(by_alias=True, mode="json")))
        )
    except ValidationError:  # not the shape the specification gives it: an ordinary failure
        return None
    elicitations = [
        elicitation.model_copy(update={"message": f"[{server}] {elicitation.message}"})
        for elicitation in required.elicitations
    ]
    return UrlElicitationRequiredError(elicitations, required.message)
