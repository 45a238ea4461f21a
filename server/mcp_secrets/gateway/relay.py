"""What a downstream sends during a call, relayed to that call's client: redacted, and bounded.

A downstream may send log messages and progress without end during a call. Each one relayed costs a
redaction and a message to the client, so a call relays a burst of them at once and then a few a second:
a long task still keeps its client informed, and a flood reaches it as a trickle. A message too long
to redact at little cost is withheld whole, and its client told so in its place.

``downstream_callbacks`` are a downstream client's callbacks, and ``relaying`` points them, for the length
of one call, at that call's client: its logs and progress here, its questions through ``asking``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, get_args

import anyio
from mcp.client.session import ClientRequestContext, ElicitationFnT, IncomingMessage, LoggingFnT
from mcp.server.mcpserver import Context
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import (
    INVALID_REQUEST,
    ElicitCompleteNotification,
    ElicitRequestParams,
    ElicitResult,
    ErrorData,
    LoggingLevel,
    LoggingMessageNotificationParams,
    ToolListChangedNotification,
)

from mcp_secrets.gateway.asking import completion_forwarder, elicitation_forwarder
from mcp_secrets.gateway.pool import Connection
from mcp_secrets.gateway.redact import REDACT_INLINE_CHARS, Redactor, chars_up_to

logger = logging.getLogger(__name__)

# A call's log messages relayed at once, then each second: past them, the rest are dropped and the client
# is told how many at the end of the call (nothing of what they said).
LOG_MESSAGES_AT_ONCE = 100
LOG_MESSAGES_PER_SECOND = 10.0
# Progress only says how far a call got, and a client shows the latest: the ones in between may go, but
# the furthest one is relayed before the result. Some clients take progress as a sign of life that
# extends a call's timeout, so it keeps coming, a few a second, through a long call.
PROGRESS_AT_ONCE = 20
PROGRESS_PER_SECOND = 4.0
# Characters of a log message's data and logger name (as chars_up_to counts them) past which it is withheld
# unredacted, a notice relayed in its place. Text dense with HTML character references takes about 0.4 µs
# a character to redact (measured: 7 s for one of 16 MiB); at this bound, under 10 ms, and a hundred at once
# under a second. Cut instead, a message could show part of a value at the cut, where no spelling matched.
LOG_MESSAGE_CHARS = 16 * 1024
# A progress message is redacted inline, to keep progress in order: past what is redacted inline, the same.
PROGRESS_MESSAGE_CHARS = REDACT_INLINE_CHARS
# Where a connection keeps the level its client set with logging/setLevel (the handshake protocols;
# from 2026-07-28 each request asks for its own, and the SDK drops what is below it).
LOG_LEVEL_STATE = "mcp_secrets.log_level"
LOG_LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)  # least severe first
# The logger name of the gateway's own word to a client about its call.
GATEWAY_LOGGER = "mcp-secrets"


def set_log_level(session: ServerSession, level: LoggingLevel) -> None:
    """Relay the downstreams' log messages on ``session``'s connection from ``level`` up."""
    # The SDK's per-connection state has no public way in from a request's session.
    session._connection.state[LOG_LEVEL_STATE] = level  # noqa: SLF001


class Allowance:
    """Lets ``at_once`` events through at once, then ``per_second`` more each second (of ``clock``)."""

    def __init__(
        self, at_once: int, per_second: float, clock: Callable[[], float] = anyio.current_time
    ) -> None:
        self._at_once = at_once
        self._per_second = per_second
        self._clock = clock
        self._left = float(at_once)
        self._since = clock()

    def take(self) -> bool:
        """True when one more event may go through now."""
        now = self._clock()
        self._left = min(self._at_once, self._left + (now - self._since) * self._per_second)
        self._since = now
        if self._left < 1:
            return False
        self._left -= 1
        return True


class CallRelay:
    """One call's log messages and progress, relayed to its client redacted, within the bounds above."""

    def __init__(self, ctx: Context[Any, Any], redactor: Redactor, server: str) -> None:
        self._ctx = ctx
        self._redactor = redactor
        self._server = server
        self._session = ctx.request_context.session
        self._logs = Allowance(LOG_MESSAGES_AT_ONCE, LOG_MESSAGES_PER_SECOND)
        self._progress = Allowance(PROGRESS_AT_ONCE, PROGRESS_PER_SECOND)
        self._dropped_logs = 0
        self._withheld_logs = 0
        self._furthest = -math.inf
        self._held_back: tuple[float, float | None, str | None] | None = None
        self._finished = False
        # Log messages taken and not yet sent (one redacted in a worker thread may take a while).
        self._sending = 0
        self._all_sent = anyio.Event()

    async def log(self, params: LoggingMessageNotificationParams) -> None:
        """Relay a downstream's log message, unless it is below the client's level or past the bound."""
        if self._finished or not self._wanted(params.level):
            return
        if not self._logs.take():
            self._dropped_logs += 1  # dropped before it is redacted: a flood costs a count, not a redaction
            return
        self._sending += 1
        try:
            chars = chars_up_to((params.data, params.logger), LOG_MESSAGE_CHARS)
            if chars > LOG_MESSAGE_CHARS:
                self._withheld_logs += 1
                data, logger_name = self._withheld_log(params.logger)
            elif chars <= self._redactor.inline_chars:
                data, logger_name = self._redacted_log(params)
            else:  # up to a hundred at once: other users' calls go on meanwhile
                data, logger_name = await anyio.to_thread.run_sync(self._redacted_log, params)
            await self._send_log(params.level, data, logger_name)
        finally:
            self._sending -= 1
            if not self._sending:
                self._all_sent.set()

    def _redacted_log(self, params: LoggingMessageNotificationParams) -> tuple[Any, str | None]:
        logger_name = self._redactor.text(params.logger) if params.logger is not None else None
        return self._redactor.data(params.data), logger_name

    def _withheld_log(self, logger_name: str | None) -> tuple[str, str | None]:
        """The notice relayed in place of a log message over the bound, with its logger name redacted."""
        if logger_name is not None:  # a name too long to redact inline is what is over the bound
            too_long = len(logger_name) > self._redactor.inline_chars
            logger_name = GATEWAY_LOGGER if too_long else self._redactor.text(logger_name)
        return self._withheld("log message", LOG_MESSAGE_CHARS), logger_name

    def _withheld(self, what: str, limit: int) -> str:
        return (
            f"a {what} of downstream server {self._server} was withheld: it holds over {limit} characters, "
            "the most the gateway relays in one"
        )

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Relay a downstream's progress when it moved on, unless past the bound (then it is held back)."""
        if self._finished or progress <= self._furthest:
            return  # progress must grow: one that does not says nothing new
        # A numeric value (an account id) may come back as a number. Any other number in its place would
        # mislead the client, so a progress that spells one is dropped: the next one moves its view on.
        # A total that does becomes none: the client shows progress of an unknown total, as a downstream
        # that gives none has it do.
        if self._spells_a_value(progress):
            return
        if total is not None and self._spells_a_value(total):
            total = None
        limit = min(PROGRESS_MESSAGE_CHARS, self._redactor.inline_chars)  # less for values of many spellings
        if message is not None and len(message) > limit:
            message = self._withheld("progress message", limit)
        self._furthest = progress
        if not self._progress.take():
            self._held_back = (progress, total, message)
            return
        self._held_back = None
        await self._send_progress(progress, total, message)

    async def finish(self) -> None:
        """Relay what was taken or held back, and say how many log messages went untold; then no more.

        Never raises for a message its client did not take: the call's own result or error comes next,
        and must not be replaced by the failure to send what came before it (its client may have gone).
        """
        self._finished = True
        # Sent before the call's result, as the downstream sent them; none is taken from now on.
        while self._sending:
            self._all_sent = anyio.Event()
            await self._all_sent.wait()
        held_back, self._held_back = self._held_back, None
        if held_back is not None:
            await _unless_gone(self._send_progress(*held_back))
        rate = f"a call relays {LOG_MESSAGES_AT_ONCE} at once, then {LOG_MESSAGES_PER_SECOND:g} a second"
        untold = [
            f"{count} log messages of downstream server {self._server} were {what}"
            for count, what in (
                (self._dropped_logs, f"dropped: {rate}"),
                (self._withheld_logs, f"withheld: each held over {LOG_MESSAGE_CHARS} characters"),
            )
            if count
        ]
        if untold and self._wanted("warning"):
            await _unless_gone(self._send_log("warning", "; ".join(untold), GATEWAY_LOGGER))

    def _spells_a_value(self, number: float) -> bool:
        """True when ``number`` as a client reads it holds an injected value, as ``Redactor.data`` checks."""
        spelled = {str(number)}
        if float(number).is_integer():  # past 1e16 a float prints as 1.2e+18, which a client reads whole
            spelled.add(f"{number:.0f}")
        return any(self._redactor.text(text) != text for text in spelled)

    def _wanted(self, level: LoggingLevel) -> bool:
        """True when the client takes a message at ``level``: its level or above, opted in on 2026-07-28."""
        state = self._session._connection.state  # noqa: SLF001 - as in set_log_level
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(state.get(LOG_LEVEL_STATE, LOG_LEVELS[0])):
            return False
        # The SDK would drop it unsent; the check costs less than redacting it first.
        return level in self._session._allowed_log_levels  # noqa: SLF001

    async def _send_log(self, level: LoggingLevel, data: object, logger_name: str | None) -> None:
        with warnings.catch_warnings():
            # Logging is deprecated as of 2026-07-28 but clients still use it: relay it quietly.
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await self._ctx.log(level, data, logger_name=logger_name)

    async def _send_progress(self, progress: float, total: float | None, message: str | None) -> None:
        shown = self._redactor.text(message) if message is not None else None
        await self._ctx.report_progress(progress, total, shown)


