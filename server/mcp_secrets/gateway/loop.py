"""The way onto the gateway's event loop from the thread that wrote a secret, whichever it is.

A listener of secret changes runs on the thread that wrote: a worker thread, or an event loop's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from anyio.from_thread import BlockingPortal

logger = logging.getLogger(__name__)


class LoopEntry:
    """Runs a function on the event loop ``running()`` was entered on, from any thread."""

    def __init__(self) -> None:
        self._portal: BlockingPortal | None = None
        self._thread: int | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Let functions in while inside; outside, ``call`` runs nothing."""
        async with BlockingPortal() as portal:
            self._portal = portal
            self._thread = threading.get_ident()
            try:
                yield
            finally:
                self._portal = None

    def call(self, function: Callable[[], None]) -> None:
        """Run ``function`` on the loop and return once it has run; on the loop's own thread, at once."""
        portal = self._portal
        if portal is None:
            return
        if threading.get_ident() == self._thread:
            function()
            return
        try:
            portal.call(function)
        except RuntimeError:  # the portal stopped meanwhile: the loop is stopping
            logger.debug("not run on the event loop: it is stopping")
