"""Stop signals during the CLI's long runs: unwound as Ctrl-C is, and held back around each write.

``rotate``, ``migrate-legacy``, ``verify`` and ``prune-audit`` record what they did in the audit trail
before they stop; for that, SIGTERM and SIGHUP must unwind them as Ctrl-C does, and no stop may land
between a write and its count.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP during one of those runs: unwound as Ctrl-C is, and telling which it was."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


# SIGHUP too: a terminal that closes (an ssh connection lost) ends a run started by hand with it.
STOP_SIGNALS = (signal.SIGTERM,) if sys.platform == "win32" else (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def terminated_as_an_exception() -> Iterator[None]:
    """Let SIGTERM and SIGHUP unwind a run as Ctrl-C does, so that it records what it did before it stops.

    Python's default for them ends the process at once: a prune stopped by systemd or a job's
    time limit left its deleted events without the ``audit-pruned`` event that accounts for them.
    """

    def stop(number: int, _frame: object) -> None:
        raise _stop(number)

    with _handling(STOP_SIGNALS, stop):
        yield


@contextmanager
def _handling(numbers: Sequence[int], handler: Callable[[int, object], None]) -> Iterator[None]:
    """``handler`` for the signals ``numbers`` while the block runs, then the handlers there were before."""
    try:
        previous = {number: signal.signal(number, handler) for number in numbers}
    except ValueError:  # not the main thread (main() called from a library): keep the handlers there are
        yield
        return
    try:
        yield
    finally:
        for number, earlier in previous.items():
            signal.signal(number, earlier)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold back Ctrl-C, SIGTERM and SIGHUP until the block ends, then stop; a second one stops at once.

    An exported batch of ``prune-audit`` is written to the file, then deleted from the store: a run
    stopped in between left it in both, and the next run wrote it to the file again. Without an export,
    a stop just after a batch's delete committed left that batch out of the ``audit-pruned`` count; and
    one just after a ``rotate`` swap committed left that record out of the ``rotated`` count.
    """
    held: list[int] = []

    def hold(number: int, _frame: object) -> None:
        if held:  # asked twice: stop now, whatever it leaves behind
            raise _stop(number)
        held.append(number)

    with _handling((signal.SIGINT, *STOP_SIGNALS), hold):
        yield
    if held:
        raise _stop(held[0])


def _stop(number: int) -> KeyboardInterrupt:
    """What a stop signal unwinds a run with: Ctrl-C's own exception, or one that says which signal."""
    return KeyboardInterrupt() if number == signal.SIGINT else Terminated(number)
