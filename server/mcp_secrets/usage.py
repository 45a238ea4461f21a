"""Recording uses of secrets off the call path: a queue, and one writer thread that drains it.

A use (``get_secrets`` handing values to a caller) is recorded as each key's
``last_used_at`` and one ``used`` or ``injected`` audit event. Writing that costs
about as much as the query itself, so ``get_secrets`` only queues the use here
and returns; a daemon thread, started on the first use, gathers what comes in
over ``GATHER_SECONDS`` and writes it in one store call.

The trade-off: a change (set, update, delete, tokens, rotation) is recorded
with the change, before the call returns (a set, update or delete in the same
transaction where the store has them), but a use is written a moment after it.
Readers in this process lose nothing by it: ``Secrets`` calls ``flush()``
before it reads last uses or events, and before it writes a change, so the
trail keeps its order. Another process (``mcp-secrets audit``) sees a use once
the writer has written it. A clean exit writes what is pending
(``Secrets.close()``, and an ``atexit`` hook as a safety net); a process killed
with SIGKILL, or a machine losing power, can lose the uses of its last moments.

When the store is unavailable the writer keeps the batch, logs one warning, and
retries with a capped backoff. At most ``MAX_PENDING`` uses wait: beyond that
the oldest are dropped, counted, and the count logged. A use holds names and
times only, never a value, so nothing logged here can hold one either.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque

from mcp_secrets.errors import StoreUnavailableError
from mcp_secrets.store import SecretStore, SecretUse, WouldBlock, is_nonblocking

logger = logging.getLogger(__name__)

MAX_PENDING = 100_000
MAX_BATCH = 5_000  # one transaction stays short, so calls waiting for the store do not wait long
FLUSH_TIMEOUT_SECONDS = 30.0  # a store that is down says so sooner: a failed write ends the wait
GATHER_SECONDS = 0.01
FIRST_RETRY_SECONDS = 0.05
MAX_RETRY_SECONDS = 5.0
IDLE_SECONDS = 60.0  # an idle writer thread ends; the next use starts another
DROPS_REPORT_SECONDS = 60.0


class UseRecorder:
    """Queues uses of secrets and writes them to the store from a background thread, in batches."""

    def __init__(
        self, store: SecretStore, *, max_pending: int = MAX_PENDING, max_batch: int = MAX_BATCH
    ) -> None:
        self._store = store
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._changed = threading.Condition(threading.Lock())
        # Uses are numbered as they are queued; every use up to number ``_settled`` is written or dropped.
        self._pending: deque[tuple[int, SecretUse]] = deque()
        self._writing: list[tuple[int, SecretUse]] = []
        self._queued = 0
        self._settled = 0
        self._failures = 0
        self._refusal: str | None = None  # why the store refused the last batch written, until one is written
        self._dropped = 0
        self._dropped_reported = 0
        self._dropped_reported_at = 0.0
        self._hurry = False
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        _EVERY.add(self)

    @property
    def pending(self) -> int:
        """How many uses wait to be written, the batch being written included."""
        with self._changed:
            return len(self._pending) + len(self._writing)

    @property
    def refusal(self) -> str | None:
        """Why the store refused the last batch written (never a value), or None when it was written."""
        return self._refusal

    @property
    def dropped(self) -> int:
        """How many uses were dropped unwritten since this recorder started."""
        return self._dropped

    def record(self, use: SecretUse) -> None:
        """Queue one use; it is written within milliseconds (at once, in this thread, after ``close()``)."""
        with self._changed:
            if not self._closed:
                self._queued += 1
                self._pending.append((self._queued, use))
                if len(self._pending) > self._max_pending:
                    self._pending.popleft()
                    self._dropped += 1
                    self._settle()
                if self._thread is None:
                    self._start_writer()
                elif len(self._pending) == 1:
                    self._changed.notify_all()  # the writer may be waiting for work
                return
        self._store.record_uses([use])

    def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
        """Wait until every use queued before this call is written (or dropped); True when it is.

        False as soon as a write fails meanwhile (the store is unavailable; the uses stay
        queued), or after ``timeout`` seconds. Under ``nonblocking()`` raises ``WouldBlock`` rather
        than wait. With nothing pending it returns at once, without taking a lock.
        """
        target = self._queued
        if self._settled >= target:
            return True
        if is_nonblocking():
            raise WouldBlock
        deadline = time.monotonic() + timeout
        with self._changed:
            if self._thread is None and self._pending and not self._closed:
                self._start_writer()  # the last use could not start it
            failures = self._failures
            self._hurry = True  # cut a backoff short: the caller is waiting now
            self._changed.notify_all()
            while self._settled < target:
                remaining = deadline - time.monotonic()
                if self._failures != failures or remaining <= 0 or self._thread is None:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
        """Write what is pending, then stop the writer thread; True when every use was written.

        Idempotent. Uses recorded after this are written at once, by the thread recording them.
        """
        with self._changed:
            if self._closed:
                return True
        self.flush(timeout)
        with self._changed:
            self._closed = True
            self._stopping = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        elif thread is None:
            self._write_here()  # no writer thread could start: what it would have written is written here
        _OPEN.discard(self)
        self._report_drops(force=True)
        with self._changed:
            lost = len(self._pending)
            self._pending.clear()
            self._dropped += lost
            self._dropped_reported += lost
            self._settle()
            self._changed.notify_all()
            unfinished = bool(self._writing)
        if lost:
            logger.warning("uses of secrets lost at closing, the store being unavailable: %d", lost)
        return not lost and not unfinished

    def _start_writer(self) -> None:
        """Start the writer thread; if none can start now, the uses wait for the next use or flush to try."""
        self._stopping = False
        _OPEN.add(self)  # closed at exit even if no writer starts: close() then writes what is kept
        _close_at_multiprocessing_exit()
        thread = threading.Thread(target=self._write_pending, name="mcp-secrets-uses", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # the process is at its limit of threads: a moment, or until it exits
            logger.warning("uses of secrets cannot be recorded now (%s); kept and retried", exc)
            return
        self._thread = thread

    def _write_here(self) -> None:
        """Write the pending uses in the calling thread, batch by batch; a failed batch stays pending."""
        while True:
            with self._changed:
                count = min(len(self._pending), self._max_batch)
                self._writing = [self._pending.popleft() for _ in range(count)]
            if not count:
                return
            failure = self._write([use for _, use in self._writing])
            with self._changed:
                self._written(failure)
            if failure is not None:
                return

    def _written(self, failure: str | None) -> None:
        """Under the lock, after a batch: a failed one goes back to the front; either way the mark moves."""
        self._refusal = failure
        if failure is not None:
            self._failures += 1
            self._pending.extendleft(reversed(self._writing))
            self._drop_overflow()
        self._writing = []
        self._settle()
        self._changed.notify_all()

    def _settle(self) -> None:
        """Move the mark below which every use is written or dropped: just below the oldest still waiting."""
        if self._writing:
            oldest = self._writing[0][0]
        elif self._pending:
            oldest = self._pending[0][0]
        else:
            oldest = self._queued + 1
        self._settled = oldest - 1

    def _write_pending(self) -> None:
        """The writer thread: write batch after batch until idle, or until stopped and drained."""
        delay = 0.0
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            failure = self._write(batch)
            with self._changed:
                self._written(failure)
                if failure is not None and self._stopping:
                    self._thread = None  # closing: what is left is counted as lost
                    return
            if failure is None:
                if delay:
                    logger.info("the store answers again: uses of secrets are recorded again")
                    self._report_drops(force=True)
                delay = 0.0
            else:
                if not delay:
                    logger.warning("uses of secrets cannot be recorded now (%s); kept and retried", failure)
                delay = min(MAX_RETRY_SECONDS, max(FIRST_RETRY_SECONDS, delay * 2))
            self._report_drops()
            if delay:
                with self._changed:
                    self._changed.wait_for(lambda: self._hurry or self._stopping, delay)

    def _next_batch(self) -> list[SecretUse] | None:
        """The oldest pending uses, also kept in ``_writing``; None when the thread is to end."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending or self._stopping, IDLE_SECONDS)
            if not self._pending:
                self._thread = None
                self._changed.notify_all()
                return None
            # Let a few milliseconds of uses gather: one write of many costs little more than of one.
            self._changed.wait_for(
                lambda: self._hurry or self._stopping or len(self._pending) >= self._max_batch, GATHER_SECONDS
            )
            self._hurry = False
            count = min(len(self._pending), self._max_batch)
            self._writing = [self._pending.popleft() for _ in range(count)]
            return [use for _, use in self._writing]

    def _write(self, batch: list[SecretUse]) -> str | None:
        """Write one batch; None when it is done with, else why the store refused it (keep it, retry)."""
        try:
            self._store.record_uses(batch)
        except StoreUnavailableError as exc:
            return str(exc)
        except Exception:  # the writer must outlive a bug rather than retry it forever
            logger.exception("uses of secrets dropped, their recording having failed: %d", len(batch))
            with self._changed:
                self._dropped += len(batch)
        return None

    def _forget_after_fork(self) -> None:
        """In a forked child: no writer thread runs, and the uses pending are the parent's to write."""
        self._changed = threading.Condition(threading.Lock())
        self._pending.clear()
        self._writing = []
        self._thread = None
        self._settle()

    def _drop_overflow(self) -> None:
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self._dropped += 1

    def _report_drops(self, *, force: bool = False) -> None:
        """Log how many uses were dropped so far, when that grew: at most once a minute unless ``force``."""
        dropped = self._dropped
        now = time.monotonic()
        if dropped == self._dropped_reported:
            return
        if not force and now - self._dropped_reported_at < DROPS_REPORT_SECONDS and self._dropped_reported:
            return
        logger.warning(
            "uses of secrets dropped unrecorded so far, more than %d having waited for the store: %d",
            self._max_pending,
            dropped,
        )
        self._dropped_reported, self._dropped_reported_at = dropped, now


