"""Key rotation: re-encrypt stored records to the active master key, online.

Records are read in (username, server, key) order, a batch at a time, and each
one is swapped only if its ciphertext is still the one that was read (a
compare-and-swap), so the server can keep serving and writing meanwhile. A
record already under the active key is left alone, which makes a run
idempotent and an interrupted run resumable: run it again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

from mcp_secrets.crypto import LEGACY_KEY_ID
from mcp_secrets.errors import DecryptionError, InvalidInputError
from mcp_secrets.secrets import OPERATOR, Secrets
from mcp_secrets.store import SecretRecord

DEFAULT_BATCH_SIZE = 500


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


def _needs_rewrap(secrets: Secrets, record: SecretRecord, *, only_legacy: bool) -> bool:
    key_id = secrets.encryptor.key_id_of(record.value)
    if only_legacy:
        return key_id == LEGACY_KEY_ID
    return key_id != secrets.encryptor.active_key_id


def rotate(
    secrets: Secrets,
    *,
    only_legacy: bool = False,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
) -> RotationReport:
    """Re-encrypt every record not under the active key (or, ``only_legacy``, every legacy record)."""
    if batch_size < 1:
        raise InvalidInputError("the batch size must be at least 1")
    store, encryptor = secrets.store, secrets.encryptor
    report = RotationReport(active_key_id=encryptor.active_key_id)
    total = store.count_secrets()
    after: tuple[str, str, str] | None = None
    try:
        while batch := store.scan_secrets(after, batch_size):
            for record in batch:
                report.scanned += 1
                if not _needs_rewrap(secrets, record, only_legacy=only_legacy):
                    report.already_current += 1
                elif dry_run:
                    _count(secrets, record, report)
                else:
                    _rewrap(secrets, record, report)
            last = batch[-1]
            after = (last.username, last.server, last.key)
            if on_progress is not None:
                on_progress(report.scanned, max(total, report.scanned))
    except BaseException:
        if report.rewrapped and not dry_run:  # what was re-encrypted before the error, if the store answers
            with suppress(Exception):
                _record(secrets, report, only_legacy=only_legacy, stopped=True)
        raise
    if not dry_run:
        _record(secrets, report, only_legacy=only_legacy, stopped=False)
    return report


def _record(secrets: Secrets, report: RotationReport, *, only_legacy: bool, stopped: bool) -> None:
    detail = (
        f"{report.rewrapped} re-encrypted to key {report.active_key_id}, "
        f"{report.already_current} current, {len(report.failed)} failed"
    )
    if stopped:
        detail += ", then stopped by an error"
    secrets.record(OPERATOR, "migrated-legacy" if only_legacy else "rotated", via="cli", detail=detail)


def _count(secrets: Secrets, record: SecretRecord, report: RotationReport) -> None:
    """Dry run: a record would be re-encrypted if it decrypts, which is what the run itself tries first.

    Its form alone is not enough: a mistyped legacy key, or a record altered in the store, reads as
    re-encryptable by its form and fails in the run.
    """
    if _decrypt(secrets, record, report) is not None:
        report.rewrapped += 1


def _decrypt(secrets: Secrets, record: SecretRecord, report: RotationReport) -> str | None:
    """The record's value, or None when it does not decrypt (then ``report`` has the failure)."""
    where = {"username": record.username, "server": record.server, "key": record.key}
    try:
        return secrets.encryptor.decrypt(record.value, **where)
    except DecryptionError as exc:
        report.failed.append(RecordFailure(record.username, record.server, record.key, str(exc)))
        return None


def _rewrap(secrets: Secrets, record: SecretRecord, report: RotationReport) -> None:
    plain = _decrypt(secrets, record, report)
    if plain is None:
        return
    where = {"username": record.username, "server": record.server, "key": record.key}
    fresh = secrets.encryptor.encrypt(plain, **where)
    del plain
    if secrets.store.replace_value(record.username, record.server, record.key, record.value, fresh):
        report.rewrapped += 1
    else:
        # Written or deleted since it was read: a write always uses the active key already.
        report.changed_meanwhile += 1
