"""Audit retention on every backend: pruning deletes just the events older than the cut-off, and says so."""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import new_canary
from mcp_secrets.errors import ConfigurationError, InvalidInputError, SecretsError
from mcp_secrets.retention import MAX_BATCH_SIZE, archive_file, prune_events
from mcp_secrets.secrets import OPERATOR, Secrets
from mcp_secrets.store import AuditEvent, SecretStore, SecretUse

# Whole milliseconds: a BSON date keeps no finer, and these tests run on every backend.
NOW = datetime(2026, 6, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)
KEEP = timedelta(days=90)
DAYS = 120  # one event a day, the oldest 120 days old
OLDER = DAYS - 90  # events strictly older than 90 days: days 91 to 120


def all_events(store: SecretStore) -> list[AuditEvent]:
    return store.list_events(None, None, 100_000)


@pytest.fixture
def aged(store: SecretStore) -> SecretStore:
    """One event a day for 120 days, written in time order and alternating two users, and 3 of today."""
    for day in range(DAYS, 0, -1):
        actor = "alice" if day % 2 else "bob"
        store.add_event(AuditEvent(NOW - timedelta(days=day), actor, "used", "github", "TOKEN", "library"))
    for minutes in (3, 2, 1):
        at = NOW - timedelta(minutes=minutes)
        store.add_event(AuditEvent(at, "carol", "created", "linear", "KEY", "cli"))
    return store


# --- the store ------------------------------------------------------------------------------------


def test_count_events_counts_every_users_events_strictly_before_the_cut_off(aged: SecretStore) -> None:
    assert aged.count_events(NOW - KEEP) == OLDER  # the event exactly 90 days old is not before it
    assert aged.count_events(NOW - timedelta(days=DAYS)) == 0
    assert aged.count_events(NOW + timedelta(seconds=1)) == DAYS + 3


def test_delete_events_deletes_at_most_limit_of_the_older_events_first_written_first(
    aged: SecretStore,
) -> None:
    cutoff = NOW - KEEP

    assert aged.delete_events(cutoff, 10) == 10

    remaining = all_events(aged)
    assert len(remaining) == DAYS + 3 - 10
    assert min(event.at for event in remaining) == NOW - timedelta(days=DAYS - 10)
    assert aged.count_events(cutoff) == OLDER - 10


def test_delete_events_called_until_it_returns_zero_leaves_only_events_from_the_cut_off_on(
    aged: SecretStore,
) -> None:
    cutoff = NOW - KEEP
    kept_before = [event for event in all_events(aged) if event.at >= cutoff]

    deleted = []
    while batch := aged.delete_events(cutoff, 7):
        deleted.append(batch)

    assert deleted == [7, 7, 7, 7, 2]
    assert all_events(aged) == kept_before
    assert aged.count_events(cutoff) == 0


class RefusedError(Exception):
    """What a ``keep`` that cannot archive raises in these tests."""


def test_keep_receives_exactly_the_events_it_deletes_in_the_order_written(aged: SecretStore) -> None:
    cutoff = NOW - KEEP
    older = sorted((event for event in all_events(aged) if event.at < cutoff), key=lambda event: event.at)
    kept: list[list[AuditEvent]] = []

    while aged.delete_events(cutoff, 7, kept.append):
        pass

    assert [len(batch) for batch in kept] == [7, 7, 7, 7, 2]
    assert [event for batch in kept for event in batch] == older


def test_a_keep_that_raises_leaves_its_batch_in_the_store(aged: SecretStore) -> None:
    before = all_events(aged)

    def refuse(_: list[AuditEvent]) -> None:
        raise RefusedError

    with pytest.raises(RefusedError):
        aged.delete_events(NOW - KEEP, 7, refuse)

    assert all_events(aged) == before


