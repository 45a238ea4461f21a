"""The ``serve`` command's work: the MCP server over the store, run until its client or a signal stops it.

Only ``serve`` imports this module. The SDK and the web stack it needs take most of
a start (about 0.6 s here), and every other command runs without loading them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import anyio
from anyio.abc import TaskStatus
from starlette.types import ASGIApp

from mcp_secrets import __version__
from mcp_secrets.app import EntrySettings, build_server, missing_secrets_hint
from mcp_secrets.bootstrap import MasterKeys, describe_store
from mcp_secrets.config import Settings, StoreLocation
from mcp_secrets.entry import EntryLinks
from mcp_secrets.errors import EXIT_ERROR
from mcp_secrets.gateway import Gateway, load_gateway_config
from mcp_secrets.gateway.config import warn_of_other_writers
from mcp_secrets.gateway.pool import DownstreamPool
from mcp_secrets.identity import BearerIdentity, LocalIdentity
from mcp_secrets.local_user import local_username
from mcp_secrets.logs import say
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import SecretStore
from mcp_secrets.tokens import ApiTokens, NewToken
from mcp_secrets.web import (
    auth_settings,
    base_url,
    check_http_settings,
    endpoint_url,
    http_app,
    listening,
    serve_http,
    token_verifier,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

GATEWAY_STOP_SECONDS = 10.0  # the SDK closes a downstream in stages: EOF, then SIGTERM, then SIGKILL


def desktop_config(url: str, token: str) -> dict[str, object]:
    """A Claude Desktop entry running the mcp-remote bridge to ``url`` with ``token``.

    The token goes in the bridge's environment, which mcp-remote substitutes into the header: in its
    arguments every user of the machine could read it (``ps``). No space around the ``:``, for clients
    that split arguments on spaces (Claude Desktop on Windows).
    """
    return {
        "mcpServers": {
            "mcp-secrets": {
                "command": "npx",
                "args": ["-y", "mcp-remote", url, "--header", "Authorization:${AUTH_HEADER}"],
                "env": {"AUTH_HEADER": f"Bearer {token}"},
            }
        }
    }


def _print_first_token(new: NewToken, settings: Settings) -> None:
    url = endpoint_url(settings)
    transport = "SSE" if settings.transport == "sse" else "Streamable HTTP"
    desktop = desktop_config(url, new.token)
    say(
        f"""
No API token existed yet, so one was created for {new.record.username} (id {new.record.token_id}).
It is shown only this once; `mcp-secrets token create USERNAME` makes more, `token revoke ID` ends one.

    {new.token}

MCP Inspector (npx @modelcontextprotocol/inspector): transport {transport}, URL {url},
    header  Authorization: Bearer {new.token}

