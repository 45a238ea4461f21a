"""The Secrets service: validation, encryption and store calls for one user's secrets.

Every method is synchronous and may block on the database: on an event loop,
run it through ``mcp_secrets.offload.run_store_work`` (or in a worker thread). Decrypted values
exist only in the dict ``get_secrets`` returns; nothing here logs a value.

Uses are written by a background writer (``mcp_secrets.usage``); every method
that reads last uses or events, or writes a change, first waits for the uses
recorded before it, so this process always sees its own uses, in order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from mcp_secrets.crypto import LEGACY_KEY_ID, SecretEncryptor
from mcp_secrets.errors import (
    ConfigurationError,
    InvalidInputError,
    SecretNotFoundError,
    StoreUnavailableError,
)
from mcp_secrets.store import AuditEvent, LimitReached, SecretStore, SecretUse, waiting
from mcp_secrets.usage import FLUSH_TIMEOUT_SECONDS, UseRecorder

logger = logging.getLogger(__name__)

Action = Literal["save", "update", "delete"]
ACTIONS: tuple[Action, ...] = ("save", "update", "delete")
MAX_NAME_LENGTH = 128
MAX_VALUE_BYTES = 64 * 1024
# Each secret costs up to MAX_VALUE_BYTES: the bound keeps one user (or their model) from filling the disk.
MAX_SECRETS_PER_USER = 1000
# The actor of events no user caused (rotation, pruning); parentheses keep it from matching a username.
OPERATOR = "(operator)"
# Records read at each end of the store at start, for their key ids: enough to catch a wrong master key
# (every record is then under another), never a scan.
KEY_ID_SAMPLE = 3
LISTING_FLUSH_SECONDS = 1.0  # how long a listing waits for pending uses before it goes on without them
# Also published in the tools' input schemas, anchored there: JSON Schema regexes are not.
NAME_PATTERN = r"[A-Za-z0-9_.\-]{1,128}"
_NAME = re.compile(NAME_PATTERN)
# Keys in one page of a listing (list_secret_keys, GET /secrets): as many as a user may keep by default, so
# that only a deployment that raises MCP_SECRETS_MAX_SECRETS_PER_USER sees a second page. 10,000 keys were
# 2.3 MB in one answer of the tool, 690,000 characters of text for the model, read on the event loop while
# every other call waited.
KEYS_PER_LISTING = 1000
# A listing's cursor is the last (server, key) a page showed, as `server/key`: no name holds a '/'.
CURSOR_PATTERN = f"^({NAME_PATTERN}/{NAME_PATTERN})?$"
# Not quoted, as no input is: a cursor is the next_cursor of an earlier answer.
CURSOR_RULE = "cursor must be the next_cursor of an earlier answer, as server/key"
# '|' for OIDC subjects such as Auth0's (auth0|5f7c…, samlp|Customer1|…); a shell would read it as a pipe,
# so a command printed for a user quotes the username. No other shell, path or URL syntax.
_USERNAME = re.compile(r"[A-Za-z0-9_.@|\-]{1,128}")
MAX_EVENT_TEXT = 1024  # characters of an event's via, action or detail: a label, not a document
NAME_RULE = "1 to 128 characters of letters, digits, '_', '-' or '.'"
USERNAME_RULE = "1 to 128 characters of letters, digits, '_', '-', '.', '@' or '|'"


def validate_username(username: object) -> str:
    """Return ``username`` if it is a valid username; raise ``InvalidInputError`` naming the field."""
    if type(username) is not str or not _USERNAME.fullmatch(username):
        raise InvalidInputError(f"username must be {USERNAME_RULE}")
    return username


def validate_name(field: str, name: object) -> str:
    """Return a valid server or key name; the error names the field, never the input."""
    if type(name) is not str or not _NAME.fullmatch(name):
        raise InvalidInputError(f"{field} must be {NAME_RULE}")
    return name


def _after(cursor: object) -> tuple[str, str] | None:
    """The (server, key) a listing's ``cursor`` goes on after; None for the first page."""
    if cursor == "":
        return None
    if type(cursor) is not str:
        raise InvalidInputError(CURSOR_RULE)
    server, _, key = cursor.partition("/")
    try:
        return validate_name("server", server), validate_name("key", key)
    except InvalidInputError:
        raise InvalidInputError(CURSOR_RULE) from None


