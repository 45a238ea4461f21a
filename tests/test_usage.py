"""Uses of secrets, written off the call path: batched, flushed for readers, kept through faults, bounded."""

from __future__ import annotations

import dataclasses
import gc
import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from conftest import assert_not_leaked, make_store, new_canary
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.errors import StoreUnavailableError
from mcp_secrets.offload import run_store_work
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import AuditEvent, SecretStore, SecretUse, WouldBlock, nonblocking
from mcp_secrets.store.mongo import MongoStore
from mcp_secrets.store.sqlite import SQLiteStore
from mcp_secrets.usage import UseRecorder

# Whole milliseconds: a BSON date keeps no finer, and these tests run on every backend.
T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)
T1, T2, T3 = (T0 + timedelta(minutes=minutes) for minutes in (1, 2, 3))
DEADLINE_SECONDS = 30  # generous: only reached when something is broken


class ControlledStore:
    """A real store whose ``record_uses`` can be made to fail, to wait, or to break."""

    def __init__(self, store: SecretStore) -> None:
        self.store = store
        self.failures = 0  # calls still to refuse with StoreUnavailableError
        self.why = "the test store is unavailable"  # what the refusal says
        self.broken = False  # raise a plain bug instead
        self.open = threading.Event()  # cleared: calls wait until it is set again
        self.open.set()
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def record_uses(self, uses: Sequence[SecretUse]) -> None:
        assert self.open.wait(DEADLINE_SECONDS)
        self.batches.append(len(uses))
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError(self.why)
        if self.broken:
            raise RuntimeError("a bug in the store")
        self.store.record_uses(uses)


@pytest.fixture
def controlled(store: SecretStore) -> ControlledStore:
    return ControlledStore(store)


@pytest.fixture
def service(controlled: ControlledStore, encryptor: SecretEncryptor) -> Iterator[Secrets]:
    """A Secrets service over the controlled store, with alice's github TOKEN stored."""
    secrets = Secrets(controlled, encryptor)  # type: ignore[arg-type]
    secrets.set_secret("alice", "github", "TOKEN", new_canary())
    yield secrets
    controlled.failures, controlled.broken = 0, False
    controlled.open.set()
    secrets.close()


def a_use(detail: str = "", at: datetime = T0, keys: tuple[str, ...] = ("TOKEN",)) -> SecretUse:
    event = AuditEvent(at, "alice", "used", "github", ",".join(keys), "library", detail)
    return SecretUse("alice", "github", keys, event)


