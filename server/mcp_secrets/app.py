"""The MCP server: the secrets tools, thin, each acting for the caller only.

No tool takes a username: the caller comes from ``Identity``. No tool result
carries a value: values are write-only.
"""

from __future__ import annotations

import functools
import inspect
import logging
import shlex
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import (
    AuthenticatedUser,
    AuthorizationContext,
    authorization_context,
)
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import ServerRequestContext
from mcp.server.elicitation import UrlElicitationResult
from mcp.server.lowlevel import NotificationOptions
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    CallToolResult,
    ElicitRequest,
    ElicitRequestURLParams,
    ElicitResult,
    EmptyResult,
    InputRequiredResult,
    ListToolsResult,
    PaginatedRequestParams,
    SetLevelRequestParams,
    TextContent,
    Tool,
    ToolAnnotations,
)
from mcp_types.methods import validate_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, ValidationError, WithJsonSchema

from mcp_secrets import __version__
from mcp_secrets.config import ENTRY_WAIT_SECONDS, LISTEN_STREAMS_PER_USER, StoreLocation
from mcp_secrets.elicitation import asks_by_result, takes_elicitation
from mcp_secrets.entry import EntryLink, EntryLinks, Submission
from mcp_secrets.errors import InvalidInputError, SecretsError
from mcp_secrets.gateway import Gateway, set_log_level
from mcp_secrets.gateway.changes import LISTENING_USER
from mcp_secrets.identity import Identity, api_token_id
from mcp_secrets.offload import run_store_work
from mcp_secrets.secrets import (
    CURSOR_PATTERN,
    KEYS_PER_LISTING,
    MAX_VALUE_BYTES,
    NAME_PATTERN,
    SecretKeyInfo,
    Secrets,
    validate_name,
)
from mcp_secrets.session_quota import OpenStreams
from mcp_secrets.stdio import serve_stdio
from mcp_secrets.store import SecretStore
from mcp_secrets.tokens import ApiTokens

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
# What serves one subscriptions/listen stream, and what a server puts around it (_around_listen).
_Serve = Callable[[], Awaitable[Any]]
_AroundListen = Callable[[str, ServerRequestContext[Any], _Serve], Awaitable[Any]]
_F = TypeVar("_F", bound=Callable[..., Any])


def _described(tool: _F) -> _F:
    """Dedent a tool's docstring: the SDK gives clients its description as written, indentation included."""
    tool.__doc__ = inspect.cleandoc(tool.__doc__ or "")
    return tool


INSTRUCTIONS = """\
mcp-secrets stores the user's secrets (API keys, passwords, tokens) encrypted, per MCP server.
Values are write-only: no tool ever returns a stored value, and you never need to read one.
Secrets belong to the user this session is authenticated as; you cannot reach anyone else's."""

# The name rule in each input schema, so a client or model knows it before a call is refused for it;
# the tools still check it themselves (schema-only here, so their errors keep naming the rule).
NAME_SCHEMA: dict[str, JsonValue] = {"pattern": f"^{NAME_PATTERN}$"}
SERVER_ARG = Field(
    description="Name of the MCP server the secret is for, e.g. 'github'.", json_schema_extra=NAME_SCHEMA
)


def _none_as_all(value: object) -> object:
    return "" if value is None else value


def _json_number(value: object) -> object:
    """Refuse what pydantic's lax mode would read as a number: "5" as 5, true as 1. 5.0 stays whole."""
    if isinstance(value, (bool, str)):
        raise ValueError("must be a number")  # noqa: TRY004 - pydantic reports a ValueError as the field's
    return value


# A plain `str` on purpose: the SDK JSON-decodes string arguments of any other type, which would
# turn a server named "null" into None ("all servers"). Empty (or null) means all servers.
ServerFilter = Annotated[
    str,
    BeforeValidator(_none_as_all),
    Field(
        description="Only this MCP server's entries; all when omitted or empty.",
        json_schema_extra={"pattern": f"^({NAME_PATTERN})?$"},
    ),
]
KEY_ARG = Field(description="Name of the secret, e.g. 'GITHUB_TOKEN'.", json_schema_extra=NAME_SCHEMA)


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
    last_used_at: datetime | None = None


class SecretEventEntry(BaseModel):
    """One event of the audit trail; it never holds a value."""

    at: datetime
    action: str
    server: str
    key: str
    transport: str
    detail: str


