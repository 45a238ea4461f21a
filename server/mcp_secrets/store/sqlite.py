"""The embedded default store: one SQLite file, WAL mode, created with mode 0600."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from mcp_secrets.errors import StoreUnavailableError, UnreadableRecordError
from mcp_secrets.file_modes import others_may_read, others_may_write, owned_elsewhere
from mcp_secrets.store import (
    LINK_CLOCK_STEP,
    AuditEvent,
    CloseCallbacks,
    FieldError,
    LimitReached,
    LinkRecord,
    SecretRecord,
    SecretUse,
    TokenRecord,
    WouldBlock,
    is_nonblocking,
    latest_uses,
    unreadable_record,
)

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_secrets (
    username   TEXT NOT NULL,
    server     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_used_at TEXT,
    PRIMARY KEY (username, server, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id   TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    label      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS api_tokens_username ON api_tokens (username);
CREATE TABLE IF NOT EXISTS audit_events (
    id        INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    server    TEXT NOT NULL DEFAULT '',
    key       TEXT NOT NULL DEFAULT '',
    transport TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_events_actor_time ON audit_events (actor, julianday(at));
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (julianday(at));
CREATE INDEX IF NOT EXISTS audit_events_actor_server_time ON audit_events (actor, server, julianday(at));
DROP INDEX IF EXISTS audit_events_actor;
CREATE TABLE IF NOT EXISTS entry_links (
    link_hash  TEXT PRIMARY KEY,
    link_id    TEXT NOT NULL,
    username   TEXT NOT NULL,
    server     TEXT NOT NULL,
    key        TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    claim_id   TEXT,
    token_id   TEXT,
    claimed_by TEXT
);
CREATE INDEX IF NOT EXISTS entry_links_expires_at ON entry_links (expires_at);
CREATE INDEX IF NOT EXISTS entry_links_username ON entry_links (username, expires_at);
"""
_SECRET_COLUMNS = "username, server, key, value, created_at, updated_at, last_used_at"  # noqa: S105 - column names
_EVENT_COLUMNS = "at, actor, action, server, key, transport, detail"
_LINK_COLUMNS = (
    "link_id, link_hash, username, server, key, created_at, expires_at, used_at, token_id, claimed_by"
)
_TOKEN_COLUMNS = "token_id, username, token_hash, created_at, expires_at, revoked_at, label"  # noqa: S105 - column names
BUSY_TIMEOUT_SECONDS = 10.0
# Keys looked up by one statement of stored_keys, beside its username and server: SQLite before 3.32 takes
# at most 999 parameters.
_KEYS_PER_STATEMENT = 500
# How often a batch of uses tries again while another process holds the lock: as SQLite's busy handler does.
_FIRST_PAUSE_SECONDS = 0.001
_LAST_PAUSE_SECONDS = 0.025
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11

logger = logging.getLogger(__name__)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """True when SQLite refused because another connection holds a lock (it would have waited)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is None:
        return "locked" in str(exc)
    return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _is_error(exc: sqlite3.Error, code: int, words: str) -> bool:
    """True when SQLite's primary result code of ``exc`` is ``code`` (on 3.10: its message has ``words``)."""
    extended = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if extended is None:
        return words in str(exc)
    return bool(extended & 0xFF == code)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # UTC, as pymongo takes it: not the machine's zone, as astimezone would
        return moment.replace(tzinfo=timezone.utc).isoformat()
    return (moment if moment.tzinfo is timezone.utc else moment.astimezone(timezone.utc)).isoformat()


def _text(field: str, stored: object) -> str:
    if type(stored) is not str:  # SQLite keeps whatever another tool wrote: a BLOB, say
        raise FieldError(field, stored, "text")
    return stored


def _text_or_none(field: str, stored: object) -> str | None:
    return None if stored is None else _text(field, stored)


def _moment(field: str, stored: object) -> datetime:
    if type(stored) is str:
        try:
            moment = datetime.fromisoformat(stored)
        except ValueError:
            pass  # named below, never quoted: a field of the wrong shape may hold a value
        else:
            if moment.tzinfo is timezone.utc:  # as _iso writes it
                return moment
            if not moment.tzinfo:  # written by hand without an offset: UTC, as _iso reads a naive time
                return moment.replace(tzinfo=timezone.utc)
            try:  # with another offset, in UTC
                return moment.astimezone(timezone.utc)
            except OverflowError:  # year 1 ahead of UTC, or 9999 behind it
                raise FieldError(field, stored, "a time within the years 1 to 9999 in UTC") from None
    raise FieldError(field, stored, "a time in ISO 8601")


def _moment_or_none(field: str, stored: object) -> datetime | None:
    return None if stored is None else _moment(field, stored)


def _unreadable_row(
    table: str, columns: str, row: Sequence[object], fault: FieldError
) -> UnreadableRecordError:
    return unreadable_record("row", table, dict(zip(columns.split(", "), row, strict=True)), fault)


def _secret(row: Sequence[object]) -> SecretRecord:
    username, server, key, value, created_at, updated_at, last_used_at = row
    # The hot path of get_secrets, a row per key: a row of the shape this store writes is taken at once
    # (about 130 ns more than unchecked, where the field-by-field checks below add 370); any other row
    # goes through those, which name what is wrong.
    if type(username) is str and type(server) is str and type(key) is str and type(value) is str:
        try:
            created = datetime.fromisoformat(created_at)  # type: ignore[arg-type] # TypeError: checked below
            updated = datetime.fromisoformat(updated_at)  # type: ignore[arg-type]
            used = None if last_used_at is None else datetime.fromisoformat(last_used_at)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
        else:
            if created.tzinfo and updated.tzinfo and (used is None or used.tzinfo):
                return SecretRecord(username, server, key, value, created, updated, used)
    try:
        return SecretRecord(
            _text("username", username),
            _text("server", server),
            _text("key", key),
            _text("value", value),
            _moment("created_at", created_at),
            _moment("updated_at", updated_at),
            _moment_or_none("last_used_at", last_used_at),
        )
    except FieldError as fault:
        raise _unreadable_row("user_secrets", _SECRET_COLUMNS, row, fault) from None