def eventually(flush: Callable[[], bool]) -> None:
    """Flush until it succeeds: each failed attempt is reported, and the next one is made at once."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not flush():
        assert time.monotonic() < deadline, "the uses were never written"


def open_when_flushed(service: Secrets, controlled: ControlledStore) -> None:
    """Let the held store answer once something waits for the pending uses, not before, and not by a timer.

    A test that then sees the uses written shows that what it called waited for them.
    """
    flush = service.uses.flush

    def opening_flush(timeout: float = DEADLINE_SECONDS) -> bool:
        controlled.open.set()
        return flush(timeout)

    service.uses.flush = opening_flush  # type: ignore[method-assign]


def used_details(store: SecretStore) -> Counter[str]:
    """How often each detail appears among the ``used`` events, read straight from the store."""
    return Counter(
        event.detail for event in store.list_events("alice", None, 100_000) if event.action == "used"
    )


def usage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "mcp_secrets.usage" and record.levelno >= logging.WARNING
    ]


# --- what is written -----------------------------------------------------------------------------


def test_a_use_is_in_the_store_with_its_event_and_last_use_once_flushed(
    store: SecretStore, encryptor: SecretEncryptor
) -> None:
    now = [T0]
    secrets = Secrets(store, encryptor, clock=lambda: now[0])
    values = {key: new_canary() for key in ("TOKEN", "USER")}
    for key, value in values.items():
        secrets.set_secret("alice", "github", key, value)
    secrets.set_secret("alice", "slack", "TOKEN", new_canary())
    now[0] = T1

    assert secrets.get_secrets("alice", "github", via="gateway", action="injected", detail="search") == values
    assert secrets.flush()

    # Read straight from the store: written, not merely shown by the service.
    assert store.list_events("alice", "github", 1) == [
        AuditEvent(T1, "alice", "injected", "github", "TOKEN,USER", "gateway", "search")
    ]
    assert {(record.server, record.key): record.last_used_at for record in store.find_secrets("alice")} == {
        ("github", "TOKEN"): T1,
        ("github", "USER"): T1,
        ("slack", "TOKEN"): None,
    }
    secrets.close()


def test_get_secrets_returns_without_waiting_for_the_use_to_be_written(
    service: Secrets, controlled: ControlledStore
) -> None:
    controlled.open.clear()  # every write now waits

    assert list(service.get_secrets("alice", "github", detail="held")) == ["TOKEN"]

    assert used_details(controlled.store) == Counter()
    controlled.open.set()
    assert service.flush()
    assert used_details(controlled.store) == Counter({"held": 1})


def test_uses_made_close_together_are_written_in_one_store_call(
    service: Secrets, controlled: ControlledStore
) -> None:
    controlled.open.clear()  # hold the first batch while more uses queue behind it
    for number in range(10):
        service.get_secrets("alice", "github", detail=str(number))
    controlled.open.set()

    assert service.flush()

    assert sum(controlled.batches) == 10
    assert len(controlled.batches) <= 2
    assert used_details(controlled.store) == Counter({str(number): 1 for number in range(10)})


@pytest.mark.parametrize(("threads", "calls"), [(8, 25), pytest.param(32, 200, marks=pytest.mark.load)])
def test_concurrent_uses_record_exactly_one_event_per_call(
    store: SecretStore, encryptor: SecretEncryptor, threads: int, calls: int
) -> None:
    secrets = Secrets(store, encryptor)
    value = new_canary()
    secrets.set_secret("alice", "github", "TOKEN", value)
    start = threading.Barrier(threads, timeout=DEADLINE_SECONDS)
    failures: list[BaseException] = []

    def caller(number: int) -> None:
        try:
            start.wait()
            for call in range(calls):
                assert secrets.get_secrets("alice", "github", detail=f"{number}-{call}") == {"TOKEN": value}
        except BaseException as exc:
            failures.append(exc)

    callers = [threading.Thread(target=caller, args=(number,)) for number in range(threads)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(DEADLINE_SECONDS * 4)

    assert failures == []
    assert secrets.flush()
    expected = Counter({f"{number}-{call}": 1 for number in range(threads) for call in range(calls)})
    assert used_details(store) == expected
    [record] = store.find_secrets("alice", "github")
    assert record.last_used_at is not None
    secrets.close()


def test_last_used_at_never_goes_back_when_batches_land_out_of_order(store: SecretStore) -> None:
    store.put_secret("alice", "github", "TOKEN", "v1:x:y", T0)
    store.put_secret("alice", "github", "USER", "v1:x:y", T0)

    store.record_uses([a_use("newer", T2)])
    store.record_uses([a_use("older, landing late", T1)])
    store.record_uses([a_use("newest", T3, ("USER",)), a_use("older in the same batch", T1, ("USER",))])

    assert {record.key: record.last_used_at for record in store.find_secrets("alice")} == {
        "TOKEN": T2,
        "USER": T3,
    }
    assert sum(used_details(store).values()) == 4


class SteppingClock:
    """A clock that moves only when told, backwards too, as a wall clock stepped by NTP does."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_a_use_after_the_clock_stepped_back_past_the_keys_storing_is_its_last_use_and_comes_after_it(
    store: SecretStore, encryptor: SecretEncryptor
) -> None:
    clock = SteppingClock()
    service = Secrets(store, encryptor, clock=clock)
    service.set_secret("alice", "github", "TOKEN", new_canary())
    clock.now = T0 - timedelta(hours=1)  # a VM restored, an NTP correction

    service.get_secrets("alice", "github")

    [info] = service.list_secret_keys("alice")
    assert info.last_used_at == T0  # not "never": a use of this very record
    assert [(event.action, event.at) for event in service.list_events("alice")] == [
        ("used", T0),
        ("created", T0),
    ]
    service.close()


def test_a_use_recorded_apart_from_its_read_counts_after_the_clock_stepped_back_past_the_keys_storing(
    store: SecretStore, encryptor: SecretEncryptor
) -> None:
    # The gateway's way: values read first, the use recorded once they are handed on.
    clock = SteppingClock()
    service = Secrets(store, encryptor, clock=clock)
    service.set_secret("alice", "github", "TOKEN", new_canary())
    clock.now = T0 - timedelta(hours=1)

    values, stored_at = service.read_secrets("alice", "github")
    service.record_use("alice", "github", values, via="gateway", action="injected", not_before=stored_at)

    [info] = service.list_secret_keys("alice")
    assert (stored_at, info.last_used_at) == (T0, T0)
    service.close()


