"""The HTTP transports: bearer-token auth, Host/Origin checks, a health route, uvicorn.

Every HTTP request passes the Host/Origin check (DNS-rebinding protection)
before anything else, then the SDK's bearer middleware; only the health route
is open without a token.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_secrets.config import Settings
from mcp_secrets.entry import EntryLinks
from mcp_secrets.entry_page import entry_routes
from mcp_secrets.errors import ConfigurationError, StoreUnavailableError
from mcp_secrets.identity import (
    TOKEN_CHECK_OUTAGE,
    ApiTokenVerifier,
    EitherVerifier,
    JwtVerifier,
    TokenCheckOutage,
)
from mcp_secrets.listening import listening_sockets, named
from mcp_secrets.logs import CLIENT_WENT_AWAY
from mcp_secrets.rest import rest_routes
from mcp_secrets.secrets import Secrets
from mcp_secrets.session_quota import SessionlessEndpoint, SseStreamQuota, StreamableSessionQuota
from mcp_secrets.sse_backlog import SseBacklog
from mcp_secrets.tokens import ApiTokens

logger = logging.getLogger(__name__)

LOCAL_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
LOCAL_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
MCP_PATH = "/mcp"
SSE_PATH = "/sse"
MESSAGES_PATH = "/messages"  # the SDK's, where legacy SSE clients post (a mount: no trailing slash)
HEALTH_PATH = "/healthz"
OUTAGE_RETRY_SECONDS = 5  # how long a 503 for a token that could not be checked asks clients to wait


def base_url(settings: Settings) -> str:
    """The URL clients reach this server at: ``MCP_SECRETS_PUBLIC_URL``, or the bind address."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return _bind_url(settings)


def _bind_url(settings: Settings) -> str:
    """The URL of the address the server listens on (127.0.0.1 for every interface)."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def endpoint_url(settings: Settings) -> str:
    """The MCP endpoint clients connect to for the configured transport."""
    return base_url(settings) + (SSE_PATH if settings.transport == "sse" else MCP_PATH)


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Accept only Host and Origin headers of this machine, its bind address, the public URL and extras."""
    # The SDK compares strings; requests carry host names in lower case and an origin has no path.
    hosts = [*LOCAL_HOSTS, *(host.lower() for host in settings.allowed_hosts)]
    origins = [*LOCAL_ORIGINS, *(origin.lower().rstrip("/") for origin in settings.allowed_origins)]
    # The address bound (--host 192.0.2.7) is this server's as much as the public URL: the start names
    # it, and entry links are made on it. A DNS-rebinding page sends its own host name, never these.
    for url in (_bind_url(settings), settings.public_url):
        if url:
            own_hosts, own_origin = _named(url)
            hosts.extend(own_hosts)
            origins.append(own_origin)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


DEFAULT_PORTS = {"http": 80, "https": 443}


