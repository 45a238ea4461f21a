"""Audit retention: delete the events older than a cut-off, in short batches, and record that it was done.

The trail grows by one event per change and per use, and a gateway adds one per
downstream call, so a busy deployment needs a retention period. Deletes go
first written first, a batch per transaction, so the server keeps serving
meanwhile; an interrupted prune is simply run again. The prune itself is recorded as an
``audit-pruned`` event, written after the deletes so that it is never pruned
by the run it records. It works on the store alone: pruning needs no master key,
so a scheduled job can run it without one. ``archive_file`` appends each batch to
a file before it is deleted, for trails that must be kept elsewhere.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mcp_secrets.errors import ConfigurationError, InvalidInputError, SecretsError, how_it_stopped
from mcp_secrets.file_modes import owned_elsewhere
from mcp_secrets.secrets import OPERATOR
from mcp_secrets.store import AuditEvent, SecretStore
from mcp_secrets.store.sqlite import make_private_directories, sync_new_names

if sys.platform != "win32":
    import fcntl

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
# A batch is one delete: MongoDB sends its ids in one command, which must stay under 16 MB.
MAX_BATCH_SIZE = 100_000


@dataclass(frozen=True)
class PruneReport:
    """What a prune did, or (dry run) would do."""

    before: datetime
    found: int
    deleted: int


def prune_events(
    store: SecretStore,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    via: str = "library",
    now: datetime | None = None,
    keep: Callable[[list[AuditEvent]], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    uninterrupted: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> PruneReport:
    """Delete every audit event, of every user, that happened more than ``older_than`` before ``now``.

    ``keep`` receives each batch before it is deleted (to archive it); if it raises, that batch
    stays and the prune stops there. Each batch, kept, deleted and counted, runs inside
    ``uninterrupted()``: the CLI holds back stop signals there, since a batch kept but not deleted would
    be kept again, and one deleted but not counted would be missing from the ``audit-pruned`` event;
    so does that event's write.
    """
    if older_than <= timedelta(0):
        raise InvalidInputError("the retention period must be longer than zero")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidInputError(f"the batch size must be at least 1 and at most {MAX_BATCH_SIZE}")
    now = now or datetime.now(timezone.utc)
    before = now - older_than
    found = store.count_events(before)
    deleted = 0
    if dry_run:
        return PruneReport(before=before, found=found, deleted=deleted)
    try:
        while True:
            with uninterrupted():  # a stop it held back is raised as it ends, once the batch is counted
                batch = store.delete_events(before, batch_size, keep)
                deleted += batch
            if not batch:
                break
            if on_progress is not None:
                on_progress(deleted, max(found, deleted))
    except BaseException as stop:
        if deleted:  # what was deleted before the stop is recorded too, if the store still answers
            with suppress(Exception):
                _record(store, before, deleted, via, stopped=stop)
        raise
    # Held back as a batch is: a stop before the event is written would leave the whole run out of it.
    with uninterrupted():
        _record(store, before, deleted, via, stopped=None)
    return PruneReport(before=before, found=found, deleted=deleted)


def _record(
    store: SecretStore, before: datetime, deleted: int, via: str, *, stopped: BaseException | None
) -> None:
    detail = f"{deleted} events before {before:%Y-%m-%d %H:%M:%S} UTC deleted"
    if stopped is not None:
        detail += f", then {how_it_stopped(stopped)}"
    at = datetime.now(timezone.utc)  # when it happened, after every event it kept
    store.add_event(AuditEvent(at, OPERATOR, "audit-pruned", transport=via, detail=detail))


def _make_directories(path: Path) -> list[Path]:
    """Create the missing directories above ``path``, owner-only, as the file itself is; return them."""
    try:
        return make_private_directories(path.parent)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the directory {exc.filename} of the export file {path}: {exc.strerror}"
        ) from None


@contextmanager
def archive_file(path: str | Path) -> Iterator[Callable[[list[AuditEvent]], None]]:
    """A ``keep`` for ``prune_events`` that appends each batch to ``path`` as JSON lines, on disk (fsync).

    The file, and any directory missing above it, is created owner-only; a pipe is refused. A batch
    that cannot be written whole is cut off again, so the file never ends in half a batch, and
    ``prune_events`` keeps that batch in the store, as it does a batch written to the file once it
    was deleted; half a line left by a run killed mid-write is ended before the next batch. The file
    is locked for as long as the archive is open (POSIX only), and a second archive of it is refused:
    cutting off one run's failed batch would otherwise cut off what another run appended meanwhile.
    """
    made = _make_directories(Path(path))
    # Readable too: keep() looks at the last byte the file ends with.
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    try:
        try:
            descriptor, created = os.open(path, flags | os.O_EXCL, 0o600), True
        except FileExistsError:  # an existing file keeps its mode (a link to one is followed, as before)
            descriptor, created = os.open(path, flags, 0o600), False
    except OSError as exc:
        raise ConfigurationError(f"cannot open the export file {path}: {exc.strerror}") from None
    try:
        if created and os.name == "posix":
            os.fchmod(descriptor, 0o600)  # the umask may have taken the owner's bits too
        _require_a_file(descriptor, path)
        _lock(descriptor, path)
        _warn_if_shared(descriptor, path)
        # The file's fsync puts its data on disk, not its name: without these, a power cut could keep the
        # deletes and lose a new file, or a new directory, with every event written to it.
        sync_new_names(Path(path).parent, made)
    except BaseException:
        os.close(descriptor)
        raise

    def keep(events: list[AuditEvent]) -> None:
        data = "".join(event.to_json() + "\n" for event in events).encode("utf-8")
        end = os.lseek(descriptor, 0, os.SEEK_END)
        if end and _last_byte(descriptor, end) != b"\n":
            # Half a line, left by a run that died mid-write (its batch is still in the store): the
            # batch starts a line of its own rather than joining that line and becoming unreadable.
            data = b"\n" + data
        try:
            # Unbuffered: a failed write leaves nothing behind to fail again at closing.
            while data:
                data = data[os.write(descriptor, data) :]
            os.fsync(descriptor)
        except OSError as exc:
            with suppress(OSError):
                os.ftruncate(descriptor, end)  # no half batch, no half line, left in the file
            raise SecretsError(f"cannot write the export file {path}: {exc.strerror}") from None
        if os.fstat(descriptor).st_nlink == 0:
            # Deleted since it was opened (a clean-up job): what is written now goes with it, so this
            # batch, and every one after, stays in the store.
            raise SecretsError(
                f"the export file {path} was deleted during the run, with what it held; "
                "the events not yet deleted stay in the store"
            )

    try:
        yield keep
    finally:
        os.close(descriptor)  # which releases the lock


def _last_byte(descriptor: int, end: int) -> bytes:
    """The byte the file ends with (not pread: Windows has none; writes append wherever this leaves off)."""
    os.lseek(descriptor, end - 1, os.SEEK_SET)
    return os.read(descriptor, 1)


def _require_a_file(descriptor: int, path: str | Path) -> None:
    """Refuse a pipe or a terminal: a batch sent there can be neither cut off again nor kept on disk."""
    try:
        os.lseek(descriptor, 0, os.SEEK_END)
    except OSError as exc:
        raise ConfigurationError(
            f"the export file {path} must be a file, not a pipe or a terminal ({exc.strerror})"
        ) from None


def _warn_if_shared(descriptor: int, path: str | Path) -> None:
    """Warn of an existing file others can read: it keeps its mode (its owner chose it), as the store does.

    And of one another user owns, or that sits in a directory another user owns, whatever its mode, as
    the store's file is warned of.
    """
    mode = os.fstat(descriptor).st_mode
    if os.name == "posix" and stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
        logger.warning(
            "the export file %s is readable by other users (names and times, no values); run: chmod 600 %s",
            path,
            path,
        )
    if (elsewhere := owned_elsewhere(Path(path))) is not None:
        logger.warning(
            "the export file %s %s, who can read every user's archived events, and change or delete them",
            path,
            elsewhere,
        )


def _lock(descriptor: int, path: str | Path) -> None:
    """Take the export file for this run alone, or refuse at once if another run holds it."""
    if sys.platform == "win32":  # no flock there: runs are not kept apart
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SecretsError(f"the export file {path} is in use by another prune; run one at a time") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot lock the export file {path}: {exc.strerror}") from None