def _items_of(item: type[BaseModel]) -> WithJsonSchema:
    """The schema of a list whose items ``item`` describes, in the list's own ``$defs``, unchecked.

    A client checks a result against its tool's output schema, item by item: the SDK's checker
    took ~3 ms for 40 keys against an item schema, several times the whole call, growing with the
    list. The server builds these lists from typed records, so the item schema is there for readers
    and left out of the check.
    """
    return WithJsonSchema(
        {
            "type": "array",
            "description": f"Each item is a {item.__name__}, as defined in this property's $defs.",
            "$defs": {item.__name__: item.model_json_schema()},
        }
    )


class SecretEventList(BaseModel):
    """The caller's audit trail, newest first."""

    username: str
    events: Annotated[list[SecretEventEntry], _items_of(SecretEventEntry)]


class SecretRequest(BaseModel):
    """The outcome of ``request_secret``; never a value."""

    server: str
    key: str
    status: Literal["stored", "pending", "expired", "declined", "link_sent", "use_terminal"]
    url: str | None = Field(default=None, description="The entry link, only when the client cannot open it.")
    expires_at: datetime | None = None


class ServerSecretsStatus(BaseModel):
    """For a downstream server of the gateway: the keys it requires and which the caller lacks."""

    server: str
    description: str
    required: list[str]
    missing: list[str]


class SecretKeyList(BaseModel):
    """The caller's stored secret names, and (with the gateway) what each downstream server still needs."""

    username: str
    keys: Annotated[list[SecretKeyEntry], _items_of(SecretKeyEntry)]
    servers: list[ServerSecretsStatus] = Field(default_factory=list)
    next_cursor: str | None = Field(
        default=None,
        description=f"Given when more keys follow the {KEYS_PER_LISTING} of this answer (absent on the last "
        "page): pass it as `cursor`.",
    )


@functools.lru_cache(maxsize=8192)
def _json_time(moment: datetime) -> str:
    """A UTC time as pydantic writes it in JSON (``...Z``), for results built without a model.

    Cached: a listing formats the same few stored times on every call, and isoformat of an
    aware datetime costs ten times a cache hit.
    """
    return moment.isoformat().replace("+00:00", "Z")


def _key_entry(info: SecretKeyInfo) -> dict[str, str | None]:
    """A SecretKeyEntry in its JSON form: a model per key costs more than the whole listing."""
    used = info.last_used_at
    return {
        "server": info.server,
        "key": info.key,
        "created_at": _json_time(info.created_at),
        "updated_at": _json_time(info.updated_at),
        "last_used_at": None if used is None else _json_time(used),
    }


def _minute(json_time: str | None) -> str:
    """``2026-01-31 09:05`` from ``2026-01-31T09:05:00Z``."""
    return f"{json_time[:10]} {json_time[11:16]}" if json_time else ""


def _key_line(entry: dict[str, str | None]) -> str:
    used = f"last used {_minute(entry['last_used_at'])}" if entry["last_used_at"] else "never used"
    return f"- {entry['server']}/{entry['key']} (updated {_minute(entry['updated_at'])} UTC, {used})"


def _result(text: str, structured: BaseModel | dict[str, Any]) -> CallToolResult:
    content = structured if isinstance(structured, dict) else structured.model_dump(mode="json")
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=content)


async def _run(work: Callable[[], _T], store: SecretStore | None = None) -> _T:
    """Run blocking work off the loop (on it when ``store`` answers at once); errors become ToolError."""
    try:
        return await (anyio.to_thread.run_sync(work) if store is None else run_store_work(store, work))
    except SecretsError as exc:
        raise ToolError(str(exc)) from None


def _caller(identity: Identity, ctx: Context[Any, Any]) -> str:
    try:
        return identity.username(ctx)
    except SecretsError as exc:
        raise ToolError(str(exc)) from None


