"""The store protocol: where ciphertexts and token hashes live, and nothing else.

Stores are synchronous and thread-safe. Callers on an event loop go through
``mcp_secrets.offload``: a store that answers locally is tried on the loop itself
under ``nonblocking()``, where it raises ``WouldBlock`` instead of waiting, and the
call moves to a worker thread. Stores never see a plaintext: ``SecretRecord.value``
is a ciphertext.
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from mcp_secrets.errors import ConfigurationError, UnreadableRecordError

_NONBLOCKING: ContextVar[bool] = ContextVar("mcp_secrets_store_nonblocking", default=False)


class CloseCallbacks:
    """The bound methods a store calls as it closes, held weakly: they keep no owner of theirs alive."""

    def __init__(self) -> None:
        self._methods: list[weakref.WeakMethod[Callable[[], object]]] = []

    def add(self, method: Callable[[], object]) -> None:
        """Call ``method`` at close, while its owner lives."""
        self._methods = [held for held in self._methods if held() is not None]
        self._methods.append(weakref.WeakMethod(method))

    def run(self) -> None:
        """Call each method whose owner still lives, in the order added."""
        for held in self._methods:
            if (method := held()) is not None:
                method()


class WouldBlock(Exception):  # noqa: N818 - a signal, not a failure
    """A store call under ``nonblocking()`` would have to wait (for a lock); nothing was written."""


class LimitReached(Exception):  # noqa: N818 - a refusal the caller words, not a failure
    """``put_secret`` refused a new record: its user already holds ``max_records``. Nothing was written."""


@contextmanager
def _calls_block(blocking: bool) -> Iterator[None]:
    token = _NONBLOCKING.set(not blocking)
    try:
        yield
    finally:
        _NONBLOCKING.reset(token)


def nonblocking() -> AbstractContextManager[None]:
    """Within this block, store calls raise ``WouldBlock`` rather than wait for a lock."""
    return _calls_block(blocking=False)


def waiting() -> AbstractContextManager[None]:
    """Within this block, store calls wait for their lock again, even inside ``nonblocking()``."""
    return _calls_block(blocking=True)


def is_nonblocking() -> bool:
    """True inside ``nonblocking()``."""
    return _NONBLOCKING.get()


# Not frozen: a frozen dataclass costs six times as much to build, and a listing builds one per key.
# Nothing writes through a record; the store is changed only by its methods.
@dataclass(slots=True)
class SecretRecord:
    """One ``UserSecret``: the ciphertext of one key of one user for one MCP server."""

    username: str
    server: str
    key: str
    value: str
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None


# The detail of a change's audit event when the database made it but did not confirm it as its write concern
# asks (WriteUnconfirmedError): it may or may not last.
UNCONFIRMED = "not confirmed by the database"


@dataclass(frozen=True)
class AuditEvent:
    """One change or use of a secret or token, without any value."""

    at: datetime
    actor: str
    action: str
    server: str = ""
    key: str = ""
    transport: str = ""
    detail: str = ""

    def to_json(self) -> str:
        """One line of JSON with every field, the time in ISO 8601: how events are exported."""
        return printable_json({**dataclasses.asdict(self), "at": self.at.isoformat()})


def printable_json(data: object) -> str:
    """``data`` as one line of JSON, UTF-8 text kept, every character that is not printable escaped.

    ``ensure_ascii=False`` escapes only C0 controls: a stored name's C1 control (U+009B, a terminal's
    CSI) or bidi override (U+202E) reached the terminal of whoever read the output, and moved its cursor
    or reordered the line. Escaped, it is the same JSON value.
    """
    text = json.dumps(data, ensure_ascii=False)
    if text.isprintable():
        return text
    # JSON's own characters are printable ASCII: whatever is not printable sits inside a string.
    return "".join(char if char.isprintable() else _json_escape(char) for char in text)


def _json_escape(char: str) -> str:
    """JSON's escape of ``char``: its code point, or its UTF-16 surrogate pair beyond the first plane."""
    code = ord(char)
    if code <= 0xFFFF:  # noqa: PLR2004 - the end of the Basic Multilingual Plane
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