def _named(url: str) -> tuple[list[str], str]:
    """The ``Host`` values and the ``Origin`` naming ``url``'s server, spelled as requests carry them.

    The SDK compares them as strings. Browsers and HTTP clients write the host in lower case and leave
    the scheme's default port out (a few clients write it), whatever the spelling of the configured URL.
    A proxy in front may forward the host name alone (nginx's ``$host``), whatever port its clients named.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = DEFAULT_PORTS.get(parts.scheme)
    port = default if parts.port is None else parts.port
    if port is None:
        return [host], f"{parts.scheme}://{host}"
    if port == default:
        return [host, f"{host}:{port}"], f"{parts.scheme}://{host}"
    return [f"{host}:{port}", host], f"{parts.scheme}://{host}:{port}"


def check_http_settings(settings: Settings) -> None:
    """Refuse the settings an HTTP start would stop on, before the start makes anything (a store, a key).

    Raises:
        ConfigurationError: naming the option or variable to correct.

    """
    _check_jwt_settings(settings)
    auth_settings(settings)


def _check_jwt_settings(settings: Settings) -> None:
    if not settings.jwks_url:
        # No JWT is accepted without keys to check it by: a server started anyway would refuse every JWT
        # its user meant to let in.
        for setting in ("issuer", "audience"):
            if getattr(settings, setting):
                raise ConfigurationError(
                    f"{settings.named(setting)} is only used with a JWKS URL to check JWTs by: "
                    "--jwks-url or MCP_SECRETS_JWKS_URL"
                )
        return
    if not settings.issuer or not settings.audience:
        raise ConfigurationError(
            f"{settings.named('jwks_url')} needs an issuer and an audience too: --issuer and --audience, "
            "or MCP_SECRETS_ISSUER and MCP_SECRETS_AUDIENCE"
        )
    # Checked here, by its option: PyJWT refuses any other scheme too, but with a traceback.
    try:
        scheme = urlsplit(settings.jwks_url).scheme
    except ValueError:  # an unclosed IPv6 bracket
        scheme = ""
    if scheme not in ("http", "https"):
        raise ConfigurationError(f"{settings.named('jwks_url')} must be an http:// or https:// URL")


def token_verifier(settings: Settings, tokens: ApiTokens) -> TokenVerifier:
    """API tokens always; JWTs of an OIDC provider too when ``--jwks-url`` is set."""
    _check_jwt_settings(settings)
    api_tokens = ApiTokenVerifier(tokens)
    if not settings.jwks_url or not settings.issuer or not settings.audience:
        return api_tokens
    jwts = JwtVerifier(
        settings.jwks_url,
        issuer=settings.issuer,
        audience=settings.audience,
        username_claim=settings.username_claim,
    )
    return EitherVerifier(api_tokens, jwts)


def auth_settings(settings: Settings) -> AuthSettings:
    """The SDK's resource-server settings; OIDC deployments advertise their issuer in metadata."""
    if settings.public_url and _holds_credentials(settings.public_url):
        # Entry links (handed to the model), the start's summary and the open /openapi.json name it.
        raise ConfigurationError(f"{settings.named('public_url')} must not hold a user name or password")
    oidc = bool(settings.jwks_url and settings.issuer)
    try:
        # pydantic turns the strings into URLs (and refuses malformed ones).
        if oidc:
            return AuthSettings.model_validate(
                {
                    "issuer_url": settings.issuer,
                    "resource_server_url": endpoint_url(settings),
                    "validate_token_resource": False,  # JwtVerifier checks the audience itself
                }
            )
        return AuthSettings.model_validate({"issuer_url": base_url(settings), "resource_server_url": None})
    except ValidationError as exc:
        # Named by its option: pydantic's own message is a traceback's worth, quoting the input.
        fields = {error["loc"][0] for error in exc.errors() if error["loc"]}
        if oidc and "issuer_url" in fields:
            raise ConfigurationError(
                f"{settings.named('issuer')} must be an http:// or https:// URL"
            ) from None
        if settings.public_url:
            raise ConfigurationError(
                f"{settings.named('public_url')} must be an http:// or https:// URL"
            ) from None
        raise ConfigurationError(f"{settings.named('host')} must be a host name or an IP address") from None