def _event(row: Sequence[object]) -> AuditEvent:
    at, actor, action, server, key, transport, detail = row
    try:
        return AuditEvent(
            _moment("at", at),
            _text("actor", actor),
            _text("action", action),
            _text("server", server),
            _text("key", key),
            _text("transport", transport),
            _text("detail", detail),
        )
    except FieldError as fault:
        raise _unreadable_row("audit_events", _EVENT_COLUMNS, row, fault) from None


def _token(row: Sequence[object]) -> TokenRecord:
    token_id, username, token_hash, created_at, expires_at, revoked_at, label = row
    try:
        return TokenRecord(
            _text("token_id", token_id),
            _text("username", username),
            _text("token_hash", token_hash),
            _moment("created_at", created_at),
            _moment_or_none("expires_at", expires_at),
            _moment_or_none("revoked_at", revoked_at),
            _text("label", label),
        )
    except FieldError as fault:
        raise _unreadable_row("api_tokens", _TOKEN_COLUMNS, row, fault) from None


def _link(row: Sequence[object]) -> LinkRecord:
    link_id, link_hash, username, server, key, created_at, expires_at, used_at, token_id, claimed_by = row
    try:
        return LinkRecord(
            _text("link_id", link_id),
            _text("link_hash", link_hash),
            _text("username", username),
            _text("server", server),
            _text("key", key),
            _moment("created_at", created_at),
            _moment("expires_at", expires_at),
            _moment_or_none("used_at", used_at),
            _text_or_none("token_id", token_id),
            _text_or_none("claimed_by", claimed_by),
        )
    except FieldError as fault:
        raise _unreadable_row("entry_links", _LINK_COLUMNS, row, fault) from None


def _undecodable(exc: sqlite3.OperationalError) -> bool:
    """True when sqlite3 could not decode a stored text as UTF-8 (another tool wrote it)."""
    return str(exc).startswith("Could not decode to UTF-8")