def test_a_prune_alongside_another_never_deletes_an_event_written_meanwhile(store: SecretStore) -> None:
    # Every event is old, so once the other prune has taken them all a new event may get an old one's id.
    for day in range(DAYS, 90, -1):
        store.add_event(AuditEvent(NOW - timedelta(days=day), "alice", "used", "github", "TOKEN", "library"))
    written_meanwhile = AuditEvent(NOW, "bob", "created", "linear", "KEY", "cli")

    def another_prune_then_a_new_event(_: list[AuditEvent]) -> None:
        while store.delete_events(NOW - KEEP, DAYS):
            pass
        store.add_event(written_meanwhile)

    store.delete_events(NOW - KEEP, DAYS, another_prune_then_a_new_event)

    assert all_events(store) == [written_meanwhile]


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset to change the local zone")
def test_a_time_without_a_zone_is_utc_on_every_store_whatever_the_local_zone(
    aged: SecretStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pymongo writes a naive datetime as UTC: SQLite read it in the machine's zone, five hours off here,
    # which took in the event exactly at the cut-off.
    monkeypatch.setenv("TZ", "EST5")  # POSIX: UTC-5, no time zone database needed
    time.tzset()
    try:
        naive_cutoff = (NOW - KEEP).replace(tzinfo=None)
        assert aged.count_events(naive_cutoff) == OLDER
        assert aged.delete_events(naive_cutoff, DAYS) == OLDER
    finally:
        monkeypatch.undo()
        time.tzset()


# --- prune_events ---------------------------------------------------------------------------------


def test_prune_deletes_the_older_events_in_batches_and_records_itself(aged: SecretStore) -> None:
    kept = [event for event in all_events(aged) if event.at >= NOW - KEEP]
    progress: list[tuple[int, int]] = []

    report = prune_events(
        aged, KEEP, batch_size=7, via="cli", now=NOW, on_progress=lambda *done: progress.append(done)
    )

    assert (report.before, report.found, report.deleted) == (NOW - KEEP, OLDER, OLDER)
    assert progress == [(7, OLDER), (14, OLDER), (21, OLDER), (28, OLDER), (OLDER, OLDER)]
    newest, *rest = all_events(aged)
    assert rest == kept
    assert (newest.actor, newest.action, newest.transport, newest.server, newest.key) == (
        OPERATOR,
        "audit-pruned",
        "cli",
        "",
        "",
    )
    assert newest.detail == f"{OLDER} events before 2026-03-03 12:00:00 UTC deleted"
    assert newest.at > NOW  # recorded when it happened, after everything it kept


def test_prune_dry_run_counts_and_changes_nothing(aged: SecretStore) -> None:
    before = all_events(aged)

    report = prune_events(aged, KEEP, dry_run=True, now=NOW)

    assert (report.found, report.deleted) == (OLDER, 0)
    assert all_events(aged) == before


def test_a_second_prune_finds_nothing_more_and_keeps_the_first_ones_record(aged: SecretStore) -> None:
    prune_events(aged, KEEP, now=NOW)

    report = prune_events(aged, KEEP, now=NOW)

    assert (report.found, report.deleted) == (0, 0)
    assert [event.detail for event in all_events(aged) if event.action == "audit-pruned"] == [
        "0 events before 2026-03-03 12:00:00 UTC deleted",
        f"{OLDER} events before 2026-03-03 12:00:00 UTC deleted",
    ]


def test_a_prune_stopped_by_its_archive_keeps_the_rest_and_records_what_it_deleted(aged: SecretStore) -> None:
    archived: list[AuditEvent] = []

    def archive_two_batches(events: list[AuditEvent]) -> None:
        if len(archived) == 14:
            raise RefusedError
        archived.extend(events)

    with pytest.raises(RefusedError):
        prune_events(aged, KEEP, batch_size=7, now=NOW, keep=archive_two_batches)

    newest, *rest = all_events(aged)
    assert (newest.action, newest.detail) == (
        "audit-pruned",
        "14 events before 2026-03-03 12:00:00 UTC deleted, then stopped by an error",
    )
    assert aged.count_events(NOW - KEEP) == OLDER - 14
    assert not set(archived) & set(rest)
    assert len(archived) + len(rest) == DAYS + 3


@pytest.mark.parametrize(
    ("older_than", "batch_size", "message"),
    [
        (timedelta(0), 10, "retention period"),
        (timedelta(days=-1), 10, "retention period"),
        (KEEP, 0, "batch size"),
        # One batch is one delete: MongoDB sends its ids in one command, whose size is bounded (16 MB).
        (KEEP, MAX_BATCH_SIZE + 1, "batch size"),
    ],
)
def test_prune_refuses_a_period_or_batch_size_out_of_range_and_deletes_nothing(
    aged: SecretStore, older_than: timedelta, batch_size: int, message: str
) -> None:
    before = all_events(aged)

    with pytest.raises(InvalidInputError, match=message):
        prune_events(aged, older_than, batch_size=batch_size, now=NOW)

    assert all_events(aged) == before


def test_pruning_the_trail_never_touches_a_secret_or_its_last_use(secrets: Secrets) -> None:
    value = new_canary()
    secrets.set_secret("alice", "github", "TOKEN", value)
    assert secrets.get_secrets("alice", "github") == {"TOKEN": value}
    [info_before] = secrets.list_secret_keys("alice")

    later = datetime.now(timezone.utc) + timedelta(days=2)
    report = prune_events(secrets.store, timedelta(days=1), now=later)

    assert report.deleted == 2  # created, used
    assert secrets.list_secret_keys("alice") == [info_before]
    assert secrets.get_secrets("alice", "github") == {"TOKEN": value}
    assert [event.action for event in secrets.list_events(None)] == ["used", "audit-pruned"]


# --- archive_file ---------------------------------------------------------------------------------


def test_archive_file_appends_every_pruned_event_to_an_owner_only_file(
    aged: SecretStore, tmp_path: Path
) -> None:
    older = sorted((event for event in all_events(aged) if event.at < NOW - KEEP), key=lambda event: event.at)
    path = tmp_path / "audit.jsonl"

    with archive_file(path) as keep:
        prune_events(aged, KEEP, batch_size=7, now=NOW, keep=keep)

    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text(encoding="utf-8") == "".join(event.to_json() + "\n" for event in older)


@pytest.mark.skipif(os.name != "posix", reason="modes are POSIX")
def test_archive_file_appends_to_an_existing_file_others_can_read_with_a_warning_keeping_its_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("", encoding="utf-8")
    path.chmod(0o644)  # its owner chose it: kept, as the store keeps its file's

    with caplog.at_level(logging.WARNING, logger="mcp_secrets"), archive_file(path) as keep:
        keep([AuditEvent(NOW, "alice", "used", "github", "TOKEN", "library")])

    assert path.stat().st_mode & 0o777 == 0o644
    warning = f"the export file {path} is readable by other users (names and times, no values); "
    assert [record.getMessage() for record in caplog.records] == [f"{warning}run: chmod 600 {path}"]


def test_a_batch_written_in_part_is_cut_off_again_and_stays_in_the_store(
    aged: SecretStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk filling up half-way through a batch cannot be staged here: the write is cut short instead.
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": "line"}\n', encoding="utf-8")
    write = os.write

    def short_then_full(descriptor: int, data: bytes) -> int:
        if len(data) > 100:
            return write(descriptor, data[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = all_events(aged)
    monkeypatch.setattr(os, "write", short_then_full)
    with archive_file(path) as keep, pytest.raises(SecretsError, match="No space left on device"):
        prune_events(aged, KEEP, now=NOW, keep=keep)
    monkeypatch.undo()

    assert path.read_text(encoding="utf-8") == '{"earlier": "line"}\n'
    assert all_events(aged) == before


def test_an_archive_left_ending_in_half_a_line_gets_each_new_event_on_a_line_of_its_own(
    aged: SecretStore, tmp_path: Path
) -> None:
    # What a run killed (or a machine losing power) in the middle of a write leaves: its batch is still
    # in the store, so the next run writes it again, and its first event must not join the half line.
    older = sorted((event for event in all_events(aged) if event.at < NOW - KEEP), key=lambda event: event.at)
    path = tmp_path / "audit.jsonl"
    half = older[0].to_json()[:30]
    path.write_text('{"earlier": "line"}\n' + half, encoding="utf-8")

    with archive_file(path) as keep:
        prune_events(aged, KEEP, batch_size=7, now=NOW, keep=keep)

    earlier, cut, *lines = path.read_text(encoding="utf-8").split("\n")
    assert (earlier, cut) == ('{"earlier": "line"}', half)
    assert lines == [*(event.to_json() for event in older), ""]


def test_archive_file_that_cannot_be_opened_says_so_before_anything_is_deleted(tmp_path: Path) -> None:
    with (
        pytest.raises(ConfigurationError, match="cannot open the export file"),
        archive_file(tmp_path),  # a directory
    ):
        pytest.fail("an archive that cannot be opened was handed out")


def test_archive_file_creates_the_missing_directories_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "archive" / "audit" / "audit.jsonl"

    with archive_file(path) as keep:
        keep([AuditEvent(NOW, "alice", "used", "github", "TOKEN", "library")])

    assert [json.loads(line)["actor"] for line in path.read_text(encoding="utf-8").splitlines()] == ["alice"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert [directory.stat().st_mode & 0o777 for directory in (path.parent, path.parent.parent)] == [
        0o700
    ] * 2


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_archive_file_under_a_umask_that_masks_the_owners_bits_makes_a_file_and_directories_it_can_use(
    tmp_path: Path,
) -> None:
    # Under umask 777 they were made mode 000: a later run, or the reader of the archive, could not open them.
    path = tmp_path / "archive" / "audit.jsonl"
    previous = os.umask(0o777)
    try:
        with archive_file(path) as keep:
            keep([AuditEvent(NOW, "alice", "used", "github", "TOKEN", "library")])
    finally:
        os.umask(previous)

    assert [path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777] == [0o600, 0o700]


def test_archive_file_under_a_file_says_it_cannot_make_the_directory(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("", encoding="utf-8")

    with (
        pytest.raises(ConfigurationError, match=r"cannot create the directory .* of the export file"),
        archive_file(tmp_path / "a-file" / "archive" / "audit.jsonl"),
    ):
        pytest.fail("an archive that cannot be opened was handed out")


def test_archive_file_under_a_directory_it_may_not_search_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a user without search permission on a parent sees it (root, running the tests, never does).
    def refused(path: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "exists", refused)

    with (
        pytest.raises(ConfigurationError, match=r"cannot create the directory .*: Permission denied"),
        archive_file(tmp_path / "locked" / "archive" / "audit.jsonl"),
    ):
        pytest.fail("an archive that cannot be opened was handed out")


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_second_archive_of_the_same_file_is_refused_while_the_first_is_open(
    aged: SecretStore, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    before = all_events(aged)

    with archive_file(path) as keep:
        with (
            pytest.raises(SecretsError, match="in use by another prune; run one at a time"),
            archive_file(path),
        ):
            pytest.fail("a second archive of a file in use was handed out")
        assert all_events(aged) == before
        prune_events(aged, KEEP, now=NOW, keep=keep)

    with archive_file(path):  # free again once the first is closed
        pass


def test_an_archive_of_a_real_trail_holds_names_and_times_never_a_value(
    secrets: Secrets, tmp_path: Path
) -> None:
    first, second = new_canary(), new_canary()
    secrets.set_secret("alice", "github", "TOKEN", first, via="cli")
    secrets.update_secret("alice", "github", "TOKEN", second, "update", via="streamable-http")
    secrets.get_secrets("alice", "github", via="gateway", action="injected", detail="github__search")
    secrets.delete_secret("alice", "github", "TOKEN", via="stdio")
    secrets.flush()
    path = tmp_path / "audit.jsonl"

    with archive_file(path) as keep:
        report = prune_events(
            secrets.store, timedelta(days=1), now=datetime.now(timezone.utc) + timedelta(days=2), keep=keep
        )

    archived = path.read_text(encoding="utf-8")
    assert report.deleted == 4
    assert [json.loads(line)["action"] for line in archived.splitlines()] == [
        "created",
        "updated",
        "injected",
        "deleted",
    ]
    assert first not in archived
    assert second not in archived


def test_a_sqlite_prune_leaves_no_part_of_the_wal_it_wrote_to_the_servers_on_the_file(tmp_path: Path) -> None:
    # A server's connection that committed after a batch checkpointed what the prune wrote, under the lock
    # its other calls wait on, and the WAL, never started over, grew to four times the database (README).
    from mcp_secrets.store.sqlite import SQLiteStore  # noqa: PLC0415 - SQLite only

    path = tmp_path / "secrets.db"
    store = SQLiteStore(path)
    server = sqlite3.connect(path, isolation_level=None)
    try:
        uses = [
            SecretUse(
                f"user{n}", "github", ("TOKEN",), AuditEvent(NOW - timedelta(days=200), f"user{n}", "used")
            )
            for n in range(2000)
        ]
        store.record_uses(uses)
        assert store.delete_events(NOW - KEEP, 1500) == 1500
        server.execute(
            "INSERT INTO audit_events (at, actor, action) VALUES (?, 'bob', 'used')", (NOW.isoformat(),)
        )
        _, frames, _ = server.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        server.close()
        store.close()
    # The server's one event is all the WAL holds: the prune's batch went into the database, by the prune.
    assert frames <= 4


def test_a_sqlite_batch_of_many_events_is_deleted_in_short_transactions(tmp_path: Path) -> None:
    # A batch of 100,000 held the write lock for 3 s: a server's set_secret waited as long.
    from mcp_secrets.store.sqlite import DELETES_PER_TRANSACTION, SQLiteStore  # noqa: PLC0415 - SQLite only

    store = SQLiteStore(tmp_path / "secrets.db")
    events = 2 * DELETES_PER_TRANSACTION + 1
    old = AuditEvent(NOW - timedelta(days=200), "alice", "used")
    store.record_uses([SecretUse("alice", "github", ("TOKEN",), old)] * events)
    kept: list[int] = []
    statements: list[str] = []
    store._connection.set_trace_callback(statements.append)
    try:
        deleted = store.delete_events(NOW - KEEP, events, lambda batch: kept.append(len(batch)))
    finally:
        store._connection.set_trace_callback(None)
        store.close()

    assert (deleted, kept) == (events, [events])  # kept as one batch, as it was asked for
    assert statements.count("BEGIN IMMEDIATE") == 3