def _validate_event_texts(**texts: object) -> None:
    """Refuse an event's free texts (via, action, detail) unless each is a short printable string.

    Checked before anything is written or queued: a use's texts are written by the writer thread, which
    could not report a text the store cannot hold, and would drop or retry it with other users' uses.
    Printable, since ``mcp-secrets audit`` prints them to a terminal.
    """
    for field, text in texts.items():
        if type(text) is not str:
            raise InvalidInputError(f"{field} must be a string")
        if len(text) > MAX_EVENT_TEXT or not text.isprintable():
            raise InvalidInputError(f"{field} must be printable text of at most {MAX_EVENT_TEXT} characters")


def validate_value(value: object) -> str:
    """Return a valid secret value: a string of 1 byte to 64 KiB in UTF-8."""
    if type(value) is not str:
        raise InvalidInputError("value must be a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # refused below, out of this block: the codec's error holds the whole value
        size = -1
    if size < 0:
        raise InvalidInputError("value must be valid Unicode text (it holds a lone surrogate)")
    if size == 0:
        raise InvalidInputError("value must not be empty")
    if size > MAX_VALUE_BYTES:
        raise InvalidInputError(f"value must be at most {MAX_VALUE_BYTES} bytes in UTF-8")
    return value


@dataclass(slots=True)  # not frozen, for the reason SecretRecord is not
class SecretKeyInfo:
    """A stored secret's name and timestamps: everything but its value."""

    server: str
    key: str
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None


@dataclass
class SecretKeyPage:
    """A page of a listing of keys, and the cursor of the next one: None on the last."""

    keys: list[SecretKeyInfo]
    next_cursor: str | None


@dataclass(frozen=True)
class UpdateResult:
    """What ``update_secret`` did: ``created``, ``updated`` or ``deleted``."""

    server: str
    key: str
    status: Literal["created", "updated", "deleted"]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Secrets:
    """The one place that reads and writes users' secrets."""

    def __init__(
        self,
        store: SecretStore,
        encryptor: SecretEncryptor | None,
        *,
        clock: Callable[[], datetime] = _utcnow,
        max_secrets_per_user: int = MAX_SECRETS_PER_USER,
    ) -> None:
        """The service over ``store``; with no ``encryptor``, one that never reads or writes a value.

        That one lists names and timestamps, deletes and reads the trail, for a process that holds no
        master key; reading or writing a value then says the key is needed.
        """
        self.store = store
        self._encryptor = encryptor
        self.max_secrets_per_user = max_secrets_per_user
        self.uses = UseRecorder(store)
        # Code written before close() existed closes only the store: its uses are written all the same.
        store.before_close(self.uses.close)
        self._clock = clock
        self._change_listeners: dict[object, Callable[[str, str], None]] = {}

    @property
    def encryptor(self) -> SecretEncryptor:
        """The encryptor of values; ``ConfigurationError`` for a service made without a master key."""
        if self._encryptor is None:
            raise ConfigurationError(
                "this needs the master key: set MCP_SECRETS_MASTER_KEY or MCP_SECRETS_MASTER_KEY_FILE"
            )
        return self._encryptor

    def on_change(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Call ``listener(username, server)`` after each secret this service writes or deletes.

        It is called on the thread that wrote, which may be an event loop's; what it raises is logged,
        and the write stands. Only this service's writes: another process's (the CLI, another replica)
        are not seen. Returns a function that removes the listener.
        """
        mark = object()
        self._change_listeners[mark] = listener

        def remove() -> None:
            self._change_listeners.pop(mark, None)

        return remove

    def _changed(self, username: str, server: str) -> None:
        # Not under the nonblocking() of a write made on the event loop: a task a listener starts keeps the
        # context it started in, and its store calls must wait for a busy store, not fail.
        with waiting():
            for listener in list(self._change_listeners.values()):
                try:
                    listener(username, server)
                except Exception:  # noqa: PERF203 - one listener's failure must not skip the others
                    # The write is done and stays done: a listener's failure must not report it as failed.
                    logger.exception("a listener of secret changes failed")

    def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
        """Wait until every use recorded so far is written; False if the store failed or time ran out.

        A use dropped rather than written (past ``MAX_PENDING`` waiting, or refused by a store error
        other than unavailability) counts as done here: it is logged, and counted in ``uses.dropped``.
        """
        return self.uses.flush(timeout)

    def close(self) -> None:
        """Write the uses still pending and stop their writer; closing the store does it first. Idempotent."""
        self.uses.close()

    def get_secrets(
        self,
        username: str,
        server: str,
        *,
        via: str = "library",
        action: str = "used",
        detail: str = "",
        record_use: bool = True,
    ) -> dict[str, str]:
        """One user's decrypted secrets for one MCP server, as ``{key: value}``.

        The use is recorded in the audit trail (``action``, by ``via``) and as each key's last use,
        by a background writer within milliseconds: this call does not wait for that write. A caller
        that hands on only some of the values, or none, reads them with ``read_secrets`` and records what
        it did hand on with ``record_use``.

        Raises:
            DecryptionError: a record does not decrypt; it names that record's key.
            StoreUnavailableError: the database cannot be reached.

        """
        validate_username(username)
        validate_name("server", server)
        _validate_event_texts(via=via, action=action, detail=detail)
        values, stored_at = self._read(username, server)
        if values and record_use:
            self._record_use(
                username, server, values, via=via, action=action, detail=detail, not_before=stored_at
            )
        return values

    def read_secrets(self, username: str, server: str) -> tuple[dict[str, str], datetime | None]:
        """``get_secrets`` recording no use, and when the newest record read was stored (None: none was).

        A caller that records the use apart passes that time to ``record_use`` as ``not_before``.
        """
        validate_username(username)
        validate_name("server", server)
        return self._read(username, server)

    def _read(self, username: str, server: str) -> tuple[dict[str, str], datetime | None]:
        """``read_secrets`` of names known to be valid."""
        decrypt = self.encryptor.decrypt
        records = self.store.find_secrets(username, server)
        values = {
            record.key: decrypt(record.value, username=username, server=server, key=record.key)
            for record in records
        }
        return values, max((record.created_at for record in records), default=None)

    def record_use(
        self,
        username: str,
        server: str,
        keys: Iterable[str],
        *,
        via: str,
        action: str = "used",
        detail: str = "",
        not_before: datetime | None = None,
    ) -> None:
        """Record that ``keys`` of one user's server were handed on: one event, and each key's last use.

        ``not_before``: when the newest of the records handed on was stored (``read_secrets``), before which
        the use is not dated, whatever the clock says.
        """
        # Checked here, not by the writer thread: there a bad name would be dropped with the uses batched
        # beside it, or block them all, and the caller would not hear of it.
        validate_username(username)
        validate_name("server", server)
        _validate_event_texts(via=via, action=action, detail=detail)
        if isinstance(keys, str):  # its characters would be taken for keys
            raise InvalidInputError("keys must be a collection of key names, not one string")
        if not isinstance(keys, Iterable):
            raise InvalidInputError("keys must be a collection of key names")
        if not_before is not None and (not isinstance(not_before, datetime) or not_before.tzinfo is None):
            raise InvalidInputError("not_before must be a datetime with its time zone")
        self._record_use(
            username,
            server,
            [validate_name("key", key) for key in keys],
            via=via,
            action=action,
            detail=detail,
            not_before=not_before,
        )

    def _record_use(
        self,
        username: str,
        server: str,
        keys: Iterable[str],
        *,
        via: str,
        action: str,
        detail: str,
        not_before: datetime | None,
    ) -> None:
        """``record_use`` of names known to be valid: those ``get_secrets`` has just read."""
        used = tuple(sorted(keys))
        if used:
            # A use comes after the storing of what it used. Dated before it, by a clock stepped back since
            # (NTP, a VM restored), it would sort before it and not count as the records' last use: the store
            # takes such a use for one of a record deleted and stored again since, written late elsewhere.
            at = self._clock()
            if not_before is not None and at < not_before:
                at = not_before
            event = AuditEvent(at, username, action, server, ",".join(used), via, detail)
            self.uses.record(SecretUse(username, server, used, event))

    def record(
        self,
        actor: str,
        action: str,
        server: str = "",
        key: str = "",
        *,
        via: str = "",
        detail: str = "",
        at: datetime | None = None,
    ) -> None:
        """Add one event to the audit trail; callers never pass a value here."""
        if actor != OPERATOR:
            validate_username(actor)
        for field, name in (("server", server), ("key", key)):
            if name != "":
                validate_name(field, name)
        _validate_event_texts(action=action, via=via, detail=detail)
        if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
            raise InvalidInputError("at must be a datetime with its time zone")
        self._catch_up()
        self.store.add_event(AuditEvent(at or self._clock(), actor, action, server, key, via, detail))

    def list_events(
        self, username: str | None, server: str | None = None, limit: int = 50
    ) -> list[AuditEvent]:
        """The audit trail, newest first: one user's (or, with None, everyone's), of one server when given."""
        if username is not None:
            validate_username(username)
        if server is not None:
            validate_name("server", server)
        # A whole number: a float or a string would reach the store, and fail there as no SecretsError.
        if type(limit) is not int or not 1 <= limit <= 1000:  # noqa: PLR2004 - a page, not a dump
            raise InvalidInputError("limit must be a whole number between 1 and 1000")
        self._catch_up()
        return self.store.list_events(username, server, limit)

    def update_secret(
        self,
        username: str,
        server: str,
        key: str,
        value: str | None = None,
        action: Action = "save",
        *,
        via: str = "library",
        detail: str = "",
    ) -> UpdateResult:
        """Save, update or delete one secret of one user.

        ``save`` and ``update`` both write the value (an upsert, as in the original
        design) and report whether the record was created or updated; ``delete``
        removes the record and raises ``SecretNotFoundError`` when there is none.
        ``detail`` goes to the change's audit event.
        """
        validate_username(username)
        validate_name("server", server)
        validate_name("key", key)
        _validate_event_texts(via=via, detail=detail)
        now = self._clock()
        # The store writes the event with the record, in one transaction where it can.
        event = AuditEvent(now, username, "deleted", server, key, via, detail)
        if action == "delete":
            return self._delete(username, server, key, event)
        if action not in ACTIONS:
            raise InvalidInputError("action must be one of save, update, delete")
        plain = validate_value(value)
        ciphertext = self.encryptor.encrypt(plain, username=username, server=server, key=key)
        self._catch_up()
        try:
            created = self.store.put_secret(
                username, server, key, ciphertext, now, event=event, max_records=self.max_secrets_per_user
            )
        except LimitReached:
            # The store tells a new record from a replacement, which is always allowed.
            raise InvalidInputError(
                f"a user may keep at most {self.max_secrets_per_user} secrets: "
                "delete one before storing another"
            ) from None
        except StoreUnavailableError:
            # Perhaps made all the same: unconfirmed (WriteUnconfirmedError), or made on a standalone MongoDB
            # server that then lost its audit event. What holds the old value lets it go; when nothing was
            # made, the notice costs a client one listing.
            self._changed(username, server)
            raise
        self._changed(username, server)
        return UpdateResult(server, key, "created" if created else "updated")

    def set_secret(
        self, username: str, server: str, key: str, value: str, *, via: str = "library", detail: str = ""
    ) -> UpdateResult:
        """Store one secret, creating or replacing it."""
        return self.update_secret(username, server, key, value, "save", via=via, detail=detail)

    def delete_secret(self, username: str, server: str, key: str, *, via: str = "library") -> UpdateResult:
        """Delete one secret; ``SecretNotFoundError`` names what was missing."""
        return self.update_secret(username, server, key, None, "delete", via=via)

    def list_secret_keys(
        self,
        username: str,
        server: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[SecretKeyInfo]:
        """Names and timestamps of one user's secrets, never their values, in (server, key) order.

        With ``after``, only those past that (server, key); with ``limit``, at most that many.
        """
        validate_username(username)
        if server is not None:
            validate_name("server", server)
        if after is not None:
            validate_name("server", after[0])
            validate_name("key", after[1])
        # Last uses may lag here rather than fail the listing: the names matter more than the stamps.
        self.uses.flush(LISTING_FLUSH_SECONDS)
        return [
            SecretKeyInfo(
                record.server, record.key, record.created_at, record.updated_at, record.last_used_at
            )
            for record in self.store.find_secrets(username, server, after=after, limit=limit)
        ]

    def list_key_page(
        self, username: str, server: str | None = None, cursor: str = "", *, limit: int = KEYS_PER_LISTING
    ) -> SecretKeyPage:
        """At most ``limit`` keys of ``list_secret_keys``, those after ``cursor`` (the first page when empty).

        A cursor is the last ``server/key`` a page showed, ``next_cursor`` when more follow: any such
        name, whether an answer gave it or not, is a place to go on from.
        """
        infos = self.list_secret_keys(username, server, after=_after(cursor), limit=limit + 1)
        more = len(infos) > limit
        del infos[limit:]
        return SecretKeyPage(infos, f"{infos[-1].server}/{infos[-1].key}" if more else None)

    def stored_keys(self, username: str, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``keys``, (server, key) pairs, one user has stored; only those records are looked up."""
        validate_username(username)
        wanted = {(validate_name("server", server), validate_name("key", key)) for server, key in keys}
        return self.store.stored_keys(username, wanted) if wanted else set()

    def unconfigured_key_ids(self, count: int = KEY_ID_SAMPLE) -> list[str]:
        """The key ids, sorted, of the records at each end of the store that no configured master key reads.

        Only ``count`` records at each end are read, by index: a check cheap enough for every start,
        whatever the store holds, not a verification. A record of the legacy format or of no format has
        no key id.
        """
        encryptor = self.encryptor
        found = {encryptor.key_id_of(ciphertext) for ciphertext in self.store.sample_ciphertexts(count)}
        return sorted(found - {LEGACY_KEY_ID, *encryptor.key_ids})

    def _catch_up(self) -> None:
        """Wait for the uses recorded so far to be written: what follows reads them, or comes after them."""
        if not self.uses.flush():
            if (refusal := self.uses.refusal) is not None:  # a full disk, say: in the store's words, no value
                raise StoreUnavailableError(f"the latest uses of secrets are not written yet: {refusal}")
            raise StoreUnavailableError(
                "the store is unavailable: the latest uses of secrets are not written yet"
            )

    def _delete(self, username: str, server: str, key: str, event: AuditEvent) -> UpdateResult:
        self._catch_up()
        try:
            deleted = self.store.delete_secret(username, server, key, event=event)
        except StoreUnavailableError:
            self._changed(username, server)  # perhaps made all the same, as in update_secret
            raise
        if deleted:
            self._changed(username, server)
            return UpdateResult(server, key, "deleted")
        if self.store.find_secrets(username, server, limit=1):  # one says enough, however many there are
            raise SecretNotFoundError(f"there is no secret {key!r} for server {server!r}")
        raise SecretNotFoundError(f"there are no secrets for server {server!r}")