Claude Desktop (claude_desktop_config.json), through the mcp-remote bridge:
{json.dumps(desktop, indent=2)}
"""
    )


def _summary(settings: Settings, keys: MasterKeys, username: str | None, gateway: Gateway | None) -> None:
    where = "" if settings.transport == "stdio" else f" at {endpoint_url(settings)}"
    mode = " (stateless)" if settings.stateless_http and settings.transport == "streamable-http" else ""
    say(f"mcp-secrets {__version__}: serving {settings.transport}{mode}{where}")
    say(f"  store:      {describe_store(settings)}")
    say(f"  master key: {keys.source}")
    if username is not None:
        say(f"  user:       {username}")
    else:
        verifiers = "API tokens" + (f" and JWTs from {settings.issuer}" if settings.jwks_url else "")
        say(
            f"  auth:       bearer {verifiers} (a token is shown once, when made: `mcp-secrets token create`)"
        )
        everywhere = settings.host in ("0.0.0.0", "::", "")  # noqa: S104 - naming the wildcard, not binding it
        if everywhere and not (settings.public_url or settings.allowed_hosts):
            say(
                "  note:       listening on every interface, but requests must name this machine as "
                "localhost or 127.0.0.1 (DNS-rebinding protection): set --public-url, or "
                "MCP_SECRETS_ALLOWED_HOSTS, to the address other machines use"
            )
    if gateway is not None:
        say(f"  gateway:    {', '.join(gateway.config.servers) or 'no servers'} from {gateway.config.path}")


def check_settings(settings: Settings) -> None:
    """Refuse the settings this start would stop on, before it makes anything: a store, a master key file.

    A refused start is corrected and run again; a key file made by it would be announced as the one to
    back up, by a start that served nothing.
    """
    if settings.transport == "stdio":
        local_username(settings.user)
    else:
        check_http_settings(settings)
    if settings.servers is not None:
        load_gateway_config(settings.servers)


def run_server(
    settings: Settings, store: SecretStore, secrets: Secrets, keys: MasterKeys, close: Callable[[], None]
) -> None:
    """Serve MCP on the configured transport until the client or a signal ends it.

    On stdio, ``close`` (which writes what is pending and closes the store) runs before the process
    exits; a signal there ends the process at once, without returning here.
    """
    if settings.transport == "stdio":
        username = local_username(settings.user)
        gateway = _gateway(settings, secrets, None)
        mcp = build_server(
            secrets,
            LocalIdentity(username),
            gateway=gateway,
            transport="stdio",
            log_level=settings.log_level,
            listen_streams_per_user=settings.max_listen_streams_per_user,
            store_settings=_terminal_location(settings),
        )
        _summary(settings, keys, username, gateway)
        anyio.run(_serve_stdio, mcp.run_stdio_async, gateway, close)
        return
    tokens = ApiTokens(store)
    links = EntryLinks(secrets, ttl=timedelta(minutes=settings.entry_link_minutes))
    entry = EntrySettings(links=links, base_url=base_url(settings), wait_seconds=settings.entry_wait_seconds)
    gateway = _gateway(settings, secrets, entry)
    mcp = build_server(
        secrets,
        BearerIdentity(),
        token_verifier=token_verifier(settings, tokens),
        auth=auth_settings(settings),
        entry=entry,
        gateway=gateway,
        transport=settings.transport,
        log_level=settings.log_level,
        listen_streams_per_user=settings.max_listen_streams_per_user,
    )
    app = http_app(mcp, settings, secrets, links)
    _summary(settings, keys, None, gateway)
    with listening(settings) as sockets:  # the port held before the token only this start will show
        if not settings.jwks_url:
            # Recorded as made by this server, over its transport: no command made it.
            first = ApiTokens(store, via=settings.transport).create_first(
                local_username(settings.user), label="first run"
            )
            if first is not None:
                _print_first_token(first, settings)
        interrupted = _serve(app, settings, sockets, gateway)
    if interrupted:  # stopped cleanly, all written and closed: the exit status a shell expects of Ctrl-C
        raise KeyboardInterrupt


def _serve(app: ASGIApp, settings: Settings, sockets: list[socket.socket], gateway: Gateway | None) -> bool:
    """Serve ``app`` on ``sockets`` with the gateway running; say whether Ctrl-C stopped it."""
    try:
        return anyio.run(_with_gateway, gateway, lambda: serve_http(app, settings, sockets))
    except asyncio.CancelledError:
        # Ctrl-C before uvicorn started, on Python 3.10: anyio's runner reports it as the main task
        # cancelled (3.11 tasks can tell it apart and raise KeyboardInterrupt). Exit as Ctrl-C does.
        raise KeyboardInterrupt from None


def _gateway(settings: Settings, secrets: Secrets, entry: EntrySettings | None) -> Gateway | None:
    """The gateway over the ``--servers`` file, checked now so that a bad file stops the start."""
    if settings.servers is None:
        return None
    pool = DownstreamPool(
        max_live=settings.gateway_max_connections,
        idle_seconds=settings.gateway_idle_seconds,
        start_seconds=settings.gateway_start_seconds,
    )
    config = load_gateway_config(settings.servers)
    warn_of_other_writers(config)  # here, not in check_settings: once a start
    # stdio only, whose client is this machine's user: an HTTP caller has no need to know where the files are.
    hint = missing_secrets_hint(entry, _terminal_location(settings) if entry is None else StoreLocation())
    return Gateway(config, secrets, pool=pool, missing_hint=hint)


def _terminal_location(settings: Settings) -> StoreLocation:
    """What a terminal's ``mcp-secrets set`` needs to reach this server's store: settings, and this program.

    A client config may start the command by its path (``.venv/bin/mcp-secrets``) or as ``python -m
    mcp_secrets``, which a terminal's PATH need not find, or may find as another install: then the command
    is named as it was started.
    """
    location = settings.store_location()
    started = Path(sys.argv[0])
    if started.name == "__main__.py" and started.parent.name == "mcp_secrets":  # python -m mcp_secrets
        # The install's own script sits beside its interpreter: PATH finding that one is as good.
        if _found_on_path(location.program, Path(sys.executable).parent / location.program):
            return location
        return dataclasses.replace(location, program=f"{shlex.quote(sys.executable)} -m mcp_secrets")
    if started.name != location.program:  # a program of its own: no command to give but the usual one
        return location
    if _found_on_path(location.program, started):
        return location
    return dataclasses.replace(location, program=shlex.quote(str(started.absolute())))


def _found_on_path(program: str, expected: Path) -> bool:
    """Whether a terminal's ``program``, as the PATH finds it, is the file ``expected``."""
    found = shutil.which(program)
    try:
        return found is not None and expected.samefile(found)
    except OSError:  # the program moved, or a PATH entry is unreadable: not the same one, as far as known
        return False