# Recorders with a writer thread; at exit each writes what is pending, if the store still answers.
_OPEN: weakref.WeakSet[UseRecorder] = weakref.WeakSet()
# Every recorder: a fork may land while another thread holds any one's lock, writer thread or not.
_EVERY: weakref.WeakSet[UseRecorder] = weakref.WeakSet()


@atexit.register
def _close_open_recorders() -> None:
    for recorder in list(_OPEN):
        recorder.close(timeout=5.0)


_exit_hook_pid = 0  # the process that has asked multiprocessing to close the recorders at its exit


def _close_at_multiprocessing_exit() -> None:
    """Have multiprocessing close the open recorders at this process's exit, as atexit does.

    A multiprocessing child ends by ``os._exit`` once its target returns: atexit hooks never run,
    only the finalizers registered in the child itself (those inherited are cleared as it starts).
    Without multiprocessing loaded this process is none of its children, and atexit is enough.
    """
    global _exit_hook_pid  # noqa: PLW0603 - once per process
    util = sys.modules.get("multiprocessing.util")
    if util is not None and _exit_hook_pid != os.getpid():
        _exit_hook_pid = os.getpid()
        util.Finalize(None, _close_open_recorders, exitpriority=0)


def _forget_parent_recorders() -> None:
    for recorder in list(_EVERY):
        recorder._forget_after_fork()  # noqa: SLF001 - the module's own hook
    _OPEN.clear()


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_forget_parent_recorders)
