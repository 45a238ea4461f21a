"""How many of a call's log messages and progress the gateway relays (mcp_secrets.gateway.relay)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest
from mcp.server.mcpserver import Context
from mcp_types import LoggingMessageNotificationParams

from mcp_secrets.gateway.redact import Redactor
from mcp_secrets.gateway.relay import (
    LOG_LEVELS,
    LOG_MESSAGES_AT_ONCE,
    PROGRESS_AT_ONCE,
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


class GoneClientContext:
    """A call's context whose client has gone: every message to it fails, as the SDK's send does then."""

    def __init__(self) -> None:
        connection = SimpleNamespace(state={})
        session = SimpleNamespace(_connection=connection, _allowed_log_levels=set(LOG_LEVELS))
        self.request_context = SimpleNamespace(session=session)
        self.sends = 0

    async def log(self, *_args: object, **_kwargs: object) -> None:
        self.sends += 1
        raise anyio.BrokenResourceError

    async def report_progress(self, *_args: object) -> None:
        self.sends += 1
        raise anyio.BrokenResourceError


@pytest.mark.anyio
async def test_the_last_messages_of_a_call_whose_client_has_gone_do_not_replace_its_outcome() -> None:
    ctx = GoneClientContext()
    relay = CallRelay(cast("Context[Any, Any]", ctx), Redactor({}), "github")
    for step in range(PROGRESS_AT_ONCE + 5):
        with contextlib.suppress(anyio.BrokenResourceError):  # the client went away during the call
            await relay.progress(float(step), None, None)
    for _ in range(LOG_MESSAGES_AT_ONCE + 5):
        with contextlib.suppress(anyio.BrokenResourceError):
            await relay.log(LoggingMessageNotificationParams(level="info", data="working"))
    sends_during_the_call = ctx.sends

    await relay.finish()  # the held-back progress and the dropped-messages warning: both fail to send

    assert ctx.sends == sends_during_the_call + 2
