"""How many of a call's log messages and progress the gateway relays (mcp_secrets.gateway.relay)."""

from __future__ import annotations

from mcp_secrets.gateway.relay import Allowance


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