@dataclass(frozen=True)
class SecretUse:
    """Some of one user's secrets of one server, given to a caller: each key's last use, and the event."""

    username: str
    server: str
    keys: tuple[str, ...]
    event: AuditEvent
    #: The event's id in a store that cannot tell whether a failed write was applied (MongoDB losing
    #: its reply): given at the first try and kept, so a batch written again adds no second event.
    #: Not made with the use: the call that hands the values on does not pay for it.
    event_id: object = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def at(self) -> datetime:
        """When the secrets were given."""
        return self.event.at


def latest_uses(uses: Iterable[SecretUse]) -> dict[tuple[str, str, str], datetime]:
    """The newest use of each (username, server, key) among ``uses``: one ``last_used_at`` per record."""
    # A batch mostly repeats a few (username, server, keys): compare times once per distinct one.
    newest: dict[tuple[str, str, tuple[str, ...]], datetime] = {}
    for use in uses:
        group = (use.username, use.server, use.keys)
        at = use.at
        if group not in newest or newest[group] < at:
            newest[group] = at
    latest: dict[tuple[str, str, str], datetime] = {}
    for (username, server, keys), at in newest.items():
        for key in keys:
            record = (username, server, key)
            if record not in latest or latest[record] < at:
                latest[record] = at
    return latest


# The fields that name a record of each table (SQLite) or collection (MongoDB) in an error: never a value, a
# hash or a detail.
RECORD_NAMES = {
    "user_secrets": ("username", "server", "key"),
    "api_tokens": ("token_id", "username"),
    "entry_links": ("link_id", "username", "server", "key"),
    "audit_events": ("actor", "server", "key"),
}


class FieldError(Exception):
    """A stored record's field is missing or of a type no record of this store holds; raised while reading."""

    def __init__(self, field: str, found: object, expected: str) -> None:
        # The type of what was found, never what it is: it may be (or hold) a value.
        kind = "nothing" if found is None else _KINDS.get(type(found).__name__, f"a {type(found).__name__}")
        super().__init__(f"its field {field} holds {kind}, not {expected}")


_KINDS = {"str": "a string", "bytes": "bytes", "int": "an integer", "float": "a number", "dict": "a document"}


def _named(found: object) -> str:
    if type(found) is str:
        return repr(found)
    return "missing" if found is None else f"of type {type(found).__name__}"


def record_names(table: str, fields: Mapping[str, object]) -> tuple[str, tuple[str, ...] | None]:
    """How to name a record of ``table`` holding ``fields`` in an error, and its names when all are strings.

    Only the fields of ``RECORD_NAMES`` are shown, and only those that are strings: another type may hold
    anything, a value included.
    """
    names = RECORD_NAMES.get(table, ())
    found = [fields.get(name) for name in names]
    which = ", ".join(f"{name} {_named(value)}" for name, value in zip(names, found, strict=True))
    texts = [value for value in found if type(value) is str]
    return which, tuple(texts) if len(texts) == len(found) else None


def unreadable_record(
    where: str, table: str, fields: Mapping[str, object], fault: FieldError
) -> UnreadableRecordError:
    """The error for a record of ``table`` that cannot be read; ``where`` is "row" or "document"."""
    which, record = record_names(table, fields)
    container = "table" if where == "row" else "collection"
    return UnreadableRecordError(
        f"the {where} of {which} in the {container} {table} cannot be read ({fault}): correct or remove it "
        "(README, Storage)",
        record=record,
    )


@dataclass(frozen=True)
class TokenRecord:
    """One API token, kept only as the SHA-256 of the token string."""

    token_id: str
    username: str
    token_hash: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    label: str = ""


# How far a link's making may be ahead of the clock that checks it and the link still work: a replica's
# clock a little ahead of this one's, a small correction. A link made further "ahead" was made before the
# clock stepped back (NTP, a VM restored) by an unknown span: it would outlive its TTL by that span, so it
# has expired.
LINK_CLOCK_STEP = timedelta(minutes=1)


@dataclass(frozen=True)
class LinkRecord:
    """A one-time entry link, kept only as the SHA-256 of its token."""

    link_id: str
    link_hash: str
    username: str
    server: str
    key: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    #: The id of the API token whose caller made the link: the link works only while that token does.
    #: None for a caller without an API token (a JWT, which cannot be revoked here) and for a link made
    #: before links recorded it.
    token_id: str | None = None
    #: The SHA-256 of the CSRF token of the form whose submission claimed the link: a post of the same
    #: form (a double click) is told apart from another's. None when no form claimed it, or one did
    #: before claims recorded their form.
    claimed_by: str | None = None