async def _unless_gone(send: Awaitable[None]) -> None:
    """Await ``send``, a message to a call's client; a failure is logged (by type only, never by text)."""
    try:
        await send
    except Exception as exc:  # noqa: BLE001 - a send error's text could quote what it sent
        logger.debug("a message to a call's client was not sent: %s", type(exc).__name__)


def downstream_callbacks(holder: dict[str, Connection], tools_changed: Callable[[], None]) -> dict[str, Any]:
    """A downstream client's callbacks: each hands what the downstream sends to the call it is for.

    Word that its tools changed is for its user's clients, whichever call, if any, is running.
    """

    async def relay_log(params: LoggingMessageNotificationParams) -> None:
        connection = holder.get("connection")
        if connection is not None and connection.on_log is not None:
            await connection.on_log(params)

    async def relay_elicitation(
        context: ClientRequestContext,  # noqa: ARG001 - the SDK's callback signature, by name
        params: ElicitRequestParams,
    ) -> ElicitResult | ErrorData:
        connection = holder.get("connection")
        if connection is None or connection.on_elicit is None:
            # Between calls (or in a listing) there is no user's client to ask.
            return ErrorData(code=INVALID_REQUEST, message="no call is running to ask the user for")
        answer: ElicitResult | ErrorData = await connection.on_elicit(params)
        return answer

    async def relay_notice(message: IncomingMessage) -> None:
        if isinstance(message, ToolListChangedNotification):  # on the session, or on a listen stream
            tools_changed()
            return
        connection = holder.get("connection")
        if (
            isinstance(message, ElicitCompleteNotification)
            and connection is not None
            and connection.on_elicit_complete is not None
        ):
            await connection.on_elicit_complete(message.params.elicitation_id)

    relay_elicitation_fn: ElicitationFnT = relay_elicitation
    relay_log_fn: LoggingFnT = relay_log
    return {
        "logging_callback": relay_log_fn,
        "log_level": "debug",
        "elicitation_callback": relay_elicitation_fn,
        "message_handler": relay_notice,
    }


@asynccontextmanager
async def relaying(
    connection: Connection, ctx: Context[Any, Any] | None, redactor: Redactor, server: str
) -> AsyncIterator[CallRelay | None]:
    """While inside, what ``connection``'s downstream sends goes to the client of ``ctx``'s call, if any.

    At the end, the call's client is sent what its relay held back, before its result or error.
    """
    relay = CallRelay(ctx, redactor, server) if ctx is not None else None
    connection.on_log = relay.log if relay is not None else None
    connection.on_elicit = elicitation_forwarder(ctx, redactor, server)
    connection.on_elicit_complete = completion_forwarder(ctx, redactor)
    try:
        try:
            yield relay
        except Exception:
            if relay is not None:  # a failed call's client is told too; a cancelled one is gone
                await relay.finish()
            raise
        if relay is not None:
            await relay.finish()
    finally:
        connection.on_log = connection.on_elicit = connection.on_elicit_complete = None