def test_a_use_written_late_for_a_key_deleted_and_stored_again_since_is_not_the_new_ones_last_use(
    store: SecretStore, encryptor: SecretEncryptor
) -> None:
    clock = SteppingClock()
    service = Secrets(store, encryptor, clock=clock)
    service.set_secret("alice", "github", "TOKEN", new_canary())
    clock.now = T1
    # Another process's writer lands a use of the record of before, made at T0, once it was stored again.
    service.delete_secret("alice", "github", "TOKEN")
    service.set_secret("alice", "github", "TOKEN", new_canary())
    store.record_uses([a_use("of the record of before", T0)])

    [info] = service.list_secret_keys("alice")
    assert info.last_used_at is None
    service.close()


def test_a_read_or_a_change_in_this_process_sees_every_use_made_before_it(
    service: Secrets, controlled: ControlledStore
) -> None:
    controlled.open.clear()
    service.get_secrets("alice", "github")
    open_when_flushed(service, controlled)

    [info] = service.list_secret_keys("alice")

    assert info.last_used_at is not None
    service.delete_secret("alice", "github", "TOKEN")
    assert [event.action for event in service.list_events("alice")] == ["deleted", "used", "created"]


# --- flush ---------------------------------------------------------------------------------------


def test_flush_with_nothing_pending_returns_at_once_without_taking_the_lock(store: SecretStore) -> None:
    recorder = UseRecorder(store)
    store.put_secret("alice", "github", "TOKEN", "v1:x:y", T0)
    recorder.record(a_use())
    assert recorder.flush()
    lock, recorder._changed = recorder._changed, None  # type: ignore[assignment]

    assert recorder.flush()

    recorder._changed = lock
    recorder.close()


def test_flush_gives_up_after_its_timeout_while_the_store_hangs(
    service: Secrets, controlled: ControlledStore
) -> None:
    controlled.open.clear()
    service.get_secrets("alice", "github", detail="late")

    started = time.monotonic()
    assert service.flush(timeout=0.2) is False
    assert time.monotonic() - started < DEADLINE_SECONDS / 3

    controlled.open.set()
    assert service.flush()
    assert used_details(controlled.store) == Counter({"late": 1})


def test_under_nonblocking_a_read_with_uses_pending_refuses_rather_than_wait(
    service: Secrets, controlled: ControlledStore
) -> None:
    controlled.open.clear()
    service.get_secrets("alice", "github")

    with nonblocking(), pytest.raises(WouldBlock):
        service.list_secret_keys("alice")
    with nonblocking(), pytest.raises(WouldBlock):
        service.set_secret("alice", "github", "OTHER", new_canary())


@pytest.mark.anyio
async def test_from_the_event_loop_a_read_after_a_use_waits_in_a_worker_thread(
    service: Secrets, controlled: ControlledStore
) -> None:
    controlled.open.clear()
    service.get_secrets("alice", "github")
    open_when_flushed(service, controlled)
    loop_thread = threading.get_ident()

    def read() -> tuple[int, datetime | None]:
        [info] = service.list_secret_keys("alice")
        return threading.get_ident(), info.last_used_at

    ran_on, last_used_at = await run_store_work(service.store, read)

    assert last_used_at is not None
    assert ran_on != loop_thread


# --- faults --------------------------------------------------------------------------------------


def test_a_change_or_listing_waiting_on_uses_the_store_refuses_says_why_it_refuses_them(
    service: Secrets, controlled: ControlledStore
) -> None:
    # A full disk refused the uses: the change after them failed saying only that they were not written yet.
    controlled.why = "the SQLite store is unavailable: database or disk is full"
    controlled.failures = 1_000_000
    service.get_secrets("alice", "github")
    value = new_canary()

    with pytest.raises(StoreUnavailableError) as changing:
        service.set_secret("alice", "github", "OTHER", value)
    with pytest.raises(StoreUnavailableError) as listing:
        service.list_events("alice")

    for raised in (changing, listing):
        assert str(raised.value) == (
            "the latest uses of secrets are not written yet: the SQLite store is unavailable: "
            "database or disk is full"
        )
        assert_not_leaked(raised.value, value)