class SecretStore(Protocol):
    """What the ``Secrets`` service and the token verifier need from a database."""

    #: True when a call never waits on the network, so it may be tried on the event loop under
    #: ``nonblocking()``; such a store must then raise ``WouldBlock`` instead of waiting for a lock.
    answers_inline: bool

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

        ``event`` goes to the audit trail with its action set to ``created`` or ``updated``
        (in the same transaction where the database has them). With ``max_records``, a new record
        whose user already holds that many raises ``LimitReached``; a replacement never does.
        """
        ...

    def delete_secret(self, username: str, server: str, key: str, *, event: AuditEvent | None = None) -> bool:
        """Remove one record, recording ``event`` when it did; return False when there was none."""
        ...

    def find_secrets(
        self,
        username: str,
        server: str | None = None,
        *,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[SecretRecord]:
        """One user's records, of one server or of all, in (server, key) order, in one query.

        With ``after``, only those past that (server, key); with ``limit``, at most that many.
        """
        ...

    def stored_keys(self, username: str, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``keys``, (server, key) pairs, ``username`` has stored: found by name, values unread."""
        ...

    def count_secrets(self, username: str | None = None) -> int:
        """How many records the store holds, of one user or (None) of all."""
        ...

    def record_uses(self, uses: Sequence[SecretUse]) -> None:
        """Write a batch of uses: each use's event, and each record's ``last_used_at``.

        ``last_used_at`` only ever moves forward, so batches may land in any order. A batch
        that raises may be written again whole: where the database has transactions nothing
        of it was written; elsewhere (MongoDB) a retry can repeat an event, never lose one.
        """
        ...

    def add_event(self, event: AuditEvent) -> None:
        """Append one event to the audit trail."""
        ...

    def list_events(
        self, actor: str | None = None, server: str | None = None, limit: int = 50
    ) -> list[AuditEvent]:
        """The newest events first, of one actor and one server when given."""
        ...

    def iter_events(
        self, actor: str | None = None, server: str | None = None, limit: int = 50, *, page: int = 1000
    ) -> Iterator[AuditEvent]:
        """``list_events``, read ``page`` events at a time: however many are asked for, a page is held.

        Each page is a query of its own, going on after the last event of the one before.
        """
        ...

    def count_events(self, before: datetime) -> int:
        """How many events of the audit trail, of every actor, happened before ``before``."""
        ...

    def delete_events(
        self, before: datetime, limit: int, keep: Callable[[list[AuditEvent]], None] | None = None
    ) -> int:
        """Delete up to ``limit`` events from before ``before``, first written first; return how many.

        ``keep``, when given, receives the events before they are deleted; if it raises,
        none of them is. Each call's write is short (SQLite transactions of at most 5,000
        deletes; one ``delete_many`` on MongoDB), so a large prune, as a loop of calls, never holds the
        store for long. A delete that fails after ``keep`` (wholly, or on MongoDB part way)
        leaves events that the next call hands to ``keep`` again: kept twice, never lost.
        """
        ...

    def scan_secrets(self, after: tuple[str, str, str] | None, limit: int) -> list[SecretRecord]:
        """Up to ``limit`` records of all users, in (username, server, key) order, after ``after``."""
        ...

    def sample_ciphertexts(self, count: int) -> list[str]:
        """The ciphertexts of up to ``count`` records at each end of an index, each once; cheap on any store.

        Never a scan: SQLite reads the first and last by primary key (the table has no rowid), MongoDB
        the oldest and newest by ``_id``. A stored value that is not text is left out.
        """
        ...

    def replace_value(self, username: str, server: str, key: str, old: str, new: str) -> bool:
        """Swap a record's ciphertext ``old`` for ``new``, only if it is still ``old``; timestamps stay."""
        ...

    def put_token(self, token: TokenRecord, *, first: bool = False) -> bool:
        """Insert a new API token record; True.

        With ``first``, only while the store holds no token: False when it holds one, or when another
        process's first token was put meanwhile.
        """
        ...

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token record with this hash, revoked or not."""
        ...

    def find_token_by_id(self, token_id: str) -> TokenRecord | None:
        """The token record with this id, revoked or not."""
        ...

    def list_tokens(self, username: str | None = None) -> list[TokenRecord]:
        """Every token record (of one user, when given), oldest first."""
        ...

    def has_tokens(self) -> bool:
        """Whether any token record, revoked or not, is stored: one row is read, and none is decoded."""
        ...

    def revoke_token(self, token_id: str, now: datetime) -> TokenRecord | None:
        """Mark a live token revoked, and return its record as revoked; None when no live token has this id.

        One atomic step, which reads no other token.
        """
        ...

    def put_link(self, link: LinkRecord) -> None:
        """Insert a new entry link, and drop links that expired before ``link.created_at``."""
        ...

    def put_links(self, links: Sequence[LinkRecord], *, max_live: int | None = None) -> None:
        """Insert new entry links of one user, all or none: ``put_link`` of each.

        With ``max_live``, ``LimitReached`` when that user would then hold more live links, none inserted.
        """
        ...

    def end_token_links(self, token_id: str, now: datetime) -> int:
        """Make the open links of API token ``token_id`` expire at ``now``; return how many there were."""
        ...

    def count_live_links(self, username: str, now: datetime) -> int:
        """How many of one user's entry links are neither used nor expired at ``now``.

        A link made more than ``LINK_CLOCK_STEP`` after ``now`` has expired, as ``EntryLinks.find`` says.
        """
        ...

    def find_link(self, link_hash: str) -> LinkRecord | None:
        """The entry link with this hash, used or not."""
        ...

    def claim_link(self, link_hash: str, now: datetime, claim_id: str, *, form: str | None = None) -> bool:
        """Mark an unused, unexpired link used at ``now`` by ``claim_id``, atomically; False when it was not.

        ``claim_id`` is a random id of one submission, kept with the link and never in a ``LinkRecord``.
        ``form``, the hash of the submitting form's CSRF token, becomes the link's ``claimed_by``.
        """
        ...

    def release_link(self, link_hash: str, claim_id: str) -> None:
        """Make a link claimed by ``claim_id`` usable again (its secret could not be stored).

        Any other claim, another submission's, stays, even one made in the same instant: that one stored
        its value. A link claimed before claim ids were kept is never given back.
        """
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless the database answers."""
        ...

    def before_close(self, method: Callable[[], object]) -> None:
        """Have ``close()`` first call a bound method (held weakly): pending uses are written while it can."""
        ...

    def close(self) -> None:
        """Release connections, once the callbacks given to ``before_close`` have run."""
        ...