@asynccontextmanager
async def _gateway_running(gateway: Gateway | None) -> AsyncIterator[None]:
    """The gateway's downstream pool, running for as long as the server serves (nothing without one)."""
    if gateway is None:
        yield
        return
    async with gateway.running():
        yield


async def _with_gateway(gateway: Gateway | None, serve: Callable[[], Awaitable[T]]) -> T:
    async with _gateway_running(gateway):
        try:
            return await serve()
        except SystemExit as stop:
            # Uvicorn's way out of a failed start (a port in use), logged already: raised inside the
            # gateway's task group, it came out wrapped in an exception group, a traceback.
            failed_start = stop
    raise failed_start


def _client_left(exc: BaseException) -> bool:
    """Whether ``exc`` is only the client's end of stdout closed, alone or in exception groups."""
    if isinstance(exc, BrokenPipeError):
        return True
    inner = getattr(exc, "exceptions", None)  # an exception group, Python 3.10's (anyio's backport) too
    return isinstance(inner, tuple) and bool(inner) and all(_client_left(each) for each in inner)


async def _serve_until_the_client_leaves(serve: Callable[[], Awaitable[None]]) -> None:
    try:
        await serve()
    except Exception as exc:
        if not _client_left(exc):
            raise
        # The client quit or died with an answer still to write: its session is over, as at EOF.
        logger.info("the client closed its end of stdout: stopping")


async def _serve_stdio(
    serve: Callable[[], Awaitable[None]], gateway: Gateway | None, close: Callable[[], None]
) -> None:
    """Serve until the client closes stdin; on SIGTERM, SIGINT or SIGHUP, stop cleanly and exit at once.

    Python's default for SIGTERM and SIGHUP ends the process with no ``finally`` and no ``atexit``,
    losing the uses the background writer still held and leaving the gateway's downstream servers
    running (many ignore EOF on stdin); on SIGINT (Ctrl-C) the server hung. Cancelling the server
    cannot work while the client keeps stdin open: the SDK reads stdin in a worker thread that only
    a line or EOF frees. So on a signal this stops the downstream servers, then ``close`` writes
    what is pending and closes the store, and the process exits. Uvicorn handles these signals on HTTP.
    Once the session has ended, the same stop runs here, and a signal no longer cuts it short.
    """
    if sys.platform == "win32":  # no POSIX signals to receive there
        async with _gateway_running(gateway):
            await _serve_until_the_client_leaves(serve)
        return
    session_ended = False

    async def stop_on_signal(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            task_status.started()  # the handlers are in place before anything is served
            async for number in received:
                if session_ended:
                    # Clients send SIGTERM to a server still there a moment after they closed its stdin
                    # (the SDK's after two seconds): the stop under way must finish, not be cut short.
                    logger.info("%s received: already stopping", signal.Signals(number).name)
                    continue
                logger.info("%s received: stopping", signal.Signals(number).name)
                status = 0
                try:
                    if gateway is not None:
                        with anyio.move_on_after(GATEWAY_STOP_SECONDS):
                            await gateway.stop()
                    await anyio.to_thread.run_sync(close)
                except Exception:  # whatever failed, the process must still end
                    logger.exception("stopping did not finish cleanly")
                    status = EXIT_ERROR
                os._exit(status)

    async with anyio.create_task_group() as group:
        await group.start(stop_on_signal)
        async with _gateway_running(gateway):
            await _serve_until_the_client_leaves(serve)
            session_ended = True
        await anyio.to_thread.run_sync(close)
        group.cancel_scope.cancel()
