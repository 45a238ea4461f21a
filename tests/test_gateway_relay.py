"""How many of a call's log messages and progress the gateway relays (mcp_secrets.gateway.relay)."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest
from mcp.server.mcpserver import Context
from mcp_types import LoggingMessageNotificationParams

from mcp_secrets.gateway.redact import REDACT_INLINE_CHARS, Redactor
from mcp_secrets.gateway.relay import (
    GATEWAY_LOGGER,
    LOG_LEVELS,
    LOG_MESSAGE_CHARS,
    LOG_MESSAGES_AT_ONCE,
    PROGRESS_AT_ONCE,
    PROGRESS_MESSAGE_CHARS,
    Allowance,
    CallRelay,
)


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def taken(allowance: Allowance, tries: int) -> int:
    return sum(allowance.take() for _ in range(tries))


def test_an_allowance_lets_a_burst_through_at_once_and_then_a_steady_rate() -> None:
    clock = Clock()
    allowance = Allowance(5, 2.0, clock)

    at_once = taken(allowance, 100)
    clock.now += 1.0
    a_second_later = taken(allowance, 100)
    clock.now += 0.25
    a_quarter_second_later = taken(allowance, 100)
    clock.now += 3600.0
    an_hour_later = taken(allowance, 100)

    assert (at_once, a_second_later, a_quarter_second_later, an_hour_later) == (5, 2, 0, 5)


class ClientContext:
    """A call's context that keeps what its client is sent; the client takes every level."""

    def __init__(self) -> None:
        connection = SimpleNamespace(state={})
        session = SimpleNamespace(_connection=connection, _allowed_log_levels=set(LOG_LEVELS))
        self.request_context = SimpleNamespace(session=session)
        self.logs: list[tuple[str, object, str | None]] = []
        self.progress: list[tuple[float, float | None, str | None]] = []

    async def log(self, level: str, data: object, *, logger_name: str | None = None) -> None:
        self.logs.append((level, data, logger_name))

    async def report_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, message))

    def shown(self) -> str:
        """All its client read."""
        return json.dumps([self.logs, self.progress])


class GoneClientContext(ClientContext):
    """A call's context whose client has gone: every message to it fails, as the SDK's send does then."""

    def __init__(self) -> None:
        super().__init__()
        self.sends = 0

    async def log(self, *_args: object, **_kwargs: object) -> None:
        self.sends += 1
        raise anyio.BrokenResourceError

    async def report_progress(self, *_args: object) -> None:
        self.sends += 1
        raise anyio.BrokenResourceError


