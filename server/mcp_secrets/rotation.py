"""Key rotation: re-encrypt stored records to the active master key, online; and verify that all decrypt.

Records are read in (username, server, key) order, a batch at a time, and each
one is swapped only if its ciphertext is still the one that was read (a
compare-and-swap), so the server can keep serving and writing meanwhile. A
record already under the active key is left alone, which makes a run
idempotent and an interrupted run resumable: run it again. ``verify`` reads
the same way and decrypts every record, changing nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field

from mcp_secrets.crypto import LEGACY_KEY_ID, is_legacy_ciphertext
from mcp_secrets.errors import DecryptionError, InvalidInputError, UnreadableRecordError, how_it_stopped
from mcp_secrets.secrets import OPERATOR, Secrets
from mcp_secrets.store import SecretRecord

DEFAULT_BATCH_SIZE = 500

Names = tuple[str, str, str]  # a record's username, server and key


@dataclass(frozen=True)
class RecordFailure:
    """A record that could not be re-encrypted, and why (never its value)."""

    username: str
    server: str
    key: str
    reason: str


@dataclass
class RotationReport:
    """What a rotation did, or (dry run) would do."""

    active_key_id: str
    scanned: int = 0
    rewrapped: int = 0
    already_current: int = 0
    changed_meanwhile: int = 0
    failed: list[RecordFailure] = field(default_factory=list)
    #: ``only_legacy``: records in no format that can be read (not legacy, so not failures), left alone.
    unreadable: list[RecordFailure] = field(default_factory=list)


@dataclass
class VerificationReport:
    """What a verification found: the records that decrypt, by key id, and those that do not."""

    scanned: int = 0
    readable: Counter[str] = field(default_factory=Counter)
    failed: list[RecordFailure] = field(default_factory=list)


def _needs_rewrap(secrets: Secrets, record: SecretRecord, *, only_legacy: bool) -> bool:
    if only_legacy:  # by its form: key_id_of says legacy of anything that is not v1, garbage included
        return is_legacy_ciphertext(record.value)
    return secrets.encryptor.key_id_of(record.value) != secrets.encryptor.active_key_id


def _in_no_format(secrets: Secrets, record: SecretRecord) -> str | None:
    """Why a record is neither legacy nor v1 (never its value); None when it is one of them."""
    if is_legacy_ciphertext(record.value) or secrets.encryptor.key_id_of(record.value) != LEGACY_KEY_ID:
        return None
    return secrets.encryptor.unreadable_because(record.value)


def rotate(
    secrets: Secrets,
    *,
    only_legacy: bool = False,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    uninterrupted: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> RotationReport:
    """Re-encrypt every record not under the active key (or, ``only_legacy``, every legacy record).

    Each record's swap and its count, and the event that records the run, run inside ``uninterrupted()``:
    the CLI holds back stop signals there, since a record swapped but not counted would be missing from
    that event.
    """
    if batch_size < 1:
        raise InvalidInputError("the batch size must be at least 1")
    store, encryptor = secrets.store, secrets.encryptor
    report = RotationReport(active_key_id=encryptor.active_key_id)
    total = store.count_secrets()
    after: Names | None = None
    try:
        while True:
            # What the store cannot read is no legacy record either: migrating, it is not a failure.
            unread = report.unreadable if only_legacy else report.failed
            batch, last = _next_batch(secrets, after, batch_size, unread)
            if last is None:
                break
            for record in batch:
                report.scanned += 1
                if record is not None:  # None cannot be read: report.failed (or .unreadable) has it already
                    _handle(
                        secrets,
                        record,
                        report,
                        only_legacy=only_legacy,
                        dry_run=dry_run,
                        uninterrupted=uninterrupted,
                    )
            after = last
            if on_progress is not None:
                on_progress(report.scanned, max(total, report.scanned))
    except BaseException as stop:
        if report.rewrapped and not dry_run:  # what was re-encrypted before the stop, if the store answers
            with suppress(Exception):
                _record(secrets, report, only_legacy=only_legacy, stopped=stop)
        raise
    if not dry_run:
        # Held back as a swap is: a stop before the event is written would leave the whole run out of it.
        with uninterrupted():
            _record(secrets, report, only_legacy=only_legacy, stopped=None)
    return report


def _handle(
    secrets: Secrets,
    record: SecretRecord,
    report: RotationReport,
    *,
    only_legacy: bool,
    dry_run: bool,
    uninterrupted: Callable[[], AbstractContextManager[object]],
) -> None:
    """Re-encrypt one record (a dry run: count it) if it needs it."""
    reason = _in_no_format(secrets, record) if only_legacy else None
    if reason is not None:
        report.unreadable.append(RecordFailure(record.username, record.server, record.key, reason))
    elif not _needs_rewrap(secrets, record, only_legacy=only_legacy):
        report.already_current += 1
    elif dry_run:
        _count(secrets, record, report)
    else:
        _rewrap(secrets, record, report, uninterrupted)


def _next_batch(
    secrets: Secrets, after: Names | None, limit: int, unread: list[RecordFailure]
) -> tuple[list[SecretRecord | None], Names | None]:
    """Up to ``limit`` records after ``after``, and the names of the last; None when there are none left.

    A record that cannot be read is None in the list, and in ``unread``: passed over, not stopped at,
    since a run stopped there would stop there again each time it was run.
    """
    try:
        records = secrets.store.scan_secrets(after, limit)
    except UnreadableRecordError:
        return _read_one_at_a_time(secrets, after, limit, unread)
    if not records:
        return [], None
    last = records[-1]
    return [*records], (last.username, last.server, last.key)


def _read_one_at_a_time(
    secrets: Secrets, after: Names | None, limit: int, unread: list[RecordFailure]
) -> tuple[list[SecretRecord | None], Names | None]:
    """``_next_batch`` of a stretch holding a record that cannot be read: each record asked for alone."""
    batch: list[SecretRecord | None] = []
    while len(batch) < limit:
        try:
            found = secrets.store.scan_secrets(after, 1)
        except UnreadableRecordError as exc:
            if exc.record is None or len(exc.record) != len(("username", "server", "key")):
                raise  # its names cannot be read either: there is nothing to read on after
            username, server, key = exc.record
            unread.append(RecordFailure(username, server, key, str(exc)))
            batch.append(None)
            after = (username, server, key)
            continue
        if not found:
            break
        batch.append(found[0])
        after = (found[0].username, found[0].server, found[0].key)
    return batch, after if batch else None


def _record(
    secrets: Secrets, report: RotationReport, *, only_legacy: bool, stopped: BaseException | None
) -> None:
    detail = (
        f"{report.rewrapped} re-encrypted to key {report.active_key_id}, "
        f"{report.already_current} current, {len(report.failed)} failed"
    )
    if stopped is not None:
        detail += f", then {how_it_stopped(stopped)}"
    secrets.record(OPERATOR, "migrated-legacy" if only_legacy else "rotated", via="cli", detail=detail)


def _count(secrets: Secrets, record: SecretRecord, report: RotationReport) -> None:
    """Dry run: a record would be re-encrypted if it decrypts, which is what the run itself tries first.

    Its form alone is not enough: a mistyped legacy key, or a record altered in the store, reads as
    re-encryptable by its form and fails in the run.
    """
    if _decrypt(secrets, record, report.failed) is not None:
        report.rewrapped += 1


def _decrypt(secrets: Secrets, record: SecretRecord, failed: list[RecordFailure]) -> str | None:
    """The record's value, or None when it does not decrypt (then ``failed`` has the failure)."""
    where = {"username": record.username, "server": record.server, "key": record.key}
    try:
        return secrets.encryptor.decrypt(record.value, **where)
    except DecryptionError as exc:
        failed.append(RecordFailure(record.username, record.server, record.key, str(exc)))
        return None