def _holds_credentials(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:  # not a URL at all: refused as such
        return False


class HostOriginGuard:
    """Refuse any HTTP request whose Host or Origin is not allowed, before auth or routing."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self._app = app
        self._checker = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 421/403 for a foreign Host/Origin; pass everything else on."""
        if scope["type"] == "http":
            # Host names are the same in any case, and the allowed ones are in lower case: so is what is
            # compared, here and by the SDK's own check behind (curl sends the host as the URL spells it).
            scope = {**scope, "headers": [_lower_case_host(header) for header in scope["headers"]]}
            refusal = await self._checker.validate_request(Request(scope), is_post=False)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self._app(scope, receive, send)


def _lower_case_host(header: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    name, value = header
    return (name, value.lower()) if name in (b"host", b"origin") else header


class OneAuthorization:
    """Refuse a request that carries more than one ``Authorization`` header, before anything reads one.

    The SDK reads the first; a proxy in front may check or log the last, and each would then act for
    another credential. RFC 6750 answers a request that sends its token more than one way with 400
    ``invalid_request``; two headers are two ways.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 400 to two Authorization headers; pass everything else on."""
        if (
            scope["type"] == "http"
            and sum(name.lower() == b"authorization" for name, _ in scope["headers"]) > 1
        ):
            await _two_credentials_response()(scope, receive, send)
            return
        await self._app(scope, receive, send)


def _two_credentials_response() -> Response:
    described = "the request carries more than one Authorization header"
    return JSONResponse(
        {"error": "invalid_request", "error_description": described},
        status_code=HTTPStatus.BAD_REQUEST,
        headers={
            "WWW-Authenticate": f'Bearer error="invalid_request", error_description="{described}"',
            "Cache-Control": "no-store",
        },
    )


class OutageAnswer:
    """Answer 503 (try again) rather than 401 for a token that could not be checked.

    That is, when the store or the identity provider's key set was unavailable. The SDK's bearer
    middleware can only accept a token or refuse it, and refuses it when the check fails. A 401 tells an
    MCP client that its token is no good, and the client then authorises afresh; a token that was never
    judged gets "try again later" instead, as ``/healthz`` says.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, marked for the verifier; turn its 401 into a 503 after an outage."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        outage = TokenCheckOutage()
        answered = False

        async def answering_send(message: Message) -> None:
            nonlocal answered
            if answered:
                return  # the 401's body, replaced by the 503's
            if (
                message["type"] == "http.response.start"
                and message["status"] == HTTPStatus.UNAUTHORIZED
                and outage.reason is not None
            ):
                answered = True
                await _outage_response(outage.reason)(scope, receive, send)
                return
            await send(message)

        reset = TOKEN_CHECK_OUTAGE.set(outage)
        try:
            await self._app(scope, receive, answering_send)
        finally:
            TOKEN_CHECK_OUTAGE.reset(reset)


def _outage_response(reason: str) -> Response:
    return JSONResponse(
        {
            "error": "temporarily_unavailable",
            "error_description": f"{reason}, so the token could not be checked; try again later",
        },
        status_code=HTTPStatus.SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(OUTAGE_RETRY_SECONDS), "Cache-Control": "no-store"},
    )


INVALID_MESSAGE = (
    "Validation error: the body is not a valid JSON-RPC message "
    "(details withheld: they would quote the request, and a request can hold a secret)"
)


class WithheldValidationDetails:
    """Replace the message of the SDK's 400 for an invalid JSON-RPC body, which quotes the body.

    The Streamable HTTP transport answers a body that is JSON but not JSON-RPC (``"jsonrpc": "1.0"``, a
    batch) with pydantic's error, whose ``input_value`` holds the request, a ``set_secret``'s value
    included. Every other response passes through untouched, unbuffered.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; hold back a 400's body to rewrite its message."""
        if scope["type"] != "http" or scope["path"] != MCP_PATH:
            await self._app(scope, receive, send)
            return
        start: Message | None = None
        body = bytearray()

        async def rewriting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == HTTPStatus.BAD_REQUEST:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            rewritten = _withhold_details(bytes(body))
            headers = [(name, value) for name, value in start["headers"] if name.lower() != b"content-length"]
            headers.append((b"content-length", str(len(rewritten)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": rewritten})

        await self._app(scope, receive, rewriting_send)


def _withhold_details(body: bytes) -> bytes:
    """The body with a validation error's message replaced; any other body as it was."""
    try:
        document = json.loads(body)
    except ValueError:
        return body
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict) or not str(error.get("message", "")).startswith("Validation error"):
        return body
    error["message"] = INVALID_MESSAGE
    return json.dumps(document).encode()


def http_app(
    mcp: MCPServer[Any], settings: Settings, secrets: Secrets, links: EntryLinks | None = None
) -> ASGIApp:
    """The ASGI app serving ``mcp`` over the configured HTTP transport, the entry page and the REST API."""

    async def health(_: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(secrets.store.ping)
        except StoreUnavailableError:
            return JSONResponse({"status": "store unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    mcp.custom_route(HEALTH_PATH, methods=["GET"])(health)

    security = transport_security(settings)
    public = urlsplit(base_url(settings))
    most = settings.max_sessions_per_user
    tokens = ApiTokens(secrets.store)  # the bound counts no session of a token that no longer works
    if settings.transport == "sse":
        app = mcp.sse_app(sse_path=SSE_PATH, transport_security=security, host=settings.host)
        _announce_messages_under(app, public.path.rstrip("/"))
        _wrap_route(app, SSE_PATH, lambda sse: SseStreamQuota(sse, most, tokens))
        backlog = SseBacklog()  # answers held for streams their clients do not read
        _wrap_route(app, SSE_PATH, backlog.stream)
        _wrap_route(app, MESSAGES_PATH, backlog.posts)
    else:
        app = mcp.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=settings.stateless_http,
            transport_security=security,
            host=settings.host,
        )
        if settings.stateless_http:  # no session outlives its request
            _wrap_route(app, MCP_PATH, SessionlessEndpoint)
        else:
            manager = mcp.session_manager
            _wrap_route(app, MCP_PATH, lambda inner: StreamableSessionQuota(inner, manager, most, tokens))
    # Starlette would redirect /secrets/set/ to /secrets/set, built from the Host and scheme it sees, not
    # the public URL: behind a proxy that is plain http without the path prefix, and a 307 has the client
    # send its body, a value included, there. A path with a slash too many is just not found.
    app.router.redirect_slashes = False
    app.add_exception_handler(ClientDisconnect, _client_gone)
    # Added after the SDK built its app: they sit behind its bearer middleware, which only identifies;
    # the REST routes require a token themselves, the entry page is reached by its one-time link.
    app.router.routes.extend(rest_routes(secrets, base_url(settings) if settings.public_url else None))
    if links is not None:
        app.router.routes.extend(
            entry_routes(links, secure_cookie=public.scheme == "https", path_prefix=public.path.rstrip("/"))
        )
    return HostOriginGuard(OneAuthorization(OutageAnswer(WithheldValidationDetails(app))), security)


def _announce_messages_under(app: Starlette, path: str) -> None:
    """Have the SSE endpoint tell clients to post their messages under the public URL's path.

    The SDK announces ``root_path`` + ``/messages/``, and a client resolves it against the URL it
    connected to: behind a proxy that takes the public URL's path (``/team-a``) off, the path must be in
    it, or the client posts outside the proxy's path. Set for this route only: routing never sees it.
    """
    if not path:
        return

    def announcing(sse: ASGIApp) -> ASGIApp:
        async def announce(scope: Scope, receive: Receive, send: Send) -> None:
            await sse({**scope, "root_path": scope.get("root_path", "") + path}, receive, send)

        return announce

    _wrap_route(app, SSE_PATH, announcing)


def _wrap_route(app: Starlette, path: str, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
    """Put ``wrap`` around the SDK's app at ``path``: behind the bearer middleware, so the user is known.

    It sits in front of the SDK's token requirement, which still refuses a request without one.
    """
    for route in app.router.routes:
        if isinstance(route, Route | Mount) and route.path == path:
            route.app = wrap(route.app)


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    """A client hung up before its body was read: one line, not the traceback of an unhandled error.

    Anyone can send half a body and go; as an error each one would put a traceback in the log.
    """
    logger.info(CLIENT_WENT_AWAY)
    return Response(status_code=HTTPStatus.BAD_REQUEST)  # nobody is there to read it


class QuietLifespanCut:
    """Say in one line that the app's shutdown was skipped, where Starlette logs a CancelledError's traceback.

    A second Ctrl-C while uvicorn waits for requests to finish forces it out at once, without telling the
    app to shut down; the event loop then cancels the lifespan still waiting to be told, and Starlette
    reports that as a failed shutdown with the traceback. The stop goes on as it should (the gateway
    stops, the pending uses are written, the store closed). A shutdown that fails once asked still says why.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass everything on; report a lifespan cancelled before any shutdown was asked in one line."""
        if scope["type"] != "lifespan":
            await self._app(scope, receive, send)
            return
        asked = False

        async def receiving() -> Message:
            nonlocal asked
            message = await receive()
            asked = asked or message["type"] == "lifespan.shutdown"
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.failed" and not asked:
                logger.info("forced to stop at once: the application's shutdown was skipped")
                message = {**message, "message": ""}  # uvicorn logs a failure's message, when it has one
            await send(message)

        await self._app(scope, receiving, sending)


# The exit status of a serve that could not start listening (a port in use), as the README says.
COULD_NOT_LISTEN = 3


@contextmanager
def listening(settings: Settings) -> Iterator[list[socket.socket]]:
    """The sockets ``serve_http`` serves on, listening at the configured host and port; closed at the end.

    Taken before the start makes what it shows only once (the first API token): a start that then could
    not listen left that token valid, unseen by the next start, on a free port, which made none.

    Raises:
        SystemExit: ``COULD_NOT_LISTEN``, the reason logged in one line.

    """
    from mcp_secrets.http_connections import descriptor_bounds  # noqa: PLC0415 - it loads uvicorn

    try:
        sockets = listening_sockets(settings.host, settings.port, descriptor_bounds()[1])
    except OSError as exc:  # a port in use, an address not this machine's, a host name not found
        reason = exc.strerror or str(exc)
        hint = " (choose another port: --port)" if exc.errno == errno.EADDRINUSE else ""
        _could_not_listen(settings, f"{reason[:1].lower()}{reason[1:]}{hint}")
    except UnicodeError:  # a name IDNA cannot encode (a label over 63 characters), refused before any lookup
        _could_not_listen(settings, "the host name is not a valid one (a part over 63 characters, or empty)")
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _could_not_listen(settings: Settings, reason: str) -> NoReturn:
    logger.error("could not serve on %s port %d: %s", settings.host, settings.port, reason)
    # The README's code, whichever uvicorn: releases before 0.50 exit 1 at a failed start, later ones 3.
    raise SystemExit(COULD_NOT_LISTEN) from None


async def serve_http(app: ASGIApp, settings: Settings, sockets: list[socket.socket]) -> bool:
    """Run ``app`` with uvicorn on ``sockets``, logging through our logs; return whether Ctrl-C stopped it."""
    import uvicorn  # noqa: PLC0415 - stdio never needs it

    from mcp_secrets.http_connections import descriptor_bounds, guarded_protocol  # noqa: PLC0415

    max_connections, backlog = descriptor_bounds()
    config = uvicorn.Config(
        QuietLifespanCut(app),
        host=settings.host,
        port=settings.port,
        # Uvicorn's h11 protocol, with a bound on how long a request takes to arrive and on open connections.
        http=guarded_protocol(settings.request_timeout_seconds, max_connections),
        backlog=backlog,
        log_config=None,
        # Never below INFO: uvicorn's lower levels dump ASGI messages, request bodies included.
        log_level="info" if settings.log_level == "DEBUG" else settings.log_level.lower(),
        access_log=True,
        # Uvicorn would take the client's address (and scheme) from X-Forwarded-For (and -Proto) of any
        # request from 127.0.0.1: a proxy there passes on what its clients send, and a local client sends
        # what it likes. The access log names the address that connected.
        proxy_headers=False,
        server_header=False,
        lifespan="on",
        # A request_secret can wait minutes for its entry page: without a bound, a stop would wait for
        # it, outlast the supervisor's patience (docker stop: 10 s) and end in SIGKILL, before the
        # pending uses are written and the gateway's downstream servers stopped.
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    # Uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found.
    # Python's default handler would end the process right there, before the gateway stops and the
    # service writes its pending uses and closes the store; a no-op one lets serve() return instead.
    # (Signal handlers belong to the main thread; elsewhere uvicorn leaves signals alone too.)
    server = uvicorn.Server(config)
    interrupted = threading.Event()

    def ctrl_c(_number: int, frame: FrameType | None) -> None:
        # Raised again by uvicorn once it has shut down, into the handler it found: Python's own, or
        # none at all when the process started with SIGINT ignored (a script's `serve &`), since uvicorn
        # stops on it all the same. Either way the caller is told, and exits as Ctrl-C does (130).
        interrupted.set()
        if not server.should_exit:  # come before uvicorn took SIGINT over: it stops as soon as it starts
            server.handle_exit(signal.SIGINT, frame)

    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, ctrl_c)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _stop_requested)
        if sys.platform != "win32":
            # A closed terminal sends SIGHUP, which uvicorn leaves to Python's default: the process would
            # end at once, its pending uses unwritten and the gateway's downstream servers (in sessions
            # of their own, out of the hangup's reach) left running. It stops as for SIGTERM instead.
            previous[signal.SIGHUP] = signal.signal(
                signal.SIGHUP, lambda _number, frame: server.handle_exit(signal.SIGTERM, frame)
            )
    # Uvicorn says where it listens only of the sockets it binds itself.
    logger.info("listening on %s (Press CTRL+C to quit)", named(sockets))
    try:
        await server.serve(sockets=sockets)
    except SystemExit:  # uvicorn's own way out of a failed start (the app's), having logged the cause
        if not server.started:
            _could_not_listen(settings, "see the error above")
        raise
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return interrupted.is_set()


def _stop_requested(number: int, frame: object) -> None:
    """SIGTERM once uvicorn has shut down: nothing left to do here; ``serve_http`` returns and cleans up."""