def test_uses_made_while_another_process_locks_sqlite_are_written_once_it_is_free(
    tmp_path: Path, encryptor: SecretEncryptor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcp_secrets.usage")
    store = SQLiteStore(tmp_path / "secrets.db", busy_timeout=0.05)
    secrets = Secrets(store, encryptor)
    value = new_canary()
    secrets.set_secret("alice", "github", "TOKEN", value)
    [record] = store.find_secrets("alice")
    try:
        with closing(sqlite3.connect(tmp_path / "secrets.db", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            assert secrets.get_secrets("alice", "github") == {"TOKEN": value}  # reads go on meanwhile

            started = time.monotonic()
            assert secrets.flush() is False  # a clear answer, long before its timeout
            assert time.monotonic() - started < DEADLINE_SECONDS / 3
            with pytest.raises(StoreUnavailableError, match="store is unavailable"):
                secrets.list_events("alice")
            other.execute("COMMIT")

        eventually(secrets.flush)
        assert [event.action for event in secrets.list_events("alice")] == ["used", "created"]
        assert len(usage_warnings(caplog)) == 1  # one warning for the outage, not one per retry
        assert value not in caplog.text
        assert record.value not in caplog.text
    finally:
        secrets.close()
        store.close()


def test_a_read_does_not_wait_behind_a_use_that_waits_for_another_process_to_unlock_sqlite(
    tmp_path: Path, encryptor: SecretEncryptor
) -> None:
    """get_secrets never waits for a write: nor for the writer's, which waits for another process's lock."""
    store = SQLiteStore(tmp_path / "secrets.db", busy_timeout=2 * DEADLINE_SECONDS)
    secrets = Secrets(store, encryptor)
    value = new_canary()
    secrets.set_secret("alice", "github", "TOKEN", value)
    writing = threading.Event()
    store._connection.set_trace_callback(lambda statement: statement == "BEGIN IMMEDIATE" and writing.set())
    read: list[dict[str, str]] = []
    answered = threading.Event()

    def read_again() -> None:
        read.append(secrets.get_secrets("alice", "github", record_use=False))
        answered.set()

    reader = threading.Thread(target=read_again)
    try:
        with closing(sqlite3.connect(tmp_path / "secrets.db", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            secrets.get_secrets("alice", "github")
            writing.wait()  # the writer is in its write, which waits for `other`
            reader.start()
            answered_while_locked = answered.wait(DEADLINE_SECONDS)
            other.execute("COMMIT")
        reader.join()
        assert answered_while_locked
        assert read == [{"TOKEN": value}]
        eventually(secrets.flush)
        assert [event.action for event in secrets.list_events("alice")] == ["used", "created"]
    finally:
        secrets.close()
        store.close()


def test_a_listing_goes_on_while_another_process_locks_sqlite_and_uses_wait(
    tmp_path: Path, encryptor: SecretEncryptor
) -> None:
    """Names still list while uses cannot be written; their last use shows once they are."""
    store = SQLiteStore(tmp_path / "secrets.db", busy_timeout=0.05)
    secrets = Secrets(store, encryptor)
    secrets.set_secret("alice", "github", "TOKEN", new_canary())
    try:
        with closing(sqlite3.connect(tmp_path / "secrets.db", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            secrets.get_secrets("alice", "github")
            [info] = secrets.list_secret_keys("alice")
            assert (info.key, info.last_used_at) == ("TOKEN", None)
            other.execute("COMMIT")
        eventually(secrets.flush)
        [info] = secrets.list_secret_keys("alice")
        assert info.last_used_at is not None
    finally:
        secrets.close()
        store.close()


def test_uses_are_kept_through_failures_and_written_once_after_recovery(
    service: Secrets, controlled: ControlledStore, caplog: pytest.LogCaptureFixture
) -> None:
    controlled.failures = 3
    for number in range(5):
        service.get_secrets("alice", "github", detail=str(number))

    eventually(service.flush)

    assert controlled.failures == 0
    assert used_details(controlled.store) == Counter({str(number): 1 for number in range(5)})
    [record] = controlled.store.find_secrets("alice")
    assert record.last_used_at is not None
    assert len(usage_warnings(caplog)) == 1


def test_a_writer_thread_that_cannot_start_leaves_the_use_queued_for_the_next_read_to_write(
    service: Secrets, controlled: ControlledStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process at its limit of threads (a container's pids limit) cannot start one for a moment.
    start = threading.Thread.start
    refused = []

    def start_unless_first_writer(thread: threading.Thread) -> None:
        if thread.name == "mcp-secrets-uses" and not refused:
            refused.append(thread)
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_unless_first_writer)

    assert list(service.get_secrets("alice", "github", detail="kept")) == ["TOKEN"]
    listed = service.list_events("alice")

    assert refused
    assert [(event.action, event.detail) for event in listed][:1] == [("used", "kept")]
    assert used_details(controlled.store) == Counter({"kept": 1})


def test_close_writes_a_use_whose_writer_thread_never_could_start(
    service: Secrets, controlled: ControlledStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = threading.Thread.start

    def start_unless_writer(thread: threading.Thread) -> None:
        if thread.name == "mcp-secrets-uses":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_unless_writer)

    assert list(service.get_secrets("alice", "github", detail="kept")) == ["TOKEN"]
    service.close()

    assert used_details(controlled.store) == Counter({"kept": 1})


def test_a_batch_mongodb_wrote_but_reported_failed_is_written_again_without_a_second_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection lost after the server applied the insert, before its reply (a standalone server
    # has no retryable writes; on a replica set, the driver's one retry failing too).
    store = make_store("mongomock", tmp_path)
    assert isinstance(store, MongoStore)
    store.put_secret("alice", "github", "TOKEN", "v1:x:y", T0)
    insert_many, lost_replies = store._events.insert_many, [1]

    def insert_then_lose_the_reply(*args: Any, **kwargs: Any) -> Any:
        result = insert_many(*args, **kwargs)
        if lost_replies:
            lost_replies.pop()
            raise AutoReconnect("connection closed")
        return result

    monkeypatch.setattr(store._events, "insert_many", insert_then_lose_the_reply)
    recorder = UseRecorder(store)
    recorder.record(a_use("once"))
    recorder.record(a_use("and once more", T1))

    eventually(recorder.flush)

    assert lost_replies == []
    assert used_details(store) == Counter({"once": 1, "and once more": 1})
    assert recorder.close()


def test_beyond_the_bound_the_oldest_uses_are_dropped_counted_and_logged(
    controlled: ControlledStore, caplog: pytest.LogCaptureFixture
) -> None:
    controlled.failures = 1_000_000  # down until further notice
    recorder = UseRecorder(controlled, max_pending=5)  # type: ignore[arg-type]
    for number in range(12):
        recorder.record(a_use(str(number)))

    assert recorder.flush() is False
    assert (recorder.pending, recorder.dropped) == (5, 7)

    controlled.failures = 0
    eventually(recorder.flush)
    assert recorder.close()
    assert used_details(controlled.store) == Counter({str(number): 1 for number in range(7, 12)})
    assert any(message.endswith(": 7") and "dropped" in message for message in usage_warnings(caplog))


def test_a_bug_in_the_store_drops_that_batch_and_the_writer_goes_on(
    service: Secrets, controlled: ControlledStore, caplog: pytest.LogCaptureFixture
) -> None:
    controlled.broken = True
    service.get_secrets("alice", "github", detail="lost")
    assert service.flush()
    controlled.broken = False

    service.get_secrets("alice", "github", detail="written")
    assert service.flush()

    assert used_details(controlled.store) == Counter({"written": 1})
    assert service.uses.dropped == 1
    assert any("recording having failed: 1" in message for message in usage_warnings(caplog))


# --- closing -------------------------------------------------------------------------------------


def test_close_writes_every_pending_use_and_later_uses_are_written_at_once(
    service: Secrets, controlled: ControlledStore
) -> None:
    controlled.open.clear()
    for number in range(5):
        service.get_secrets("alice", "github", detail=str(number))
    open_when_flushed(service, controlled)

    service.close()

    assert used_details(controlled.store) == Counter({str(number): 1 for number in range(5)})
    service.close()  # again: nothing left to do
    service.get_secrets("alice", "github", detail="after close")
    assert used_details(controlled.store)["after close"] == 1


def test_closing_the_store_alone_first_writes_the_uses_still_pending(
    service: Secrets, controlled: ControlledStore
) -> None:
    # As the library's docs said before Secrets.close() existed, and code written then still does:
    # open_secrets(), get_secrets(), then secrets.store.close(). Each such run lost its use, logged.
    controlled.open.clear()
    service.get_secrets("alice", "github", detail="before the store closed")
    open_when_flushed(service, controlled)

    controlled.close()

    assert controlled.batches == [1]
    assert service.uses.pending == 0


def test_a_store_keeps_no_recorder_alive_of_a_service_made_over_it(
    store: SecretStore, encryptor: SecretEncryptor
) -> None:
    recorder = weakref.ref(Secrets(store, encryptor).uses)

    gc.collect()

    assert recorder() is None
    store.close()


class _FailsAtClose:
    def close(self) -> None:
        raise StoreUnavailableError("the store is unavailable: the uses could not be written")


def test_a_store_closes_its_connections_even_when_a_callback_before_it_fails(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "secrets.db")
    failing = _FailsAtClose()
    store.before_close(failing.close)

    with pytest.raises(StoreUnavailableError, match="could not be written"):
        store.close()

    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store._connection.execute("SELECT 1")


EXITS_WITH_A_USE_PENDING = """
import sys
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.secrets import Secrets
from mcp_secrets.store.sqlite import SQLiteStore

secrets = Secrets(SQLiteStore(sys.argv[1]), SecretEncryptor([bytes(32)]))
secrets.set_secret("alice", "github", "TOKEN", sys.argv[2])
secrets.get_secrets("alice", "github", detail="just before exit")
print(secrets.uses.pending)
"""


def test_a_use_still_pending_at_a_clean_exit_is_written(tmp_path: Path) -> None:
    database, value = tmp_path / "secrets.db", new_canary()

    done = subprocess.run(
        [sys.executable, "-c", EXITS_WITH_A_USE_PENDING, str(database), value],
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS * 2,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"  # it was still pending when the script ended
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT action, detail FROM audit_events ORDER BY id").fetchall()
    assert rows == [("created", ""), ("used", "just before exit")]
    assert value not in done.stdout + done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
# Forking while the writer thread runs is the case under test; Python 3.12+ warns of it in general.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_leaves_its_parents_pending_uses_to_the_parent(
    service: Secrets, controlled: ControlledStore
) -> None:
    controlled.open.clear()
    service.get_secrets("alice", "github", detail="parent's")

    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code only
        os._exit(0 if service.uses.pending == 0 and service.flush(timeout=1) else 1)
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    controlled.open.set()
    assert service.flush()
    assert used_details(controlled.store) == Counter({"parent's": 1})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_while_a_thread_holds_a_recorder_without_a_writer_records_its_own_uses(
    tmp_path: Path,
) -> None:
    # A recorder gets its writer thread at its first use: until then, and after close(), it is not
    # among those a fork resets, yet another thread may hold its lock at the moment of the fork.
    store = SQLiteStore(tmp_path / "uses.db")
    recorder = UseRecorder(store)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with recorder._changed:
            holding.set()
            release.wait(DEADLINE_SECONDS)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(DEADLINE_SECONDS)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code only
        # A child stuck on the inherited lock ends, and says so through its exit code.
        signal.signal(signal.SIGALRM, lambda *_: os._exit(2))
        signal.alarm(DEADLINE_SECONDS)
        recorder.record(a_use("child's"))
        os._exit(0 if recorder.close(timeout=DEADLINE_SECONDS) else 1)
    release.set()
    holder.join()
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert used_details(store) == Counter({"child's": 1})
    assert recorder.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_use_still_pending_when_a_multiprocessing_worker_ends_is_written(
    tmp_path: Path, encryptor: SecretEncryptor
) -> None:
    # A multiprocessing child ends by os._exit, past atexit: a pre-forking pool's worker, say.
    controlled = ControlledStore(SQLiteStore(tmp_path / "secrets.db"))
    service = Secrets(controlled, encryptor)  # type: ignore[arg-type]
    service.set_secret("alice", "github", "TOKEN", new_canary())

    def worker() -> None:
        controlled.open.clear()
        open_when_flushed(service, controlled)  # written only if something flushes at the exit
        service.get_secrets("alice", "github", detail="worker's")

    process = multiprocessing.get_context("fork").Process(target=worker)
    process.start()
    process.join(DEADLINE_SECONDS)

    assert process.exitcode == 0
    assert used_details(controlled.store) == Counter({"worker's": 1})
    service.close()


def test_events_hold_no_value(service: Secrets, controlled: ControlledStore) -> None:
    value = new_canary()
    service.set_secret("alice", "github", "USER", value)
    service.get_secrets("alice", "github")
    assert service.flush()

    for event in controlled.store.list_events("alice", None, 100):
        assert not any(value in str(field) for field in dataclasses.astuple(event))