class RedactorSeeing(Redactor):
    """A Redactor that keeps how many characters each text it was given held."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.seen: list[int] = []

    def texts(self, texts: Sequence[str]) -> list[str]:
        self.seen.append(sum(map(len, texts)))
        return super().texts(texts)


def relaying(ctx: ClientContext, redactor: Redactor) -> CallRelay:
    return CallRelay(cast("Context[Any, Any]", ctx), redactor, "github")


@pytest.mark.anyio
async def test_the_last_messages_of_a_call_whose_client_has_gone_do_not_replace_its_outcome() -> None:
    ctx = GoneClientContext()
    relay = relaying(ctx, Redactor({}))
    for step in range(PROGRESS_AT_ONCE + 5):
        with contextlib.suppress(anyio.BrokenResourceError):  # the client went away during the call
            await relay.progress(float(step), None, None)
    for _ in range(LOG_MESSAGES_AT_ONCE + 5):
        with contextlib.suppress(anyio.BrokenResourceError):
            await relay.log(LoggingMessageNotificationParams(level="info", data="working"))
    sends_during_the_call = ctx.sends

    await relay.finish()  # the held-back progress and the dropped-messages warning: both fail to send

    assert ctx.sends == sends_during_the_call + 2


# Dense with HTML character references: the costliest text to redact.
DENSE = "&#1"
WITHHELD_LOG = (
    f"a log message of downstream server github was withheld: it holds over {LOG_MESSAGE_CHARS} characters, "
    "the most the gateway relays in one"
)


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["text", "structured data", "logger name"])
async def test_a_log_message_over_the_bound_is_withheld_unredacted_with_a_notice_in_its_place(
    canary: str, where: str
) -> None:
    ctx = ClientContext()
    redactor = RedactorSeeing({"TOKEN": canary})
    relay = relaying(ctx, redactor)
    dense = DENSE * (LOG_MESSAGE_CHARS // len(DENSE) + 1)
    params = {
        "text": LoggingMessageNotificationParams(level="error", logger="tool", data=f"{canary} {dense}"),
        "structured data": LoggingMessageNotificationParams(
            level="error", logger="tool", data={"token": canary, "lines": [DENSE] * LOG_MESSAGE_CHARS}
        ),
        "logger name": LoggingMessageNotificationParams(level="error", logger=f"{canary}{dense}", data="hi"),
    }[where]

    await relay.log(params)
    await relay.finish()

    shown = ctx.shown()
    leaked = canary in shown  # a bare bool: a failure prints neither the canary nor where it was
    assert not leaked
    # Only its logger name was redacted, if anything: what is withheld costs no redaction.
    assert max(redactor.seen, default=0) <= REDACT_INLINE_CHARS
    # The same level and logger name, but the gateway's own name in place of one too long to show.
    logger_name = GATEWAY_LOGGER if where == "logger name" else "tool"
    notice, summary = ctx.logs
    assert notice == ("error", WITHHELD_LOG, logger_name)
    assert summary[0] == "warning"
    assert "1 log messages of downstream server github were withheld" in str(summary[1])


@pytest.mark.anyio
@pytest.mark.parametrize(("past_the_bound", "withheld"), [(0, False), (1, True)])
async def test_a_log_message_is_relayed_redacted_up_to_the_bound_and_withheld_past_it(
    canary: str, past_the_bound: int, *, withheld: bool
) -> None:
    ctx = ClientContext()
    relay = relaying(ctx, Redactor({"TOKEN": canary}))
    padding = "x" * (LOG_MESSAGE_CHARS - len("tool") - len(canary) + past_the_bound)

    await relay.log(LoggingMessageNotificationParams(level="info", logger="tool", data=canary + padding))

    leaked = canary in ctx.shown()
    assert not leaked
    assert ctx.logs == [("info", WITHHELD_LOG if withheld else f"[redacted TOKEN]{padding}", "tool")]


@pytest.mark.anyio
@pytest.mark.parametrize(("past_the_bound", "withheld"), [(0, False), (1, True)])
async def test_a_progress_message_is_relayed_redacted_up_to_the_bound_and_withheld_past_it(
    canary: str, past_the_bound: int, *, withheld: bool
) -> None:
    ctx = ClientContext()
    redactor = RedactorSeeing({"TOKEN": canary})
    relay = relaying(ctx, redactor)
    padding = DENSE * ((PROGRESS_MESSAGE_CHARS - len(canary)) // len(DENSE))
    padding += "x" * (PROGRESS_MESSAGE_CHARS - len(canary) - len(padding) + past_the_bound)

    await relay.progress(1.0, 2.0, canary + padding)

    notice = (
        f"a progress message of downstream server github was withheld: it holds over "
        f"{PROGRESS_MESSAGE_CHARS} characters, the most the gateway relays in one"
    )
    leaked = canary in ctx.shown()
    assert not leaked
    assert ctx.progress == [(1.0, 2.0, notice if withheld else f"[redacted TOKEN]{padding}")]
    assert max(redactor.seen) <= PROGRESS_MESSAGE_CHARS


def numeric_value(digits: int) -> int:
    """A random value of ``digits`` digits that a float holds exactly (an account id, say)."""
    if digits == 10:
        return 10**9 + secrets.randbelow(9 * 10**9)
    # Past 2**53 a float holds only multiples of a power of two; between 2**60 and 2**61, 19 digits.
    assert digits == 19
    return (2**38 + secrets.randbelow(2**38)) * 2**22


@pytest.mark.anyio
@pytest.mark.parametrize("digits", [10, 19])  # 19: a float prints it as 1.2e+18, the client reads it whole
async def test_a_progress_or_total_equal_to_a_numeric_value_never_reaches_the_client(digits: int) -> None:
    value = numeric_value(digits)
    ctx = ClientContext()
    relay = relaying(ctx, Redactor({"ACCOUNT": str(value)}))

    await relay.progress(1.0, float(value), "started")
    await relay.progress(float(value), None, "almost")
    await relay.progress(2.0 * value, None, "done")  # twice a value never spells it
    await relay.finish()

    assert ctx.progress == [(1.0, None, "started"), (2.0 * value, None, "done")]
    leaked = str(value) in ctx.shown()
    assert not leaked