def _rewrap(
    secrets: Secrets,
    record: SecretRecord,
    report: RotationReport,
    uninterrupted: Callable[[], AbstractContextManager[object]],
) -> None:
    plain = _decrypt(secrets, record, report.failed)
    if plain is None:
        return
    where = {"username": record.username, "server": record.server, "key": record.key}
    fresh = secrets.encryptor.encrypt(plain, **where)
    del plain
    with uninterrupted():  # a stop it held back is raised as it ends, once the swap is counted
        if secrets.store.replace_value(record.username, record.server, record.key, record.value, fresh):
            report.rewrapped += 1
        else:
            # Written or deleted since it was read: a write always uses the active key already.
            report.changed_meanwhile += 1


def verify(
    secrets: Secrets,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    uninterrupted: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> VerificationReport:
    """Decrypt every record with the configured keys: count those that do by key id, name those that do not.

    What a rotation's dry run cannot show: a record under the active key is left alone by a rotation, read
    or not. Nothing is changed, and each value is dropped as soon as it is decrypted. The run is recorded,
    since it reads every value, with its counts: its event's write runs inside ``uninterrupted()``, as a
    rotation's does.
    """
    if batch_size < 1:
        raise InvalidInputError("the batch size must be at least 1")
    report = VerificationReport()
    total = secrets.store.count_secrets()
    after: Names | None = None
    try:
        while True:
            batch, last = _next_batch(secrets, after, batch_size, report.failed)
            if last is None:
                break
            for record in batch:
                report.scanned += 1
                if record is not None and _decrypt(secrets, record, report.failed) is not None:
                    report.readable[secrets.encryptor.key_id_of(record.value)] += 1
            after = last
            if on_progress is not None:
                on_progress(report.scanned, max(total, report.scanned))
    except BaseException as stop:
        if report.scanned:  # what was read before the stop, if the store answers
            with suppress(Exception):
                _record_verification(secrets, report, stopped=stop)
        raise
    # A stop before the event is written would leave a run that read every value out of the trail.
    with uninterrupted():
        _record_verification(secrets, report, stopped=None)
    return report


def _record_verification(
    secrets: Secrets, report: VerificationReport, *, stopped: BaseException | None
) -> None:
    detail = f"{report.readable.total()} of {report.scanned} records decrypt, {len(report.failed)} do not"
    if stopped is not None:
        detail += f", then {how_it_stopped(stopped)}"
    secrets.record(OPERATOR, "verified", via="cli", detail=detail)