def _stream_owner(ctx: ServerRequestContext[Any]) -> AuthorizationContext | None:
    """Who opened a listen stream, as the session bound tells tokens apart; None without a token (stdio)."""
    scope = getattr(ctx.request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else auth_context_var.get()
    return authorization_context(user) if isinstance(user, AuthenticatedUser) else None


def _describable(tool: Tool, version: str) -> bool:
    """True when protocol ``version`` can describe downstream ``tool``.

    A downstream speaking 2026-07-28 may list a tool whose input or output schema is not an object,
    which earlier revisions cannot carry: the SDK would refuse the whole listing for that one tool.
    """
    listing = ListToolsResult(tools=[tool]).model_dump(by_alias=True, mode="json", exclude_none=True)
    try:
        validate_server_result("tools/list", version, listing)
    except ValidationError:
        logger.warning("tool %r left out of a listing: protocol %s cannot describe it", tool.name, version)
        return False
    return True


class _SecretsServer(MCPServer[Any]):
    """``MCPServer`` whose argument errors never quote the input, and which routes gateway tools."""

    gateway: Gateway | None = None
    identity: Identity | None = None

    async def _handle_list_tools(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        if params is not None and params.cursor is not None:
            # One page holds every tool and hands out no cursor: any cursor is one we never made, which
            # the specification answers with Invalid params rather than the first page again.
            raise MCPError(INVALID_PARAMS, "unknown cursor: every tool is listed on one page, without one")
        tools = await self.list_tools()
        if self.gateway is not None and self.identity is not None:
            username = _caller(self.identity, Context(request_context=ctx, mcp_server=self))
            if ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:  # from 2026-07-28: subscriptions/listen
                # The SDK's connection has no public way in from a request's session.
                caller = (username, _stream_owner(ctx))
                self.gateway.changes.watch(caller, ctx.session._connection)  # noqa: SLF001
            downstream = await self.gateway.list_tools(username)
            tools.extend(tool for tool in downstream if _describable(tool, ctx.protocol_version))
        return ListToolsResult(tools=tools)

    async def run_stdio_async(self) -> None:
        """Serve on stdio as the SDK does, but read no incoming message past a bound (``stdio``)."""
        await serve_stdio(self._lowlevel_server)

    def tell_tool_list_changes(self) -> None:
        """Declare tools.listChanged, and know each subscriptions/listen stream by its caller.

        The gateway tells a user's clients, and only theirs, when that user's secrets change their tools.
        """
        lowlevel = self._lowlevel_server
        # The handshake's capabilities come from this call's arguments, and every transport makes it with
        # none; from 2026-07-28 the SDK declares listChanged itself, as it serves subscriptions/listen.
        lowlevel.create_initialization_options = functools.partial(  # type: ignore[method-assign]
            lowlevel.create_initialization_options, NotificationOptions(tools_changed=True)
        )

        async def as_caller(username: str, ctx: ServerRequestContext[Any], serve: _Serve) -> Any:  # noqa: ANN401
            # Read as the stream subscribes, in this task.
            listening = LISTENING_USER.set((username, _stream_owner(ctx)))
            try:
                return await serve()
            finally:
                LISTENING_USER.reset(listening)

        self._around_listen(as_caller)

    def bound_listen_streams(self, streams: OpenStreams) -> None:
        """Refuse a user one subscriptions/listen stream more than ``streams`` lets them keep open.

        The SDK bounds the streams of the whole server (1,024), not per user: one token holder could
        open them all, and no other user would be told of a change meanwhile.
        """

        async def within_bound(username: str, ctx: ServerRequestContext[Any], serve: _Serve) -> Any:  # noqa: ANN401
            # No await between the count of full() and the one counted() adds: streams at once cannot pass.
            if await streams.full(username):
                logger.warning(
                    "refused a listen stream of %s: %d listen streams of that user are open already",
                    username,
                    streams.most,
                )
                message = (
                    f"too many open listen streams for this user (at most {streams.most}): end one first"
                )
                raise MCPError(INVALID_REQUEST, message)
            with streams.counted(username, _stream_owner(ctx)):
                return await serve()

        self._around_listen(within_bound)

    def _around_listen(self, around: _AroundListen) -> None:
        """Serve each subscriptions/listen request through ``around(caller's username, ctx, serve)``."""
        lowlevel = self._lowlevel_server
        listen = lowlevel.get_request_handler("subscriptions/listen")
        if listen is None:
            raise LookupError("the SDK serves no subscriptions/listen")
        serve_stream = listen.handler

        async def listen_through(ctx: ServerRequestContext[Any], params: BaseModel) -> Any:  # noqa: ANN401
            assert self.identity is not None  # noqa: S101 - set as the server is built
            username = _caller(self.identity, Context(request_context=ctx, mcp_server=self))
            return await around(username, ctx, lambda: serve_stream(ctx, params))

        lowlevel.add_request_handler("subscriptions/listen", listen.params_type, listen_through)

    def relay_logs(self) -> None:
        """Declare the logging capability and take logging/setLevel: the gateway relays downstream logs."""
        self._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_log_level)

    def publish_unchecked(self, name: str) -> None:
        """Publish tool ``name``'s output schema but skip the SDK's check of each result against its model.

        For the lists: the check re-validates every item, and their items come from typed records
        (tests check them against the schema). The SDK reads this field at each call.
        """
        tool = self._tool_manager.get_tool(name)
        if tool is None:
            raise LookupError(f"no tool named {name}")
        tool.fn_metadata.output_model = None

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        if self.gateway is not None and self.identity is not None and self.gateway.owns(name):
            if context is None:
                raise ToolError("downstream tools need a request context")
            username = _caller(self.identity, context)
            try:
                return await self.gateway.call_tool(username, name, arguments, context)
            except SecretsError as exc:
                # Its message is redacted; the downstream's error it replaced, its __context__, is not.
                refusal = str(exc)
            raise ToolError(refusal)  # out of the except block, so that it carries none of that
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            # pydantic's message quotes the rejected input, which may be a secret value; so does the SDK's
            # error around it, which the refusal, raised out of this block, does not carry as its context.
            refusal = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.__cause__.errors(include_input=False, include_url=False)
            )
        raise ToolError(f"invalid arguments for {name}: {refusal}")


