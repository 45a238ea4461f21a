"""Store work from the event loop: on the loop when SQLite can answer at once, in a thread when it would wait.

The lock is taken by another real connection on the same file, as a second
process (a replica, a backup, the CLI) would hold it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import anyio
import pytest

from conftest import new_canary
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.offload import run_store_work
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import AuditEvent, SecretStore, SecretUse, WouldBlock, nonblocking
from mcp_secrets.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
USED = AuditEvent(NOW, "alice", "used", "github", "OLD", "library")


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "secrets.db", busy_timeout=30)
    yield opened
    opened.close()


@pytest.fixture
def service(sqlite_store: SQLiteStore) -> Iterator[Secrets]:
    opened = Secrets(sqlite_store, SecretEncryptor([b"k" * 32]))
    yield opened
    opened.close()


def a_set_noting_its_threads(service: Secrets, value: str) -> tuple[Callable[[], None], list[int]]:
    """A set_secret to pass to run_store_work, and the thread of each attempt at it."""
    ran_on: list[int] = []

    def work() -> None:
        ran_on.append(threading.get_ident())
        service.set_secret("alice", "github", "TOKEN", value)

    return work, ran_on


def count_rows(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as connection:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


async def test_sqlite_work_runs_on_the_loop_when_nothing_waits(
    sqlite_store: SQLiteStore, service: Secrets
) -> None:
    work, ran_on = a_set_noting_its_threads(service, new_canary())

    await run_store_work(sqlite_store, work)
    assert ran_on == [threading.get_ident()]
    assert [info.key for info in service.list_secret_keys("alice")] == ["TOKEN"]


async def test_work_moves_to_a_thread_while_another_process_holds_the_lock(
    sqlite_store: SQLiteStore, service: Secrets, caplog: pytest.LogCaptureFixture
) -> None:
    """The write waits for the lock in a worker thread; the event loop keeps running meanwhile."""
    caplog.set_level(logging.DEBUG)
    value = new_canary()
    work, ran_on = a_set_noting_its_threads(service, value)
    loop_thread = threading.get_ident()

    with closing(sqlite3.connect(sqlite_store.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        async with anyio.create_task_group() as group:
            group.start_soon(run_store_work, sqlite_store, work)
            for _ in range(20):  # the loop is free while the write waits for the lock
                await anyio.sleep(0.01)
            assert count_rows(sqlite_store.path, "user_secrets") == 0
            other.execute("COMMIT")
    # Tried on the loop, refused at once, then done in a worker thread: one record, one event.
    assert ran_on[0] == loop_thread
    assert len(ran_on) == 2
    assert ran_on[1] != loop_thread
    assert count_rows(sqlite_store.path, "user_secrets") == 1
    assert [event.action for event in service.list_events("alice")] == ["created"]
    assert service.get_secrets("alice", "github") == {"TOKEN": value}
    assert value not in caplog.text  # neither attempt logged it


@pytest.mark.parametrize("write", ["put", "delete", "uses", "event"])
def test_a_refused_write_leaves_nothing_and_waits_again_after(sqlite_store: SQLiteStore, write: str) -> None:
    sqlite_store.put_secret("alice", "github", "OLD", "v1:x:y", NOW)
    writes = {
        "put": lambda: sqlite_store.put_secret("alice", "github", "NEW", "v1:x:y", NOW),
        "delete": lambda: sqlite_store.delete_secret("alice", "github", "OLD"),
        "uses": lambda: sqlite_store.record_uses([SecretUse("alice", "github", ("OLD",), USED)]),
        "event": lambda: sqlite_store.add_event(AuditEvent(NOW, "alice", "created")),
    }
    before = {table: count_rows(sqlite_store.path, table) for table in ("user_secrets", "audit_events")}
    other = sqlite3.connect(sqlite_store.path, isolation_level=None, check_same_thread=False)
    with closing(other):
        other.execute("BEGIN IMMEDIATE")
        with nonblocking(), pytest.raises(WouldBlock):
            writes[write]()
        # Outside nonblocking() the same write waits for the lock again, and gets it once released.
        releaser = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        releaser.start()
        try:
            writes[write]()
        finally:
            releaser.join()
    after = {table: count_rows(sqlite_store.path, table) for table in ("user_secrets", "audit_events")}
    grew = {
        "put": ("user_secrets", 1),
        "delete": ("user_secrets", -1),
        "uses": ("audit_events", 1),
        "event": ("audit_events", 1),
    }
    expected = dict(before)
    if write in grew:
        table, change = grew[write]
        expected[table] += change
    assert after == expected  # the refused attempt wrote nothing; the waiting one wrote once
    assert not sqlite_store._connection.in_transaction


def test_reads_need_no_write_lock(sqlite_store: SQLiteStore) -> None:
    """In WAL mode a read goes on while another connection writes: it runs inline, not in a thread."""
    sqlite_store.put_secret("alice", "github", "TOKEN", "v1:x:y", NOW)
    with closing(sqlite3.connect(sqlite_store.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with nonblocking():
            assert [record.key for record in sqlite_store.find_secrets("alice")] == ["TOKEN"]
        other.execute("COMMIT")


def test_a_busy_connection_is_refused_without_waiting(sqlite_store: SQLiteStore) -> None:
    """Another thread using the one shared connection: a nonblocking call does not queue behind it."""
    entered, leave = threading.Event(), threading.Event()

    def hold_the_connection() -> None:
        def work(_connection: sqlite3.Connection) -> None:
            entered.set()
            leave.wait(30)

        sqlite_store._run(work)

    holder = threading.Thread(target=hold_the_connection)
    holder.start()
    try:
        assert entered.wait(30)
        with nonblocking(), pytest.raises(WouldBlock):
            sqlite_store.find_secrets("alice")
    finally:
        leave.set()
        holder.join()
    with nonblocking():
        assert sqlite_store.find_secrets("alice") == []


async def test_network_stores_always_run_in_a_thread(store: SecretStore) -> None:
    loop_thread = threading.get_ident()
    ran_on = await run_store_work(store, lambda: (threading.get_ident(), store.find_secrets("alice"))[0])
    assert (ran_on == loop_thread) is store.answers_inline
