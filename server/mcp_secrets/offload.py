"""Running blocking store work from an event loop: on the loop when it cannot wait, else in a thread.

A hop to a worker thread and back costs a few hundred microseconds on a busy
machine, several times what a local SQLite call takes. So work on a store that
``answers_inline`` is first tried on the loop under ``nonblocking()``: it either
completes without waiting, or raises ``WouldBlock`` before writing anything and
is run again in a worker thread, where it may wait for its lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio

from mcp_secrets.store import SecretStore, WouldBlock, nonblocking

_T = TypeVar("_T")


async def run_store_work(store: SecretStore, work: Callable[[], _T]) -> _T:
    """Run ``work``, which calls ``store``; inline when the store can answer at once.

    ``work`` may start on the loop and start again in a thread, so it must make no store
    call after a write that changed something: reads first, then at most one such write.
    """
    if store.answers_inline:
        try:
            with nonblocking():
                return work()
        except WouldBlock:
            pass
    return await anyio.to_thread.run_sync(work)