def _text_or_bytes(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # as a BLOB would be: the conversion to a record names its field and row


def _unavailable(exc: sqlite3.Error) -> StoreUnavailableError:
    if isinstance(exc, sqlite3.IntegrityError):
        # The file's schema or a trigger of its own refused the write (a schema of a later version, an
        # append-only trigger): it names the constraint, never a value.
        return StoreUnavailableError(f"the SQLite store refused a write: {exc}")
    return StoreUnavailableError(f"the SQLite store is unavailable: {exc}")


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (the connection is in autocommit mode otherwise)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise


def _roll_back(connection: sqlite3.Connection) -> None:
    """End a failed transaction, if SQLite has not: the error that failed it is the one to raise.

    After a disk full (a page the file cannot grow by, a WAL it cannot extend), an I/O error or an
    interrupt, SQLite may have rolled the whole transaction back itself: a ROLLBACK then fails with
    "no transaction is active", which would replace the error that says why. One still open after a
    failed COMMIT would keep the write lock, and every other process on the file would wait on it.
    """
    if connection.in_transaction:
        with suppress(sqlite3.Error):  # the connection's next BEGIN says so, if it is still open
            connection.execute("ROLLBACK")


def _live_links(connection: sqlite3.Connection, username: str, now: datetime) -> int:
    return int(
        connection.execute(
            "SELECT count(*) FROM entry_links "
            "WHERE username = ? AND used_at IS NULL AND expires_at > ? AND created_at <= ?",
            (username, _iso(now), _iso(now + LINK_CLOCK_STEP)),
        ).fetchone()[0]
    )


def _write_record(
    connection: sqlite3.Connection,
    record: tuple[str, str, str],
    value: str,
    stamp: str | None,
    max_records: int | None = None,
) -> bool:
    """Replace or insert a record's value; True when it was inserted.

    Three plain statements, each atomic, rather than one upsert with RETURNING, which the
    sqlite3 module makes several times slower; a replacement, the common case, takes one.
    With ``max_records`` the caller holds a write transaction, so the count stays true until the insert.
    """
    replaced = connection.execute(
        "UPDATE user_secrets SET value = ?, updated_at = ? WHERE username = ? AND server = ? AND key = ?",
        (value, stamp, *record),
    ).rowcount
    if replaced:
        return False
    if max_records is not None:
        held = connection.execute("SELECT count(*) FROM user_secrets WHERE username = ?", record[:1])
        if held.fetchone()[0] >= max_records:
            raise LimitReached
    inserted = connection.execute(
        "INSERT INTO user_secrets (username, server, key, value, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (username, server, key) DO NOTHING",
        (*record, value, stamp, stamp),
    ).rowcount
    if inserted:
        return True
    # Another connection inserted it in between: this write replaces that one, as a later save would.
    connection.execute(
        "UPDATE user_secrets SET value = ?, updated_at = ? WHERE username = ? AND server = ? AND key = ?",
        (value, stamp, *record),
    )
    return False


_FIRST_RECORDS = (
    "SELECT username, server, key, value FROM user_secrets ORDER BY username, server, key LIMIT ?"
)
_LAST_RECORDS = (
    "SELECT username, server, key, value FROM user_secrets "
    "ORDER BY username DESC, server DESC, key DESC LIMIT ?"
)
_INSERT_EVENT = f"INSERT INTO audit_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - fixed SQL
# ISO 8601 texts in UTC, as _iso writes them, sort as the times do: the later use wins. A use from before
# the record was created was a use of another record, deleted since (one written late, by another process's
# writer): it is not this one's last use. A creation time SQLite cannot read stops no use from counting.
_MARK_USED = (
    "UPDATE user_secrets SET last_used_at = ? WHERE username = ? AND server = ? AND key = ? "
    "AND (last_used_at IS NULL OR last_used_at < ?) "
    "AND (julianday(created_at) IS NULL OR julianday(created_at) <= julianday(?))"
)


def _event_row(event: AuditEvent) -> tuple[str | None, str, str, str, str, str, str]:
    return (_iso(event.at), event.actor, event.action, event.server, event.key, event.transport, event.detail)


def _insert_event(connection: sqlite3.Connection, event: AuditEvent) -> None:
    connection.execute(_INSERT_EVENT, _event_row(event))


# An event's time against a cut-off, as times rather than texts: one written by hand may have a space for
# the "T", no offset (UTC) or another offset, and sort as text before the cut-off while it is after it.
_BEFORE = "julianday(at) < julianday(?)"
# julianday() keeps milliseconds: within one, the texts (as _iso writes them, microseconds included) tell
# which came first, not the ids: another process's background writer writes a use some milliseconds after
# it happened, after a change made later in the same millisecond. The indexes give the order to the
# millisecond (audit_events_actor_time and _time); SQLite sorts only within each millisecond after that.
_NEWEST_FIRST = "julianday(at) DESC, at DESC, id DESC"


# Events a prune deletes per transaction, whatever its batch size: the write lock is held for tens of ms.
DELETES_PER_TRANSACTION = 5000
# How long a prune's checkpoint waits for other connections' readers and writer before it copies what it can.
_CHECKPOINT_WAIT_MS = 100
# WAL frames (pages) past which a prune's checkpoint also starts the WAL over: ten times SQLite's own
# automatic checkpoint, about 40 MB.
_RESTART_FRAMES = 10_000


def _checkpoint(connection: sqlite3.Connection) -> None:
    """Copy the WAL into the database now, after a prune's batch; start the WAL over once it has grown.

    A batch rewrites thousands of index pages. Left to SQLite's automatic checkpoint, that copy fell to
    whichever connection committed next, often a server's, under the lock all its calls wait on (another
    user's get_secrets waited 1.3 s). The copy (PASSIVE) takes no lock a writer waits for. Starting the WAL
    over (RESTART) does, while it waits for readers: done after every batch of a long prune, it kept a
    serving server's writes out past their busy timeout. So only once the WAL has grown, which with a
    server reading all along it otherwise did to four times the database; and waiting only briefly.
    """
    _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames < _RESTART_FRAMES:
        return
    waits = connection.execute("PRAGMA busy_timeout").fetchone()[0]
    connection.execute(f"PRAGMA busy_timeout = {min(waits, _CHECKPOINT_WAIT_MS)}")
    try:
        connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    finally:
        connection.execute(f"PRAGMA busy_timeout = {waits}")


def _event_filter(actor: str | None, server: str | None) -> tuple[list[str], list[str]]:
    """The conditions (and their parameters) that pick the events of one actor and one server, when given."""
    conditions, params = [], []
    if actor is not None:
        conditions.append("actor = ?")
        params.append(actor)
    if server is not None:
        conditions.append("server = ?")
        params.append(server)
    return conditions, params


def _check_writable(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse a file SQLite opened for reading only (its mode, a read-only filesystem): said at the start.

    Otherwise the first write fails, and a server serves reads while no use of theirs can be recorded. A
    statement that writes nothing still needs a writable file; SQLite's own check stays silent.
    """
    try:
        connection.execute("UPDATE user_secrets SET username = username WHERE 0")
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc):  # SQLITE_READONLY's message (its code is not on 3.10's errors)
            raise
        raise StoreUnavailableError(
            f"the SQLite store at {path} can be read but not written ({exc}): check the permissions of the "
            "file, its -wal and -shm files and its directory, and that its filesystem is not read-only"
        ) from None


def _holds_a_store(connection: sqlite3.Connection) -> bool:
    """Whether the file holds this project's tables (read only: nothing is written to find out)."""
    found = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'user_secrets'"
    ).fetchone()
    return found is not None


def _use_wal(connection: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode (kept in the file, for every connection), waiting for other writers.

    While another connection holds the write lock of a file not yet in WAL mode (another process
    creating the same new store), SQLite refuses the switch at once rather than call its busy
    handler. Taking the write lock waits for that connection; the switch is then tried again, and
    is a no-op if the other connection made it. Past ``timeout`` seconds the refusal stands.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        else:
            return
        connection.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout, as a write would
        connection.execute("ROLLBACK")


# Columns added since the first version, by table, with their declarations.
_ADDED_COLUMNS = {
    "user_secrets": (("last_used_at", "TEXT"),),
    # token_id stays NULL in links made before it: they name no token, and live out their time. So does
    # claimed_by in links claimed before it: no later post is taken for the same form's.
    "entry_links": (("claim_id", "TEXT"), ("token_id", "TEXT"), ("claimed_by", "TEXT")),
}


def _make_schema(connection: sqlite3.Connection, path: Path) -> None:
    """Create the tables and indexes a file lacks; a file made by an earlier version gains those added since.

    On a file of this version nothing is written, so a process that can only read it opens it.
    """
    try:
        connection.executescript(_SCHEMA)
        # Looked at again under the write lock: another process opening the same file may be adding them.
        if _missing_columns(connection):
            with _transaction(connection):
                for table, column, declaration in _missing_columns(connection):
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    except sqlite3.OperationalError as exc:
        if "readonly" not in str(exc):  # SQLITE_READONLY's message (its code is not on 3.10's errors)
            raise
        raise StoreUnavailableError(
            f"the SQLite store at {path} was made by an earlier version of mcp-secrets, and gains the "
            f"tables, columns and indexes added since when it is opened; this process can read it but not "
            f"write it ({exc}): open it once as a user who can write it (any mcp-secrets command does)"
        ) from None


def _missing_columns(connection: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """The added columns (table, column, declaration) a file made by an earlier version does not have yet."""
    missing: list[tuple[str, str, str]] = []
    for table, added in _ADDED_COLUMNS.items():
        columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        missing += [(table, column, declaration) for column, declaration in added if column not in columns]
    return missing


def _identity(status: os.stat_result) -> tuple[int, int]:
    """What tells one file from another at the same path: its device and inode numbers."""
    return status.st_dev, status.st_ino


def make_private_directories(directory: Path) -> list[Path]:
    """Create ``directory`` and every missing directory above it owner-only, as the XDG spec asks.

    ``mkdir(parents=True)`` makes the ones above by the umask: under umask 000, world-writable, and
    another user could swap the directory holding the database or the master key for one of theirs.
    Returns the directories it made, the topmost first.
    """
    missing: list[Path] = []
    for path in (directory, *directory.parents):
        if path.exists():  # raises, on Python 3.11, where a parent cannot be searched
            break
        missing.append(path)
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)  # exist_ok: another run may make it meanwhile
        if os.name == "posix":
            path.chmod(0o700)  # the umask may have taken the owner's bits too (umask 777: mode 000)
    return missing[::-1]


def sync_new_names(directory: Path, made: list[Path]) -> None:
    """Put on disk a new file's name in ``directory``, and the names of the directories ``made`` for it.

    ``made`` is what ``make_private_directories`` returned: a new directory's name is in its parent, so
    each is synced from the parent of the topmost down, and a power cut cannot take the file with one.
    """
    for each in (made[0].parent, *made) if made else (directory,):
        _sync_directory(each)


def _sync_directory(directory: Path) -> None:
    """Put a new name in ``directory`` on disk where a directory can be synced (POSIX, most file systems)."""
    if os.name != "posix":
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError:  # best effort: the file is written and readable either way
        pass


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only, before SQLite opens it.

    An existing file keeps its mode (its owner chose it), with a warning when others can read it, and
    either way a warning when another user owns it or a directory above it, or others can write its directory.
    """
    made = make_private_directories(path.parent)
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            if os.name == "posix":
                os.fchmod(descriptor, 0o600)  # the umask may have taken the owner's bits too
        finally:
            os.close(descriptor)
        if made:  # SQLite syncs the file's own directory as it makes its journal, not the ones above it
            sync_new_names(path.parent, made)
    except FileExistsError:
        mode = path.stat().st_mode
        if others_may_write(mode):  # worse than reading: a row of theirs in api_tokens is a token of any user
            logger.warning(
                "the database file %s is writable by other users, who can add API tokens for any user "
                "and change or delete records; run: chmod 600 %s",
                path,
                path,
            )
        elif others_may_read(mode):
            logger.warning(
                "the database file %s is readable by other users (names and times, no values); "
                "run: chmod 600 %s",
                path,
                path,
            )
    if (elsewhere := owned_elsewhere(path)) is not None:
        logger.warning(
            "the database file %s %s, who can add API tokens for any user and change or delete records",
            path,
            elsewhere,
        )
    directory = path.resolve().parent  # where SQLite keeps the -wal and -shm files: beside the real file
    if others_may_write(directory.stat().st_mode):
        # Even with the sticky bit (/tmp): it keeps others from replacing the file, not from adding its -wal.
        logger.warning(
            "the database file %s is in %s, a directory other users can write: they can put a -wal file of "
            "theirs beside it, which SQLite reads as part of the store, and so add API tokens for any user "
            "and change or delete records; keep the store in a directory only its owner can write",
            path,
            directory,
        )


def _hindrance(path: Path) -> str | None:
    """What keeps this process from a file SQLite could not open, in words; None when nothing is found.

    SQLite says "unable to open database file", or of a file in a directory this process may not write,
    "attempt to write a readonly database": neither names the permission to look at.
    """
    real = path.resolve()
    wal, shm = (real.with_name(real.name + end) for end in ("-wal", "-shm"))
    for each, name in ((real, "the file"), (wal, "its -wal file"), (shm, "its -shm file")):
        if (refused := _unreadable(each)) is not None:
            if refused.errno == errno.EIO:  # not a permission: the disk failed
                return f"reading {name} fails ({refused.strerror}): check its disk"
            return f"this process may not read {name} ({refused.strerror})"
    if not wal.exists() and not os.access(real.parent, os.W_OK | os.X_OK):
        return (
            f"this process may not make in {real.parent} the -wal and -shm files SQLite keeps beside the file"
        )
    return None


def _unreadable(path: Path) -> OSError | None:
    """Why this process may not open ``path`` to read it; None if it may, or there is no such file."""
    try:
        # Non-blocking: a named pipe would otherwise wait for a writer.
        os.close(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc
    return None


class SQLiteStore:
    """A ``SecretStore`` on one SQLite file, shared by threads through one locked connection.

    A call takes tens of microseconds, less than a hop to a worker thread, so callers on an event
    loop try it there first (``answers_inline``): under ``nonblocking()`` it runs only if the
    connection is free and SQLite can lock at once, and raises ``WouldBlock`` otherwise.
    """

    answers_inline = True

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = BUSY_TIMEOUT_SECONDS, create: bool = True
    ) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._busy_timeout_ms = round(busy_timeout * 1000)
        self._waits = True  # the connection's busy timeout is the configured one (False: 0)
        self._forked = False  # in a forked child, until it opens a connection of its own
        self._let_go = False  # the connection was closed after an I/O error: the next call opens the file
        self._disk_failed = False  # an I/O error failed a call, and no call has worked since
        self._before_close = CloseCallbacks()
        try:
            # Absolute, so that SQLite never takes a relative "file:…" for a URI (a store in memory, or
            # another file), and a later chdir never points a check or a new connection elsewhere.
            self._path_text = os.fspath(self.path.absolute())
            # In the try: a path that cannot be looked at (a name too long) is one that cannot be opened.
            if not create and not self.path.exists():
                # A command that only reads or removes must not leave an empty store at a mistyped path.
                raise StoreUnavailableError(
                    f"there is no SQLite store at {self.path}: nothing is stored yet, "
                    "or MCP_SECRETS_DATABASE_URL names another file"
                )
            _create_private_file(self.path)
            # SQLite gives the -wal and -shm files the database file's own mode (0600).
            self._connection = self._connect()
            if not create and not _holds_a_store(self._connection):
                # Nor make one in another program's database, or in an empty file, by writing our schema.
                self._connection.close()
                if self.path.stat().st_size == 0:  # made before SQLite wrote a page of it
                    raise StoreUnavailableError(
                        f"the file {self.path} is not an mcp-secrets store: it is empty, as a first run "
                        "that did not finish (on a full disk, say) leaves it; `mcp-secrets set` or `serve` "
                        "makes it one, unless MCP_SECRETS_DATABASE_URL names another file"
                    )
                raise StoreUnavailableError(
                    f"the file {self.path} is not an mcp-secrets store (it has no user_secrets table): "
                    "MCP_SECRETS_DATABASE_URL may name another file"
                )
            _use_wal(self._connection, busy_timeout)
            _make_schema(self._connection, self.path)
            if create:
                _check_writable(self._connection, self.path)
            self._file = _identity(self.path.stat())
        except OSError as exc:
            raise StoreUnavailableError(f"the SQLite store at {self.path} cannot be opened: {exc}") from None
        except sqlite3.Error as exc:
            hindrance = _hindrance(self.path)
            raise StoreUnavailableError(
                f"the SQLite store at {self.path} cannot be opened: {exc}"
                + (f"; {hindrance}" if hindrance else "")
            ) from None
        _OPEN.add(self)

    def _connect(self, *, create: bool = True) -> sqlite3.Connection:
        """A connection to the file, with the settings each connection needs.

        Without ``create``, SQLite opens only a file that exists: never an empty one in its place.
        """
        connection = sqlite3.connect(
            self._path_text if create else Path(self._path_text).as_uri() + "?mode=rw",
            timeout=self._busy_timeout_ms / 1000,
            check_same_thread=False,
            isolation_level=None,
            uri=not create,
        )
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA secure_delete=ON")
        return connection

    def _after_fork(self) -> None:
        """In a forked child: a lock of its own, and a connection of its own at the first call.

        A thread of the parent may have held the lock at the fork, and no thread of the child would
        ever release it. SQLite must not use a connection across fork(); the inherited one is kept,
        neither used nor closed, since closing it would close descriptors SQLite's locks rely on.
        """
        self._lock = threading.Lock()
        _INHERITED.append(self._connection)
        self._forked = True

    def _open_in_child(self) -> None:
        self._connection = self._connect()
        self._waits = True
        self._forked = False
        self._let_go = False  # the parent's connection was closed, if it was: this one is open

    def _open_again(self) -> None:
        """Open the file at the path again, after an I/O error closed the connection to it."""
        try:
            self._connection = self._connect(create=False)
        except sqlite3.Error as exc:
            hindrance = _hindrance(self.path)
            raise StoreUnavailableError(
                f"the SQLite store is unavailable: its file {self.path} cannot be opened again after a disk "
                f"I/O error: {exc}" + (f"; {hindrance}" if hindrance else "")
            ) from None
        self._waits = True
        self._let_go = False

    def _failure(self, exc: sqlite3.Error) -> StoreUnavailableError:
        """The error that says why a call failed; after an I/O error, the connection is closed.

        A connection that met one keeps its file open, and SQLite's state of it: on an ext4 shut down
        for an I/O error, each later call of it read the file as malformed, while the file was whole, and
        the filesystem could not be unmounted to be checked and mounted again. A connection opened anew,
        at the next call, reads the file as it is once the disk is back. A file read as malformed right
        after an I/O error is said to be, after the I/O error, and opened anew too; one read as malformed
        otherwise is said to be, as SQLite says it.

        A file SQLite opened anew on a filesystem made read-only by an I/O error (ext4's
        ``errors=remount-ro``) is opened read-only, and serves reads; a write it refuses closes that
        connection too, as it would stay read-only once the filesystem is writable again.
        """
        if _is_error(exc, _SQLITE_IOERR, "disk I/O error"):
            self._let_go_of_the_file()
            self._disk_failed = True
            return StoreUnavailableError(
                f"the SQLite store is unavailable: reading or writing its file {self.path} failed ({exc}): "
                "check its disk; the file is opened again at the next call"
            )
        if self._disk_failed and _is_error(exc, _SQLITE_CORRUPT, "malformed"):
            self._let_go_of_the_file()
            return StoreUnavailableError(
                f"the SQLite store is unavailable: reading or writing its file {self.path} failed (disk I/O "
                f"error), and SQLite has read it as malformed since ({exc}): check its disk, then the file; "
                "it is opened again at the next call"
            )
        if _is_error(exc, _SQLITE_READONLY, "readonly"):
            self._let_go_of_the_file()
        return _unavailable(exc)

    def _let_go_of_the_file(self) -> None:
        """Close the connection, and with it the file: the next call opens the file again."""
        with suppress(sqlite3.Error):  # closed whatever it says: its file is failing
            self._connection.close()
        self._let_go = True

    def _check_file(self) -> None:
        """Refuse to go on when the file at the path is no longer the one open: writes would be lost.

        SQLite keeps using a deleted or renamed-over file (in WAL mode it notices neither), so
        every write would succeed, into a file nobody opens again, and every read would be stale.
        """
        try:
            now = _identity(os.stat(self._path_text))  # noqa: PTH116 - each call: 1.4 µs less than Path.stat
        except FileNotFoundError:
            raise StoreUnavailableError(
                f"the SQLite store is unavailable: its file {self.path} was deleted while in use; "
                "restart mcp-secrets to open the file now at that path"
            ) from None
        except OSError as exc:
            raise StoreUnavailableError(
                f"the SQLite store is unavailable: its file {self.path} cannot be checked: {exc.strerror}"
            ) from None
        if now != self._file:
            raise StoreUnavailableError(
                f"the SQLite store is unavailable: its file {self.path} was replaced by another while in "
                "use; restart mcp-secrets to open the file now at that path"
            )

    def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` on the shared connection, alone; database faults become ``StoreUnavailableError``."""
        # Plain try blocks rather than a shared context manager: this runs on every call, and a
        # generator-based one costs a microsecond each time.
        if is_nonblocking():
            return self._run_now(work)
        with self._lock:
            try:
                if self._forked:
                    self._open_in_child()
                self._check_file()
                if self._let_go:
                    self._open_again()
                if not self._waits:
                    self._wait_for_locks(wait=True)
                done = self._work(work)
            except sqlite3.Error as exc:
                raise self._failure(exc) from None
            self._disk_failed = False
            return done

    def _run_now(self, work: Callable[[sqlite3.Connection], _T], *, queue: bool = False) -> _T:
        """``_run`` without any wait: ``WouldBlock`` when the connection or the database is locked.

        With ``queue``, it waits for the connection (another thread's call here), not for the database.
        """
        if not self._lock.acquire(blocking=queue):
            raise WouldBlock
        try:
            if self._forked:
                self._open_in_child()
            self._check_file()
            if self._let_go:
                self._open_again()
            if self._waits:
                self._wait_for_locks(wait=False)
            done = self._work(work)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise self._failure(exc) from None
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            raise WouldBlock from None
        except sqlite3.Error as exc:
            raise self._failure(exc) from None
        finally:
            self._lock.release()
        self._disk_failed = False
        return done

    def _work(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(connection)``; where a text is not UTF-8, again with it read as bytes, to name its record.

        sqlite3's own error quotes the text. ``work`` has undone its transaction, if any, as it failed.
        """
        try:
            return work(self._connection)
        except sqlite3.OperationalError as exc:
            if not _undecodable(exc):
                raise
        self._connection.text_factory = _text_or_bytes
        try:
            return work(self._connection)
        finally:
            self._connection.text_factory = str

    def _wait_for_locks(self, *, wait: bool) -> None:
        """Set SQLite's busy timeout to the configured one or to 0; only on a change (calls hold the lock)."""
        if wait != self._waits:
            self._connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms if wait else 0}")
            self._waits = wait

    def put_secret(
        self,
        username: str,
        server: str,
        key: str,
        value: str,
        now: datetime,
        *,
        event: AuditEvent | None = None,
        max_records: int | None = None,
    ) -> bool:
        """Insert or replace one record's ciphertext; return True when it was created.

        ``event``, with its action set to ``created`` or ``updated``, is written in the same transaction.
        ``max_records`` is checked in it too: two processes at once cannot both take the last place.
        """
        stamp = _iso(now)
        shared = event is not None or max_records is not None

        def upsert(connection: sqlite3.Connection) -> bool:
            # Alone, the write is its own transaction; with an event or a limit, they share one.
            with _transaction(connection) if shared else nullcontext():
                created = _write_record(connection, (username, server, key), value, stamp, max_records)
                if event is not None:
                    _insert_event(connection, replace(event, action="created" if created else "updated"))
            return created

        return self._run(upsert)

    def delete_secret(self, username: str, server: str, key: str, *, event: AuditEvent | None = None) -> bool:
        """Remove one record, writing ``event`` in the same transaction; return False when there was none."""

        def delete(connection: sqlite3.Connection) -> bool:
            with _transaction(connection):
                deleted = (
                    connection.execute(
                        "DELETE FROM user_secrets WHERE username = ? AND server = ? AND key = ?",
                        (username, server, key),
                    ).rowcount
                    > 0
                )
                if deleted and event is not None:
                    _insert_event(connection, event)
            return deleted

        return self._run(delete)

    def find_secrets(
        self,
        username: str,
        server: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[SecretRecord]:
        """One user's records, of one server or of all, in (server, key) order, in one query.

        With ``after``, only those past that (server, key); with ``limit``, at most that many: a page read
        from the primary key, however many records the user holds.
        """
        params: tuple[str | int, ...]
        if server is None:
            query, params = "WHERE username = ?", (username,)
        else:
            query, params = "WHERE username = ? AND server = ?", (username, server)
        if after is not None:
            query, params = f"{query} AND (server, key) > (?, ?)", (*params, *after)
        if limit is not None:
            # A negative limit is no limit to SQLite.
            query, params = f"{query} ORDER BY server, key LIMIT ?", (*params, max(limit, 0))
        else:
            query = f"{query} ORDER BY server, key"
        rows = self._run(
            lambda connection: connection.execute(
                f"SELECT {_SECRET_COLUMNS} FROM user_secrets {query}",  # noqa: S608 - fixed SQL
                params,
            ).fetchall()
        )
        return [_secret(row) for row in rows]

    def stored_keys(self, username: str, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``keys``, (server, key) pairs, ``username`` has stored: found by name, values unread.

        One statement per server, whose keys the primary key finds: a user's other records are not read.
        """
        by_server: dict[str, list[str]] = {}
        for server, key in keys:
            by_server.setdefault(server, []).append(key)

        def look_up(connection: sqlite3.Connection) -> set[tuple[str, str]]:
            found: set[tuple[str, str]] = set()
            for server, names in by_server.items():
                for start in range(0, len(names), _KEYS_PER_STATEMENT):
                    chunk = names[start : start + _KEYS_PER_STATEMENT]
                    rows = connection.execute(
                        "SELECT key FROM user_secrets WHERE username = ? AND server = ? "  # noqa: S608 - fixed SQL
                        f"AND key IN ({', '.join('?' * len(chunk))})",
                        (username, server, *chunk),
                    ).fetchall()
                    found.update((server, row[0]) for row in rows)
            return found

        return self._run(look_up) if by_server else set()

    def count_secrets(self, username: str | None = None) -> int:
        """How many records the store holds, of one user or (None) of all."""
        where, params = ("", ()) if username is None else ("WHERE username = ?", (username,))
        return int(
            self._run(
                lambda connection: connection.execute(
                    f"SELECT count(*) FROM user_secrets {where}",  # noqa: S608 - fixed SQL
                    params,
                ).fetchone()[0]
            )
        )

    def record_uses(self, uses: Sequence[SecretUse]) -> None:
        """Write a batch of uses in one transaction: each use's event, and each record's latest use."""
        marks = []
        for record, at in latest_uses(uses).items():
            stamp = _iso(at)
            marks.append((stamp, *record, stamp, stamp))
        events = [_event_row(use.event) for use in uses]

        def write(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.executemany(_MARK_USED, marks)
                connection.executemany(_INSERT_EVENT, events)

        if is_nonblocking():
            self._run(write)
            return
        # The wait for another process's lock is made here, not in SQLite's busy handler, which waits
        # holding the connection: every other call of this process (a get_secrets) would wait behind
        # the uses, for as long as the busy timeout.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        pause = _FIRST_PAUSE_SECONDS
        while True:
            try:
                self._run_now(write, queue=True)
            except WouldBlock:  # noqa: PERF203 - a retry, each after a pause far longer than the try
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreUnavailableError(
                        "the SQLite store is unavailable: database is locked"
                    ) from None
                time.sleep(min(pause, remaining))
                pause = min(2 * pause, _LAST_PAUSE_SECONDS)
            else:
                return

    def add_event(self, event: AuditEvent) -> None:
        """Append one event to the audit trail."""
        self._run(lambda connection: _insert_event(connection, event))

    def list_events(
        self, actor: str | None = None, server: str | None = None, limit: int = 50
    ) -> list[AuditEvent]:
        """The newest events first, of one actor and one server when given."""
        conditions, params = _event_filter(actor, server)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        # Newest first by time, as MongoDB lists them, not as written: a use is written a moment after it,
        # by a background writer, and another process's change made meanwhile may be written first. Times
        # as times, as for _BEFORE; the indexes hold them, so a page is read without a sort, save within a
        # millisecond (see _NEWEST_FIRST).
        rows = self._run(
            lambda connection: connection.execute(
                f"SELECT {_EVENT_COLUMNS} FROM audit_events {where} ORDER BY {_NEWEST_FIRST} LIMIT ?",  # noqa: S608
                (*params, max(limit, 0)),  # SQLite reads a negative limit as no limit at all
            ).fetchall()
        )
        return [_event(row) for row in rows]

    def iter_events(
        self, actor: str | None = None, server: str | None = None, limit: int = 50, *, page: int = 1000
    ) -> Iterator[AuditEvent]:
        """``list_events``, read ``page`` events at a time, each page a query of its own: memory stays flat.

        A page goes on after the last event of the one before, by the listing's order (its time, then its
        text and id within a millisecond), from the same indexes, rather than skip what came before.
        """
        conditions, params = _event_filter(actor, server)
        left = max(limit, 0)
        last: Sequence[object] | None = None
        while left:
            after: list[str] = []
            if last is not None:
                after = [
                    "julianday(at) <= ?",
                    "NOT (julianday(at) = ? AND (at > ? OR (at = ? AND id >= ?)))",
                ]
            where = " AND ".join([*conditions, *after])
            bounds = () if last is None else (last[0], last[0], last[1], last[1], last[2])
            size = min(max(page, 1), left)
            query = (
                f"SELECT julianday(at), at, id, {_EVENT_COLUMNS} FROM audit_events "  # noqa: S608
                f"{'WHERE ' + where if where else ''} ORDER BY {_NEWEST_FIRST} LIMIT ?"
            )
            arguments = (*params, *bounds, size)

            def read(
                connection: sqlite3.Connection, query: str = query, arguments: tuple[object, ...] = arguments
            ) -> list[Sequence[object]]:
                return connection.execute(query, arguments).fetchall()

            rows = self._run(read)
            yield from (_event(row[3:]) for row in rows)
            if len(rows) < size:
                return
            left -= len(rows)
            last = rows[-1][:3]

    def count_events(self, before: datetime) -> int:
        """How many events of the audit trail, of every actor, happened before ``before``."""
        return int(
            self._run(
                lambda connection: connection.execute(
                    f"SELECT count(*) FROM audit_events WHERE {_BEFORE}",  # noqa: S608
                    (_iso(before),),
                ).fetchone()[0]
            )
        )

    def delete_events(
        self, before: datetime, limit: int, keep: Callable[[list[AuditEvent]], None] | None = None
    ) -> int:
        """Delete up to ``limit`` events from before ``before``, first written first; return how many."""
        # Read first, outside any write transaction: in WAL mode a read blocks no writer, however long
        # it scans. Walking the ids from the oldest finds old events first: SQLite does that here rather than
        # sort all that the index on time finds before the cut-off, when a batch wants only the first few.
        rows = self._run(
            lambda connection: connection.execute(
                f"SELECT id, {_EVENT_COLUMNS} FROM audit_events WHERE {_BEFORE} ORDER BY id LIMIT ?",  # noqa: S608
                (_iso(before), max(limit, 0)),  # a negative one is no limit to SQLite
            ).fetchall()
        )
        if not rows:
            return 0
        if keep is not None:
            keep([_event(row[1:]) for row in rows])

        def delete(connection: sqlite3.Connection, ids: list[tuple[object, str | None]]) -> int:
            # SQLite hands a deleted row's id to the next insert: a prune running alongside may have
            # deleted these rows already, and a new event taken one of their ids. Its time tells it apart.
            with _transaction(connection):
                deleted = connection.executemany(
                    f"DELETE FROM audit_events WHERE id = ? AND {_BEFORE}",  # noqa: S608
                    ids,
                ).rowcount
            _checkpoint(connection)
            return deleted

        cut_off = _iso(before)
        ids = [(row[0], cut_off) for row in rows]
        # A transaction of a few thousand deletes at most, however large the batch: each holds the write lock
        # (a batch of 100,000 held it 3 s, and a server's writes waited). Failing part way, the rest of the
        # batch stays, and the next call keeps it again: kept twice, never lost.
        return sum(
            self._run(functools.partial(delete, ids=ids[start : start + DELETES_PER_TRANSACTION]))
            for start in range(0, len(ids), DELETES_PER_TRANSACTION)
        )

    def scan_secrets(self, after: tuple[str, str, str] | None, limit: int) -> list[SecretRecord]:
        """Up to ``limit`` records of all users, in (username, server, key) order, after ``after``."""
        where, params = ("", ()) if after is None else ("WHERE (username, server, key) > (?, ?, ?)", after)
        rows = self._run(
            lambda connection: connection.execute(
                f"SELECT {_SECRET_COLUMNS} FROM user_secrets {where} "  # noqa: S608 - fixed SQL
                "ORDER BY username, server, key LIMIT ?",
                (*params, max(limit, 0)),  # a negative one is no limit to SQLite
            ).fetchall()
        )
        return [_secret(row) for row in rows]

    def sample_ciphertexts(self, count: int) -> list[str]:
        """The ciphertexts of up to ``count`` records at each end of the primary key, each once.

        The table has no rowid: its primary key is its one index, and each end is read from an edge of
        that B-tree, whatever the number of records.
        """
        limit = max(count, 0)  # a negative one is no limit to SQLite

        def read(connection: sqlite3.Connection) -> list[tuple[object, ...]]:
            return [
                *connection.execute(_FIRST_RECORDS, (limit,)).fetchall(),
                *connection.execute(_LAST_RECORDS, (limit,)).fetchall(),
            ]

        values = {tuple(row[:3]): row[3] for row in self._run(read)}
        return [value for value in values.values() if type(value) is str]

    def replace_value(self, username: str, server: str, key: str, old: str, new: str) -> bool:
        """Swap a record's ciphertext ``old`` for ``new``, only if it is still ``old``; timestamps stay."""
        return self._run(
            lambda connection: (
                connection.execute(
                    "UPDATE user_secrets SET value = ? "
                    "WHERE username = ? AND server = ? AND key = ? AND value = ?",
                    (new, username, server, key, old),
                ).rowcount
                > 0
            )
        )

    def put_token(self, token: TokenRecord, *, first: bool = False) -> bool:
        """Insert a new API token record; with ``first``, only while the table holds none.

        One statement, run under SQLite's write lock: of two first starts at once, only one puts its token.
        """
        only_first = " WHERE NOT EXISTS (SELECT 1 FROM api_tokens)" if first else ""
        inserted = self._run(
            lambda connection: (
                connection.execute(
                    f"INSERT INTO api_tokens ({_TOKEN_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?{only_first}",
                    (
                        token.token_id,
                        token.username,
                        token.token_hash,
                        _iso(token.created_at),
                        _iso(token.expires_at),
                        _iso(token.revoked_at),
                        token.label,
                    ),
                ).rowcount
            )
        )
        return inserted == 1

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token record with this hash, revoked or not."""
        row = self._run(
            lambda connection: connection.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?",  # noqa: S608
                (token_hash,),
            ).fetchone()
        )
        return None if row is None else _token(row)

    def find_token_by_id(self, token_id: str) -> TokenRecord | None:
        """The token record with this id, revoked or not."""
        row = self._run(
            lambda connection: connection.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_id = ?",  # noqa: S608
                (token_id,),
            ).fetchone()
        )
        return None if row is None else _token(row)

    def list_tokens(self, username: str | None = None) -> list[TokenRecord]:
        """Every token record (of one user, when given), oldest first."""
        where, params = ("", ()) if username is None else ("WHERE username = ?", (username,))
        rows = self._run(
            lambda connection: connection.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM api_tokens {where} ORDER BY created_at, token_id",  # noqa: S608
                params,
            ).fetchall()
        )
        return [_token(row) for row in rows]

    def has_tokens(self) -> bool:
        """Whether any token record, revoked or not, is stored: one row is read, and none is decoded."""
        row = self._run(lambda connection: connection.execute("SELECT 1 FROM api_tokens LIMIT 1").fetchone())
        return row is not None

    def revoke_token(self, token_id: str, now: datetime) -> TokenRecord | None:
        """Mark a live token revoked; its record as revoked, or None when no live token has this id."""

        def revoke(connection: sqlite3.Connection) -> Sequence[object] | None:
            # The row read back in the same transaction: UPDATE ... RETURNING needs SQLite 3.35, which
            # the sqlite3 module of older systems' Pythons lacks.
            with _transaction(connection):
                revoked = connection.execute(
                    "UPDATE api_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
                    (_iso(now), token_id),
                ).rowcount
                if not revoked:
                    return None
                row: Sequence[object] = connection.execute(
                    f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_id = ?",  # noqa: S608
                    (token_id,),
                ).fetchone()
            return row

        row = self._run(revoke)
        return None if row is None else _token(row)

    def put_link(self, link: LinkRecord) -> None:
        """Insert a new entry link, and drop links that expired before ``link.created_at``."""
        self.put_links([link])

    def put_links(self, links: Sequence[LinkRecord], *, max_live: int | None = None) -> None:
        """Insert new entry links of one user, all or none; ``max_live`` is checked in the same transaction.

        Two processes at once cannot both take the last places, nor two threads of one.
        """
        if not links:
            return
        first = links[0]
        rows = [
            (
                link.link_id,
                link.link_hash,
                link.username,
                link.server,
                link.key,
                _iso(link.created_at),
                _iso(link.expires_at),
                _iso(link.used_at),
                link.token_id,
                link.claimed_by,
            )
            for link in links
        ]

        def insert(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.execute("DELETE FROM entry_links WHERE expires_at < ?", (_iso(first.created_at),))
                if (
                    max_live is not None
                    and _live_links(connection, first.username, first.created_at) + len(links) > max_live
                ):
                    raise LimitReached
                connection.executemany(
                    f"INSERT INTO entry_links ({_LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    rows,
                )

        self._run(insert)

    def end_token_links(self, token_id: str, now: datetime) -> int:
        """Make the open links of API token ``token_id`` expire at ``now``; return how many there were."""
        return self._run(
            lambda connection: (
                connection.execute(
                    "UPDATE entry_links SET expires_at = ? "
                    "WHERE token_id = ? AND used_at IS NULL AND expires_at > ?",
                    (_iso(now), token_id, _iso(now)),
                ).rowcount
            )
        )

    def count_live_links(self, username: str, now: datetime) -> int:
        """How many of one user's entry links are neither used nor expired at ``now``."""
        return self._run(lambda connection: _live_links(connection, username, now))

    def find_link(self, link_hash: str) -> LinkRecord | None:
        """The entry link with this hash, used or not."""
        row = self._run(
            lambda connection: connection.execute(
                f"SELECT {_LINK_COLUMNS} FROM entry_links WHERE link_hash = ?",  # noqa: S608
                (link_hash,),
            ).fetchone()
        )
        return None if row is None else _link(row)

    def claim_link(self, link_hash: str, now: datetime, claim_id: str, *, form: str | None = None) -> bool:
        """Mark an unused, unexpired link used by ``claim_id`` of ``form``, atomically; False if not."""
        return self._run(
            lambda connection: (
                connection.execute(
                    "UPDATE entry_links SET used_at = ?, claim_id = ?, claimed_by = ? "
                    "WHERE link_hash = ? AND used_at IS NULL AND expires_at > ?",
                    (_iso(now), claim_id, form, link_hash, _iso(now)),
                ).rowcount
                > 0
            )
        )

    def release_link(self, link_hash: str, claim_id: str) -> None:
        """Make a link claimed by ``claim_id`` usable again; any other claim stays."""
        self._run(
            lambda connection: connection.execute(
                "UPDATE entry_links SET used_at = NULL, claim_id = NULL, claimed_by = NULL "
                "WHERE link_hash = ? AND claim_id = ?",
                (link_hash, claim_id),
            )
        )

    def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless the database answers."""
        self._run(lambda connection: connection.execute("SELECT 1").fetchone())

    def before_close(self, method: Callable[[], object]) -> None:
        """Have ``close()`` first call a bound method (held weakly): pending uses are written while it can."""
        self._before_close.add(method)

    def close(self) -> None:
        """Release the connection, once the callbacks given to ``before_close`` have run."""
        try:
            self._before_close.run()
        finally:  # a callback that failed leaves no connection open
            with self._lock:
                if not self._forked:  # a child that never opened its own has none to close
                    self._connection.close()


# Stores open in this process, and the connections a forked child inherited (see _after_fork).
_OPEN: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
_INHERITED: list[sqlite3.Connection] = []


def _give_children_their_own_connections() -> None:
    for store in list(_OPEN):
        store._after_fork()  # noqa: SLF001 - the module's own hook


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_give_children_their_own_connections)
