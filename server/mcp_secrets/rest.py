"""The original design's REST API, on the same bearer tokens and the same rules as the tools.

``POST /secrets/set`` takes ``{server, key, value, action}`` (action save, update
or delete) and ``GET /secrets[?server=…][&cursor=…]`` lists the caller's key names,
1,000 an answer, as the ``list_secret_keys`` tool does. No answer ever holds a value.
``GET /openapi.json`` documents both.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, RequireAuthMiddleware
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, request_response

from mcp_secrets import __version__
from mcp_secrets.errors import InvalidInputError, SecretNotFoundError, SecretsError, StoreUnavailableError
from mcp_secrets.offload import run_store_work
from mcp_secrets.request_body import read_body
from mcp_secrets.secrets import (
    CURSOR_PATTERN,
    KEYS_PER_LISTING,
    MAX_NAME_LENGTH,
    MAX_VALUE_BYTES,
    NAME_PATTERN,
    NAME_RULE,
    Secrets,
)
from mcp_secrets.store import SecretStore

# Room for a value at its limit however a JSON encoder escapes it (a control character as \u0001: six bytes
# for one), its names and action beside it; past that, a body is no request of this API.
MAX_BODY_BYTES = 6 * MAX_VALUE_BYTES + 16 * 1024
# An unknown field is named in a 400 when its name reads as one (a typo, "owner"): a client that sent a
# value as a name ({"<value>": ...}) must not have it quoted back. Tokens are longer, or hold '-'.
_QUOTABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,23}")
# JSON in UTF-8 (RFC 8259 has no other charset), in any case, a charset named or not.
_JSON_MEDIA_TYPE = re.compile(r'application/json\s*(?:;\s*charset="?utf-8"?\s*)?', re.IGNORECASE)


# The rules Secrets checks, published in the document so that a client knows them before a call is refused
# for them: schema-only here, so that the errors keep naming the rule (as the tools' input schemas do).
_NAME_SCHEMA: dict[str, Any] = {"pattern": f"^{NAME_PATTERN}$", "minLength": 1, "maxLength": MAX_NAME_LENGTH}
# A value's bound is in bytes of UTF-8, which JSON Schema cannot count: as many characters is the most
# it can hold, and the description says the rest.
_WRITTEN_VALUE: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_VALUE_BYTES}


class SetSecretRequest(BaseModel):
    """The body of ``POST /secrets/set``; errors name fields, never values."""

    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        strict=True,
        # save and update write a value, which delete has no use for.
        json_schema_extra={
            "if": {"properties": {"action": {"const": "delete"}}, "required": ["action"]},
            "else": {"properties": {"value": _WRITTEN_VALUE}, "required": ["value"]},
        },
    )

    server: str = Field(description=f"The MCP server, {NAME_RULE}.", json_schema_extra=_NAME_SCHEMA)
    key: str = Field(description=f"The secret's name, {NAME_RULE}.", json_schema_extra=_NAME_SCHEMA)
    value: str | None = Field(
        default=None,
        description=f"The secret, 1 to {MAX_VALUE_BYTES} bytes in UTF-8: required to save or update, "
        "ignored by delete. Never shown again.",
    )
    action: Literal["save", "update", "delete"] = "save"


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


def _fields(errors: list[ErrorDetails]) -> str:
    """The fields a validation error names; an unknown one by its name only when that reads as a name."""
    names: set[str] = set()
    unknown: list[str] = []
    for error in errors:
        name = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            unknown.append(name)
        else:
            names.add(name)
    return _named(sorted(names), unknown, "unknown field(s)")


def _named(known: list[str], unknown: list[str], what: str) -> str:
    """``known`` and ``unknown`` names, the unknown ones only when they read as names, else counted."""
    quotable = sorted(name for name in unknown if _QUOTABLE_NAME.fullmatch(name))
    described = sorted({*known, *quotable})
    if unnamed := len(unknown) - len(quotable):
        described.append(f"{unnamed} {what}, not named as a name may be a value sent by mistake")
    return ", ".join(described)


def _repeated_fields(body: bytes) -> list[str]:
    """The top-level fields of a valid body that it gives more than once, which pydantic reads as the last.

    Only called once the body validated: a flat object of known fields, which ``json.loads`` reads safely.
    """
    counts: dict[str, int] = {}

    def count(pairs: list[tuple[str, Any]]) -> None:
        for name, _ in pairs:
            counts[name] = counts.get(name, 0) + 1

    json.loads(body, object_pairs_hook=count)
    return sorted(name for name, seen in counts.items() if seen > 1)


def _unsupported_media_type(request: Request) -> JSONResponse | None:
    """The 415 for a body not sent as plain JSON in UTF-8; None for one that is."""
    # Never guessed from the body: a browser sends text/plain and forms across origins without asking.
    if not _JSON_MEDIA_TYPE.fullmatch(request.headers.get("content-type", "")):
        return _error(415, "unsupported_media_type", "the body must be sent as application/json in UTF-8")
    # Nothing here decompresses: a body read as it came would be refused as not JSON, or, plain but declared
    # compressed, stored as no proxy that decompresses it could have read it.
    if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return _error(415, "unsupported_media_type", "the body must be sent without a Content-Encoding")
    return None


async def _read_set_request(request: Request) -> SetSecretRequest | JSONResponse:
    """The body of ``POST /secrets/set``, or the 4xx that says why it is refused."""
    if refused := _unsupported_media_type(request):
        return refused
    body = await read_body(request, MAX_BODY_BYTES)
    if body is None:
        return _error(413, "too_large", "the request body is too large")
    try:
        payload = SetSecretRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if any(error["type"] == "json_invalid" for error in errors):  # its message would quote the body
            return _error(400, "invalid_input", "the body is not valid JSON")
        return _error(400, "invalid_input", f"invalid or missing fields: {_fields(errors)}")
    # A proxy or library reading the first of two would check or log another body than is stored.
    if repeated := _repeated_fields(body):
        return _error(400, "invalid_input", f"fields given more than once: {', '.join(repeated)}")
    return payload


def _listing_query(request: Request) -> tuple[str | None, str] | JSONResponse:
    """The server (None for all) and cursor of ``GET /secrets``, or the 400 that says why they are refused."""
    # As a body's unknown field is: ?sever=github must not list every server's keys.
    if unknown := sorted(set(request.query_params) - {"server", "cursor"}):
        named = _named([], unknown, "parameter(s)")
        return _error(400, "invalid_input", f"unknown query parameters: {named}")
    # Starlette takes the last of two: a proxy reading the first would check or log another listing.
    for name in ("server", "cursor"):
        if len(request.query_params.getlist(name)) > 1:
            return _error(400, "invalid_input", f"{name} given more than once")
    # Empty means every server, as it does for the list_secret_keys tool (and ``?server=`` of a form).
    return request.query_params.get("server") or None, request.query_params.get("cursor", "")


def _username(request: Request) -> str:
    user = request.scope["user"]
    assert isinstance(user, AuthenticatedUser)  # noqa: S101 - RequireAuthMiddleware let it through
    return str(user.access_token.subject)


async def _call(store: SecretStore, work: Any) -> JSONResponse | Any:  # noqa: ANN401 - passes the result through
    """Run a Secrets call (see ``run_store_work``); map its errors to HTTP answers."""
    try:
        return await run_store_work(store, work)
    except InvalidInputError as exc:
        return _error(400, "invalid_input", str(exc))
    except SecretNotFoundError as exc:
        return _error(404, "not_found", str(exc))
    except StoreUnavailableError as exc:
        return _error(503, "store_unavailable", str(exc))
    except SecretsError as exc:
        return _error(500, "error", str(exc))


def rest_routes(secrets: Secrets, public_url: str | None = None) -> list[Route]:
    """``/secrets/set``, ``/secrets`` (bearer token required) and ``/openapi.json`` (open).

    ``public_url`` (``--public-url``) is the document's server: without one, clients resolve the paths
    against the host's root, outside a proxy's path prefix.
    """
    document = OPENAPI if not public_url else {**OPENAPI, "servers": [{"url": public_url}]}
    served = json.dumps(document, indent=2)

    async def set_secret(request: Request) -> Response:
        payload = await _read_set_request(request)
        if isinstance(payload, JSONResponse):
            return payload
        username = _username(request)
        result = await _call(
            secrets.store,
            lambda: secrets.update_secret(
                username, payload.server, payload.key, payload.value, payload.action, via="rest"
            ),
        )
        if isinstance(result, JSONResponse):
            return result
        return JSONResponse({"server": result.server, "key": result.key, "status": result.status})

    async def list_keys(request: Request) -> Response:
        username = _username(request)
        query = _listing_query(request)
        if isinstance(query, JSONResponse):
            return query
        server, cursor = query
        # A page at a time, as the tool: 11,000 keys were one body of 1.5 MB, read while other calls waited.
        page = await _call(
            secrets.store, lambda: secrets.list_key_page(username, server, cursor, limit=KEYS_PER_LISTING)
        )
        if isinstance(page, JSONResponse):
            return page
        keys = [
            {
                "server": info.server,
                "key": info.key,
                "created_at": info.created_at.isoformat(),
                "updated_at": info.updated_at.isoformat(),
            }
            for info in page.keys
        ]
        listing: dict[str, Any] = {"username": username, "keys": keys}
        # In the body, as the tool's: a Link header's URL would point outside a proxy's path prefix unless
        # --public-url were given. Absent on the last page, so that a listing within one page is as it was.
        if page.next_cursor:
            listing["next_cursor"] = page.next_cursor
        # A caching proxy may key by URL alone, Authorization aside: a listing is the caller's only.
        return JSONResponse(listing, headers={"Cache-Control": "no-store"})

    async def openapi(_: Request) -> Response:
        return Response(served, media_type="application/json")

    def protected(endpoint: Any) -> RequireAuthMiddleware:  # noqa: ANN401 - a Starlette endpoint
        return RequireAuthMiddleware(request_response(endpoint), required_scopes=[])

    return [
        Route("/secrets/set", protected(set_secret), methods=["POST"]),
        Route("/secrets", protected(list_keys), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(description: str, schema: dict[str, Any], **more: object) -> dict[str, Any]:
    """A response of ``description`` with a JSON body of ``schema``; ``more`` (headers) as it is."""
    return {"description": description, "content": {"application/json": {"schema": schema}}, **more}


_STRING = {"type": "string"}
# A 400 or 503 comes from the API in its own form, or before it in the OAuth form: a 400 for two
# Authorization headers (see ``web.OneAuthorization``), a 503 from the token check.
_EITHER_FORM = {"anyOf": [_ERROR, {"$ref": "#/components/schemas/OAuthError"}]}
# The SDK's bearer middleware answers a missing or refused token in the OAuth form (RFC 6750).
_UNAUTHORISED = _json(
    "No valid bearer token",
    {"$ref": "#/components/schemas/OAuthError"},
    headers={"WWW-Authenticate": {"required": True, "schema": _STRING}},
)
# Answered before any route, in plain text, by the DNS-rebinding check every request passes.
_FOREIGN_ORIGIN = {
    "description": "An Origin header of another site",
    "content": {"text/plain": {"schema": _STRING}},
}
_FOREIGN_HOST = {
    "description": "A Host header not this server's",
    "content": {"text/plain": {"schema": _STRING}},
}
# A 503 comes from the token check (the store it looks tokens up in is down) before it comes from the
# API: in the OAuth form, as a 401 would, with Retry-After (see ``web.OutageAnswer``).
_UNAVAILABLE = _json(
    "Store unavailable; OAuth form with Retry-After when the token could not be checked",
    _EITHER_FORM,
    headers={"Retry-After": {"schema": {"type": "integer"}}},
)
_KEY_INFO = {
    "type": "object",
    "properties": {
        "server": _STRING,
        "key": _STRING,
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
    "required": ["server", "key", "created_at", "updated_at"],
}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "mcp-secrets REST API",
        "version": __version__,
        "description": "Write-only secrets of the authenticated user. No response ever contains a value.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": _STRING, "message": _STRING},
                "required": ["error", "message"],
            },
            "OAuthError": {
                "type": "object",
                "properties": {
                    "error": {"enum": ["invalid_request", "invalid_token", "temporarily_unavailable"]},
                    "error_description": _STRING,
                },
                "required": ["error", "error_description"],
            },
            "SetSecretRequest": SetSecretRequest.model_json_schema(),
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/secrets/set": {
            "post": {
                "summary": "Save, update or delete one of the caller's secrets",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/SetSecretRequest"}}
                    },
                },
                "responses": {
                    "200": _json(
                        "Done; the value is not echoed",
                        {
                            "type": "object",
                            "properties": {
                                "server": _STRING,
                                "key": _STRING,
                                "status": {"enum": ["created", "updated", "deleted"]},
                            },
                            "required": ["server", "key", "status"],
                        },
                    ),
                    "400": _json(
                        "Invalid input: the message names the field, never its value; a field given twice; "
                        "OAuth form for two Authorization headers",
                        _EITHER_FORM,
                    ),
                    "401": _UNAUTHORISED,
                    "403": _FOREIGN_ORIGIN,
                    "404": _json("No such secret (delete)", _ERROR),
                    "413": _json(f"The body is over {MAX_BODY_BYTES // 1024} KiB", _ERROR),
                    "415": _json(
                        "The body is not sent as application/json in UTF-8, or has a Content-Encoding",
                        _ERROR,
                    ),
                    "421": _FOREIGN_HOST,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/secrets": {
            "get": {
                "summary": "List the caller's secret names and timestamps, never values",
                "description": f"At most {KEYS_PER_LISTING} keys an answer, in server and key order; "
                "next_cursor, given when more follow, is the cursor of the next answer. Any other query "
                "parameter, or server or cursor given twice, is refused (400).",
                "parameters": [
                    {
                        "name": "server",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,
                        "description": f"Only this MCP server's keys ({NAME_RULE}); all when empty.",
                        "schema": {
                            "type": "string",
                            "pattern": f"^({NAME_PATTERN})?$",
                            "maxLength": MAX_NAME_LENGTH,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,
                        "description": "Where to go on from: the next_cursor of an earlier answer, "
                        "server/key; the first keys when omitted or empty.",
                        "schema": {
                            "type": "string",
                            "pattern": CURSOR_PATTERN,
                            "maxLength": 2 * MAX_NAME_LENGTH + 1,
                        },
                    },
                ],
                "responses": {
                    "200": _json(
                        f"The caller's keys, {KEYS_PER_LISTING} at most",
                        {
                            "type": "object",
                            "properties": {
                                "username": _STRING,
                                "keys": {"type": "array", "items": _KEY_INFO},
                                "next_cursor": {
                                    "type": "string",
                                    "pattern": f"^{NAME_PATTERN}/{NAME_PATTERN}$",
                                    "description": f"Given when more keys follow the {KEYS_PER_LISTING} of "
                                    "this answer (absent on the last): pass it as cursor.",
                                },
                            },
                            "required": ["username", "keys"],
                        },
                        headers={"Cache-Control": {"required": True, "schema": {"const": "no-store"}}},
                    ),
                    "400": _json(
                        "Invalid input: the message names the parameter, never its value (a cursor not "
                        "server/key included); OAuth form for two Authorization headers",
                        _EITHER_FORM,
                    ),
                    "401": _UNAUTHORISED,
                    "403": _FOREIGN_ORIGIN,
                    "421": _FOREIGN_HOST,
                    "503": _UNAVAILABLE,
                },
            }
        },
    },
}