def open_store(
    database_url: str | None, *, default_sqlite_path: str, busy_timeout: float = 10.0, create: bool = True
) -> SecretStore:
    """Open the store named by ``MCP_SECRETS_DATABASE_URL``; SQLite at the default path when unset.

    ``create=False`` refuses a SQLite file that does not exist yet instead of creating it.
    """
    url = (database_url or "").strip()
    if not url:
        from mcp_secrets.store.sqlite import SQLiteStore  # noqa: PLC0415 - import only the backend in use

        return SQLiteStore(default_sqlite_path, busy_timeout=busy_timeout, create=create)
    if url.startswith("sqlite:///"):
        from mcp_secrets.store.sqlite import SQLiteStore  # noqa: PLC0415

        # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy spells them.
        path = url[len("sqlite:///") :]
        if path in ("", ":memory:"):
            # A store in memory would lose every secret at exit, and SQLite would take ":memory:" as a file.
            raise ConfigurationError("MCP_SECRETS_DATABASE_URL: sqlite:/// needs the path of a file")
        try:
            expanded = Path(path).expanduser()
        except RuntimeError:  # `~name/…` of no such user: Path says so in a traceback
            raise ConfigurationError(
                "MCP_SECRETS_DATABASE_URL: its path is under no such home directory"
            ) from None
        return SQLiteStore(expanded, busy_timeout=busy_timeout, create=create)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from mcp_secrets.store.mongo import MongoStore  # noqa: PLC0415

        return MongoStore.from_url(url)
    raise ConfigurationError(
        "MCP_SECRETS_DATABASE_URL must start with mongodb://, mongodb+srv:// or sqlite:///"
    )