async def _set_log_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
    set_log_level(ctx.session, params.level)
    return EmptyResult()


ENTRY_REQUEST = "secret_entry"
WAIT_POLL_SECONDS = 0.5
# How often a call reports progress while the client's URL dialog is open: a client that hears nothing of a
# call for a while gives up on it (the MCP Inspector after 60 s, unless progress comes).
DIALOG_PROGRESS_SECONDS = 10.0
WAITING = "Waiting for the secret to be entered"  # the progress message
# The live entry links a user's failed gateway calls may fill, of the MAX_LIVE_LINKS: each failed call
# makes links, and an agent retrying one in a loop must leave room for request_secret.
GATEWAY_LINKS = 100
REQUEST_STATE_SECONDS = 600.0  # the SDK's default life of a requestState


class EntrySettings(BaseModel):
    """Where the entry page is served, and how long ``request_secret`` waits for the user."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    links: EntryLinks
    base_url: str
    wait_seconds: float = ENTRY_WAIT_SECONDS
    clock: Callable[[], float] = anyio.current_time  # seconds, for the wait's deadline


# Nothing for a terminal command to repeat: it finds the store and key where this server did.
NO_SETTINGS = StoreLocation()


def set_command(username: str, server: str, key: str, settings: StoreLocation = NO_SETTINGS) -> str:
    """The terminal command that stores one secret for ``username``: a terminal's own user may be another.

    ``settings`` go before it, as variables: a terminal's environment is not the one a client config
    gave this server, and without them the command would store the value in another store. Those it
    withholds, the sentence of ``settings.needs()`` names.
    """
    # Quoted for the shell: a username may hold '|' (auth0|…), which would pipe the command elsewhere.
    user = shlex.quote(username)
    variables = "".join(f"{name}={shlex.quote(value)} " for name, value in settings.variables.items())
    if not any(name.startswith("-") for name in (username, server, key)):
        return f"{variables}{settings.program} set {server} {key} --user {user}"
    # A name may start with `-`, which the command line reads as an option: `=` and `--` keep it a name.
    return f"{variables}{settings.program} set --user={user} -- {server} {key}"


def _terminal_hint(username: str, server: str, key: str, settings: StoreLocation) -> CallToolResult:
    text = (
        f"This mcp-secrets runs over stdio and serves no entry page. To store {key} for {server} without "
        f"it passing through this chat, ask the user to run in a terminal:  "
        f"{set_command(username, server, key, settings)}  "
        f"(it asks for the value at a hidden prompt).{settings.needs()} set_secret also works, but its "
        "value travels through the conversation."
    )
    return _result(text, SecretRequest(server=server, key=key, status="use_terminal"))


async def _await_entry(
    entry: EntrySettings, link: EntryLink, ctx: Context[Any, Any], *, started: float
) -> Submission:
    """Wait, polling the store (any replica may serve the page), until the value is stored or time is up.

    The time counts from ``started``, when the call came in: the user's time in the client's dialog is
    part of it, so that the call answers before the client's own timeout for it runs out.
    """
    deadline = started + entry.wait_seconds
    while True:
        # Looked at once more when the time is up (and once with no wait): the page may be submitted already.
        submission = await _run(lambda: entry.links.submission(link.token))
        now = entry.clock()
        if submission != "waiting" or now >= deadline:
            return submission
        await ctx.report_progress(now - started, entry.wait_seconds, WAITING)
        await anyio.sleep(min(WAIT_POLL_SECONDS, deadline - now))


async def _entry_outcome(
    entry: EntrySettings,
    link: EntryLink,
    action: str,
    ctx: Context[Any, Any],
    *,
    elicitation_id: str | None,
    started: float,
) -> CallToolResult:
    record = link.record
    stored_text = f"Secret {record.key} for server {record.server} stored. Its value was never seen here."
    if action != "accept":
        await _run(lambda: entry.links.cancel(link.token))
        # The user may have submitted the page before closing the client's dialog.
        if await _run(lambda: entry.links.submission(link.token)) == "stored":
            return _result(stored_text, SecretRequest(server=record.server, key=record.key, status="stored"))
        text = f"The user declined to enter {record.key} for {record.server}; nothing was stored."
        return _result(text, SecretRequest(server=record.server, key=record.key, status="declined"))
    submission = await _await_entry(entry, link, ctx, started=started)
    if submission == "stored":
        if elicitation_id is not None:
            await ctx.request_context.session.send_elicit_complete(
                elicitation_id, ctx.request_context.request_id
            )
        return _result(stored_text, SecretRequest(server=record.server, key=record.key, status="stored"))
    if submission == "gone" and await _run(lambda: entry.links.state(link.token)) == "used":
        # Declined in an earlier answer of this round trip, which the client sends again accepting.
        text = (
            f"The entry link for {record.key} ({record.server}) was declined and is used up; nothing was "
            "stored. Call request_secret again for a new link."
        )
        return _result(text, SecretRequest(server=record.server, key=record.key, status="declined"))
    if submission == "gone":  # the link expired during the wait: only a wait longer than its life
        text = (
            f"The entry link for {record.key} ({record.server}) expired before a value was entered; "
            "nothing was stored. Call request_secret again for a new link."
        )
        return _result(text, SecretRequest(server=record.server, key=record.key, status="expired"))
    text = (
        f"The entry page for {record.key} ({record.server}) is open but not submitted yet; the link "
        f"stays valid until {record.expires_at:%H:%M} UTC. list_secret_keys will show it once stored."
    )
    return _result(
        text,
        SecretRequest(server=record.server, key=record.key, status="pending", expires_at=record.expires_at),
    )


def missing_secrets_hint(
    entry: EntrySettings | None, store_settings: StoreLocation = NO_SETTINGS
) -> Callable[[str, str, list[str], str | None], str]:
    """How the gateway says to store missing keys: an entry link per key when the page is served.

    ``store_settings``: as for ``build_server``. The hint's last argument is the caller's API token id,
    for the links to work only while that token does.
    """

    def hint(username: str, server: str, keys: list[str], token_id: str | None = None) -> str:
        without_links = (
            f"Store each with request_secret (server {server!r}), "
            f"or run `{set_command(username, server, 'KEY', store_settings)}`.{store_settings.needs()}"
        )
        if entry is None:
            return without_links
        try:
            # All, or none past the gateway's share of the limit.
            made = entry.links.create_many(username, server, keys, within=GATEWAY_LINKS, token_id=token_id)
        except InvalidInputError as exc:  # too many links open: say so, and how else to store them
            return f"{exc}. {without_links}"
        links = [f"{link.record.key}: {link.url(entry.base_url)}" for link in made]
        return "Open each link to enter it (one use, a few minutes):\n" + "\n".join(links)

    return hint


def build_server(
    secrets: Secrets,
    identity: Identity,
    *,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
    entry: EntrySettings | None = None,
    gateway: Gateway | None = None,
    transport: str = "in-process",
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO",
    listen_streams_per_user: int = LISTEN_STREAMS_PER_USER,
    store_settings: StoreLocation = NO_SETTINGS,
) -> MCPServer[Any]:
    """The mcp-secrets MCP server over ``secrets``, for callers named by ``identity``.

    With ``entry``, ``request_secret`` hands out links to the entry page; without
    it (stdio), it tells the user to run ``mcp-secrets set``, preceded by
    ``store_settings`` (variables that locate this server's store and key). With
    ``gateway``, the downstream servers' tools are offered too, prefixed
    ``<server>__``; run the server inside ``gateway.running()``.
    """
    # A request_secret round trip may come back as long as its link works, past the SDK's ten minutes.
    link_seconds = 0.0 if entry is None else entry.links.ttl.total_seconds()
    mcp = _SecretsServer(
        "mcp-secrets",
        title="mcp-secrets",
        version=__version__,
        instructions=INSTRUCTIONS,
        token_verifier=token_verifier,
        auth=auth,
        log_level=log_level,
        # Keyed from the master keys, so any replica can resume another's multi-round request_secret,
        # and one restarted with a new key first still opens what the old key sealed.
        request_state_security=RequestStateSecurity(
            keys=secrets.encryptor.derive_keys("request state"),
            ttl=max(REQUEST_STATE_SECONDS, link_seconds),
        ),
        # The SDK's own bus would tell every listening client of any user's change.
        subscriptions=None if gateway is None else gateway.changes.bus,
    )
    mcp.gateway = gateway
    mcp.identity = identity
    if gateway is not None:
        mcp.relay_logs()
        mcp.tell_tool_list_changes()
    # Revoked tokens' streams do not count, as for sessions: a leaked token must not keep its user out.
    mcp.bound_listen_streams(OpenStreams(listen_streams_per_user, ApiTokens(secrets.store)))

    _add_request_secret(mcp, identity, entry, store_settings)
    _add_write_tools(mcp, secrets, identity, transport)
    _add_list_tools(mcp, secrets, identity, gateway)
    return mcp


def _add_request_secret(
    mcp: MCPServer[Any], identity: Identity, entry: EntrySettings | None, store_settings: StoreLocation
) -> None:
    @mcp.tool(
        annotations=ToolAnnotations(
            title="Ask the user for a secret", readOnlyHint=False, destructiveHint=True, openWorldHint=False
        )
    )
    @_described
    async def request_secret(
        server: Annotated[str, SERVER_ARG], key: Annotated[str, KEY_ARG], ctx: Context[Any, Any]
    ) -> Annotated[CallToolResult, SecretRequest] | InputRequiredResult:
        """Ask the user to type a secret into a page served by mcp-secrets, out of the model's sight.

        The recommended way to store a secret: the value never passes through the conversation.
        The result says whether it was stored, or that the user has not submitted it yet.
        """
        username = _caller(identity, ctx)
        await _run(lambda: (validate_name("server", server), validate_name("key", key)))
        if entry is None:
            return _terminal_hint(username, server, key, store_settings)
        started = entry.clock()
        message = (
            f"Enter the secret {key} for the MCP server {server} in a page of mcp-secrets. "
            "The value goes straight to the encrypted store, never through the assistant."
        )
        if asks_by_result(ctx) and ctx.request_state is not None:
            return await _resumed(entry, username, message, ctx, started=started)
        # A link made with an API token works only while the token does: revoked, it must write nothing.
        token_id = api_token_id(ctx)
        link = await _run(lambda: entry.links.create(username, server, key, token_id=token_id))
        url = link.url(entry.base_url)
        if not takes_elicitation(ctx, "url"):
            return _link_sent(username, link, url)
        if asks_by_result(ctx):
            return _entry_question(message, link, entry.base_url)
        try:
            action, told = await _asked_to_open(entry, link, message, url, ctx, started=started)
        except MCPError:
            # It said it opens URLs, but the request found no way to it or got an error: give the link.
            return _link_sent(username, link, url)
        return await _entry_outcome(
            entry, link, action, ctx, elicitation_id=None if told else link.record.link_id, started=started
        )


async def _asked_to_open(
    entry: EntrySettings, link: EntryLink, message: str, url: str, ctx: Context[Any, Any], *, started: float
) -> tuple[str, bool]:
    """The client's answer to the URL elicitation, and whether it was told meanwhile that the page is done.

    A client may keep its dialog open until ``notifications/elicitation/complete`` says the page is done
    (the MCP Inspector 2.x does, and answers "accept" then): the store is watched while it is open, and
    progress reported, of no set length, since the call's wait counts only once the client answers.
    """
    told = False

    async def tell_when_stored() -> None:
        nonlocal told
        reported = anyio.current_time()
        while True:  # polled, as by _await_entry: any replica may serve the page
            try:
                submission = await _run(lambda: entry.links.submission(link.token))
            except ToolError:  # a store out for now: the answer's own look at the store says so, if it lasts
                return
            if submission != "waiting":
                break
            await anyio.sleep(WAIT_POLL_SECONDS)
            if anyio.current_time() - reported >= DIALOG_PROGRESS_SECONDS:
                reported = anyio.current_time()
                await ctx.report_progress(entry.clock() - started, None, WAITING)
        if submission == "stored":
            with anyio.CancelScope(shield=True):  # the answer coming meanwhile must not cut it in half
                await ctx.request_context.session.send_elicit_complete(
                    link.record.link_id, ctx.request_context.request_id
                )
            told = True

    outcome: UrlElicitationResult | MCPError
    async with anyio.create_task_group() as watching:
        watching.start_soon(tell_when_stored)
        try:
            outcome = await ctx.elicit_url(message, url, link.record.link_id)
        except MCPError as exc:  # raised below as itself, rather than in the task group's ExceptionGroup
            outcome = exc
        watching.cancel_scope.cancel()
    if isinstance(outcome, MCPError):
        raise outcome
    return outcome.action, told


async def _resumed(
    entry: EntrySettings, username: str, message: str, ctx: Context[Any, Any], *, started: float
) -> CallToolResult | InputRequiredResult:
    """The second round of a request_secret of 2026-07-28: its request state is the link's token."""
    link = await _run(lambda: entry.links.resume(ctx.request_state or "", username))
    response = (ctx.input_responses or {}).get(ENTRY_REQUEST)
    if isinstance(response, ElicitResult):
        return await _entry_outcome(entry, link, response.action, ctx, elicitation_id=None, started=started)
    # No answer to the question asked is a client's slip, not the user's no: asked again while the link
    # can take a value; otherwise the result says what became of it.
    if await _run(lambda: entry.links.state(link.token)) == "live":
        return _entry_question(message, link, entry.base_url)
    return await _entry_outcome(entry, link, "accept", ctx, elicitation_id=None, started=started)


def _entry_question(message: str, link: EntryLink, base_url: str) -> InputRequiredResult:
    """The client asked, in the call's result, to open the link; the state that comes back is its token."""
    request = ElicitRequest(params=ElicitRequestURLParams(message=message, url=link.url(base_url)))
    return InputRequiredResult(input_requests={ENTRY_REQUEST: request}, request_state=link.token)


def _link_sent(username: str, link: EntryLink, url: str) -> CallToolResult:
    """The entry link in the result, for the user to open: the client did not open it."""
    server, key = link.record.server, link.record.key
    text = (
        f"Please open this link in your browser and enter {key} for {server} there: {url}\n"
        f"It works once, to store {key} in {username}'s account, until {link.record.expires_at:%H:%M} UTC."
    )
    status = SecretRequest(
        server=server, key=key, status="link_sent", url=url, expires_at=link.record.expires_at
    )
    return _result(text, status)


def _add_write_tools(mcp: MCPServer[Any], secrets: Secrets, identity: Identity, transport: str) -> None:
    @mcp.tool(
        annotations=ToolAnnotations(
            title="Store a secret",
            readOnlyHint=False,
            destructiveHint=True,
            idempotentHint=True,
            openWorldHint=False,
        )
    )
    @_described
    async def set_secret(
        server: Annotated[str, SERVER_ARG],
        key: Annotated[str, KEY_ARG],
        value: Annotated[
            str,
            Field(
                description=f"The secret value, 1 to {MAX_VALUE_BYTES} bytes in UTF-8. "
                "Write-only: it is never shown again.",
                json_schema_extra={"minLength": 1},
            ),
        ],
        ctx: Context[Any, Any],
    ) -> Annotated[CallToolResult, SecretChange]:
        """Store one of your secrets for an MCP server, encrypted; replaces an existing one.

        The value is write-only: no tool ever returns it, and it is never logged. Prefer
        request_secret, which lets the user type the value where the conversation never sees it.
        """
        username = _caller(identity, ctx)
        change = await _run(
            lambda: secrets.set_secret(username, server, key, value, via=transport), secrets.store
        )
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
    @_described
    async def delete_secret(
        server: Annotated[str, SERVER_ARG], key: Annotated[str, KEY_ARG], ctx: Context[Any, Any]
    ) -> Annotated[CallToolResult, SecretChange]:
        """Delete one of your secrets for an MCP server."""
        username = _caller(identity, ctx)
        change = await _run(
            lambda: secrets.delete_secret(username, server, key, via=transport), secrets.store
        )
        return _result(
            f"Secret {change.key} for server {change.server} deleted.",
            SecretChange(server=change.server, key=change.key, status=change.status),
        )


def _add_list_tools(
    mcp: _SecretsServer, secrets: Secrets, identity: Identity, gateway: Gateway | None
) -> None:
    @mcp.tool(annotations=ToolAnnotations(title="List secret names", readOnlyHint=True, openWorldHint=False))
    @_described
    async def list_secret_keys(
        ctx: Context[Any, Any],
        server: ServerFilter = "",
        cursor: Annotated[
            str,
            BeforeValidator(_none_as_all),
            Field(
                description=f"Where to go on from: the next_cursor of an answer that listed "
                f"{KEYS_PER_LISTING} keys and had more; omit it for the first.",
                json_schema_extra={"pattern": CURSOR_PATTERN},
            ),
        ] = "",
    ) -> Annotated[CallToolResult, SecretKeyList]:
        """List your stored secrets: names, when each was created, updated and last used; never their values.

        Through the gateway, also which secrets each downstream server still needs before its tools work.
        At most 1000 keys an answer, in server and key order; next_cursor then says where to go on.
        """
        username = _caller(identity, ctx)
        page = await _run(
            lambda: secrets.list_key_page(username, server or None, cursor, limit=KEYS_PER_LISTING),
            secrets.store,
        )
        infos, next_cursor = page.keys, page.next_cursor
        statuses = [] if gateway is None else await _run(lambda: gateway.status(username), secrets.store)
        entries = [_key_entry(info) for info in infos]
        scope = f" for server {server}" if server else ""
        lines = [_key_line(entry) for entry in entries]
        shown = f"{len(entries)} secret(s){scope}" + (f" (after {cursor})" if cursor else "")
        text = f"{shown} stored for {username}" + (":\n" + "\n".join(lines) if lines else ".")
        if next_cursor:
            text += f"\nMore follow: call list_secret_keys again with cursor {next_cursor}."
        servers = [
            ServerSecretsStatus(
                server=st.server, description=st.description, required=st.required, missing=st.missing
            )
            for st in statuses
            if not server or st.server == server
        ]
        needs = [f"- {st.server} still needs: {', '.join(st.missing)}" for st in servers if st.missing]
        if needs:
            text += "\nDownstream servers missing secrets:\n" + "\n".join(needs)
        listing = {"username": username, "keys": entries, "servers": [st.model_dump() for st in servers]}
        if next_cursor:  # absent on the last page, as MCP's own nextCursor: a client validates no more
            listing["next_cursor"] = next_cursor
        return _result(text, listing)

    @mcp.tool(
        annotations=ToolAnnotations(title="Your secrets' audit trail", readOnlyHint=True, openWorldHint=False)
    )
    @_described
    async def list_secret_events(
        ctx: Context[Any, Any],
        server: ServerFilter = "",
        limit: Annotated[
            int,
            BeforeValidator(_json_number),
            Field(
                description="How many events, newest first (1 to 1000).",
                json_schema_extra={"minimum": 1, "maximum": 1000},
            ),
        ] = 50,
    ) -> Annotated[CallToolResult, SecretEventList]:
        """Your audit trail, newest first: when each of your secrets was stored, changed, deleted or used.

        Events never hold a value.
        """
        username = _caller(identity, ctx)
        events = await _run(lambda: secrets.list_events(username, server or None, limit), secrets.store)
        entries = [
            SecretEventEntry(
                at=event.at,
                action=event.action,
                server=event.server,
                key=event.key,
                transport=event.transport,
                detail=event.detail,
            )
            for event in events
        ]
        lines = [
            f"- {entry.at:%Y-%m-%d %H:%M:%S} UTC {entry.action} {entry.server}/{entry.key} "
            f"via {entry.transport}"
            for entry in entries
        ]
        text = f"{len(entries)} event(s) for {username}" + (":\n" + "\n".join(lines) if lines else ".")
        return _result(text, SecretEventList(username=username, events=entries))

    mcp.publish_unchecked("list_secret_keys")
    mcp.publish_unchecked("list_secret_events")
