"""Logging to stderr (stdout is the stdio protocol's channel), with payload-carrying logs kept off."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

# These libraries log raw JSON-RPC messages or request bodies at DEBUG, and a
# set_secret request carries a value: they never log below INFO, whatever our level.
# ("client" is the SDK's client session's: at DEBUG it logs the method of each notification it drops.)
PAYLOAD_LOGGERS = (
    "mcp",
    "mcp_types",
    "client",
    "httpcore",
    "httpcore2",
    "sse_starlette",
    "uvicorn",
    "starlette",
    # The MongoDB driver logs each command and reply whole: a secret's ciphertext, a token's or link's hash.
    # Its other loggers (topology, server selection, connections) quote no document and keep DEBUG.
    "pymongo.command",
)
# HTTP clients log each request's URL at INFO, and a gateway URL may carry an injected secret.
URL_LOGGERS = ("httpx", "httpx2")
# The SDK's HTTP client transports warn of a redirect they do not follow by its URL, whose path may hold
# a gateway secret (some services put a key there); the gateway logs such a failure itself, redacted.
CLIENT_TRANSPORT_LOGGERS = ("mcp.client.streamable_http", "mcp.client.sse")
# Times in UTC (RFC 3339), as the store keeps them: in local time, a line would not say its zone, and the hour
# a daylight saving change repeats would repeat in the log.
FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def _any_spelling(path: str) -> str:
    """A pattern of ``path`` as a request may spell it and the access log quotes it.

    Any character as its %XX escape (Starlette routes on the path decoded), in any case, and between
    segments any run of slashes and "." segments: a link's token must stay out of the log whichever
    spelling opened the page, or failed to. A match starts only where such a run starts: tried at each
    slash of a long run, each try would read the rest of it, and a path of slashes would take time
    growing with its square (anyone can send one, and the filter runs on the event loop).
    """
    run_inside = ("/", "%2f", "/.", "%2f.", "/%2e", "%2f%2e")  # what precedes a slash inside a run
    starts_a_run = "".join(f"(?<!{re.escape(before)})" for before in run_inside)
    slash = starts_a_run + r"(?:/|%2f)(?:(?:\.|%2e)?(?:/|%2f))*"
    segments = [
        "".join(f"(?:{re.escape(char)}|%{ord(char):02x})" for char in segment) for segment in path.split("/")
    ]
    return slash.join(segments)


# All that follows an entry link's path, its query too: the page never uses one, so one can only hold
# a value sent there by mistake (HTTPie's `value==…`, `curl -G`), quotes and all.
_ENTRY_TOKEN = re.compile(rf"({_any_spelling('/secrets/entry/')})\S+", re.IGNORECASE)
# The REST API's write takes its value in the body and never reads a query: one there is a value too.
_SET_QUERY = re.compile(rf"({_any_spelling('/secrets/set')}(?:/|%2f)?\?)\S+", re.IGNORECASE)
# The listing reads only ?server=, a name: any other query (?value=…, a parameter named by a value, a server
# that is no name) may hold a value, which its 400 names only when it reads as a name.
_LIST_QUERY = re.compile(
    rf"({_any_spelling('/secrets')}(?:/|%2f)?\?)(?!server=[A-Za-z0-9_.\-]{{0,128}}(?:\s|$))\S+", re.IGNORECASE
)
# A client that puts its bearer token in the URL (?access_token=…) is refused, but the access log quotes
# the URL: an API token keeps its public id there, a JWT nothing.
# A URL may carry any of a token's characters as its %XX escape (mcps%5F…, a JWT's dots as %2E).
# The escapes of "-", digits, letters and "_": those of a token's characters.
_ESCAPED_TOKEN_CHAR = r"%(?:2[Dd]|3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff])"  # noqa: S105 - a pattern
_TOKEN_CHAR = rf"(?:[A-Za-z0-9_-]|{_ESCAPED_TOKEN_CHAR})"
_UNDERSCORE = r"(?:_|%5[Ff])"
_DOT = r"(?:\.|%2[Ee])"
_API_TOKEN = re.compile(rf"(mcps{_UNDERSCORE}[0-9a-f]+{_UNDERSCORE}){_TOKEN_CHAR}+")
# Only where a run of token characters starts, after a character or the escape of one that cannot be in a
# token (Bearer%20eyJ…, %3DeyJ…): tried at each "eyJ" of a long run without dots, each try would read the
# rest of it, in time growing with the square of the run (the access log quotes any path).
_SEPARATOR_ESCAPE = r"%(?:[01][0-9A-Fa-f]|2[0-9A-Ca-cFf]|3[A-Fa-f]|40|5[B-Eb-e]|60|7[B-Fb-f])"
_JWT = re.compile(
    rf"(?:(?<![A-Za-z0-9_-])|(?<={_SEPARATOR_ESCAPE}))eyJ{_TOKEN_CHAR}*{_DOT}{_TOKEN_CHAR}*{_DOT}{_TOKEN_CHAR}*"
)


# The SDK's client side, which the gateway's connections to downstream servers run on, logs what a
# downstream sent: a tool's name and header (the session's logger is named "client"), a content type, an
# SSE endpoint, a notification's method. A downstream holds its user's secrets and may put one there.
_DOWNSTREAM_TEXT_LOGGER = re.compile(r"client|mcp\.client(?:\..*)?")
WITHHELD = "…"

# What a client's hang-up before its body was read is logged as, wherever it is caught.
CLIENT_WENT_AWAY = "a client went away before its request body was read"
# Starlette's exception for it, named rather than imported: only serve loads Starlette.
_CLIENT_DISCONNECT = ("starlette.requests", "ClientDisconnect")


def _redacted(text: str) -> str:
    text = _LIST_QUERY.sub(r"\1…", _SET_QUERY.sub(r"\1…", _ENTRY_TOKEN.sub(r"\1…", text)))
    return _JWT.sub("…", _API_TOKEN.sub(r"\1…", text))


def redact_tokens(record: logging.LogRecord) -> bool:
    """Replace entry-link tokens and bearer tokens in a log record (uvicorn's access log quotes URLs)."""
    if isinstance(record.msg, str):
        record.msg = _redacted(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redacted(arg) if isinstance(arg, str) else arg for arg in record.args)
    return True


def withhold_downstream_text(record: logging.LogRecord) -> bool:
    """Log a record of the SDK's client side in its own words only, withholding what it quotes.

    Its arguments are withheld, numbers aside. Of a message without them, formatted in advance (an
    f-string, which may quote anywhere: "Tool {name} not listed…", "Redirect to {url} not followed: …"),
    only its longest start of whole words that its module's source holds is kept: a constant is kept
    whole, and what the SDK filled in is cut at its first word. The gateway reports a downstream's failure
    itself, redacted.
    """
    if not _DOWNSTREAM_TEXT_LOGGER.fullmatch(record.name):
        return True
    if isinstance(record.args, Mapping) and "%(" in str(record.msg):  # its keys are the SDK's own
        record.args = {name: _withheld(arg) for name, arg in record.args.items()}
    elif isinstance(record.args, Mapping):  # one mapping, formatted whole by "%s"
        record.args = (WITHHELD,)
    elif record.args:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        record.args = tuple(_withheld(arg) for arg in args)
    elif isinstance(record.msg, str):
        record.msg = _in_its_own_words(record.msg, _source_of(record.pathname))
    else:
        record.msg = WITHHELD
    return True


def _in_its_own_words(message: str, source: str) -> str:
    """``message`` cut after its longest start of whole words that ``source`` holds, "…" for the rest."""
    words = message.split(" ")
    kept = 0
    while kept < len(words) and " ".join(words[: kept + 1]) in source:
        kept += 1
    if kept == len(words):
        return message
    return " ".join([*words[:kept], WITHHELD])


def _withheld(arg: object) -> object:
    return arg if isinstance(arg, int | float) else WITHHELD


@functools.lru_cache(maxsize=64)
def _source_of(path: str) -> str:
    """The text of the module at ``path``, read once; empty when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def quiet_client_hang_ups(record: logging.LogRecord) -> bool:
    """Log a client's hang-up mid-body as one INFO line, as our routes do, not as an error with a traceback.

    The SDK catches it on its MCP endpoint and logs it as an error, but anyone can send half a body and
    go: that is nothing for an operator to act on.
    """
    exc_type = record.exc_info[0] if record.exc_info else None
    if exc_type is None or (exc_type.__module__, exc_type.__qualname__) != _CLIENT_DISCONNECT:
        return True
    if not logging.getLogger(record.name).isEnabledFor(logging.INFO):
        return False
    record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
    record.msg, record.args, record.exc_info, record.exc_text = CLIENT_WENT_AWAY, (), None, None
    return True


_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's words
ACCEPT_FAILURE_SECONDS = 60.0  # at most one line this often


class _AcceptFailures:
    """When the last failed ``accept()`` was logged, and how many have been withheld since."""

    logged_at = -ACCEPT_FAILURE_SECONDS
    withheld = 0


def quiet_accept_failures(record: logging.LogRecord) -> bool:
    """Log asyncio's failed ``accept()`` (the descriptors ran out) once a minute, as one line.

    Asyncio logs it with a traceback once per connection waiting: thousands of records a second, for as
    long as the descriptors stay taken. One line says it all, with how many were left out.
    """
    if record.name != "asyncio" or not str(record.msg).startswith(_ACCEPT_FAILED):
        return True
    now = time.monotonic()
    if now - _AcceptFailures.logged_at < ACCEPT_FAILURE_SECONDS:
        _AcceptFailures.withheld += 1
        return False
    fault = record.exc_info[1] if record.exc_info else None
    reason = os.strerror(fault.errno) if isinstance(fault, OSError) and fault.errno else "out of resources"
    record.msg = "new connections wait: accept() failed (%s); logged at most once a minute"
    record.args = (reason,)
    if _AcceptFailures.withheld:
        record.msg += ", %d times not logged since the last line"
        record.args = (reason, _AcceptFailures.withheld)
    record.exc_info, record.exc_text = None, None
    _AcceptFailures.logged_at, _AcceptFailures.withheld = now, 0
    return True


def keep_library_exceptions_to_their_frames(record: logging.LogRecord) -> bool:
    """Log a library's exception by its frames and type, not its message.

    A library's exception may quote the data it failed on: pydantic's ``input_value`` holds the
    line a downstream server printed, or the body a client sent, and either can carry a secret.
    Our own exceptions name fields, never values, and keep their messages.
    """
    if record.exc_info and record.exc_info[0] is not None and not record.name.startswith("mcp_secrets"):
        exc_type, _, frames = record.exc_info
        record.exc_text = "".join(
            [
                "Traceback (most recent call last):\n",
                *traceback.format_tb(frames),
                f"{exc_type.__module__}.{exc_type.__qualname__}: (message not logged: it may quote data)",
            ]
        )
        record.exc_info = None
    return True


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr at ``level``; third-party payload loggers stay at INFO or above."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(redact_tokens)
    handler.addFilter(withhold_downstream_text)
    handler.addFilter(quiet_client_hang_ups)
    handler.addFilter(quiet_accept_failures)
    handler.addFilter(keep_library_exceptions_to_their_frames)
    root.addHandler(handler)
    root.setLevel(level)
    floor = max(logging.INFO, logging.getLevelName(level))
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(floor)
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, floor))
    for name in CLIENT_TRANSPORT_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.ERROR, floor))


def say(message: str = "", *, end: str = "\n") -> None:
    """A message for the person at the terminal: on stderr, as logs are; stdout is for what scripts read.

    A stderr there is no writing to drops the message, and what the command does goes on: closed at
    start (``2>&-``, where ``print`` would fall back to stdout, a script's or the stdio protocol's), a
    reader gone (``2>&1 | head``), a full disk. A rotation stopped by its progress bar had re-encrypted
    one batch, and said nothing of why.
    """
    stream = sys.stderr
    if stream is None:
        return
    # Dropped, not redirected: a full disk may free up, and the log lines of `serve` go on to stderr.
    with contextlib.suppress(OSError, ValueError):  # ValueError: a stream closed in this process
        print(message, end=end, file=stream)


def stderr_is_a_terminal() -> bool:
    """Whether stderr is a terminal, so that a line may be redrawn in place; False when there is none."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (OSError, ValueError):
        return False
