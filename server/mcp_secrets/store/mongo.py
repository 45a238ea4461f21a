"""The MongoDB store: ``UserSecret`` documents and API token hashes, through pymongo."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, ParamSpec, TypeVar, cast

import bson
from bson import ObjectId
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import InvalidBSON, InvalidDocument
from bson.raw_bson import RawBSONDocument
from pymongo import DeleteOne, MongoClient, ReadPreference, ReturnDocument, UpdateOne, monitoring, timeout
from pymongo.client_options import ClientOptions
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    InvalidName,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
    WriteError,
)
from pymongo.errors import ConfigurationError as PyMongoConfigurationError
from pymongo.read_concern import ReadConcern
from pymongo.server_description import ServerDescription
from pymongo.server_type import SERVER_TYPE
from pymongo.uri_parser import parse_uri
from pymongo.write_concern import WriteConcern

from mcp_secrets.errors import (
    ConfigurationError,
    SecretsError,
    StoreUnavailableError,
    UnreadableRecordError,
    WriteUnconfirmedError,
)
from mcp_secrets.store import (
    LINK_CLOCK_STEP,
    UNCONFIRMED,
    AuditEvent,
    CloseCallbacks,
    FieldError,
    LimitReached,
    LinkRecord,
    SecretRecord,
    SecretUse,
    TokenRecord,
    latest_uses,
    record_names,
    unreadable_record,
)

DEFAULT_DATABASE = "mcp_secrets"
SECRETS_COLLECTION = "user_secrets"
TOKENS_COLLECTION = "api_tokens"
FIRST_TOKEN_ID = "first-token"  # noqa: S105 - the _id of the token a first start makes: only one can hold it
LINKS_COLLECTION = "entry_links"
EVENTS_COLLECTION = "audit_events"
SERVER_SELECTION_TIMEOUT_MS = 5000
AUTHENTICATION_FAILED = 18  # the server's error code for a refused login: wrong user, password or mechanism
UNAUTHORIZED = 13  # the server's error code for a command the user has no privilege for
# The server's error codes for a database name it refuses though pymongo takes it: too long (or a character
# only the server forbids), or a database of the same name in other case exists already.
DATABASE_NAME_REFUSED = {73: "InvalidNamespace", 13297: "DatabaseDifferCase"}
# The server's error code for a value a unique index holds already (a write's, or a new index's).
DUPLICATE_KEY = 11000
# The server's error codes for an index asked of a view, and for one it cannot make on its collection (a TTL
# index on a capped collection).
NOT_ON_VIEW = 166
CANNOT_CREATE_INDEX = 67
# The server's error codes for an index asked for whose keys an index of another name has already, or
# whose name one of other options (85) or other keys (86) has: the server keeps the one there.
INDEX_CONFLICTS = frozenset({85, 86})
# What an index may carry beside its keys and the options the store asks for, and still serve as asked.
_INDEX_BOOKKEEPING = frozenset({"key", "v", "ns", "background"})
_INDEX_FLAGS = frozenset({"unique", "sparse", "hidden"})  # false is as good as absent
# Deployments with multi-document transactions; a standalone server ("Single") has none.
TRANSACTION_TOPOLOGIES = frozenset({"ReplicaSetWithPrimary", "Sharded", "LoadBalanced"})
# The servers with them, when a client is connected straight to one: a replica set's primary, a mongos.
TRANSACTION_SERVERS = frozenset({SERVER_TYPE.RSPrimary, SERVER_TYPE.Mongos})

# The read concern of a change's transaction, which reads nothing.
_IN_TRANSACTION = ReadConcern("local")

Document = dict[str, Any]
IndexKeys = list[tuple[str, int]]
T = TypeVar("T")
Query = Callable[[Collection[Any]], Cursor[Any]]

# What pymongo's BSON codec raises, outside ``PyMongoError``, for what it cannot encode: a document past
# 16 MiB, a value BSON has no type for, an int past 8 bytes, a string with a lone surrogate.
_ENCODE_ERRORS = (InvalidDocument, OverflowError, UnicodeEncodeError)
# And for a document it cannot decode (written by another tool): a date outside years 1 to 9999, say.
_DECODE_ERRORS = (InvalidBSON, UnicodeDecodeError)


def _text(field: str, value: str) -> str:
    """Refuse anything but a plain string where a filter expects one: no operator can slip in."""
    if type(value) is not str:
        raise TypeError(f"{field} must be a string")
    return value


def _time(field: str, value: datetime) -> datetime:
    """Refuse anything but a datetime where a filter expects a time."""
    if not isinstance(value, datetime):
        raise TypeError(f"{field} must be a datetime")
    return value


def has_transactions(client: MongoClient[Document]) -> bool:
    """True when the deployment the client has reached runs multi-document transactions."""
    description = getattr(client, "topology_description", None)
    kind = getattr(description, "topology_type_name", None)
    if kind == "Single":  # directConnection=true makes any one server "Single": its own type tells
        servers: dict[Any, ServerDescription] = getattr(description, "server_descriptions", dict)()
        return any(server.server_type in TRANSACTION_SERVERS for server in servers.values())
    return isinstance(kind, str) and kind in TRANSACTION_TOPOLOGIES


def _utc(moment: datetime | None) -> datetime | None:
    # pymongo hands back naive UTC datetimes unless the client is tz_aware.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def _stored_text(document: Document, field: str, default: str | None = None) -> str:
    """A string field of a stored document; ``default`` where it is missing or null, if given."""
    stored = document.get(field)
    if stored is None and default is not None:
        return default
    if type(stored) is not str:  # another tool may have written any type, or none
        raise FieldError(field, stored, "a string")
    return stored


def _stored_optional_text(document: Document, field: str) -> str | None:
    """A string field of a stored document that may be missing or null: None then."""
    return None if document.get(field) is None else _stored_text(document, field)


def _stored_time(document: Document, field: str) -> datetime | None:
    """A date field of a stored document, in UTC; None where it is missing or null."""
    stored = document.get(field)
    if stored is None:
        return None
    if not isinstance(stored, datetime):
        raise FieldError(field, stored, "a date")
    return _utc(stored)


def _required_time(document: Document, field: str) -> datetime:
    """A date field every document of its collection has, in UTC."""
    stored = _stored_time(document, field)
    if stored is None:
        raise FieldError(field, stored, "a date")
    return stored


def _converted(collection: str, document: Document, convert: Callable[[Document], T]) -> T:
    """``convert(document)``; a field of the wrong shape fails naming the document, never its value."""
    try:
        return convert(document)
    except FieldError as fault:
        raise unreadable_record("document", collection, document, fault) from None


def _secret(document: Document) -> SecretRecord:
    return _converted(SECRETS_COLLECTION, document, _secret_of)


def _mongoose_time(document: Document, field: str) -> datetime | None:
    """A time the original design's Mongoose wrote (``createdAt``, ``updatedAt``); None unless a date.

    Not the store's own field: one of another shape is passed over, not refused.
    """
    stored = document.get(field)
    return _utc(stored) if isinstance(stored, datetime) else None


def _secret_of(document: Document) -> SecretRecord:
    # The original design wrote no times of ours (Mongoose's, at most), and an update sets only updated_at:
    # read what there is.
    updated_at = (
        _stored_time(document, "updated_at")
        or _mongoose_time(document, "updatedAt")
        or datetime.now(timezone.utc)
    )
    return SecretRecord(
        _stored_text(document, "username"),
        _stored_text(document, "server"),
        _stored_text(document, "key"),
        _stored_text(document, "value"),
        _stored_time(document, "created_at") or _mongoose_time(document, "createdAt") or updated_at,
        updated_at,
        _stored_time(document, "last_used_at"),
    )


def _to_milliseconds(moment: datetime) -> datetime:
    """A time as BSON keeps it: to the millisecond."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _event(document: Document) -> AuditEvent:
    return _converted(EVENTS_COLLECTION, document, _event_of)


def _event_of(document: Document) -> AuditEvent:
    return AuditEvent(
        _required_time(document, "at"),
        _stored_text(document, "actor"),
        _stored_text(document, "action"),
        _stored_text(document, "server", ""),
        _stored_text(document, "key", ""),
        _stored_text(document, "transport", ""),
        _stored_text(document, "detail", ""),
    )


def _event_document(event: AuditEvent) -> Document:
    return {
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "server": event.server,
        "key": event.key,
        "transport": event.transport,
        "detail": event.detail,
    }


def _token(document: Document) -> TokenRecord:
    return _converted(TOKENS_COLLECTION, document, _token_of)


def _token_of(document: Document) -> TokenRecord:
    return TokenRecord(
        _stored_text(document, "token_id"),
        _stored_text(document, "username"),
        _stored_text(document, "token_hash"),
        _required_time(document, "created_at"),
        _stored_time(document, "expires_at"),
        _stored_time(document, "revoked_at"),
        _stored_text(document, "label", ""),
    )


def _link(document: Document) -> LinkRecord:
    return _converted(LINKS_COLLECTION, document, _link_of)


def _link_of(document: Document) -> LinkRecord:
    return LinkRecord(
        _stored_text(document, "link_id"),
        _stored_text(document, "link_hash"),
        _stored_text(document, "username"),
        _stored_text(document, "server"),
        _stored_text(document, "key"),
        _required_time(document, "created_at"),
        _required_time(document, "expires_at"),
        _stored_time(document, "used_at"),
        # Missing in a link made before links recorded their token: it names none.
        _stored_optional_text(document, "token_id"),
        # Missing in a link claimed before claims recorded their form.
        _stored_optional_text(document, "claimed_by"),
    )


# The commands that change a collection: any of them sent and left unanswered may or may not have been made.
_WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findAndModify"})


class _UnansweredWrites(monitoring.CommandListener):
    """Tells, in each thread, whether the last command it sent was a write that got no answer.

    pymongo raises ``AutoReconnect`` alike for a connection that could not be made, where nothing was sent,
    and for one that broke after a write was sent, which the server may have made: only whether the write
    was started tells them apart. pymongo publishes a command's events in the thread that runs it.
    A write once lost stays so until ``forget``: on a replica set pymongo retries it, and raises the
    retry's error (a NotWritablePrimary refusal), which says nothing of the first try.
    """

    def __init__(self) -> None:
        self._thread = threading.local()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self._thread.pending = event.command_name in _WRITE_COMMANDS

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:  # noqa: ARG002 - only that it was
        self._thread.pending = False

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        # A server's error reply is a document with "ok"; pymongo's own failures (a connection lost) are not.
        if "ok" not in event.failure:
            self._thread.lost = self.unanswered()
        self._thread.pending = False

    def forget(self) -> None:
        """Start afresh: a write of an earlier call, lost, is not this call's."""
        self._thread.pending = self._thread.lost = False

    def unanswered(self) -> bool:
        """Whether a write of this thread's call was sent and never answered."""
        return bool(getattr(self._thread, "pending", False) or getattr(self._thread, "lost", False))


# One for every client the store makes: its state is per thread, and a thread runs one command at a time.
_UNANSWERED = _UnansweredWrites()

_TLS_FILE_OPTIONS = ("tlscafile", "tlscertificatekeyfile", "tlscrlfile")  # as pymongo spells them

_P = ParamSpec("_P")
_C = TypeVar("_C", bound=type)


def _without_hidden_context(method: Callable[_P, T]) -> Callable[_P, T]:
    """``method``, whose errors raised ``from None`` no longer carry the error they replaced.

    ``from None`` keeps the driver's error out of a printed traceback, not out of the new error's
    ``__context__``, where whatever walks the chain (an error reporter) finds it: it can quote the values
    a unique index refused, or the document a write sent. Within the ``except`` or ``with`` that caught
    it nothing else can drop it, so it is dropped here, where nothing is being handled.
    """
    if inspect.isgeneratorfunction(method):  # its errors come as it is iterated, after the call returned
        generator = cast("Callable[_P, Iterator[Any]]", method)

        @functools.wraps(method)
        def iterate(*args: _P.args, **kwargs: _P.kwargs) -> Iterator[Any]:
            try:
                return (yield from generator(*args, **kwargs))
            except SecretsError as exc:
                if not exc.__suppress_context__:
                    raise
                error = exc
            error.__context__ = None
            raise error

        return cast("Callable[_P, T]", iterate)

    @functools.wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except SecretsError as exc:
            if not exc.__suppress_context__:
                raise
            error = exc
        error.__context__ = None
        raise error

    return call


def _hiding_replaced_errors(cls: _C) -> _C:
    """``cls`` with ``_without_hidden_context`` around its constructor and every public method."""
    for name, member in list(vars(cls).items()):
        if isinstance(member, classmethod):
            setattr(cls, name, classmethod(_without_hidden_context(member.__func__)))
        elif isinstance(member, staticmethod):  # callable itself, but wrapped as one it would take self
            setattr(cls, name, staticmethod(_without_hidden_context(member.__func__)))
        elif callable(member) and (name == "__init__" or not name.startswith("_")):
            setattr(cls, name, _without_hidden_context(member))
    return cls


@_hiding_replaced_errors
class MongoStore:
    """A ``SecretStore`` on MongoDB collections, indexes created at start.

    On a replica set or a sharded cluster, a record's change and its audit event are written in one
    transaction. A standalone server has no transactions: there the event follows the change, and
    if it cannot be written the caller is told that the change was made without it.
    """

    answers_inline = False  # every call is a network round trip: always from a worker thread

    def __init__(self, client: MongoClient[Document], database: str = DEFAULT_DATABASE) -> None:
        concern = getattr(client, "write_concern", None)
        if isinstance(concern, WriteConcern) and not concern.acknowledged:
            # pymongo would make each write, then fail asking how it went: a change made would be
            # reported failed, its audit event never written, a claimed link left claimed.
            raise ConfigurationError(
                "MongoDB writes must be acknowledged: remove w=0 from MCP_SECRETS_DATABASE_URL"
            )
        self._client = client
        self._before_close = CloseCallbacks()
        # A client made elsewhere, without the listener, cannot tell a write sent from one never sent: its
        # connection failures read as an unavailable store, as they did before the store could tell.
        options = getattr(client, "options", None)
        self._tells_sent = isinstance(options, ClientOptions) and any(
            # The listeners as given, whatever pymongo's annotation says.
            listener is _UNANSWERED
            for listener in cast("list[object]", options.event_listeners)
        )
        # Whatever readPreference the URL sets: a secondary may not have a token's revocation yet, nor a
        # secret just saved, and the store answers as SQLite does, with what was last written.
        db = client.get_database(database, read_preference=ReadPreference.PRIMARY)
        self._secrets: Collection[Document] = db[SECRETS_COLLECTION]
        self._tokens: Collection[Document] = db[TOKENS_COLLECTION]
        self._links: Collection[Document] = db[LINKS_COLLECTION]
        self._events: Collection[Document] = db[EVENTS_COLLECTION]
        with _available():
            try:
                self._create_indexes()
            except OperationFailure as exc:
                if exc.code in DATABASE_NAME_REFUSED:
                    raise ConfigurationError(
                        f"the MongoDB server refuses the database name ({DATABASE_NAME_REFUSED[exc.code]}): "
                        "check the database that MCP_SECRETS_DATABASE_URL names (its case, its length)"
                    ) from None
                # A user of the read role (an operator's, for list and audit) may not create indexes, even
                # those that exist: the ones an earlier start made serve it; its writes are refused.
                if exc.code != UNAUTHORIZED:
                    raise
                if not self._has_indexes():
                    raise StoreUnavailableError(
                        "the MongoDB user is not allowed to create the store's indexes, and they do not "
                        "exist yet: open the store once as a user with the readWrite role"
                    ) from None
            self._refuse_collations()
        # Known once the index calls above have reached a server.
        self.transactions = has_transactions(client)

    def _create_indexes(self) -> None:
        _ensure_index(self._secrets, _RECORD_KEYS, "username_server_key_unique", {"unique": True})
        _ensure_index(self._tokens, [("token_hash", 1)], "token_hash_unique", {"unique": True})
        _ensure_index(self._tokens, [("token_id", 1)], "token_id_unique", {"unique": True})
        # A user's tokens are read at each new session and listen stream, to count only those of live ones.
        _ensure_index(self._tokens, [("username", 1)], "username")
        _ensure_index(self._links, [("link_hash", 1)], "link_hash_unique", {"unique": True})
        _ensure_index(self._links, [("username", 1), ("expires_at", 1)], "username_expires_at")
        # One index per filter the trail is read by (one user, one server, one user's of one server, none),
        # each ending in the listing's sort, so a page of the newest events reads that page and sorts nothing.
        for prefix in (["actor"], ["server"], ["actor", "server"], []):
            keys = [(field, 1) for field in prefix] + [("at", -1), ("_id", -1)]
            _ensure_index(self._events, keys, "_".join([*prefix, "at", "id"]))
        if "actor_at" in self._events.index_information():  # made by earlier versions; now a prefix
            # Another server starting beside this one may drop it first.
            with suppress(OperationFailure):
                self._events.drop_index("actor_at")
        # MongoDB deletes expired entry links by itself (within a minute of expiry).
        _ensure_index(self._links, [("expires_at", 1)], "expires_at_ttl", {"expireAfterSeconds": 0})

    def _refuse_collations(self) -> None:
        """Refuse collections made with a default collation other than the binary one.

        Every filter and index of such a collection would use it: with a case-insensitive one (strength 1
        or 2), "Alice" would list, overwrite and delete alice's records, and read her audit trail. The
        store's own indexes are made without a collation, so they carry the collection's default.
        """
        for collection, names in _OWN_INDEXES.items():
            for name, index in self._secrets.database[collection].index_information().items():
                collation = index.get("collation")
                if name in names and isinstance(collation, dict) and collation.get("locale") != "simple":
                    raise ConfigurationError(
                        f"the MongoDB collection {collection} has a default collation (locale "
                        f"{collation.get('locale')!r}), under which usernames and names differing in case "
                        "or accents could match one another: the store needs the binary one; move its "
                        "documents to a collection made without a collation"
                    )

    def _has_indexes(self) -> bool:
        """True when the unique indexes the store's records rely on exist, whatever their names."""
        return (
            _find_index(self._secrets, _RECORD_KEYS, {"unique": True}) is not None
            and _find_index(self._tokens, [("token_hash", 1)], {"unique": True}) is not None
            and _find_index(self._tokens, [("token_id", 1)], {"unique": True}) is not None
        )

    @classmethod
    def from_url(cls, url: str) -> MongoStore:
        """Connect to the server of a ``mongodb://`` URL; the database comes from its path."""
        try:
            parsed = parse_uri(url)
            database = parsed.get("database") or DEFAULT_DATABASE
            # Defaults only: pymongo lets a keyword win over the URL, which would drop the URL's own.
            given = {option.lower() for option in parsed["options"]}
            defaults: dict[str, Any] = {
                "serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS,
                "appname": "mcp-secrets",
            }
            client: MongoClient[Document] = MongoClient(
                url,
                tz_aware=True,
                event_listeners=[_UNANSWERED],
                **{option: value for option, value in defaults.items() if option.lower() not in given},
            )
        except (PyMongoConfigurationError, ValueError) as exc:
            # pymongo's message can quote the URL, password included: say only what kind of fault it is.
            lookup = _dns_failure(exc)
            if lookup is not None:
                raise StoreUnavailableError(
                    f"the MongoDB servers of the mongodb+srv:// URL could not be looked up in DNS ({lookup})"
                ) from None
            raise ConfigurationError(
                f"MCP_SECRETS_DATABASE_URL is not a valid MongoDB URL ({type(exc).__name__})"
            ) from None
        except OSError as exc:
            # A TLS file the URL names (tlsCAFile=…) that cannot be read, or holds no certificate. Named
            # here by its option, since older pymongo does not name it; the error's strerror never has
            # the URL.
            options = [option for option in _TLS_FILE_OPTIONS if f"{option}=" in url.lower()]
            raise ConfigurationError(
                f"MCP_SECRETS_DATABASE_URL names a file that cannot be used ({', '.join(options)}: "
                f"{type(exc).__name__}: {exc.strerror})"
            ) from None
        try:
            return cls(client, database)
        except InvalidName:
            client.close()
            # A character MongoDB forbids in a database name (a backslash, a NUL), decoded from the path.
            raise ConfigurationError(
                "MCP_SECRETS_DATABASE_URL names a database MongoDB does not allow (InvalidName)"
            ) from None
        except BaseException:
            # Its monitor threads and sockets would outlive the failure: a caller retrying gathers them.
            client.close()
            raise

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
        """Insert or replace one record's ciphertext and record ``event``; True when it was created.

        ``max_records`` is checked before the write: MongoDB's transactions would not stop two writers
        at once from both counting room for the last record, so this bounds growth, not an exact count.
        """
        selector = _record(username, server, key)
        if max_records is not None:
            with _available(SECRETS_COLLECTION):
                full = self._secrets.count_documents({"username": selector["username"]}) >= max_records
                if full and self._secrets.find_one(selector, {"_id": 1}) is None:
                    raise LimitReached

        def write(session: ClientSession | None) -> bool:
            try:
                result = self._secrets.update_one(
                    selector,
                    {"$set": {"value": value, "updated_at": now}, "$setOnInsert": {"created_at": now}},
                    upsert=True,
                    session=session,
                )
            except WriteConcernError as exc:
                # Outside a transaction (in one, the commit carries the write concern): the change was made.
                if event is not None:

                    def record() -> None:
                        found = self._secrets.find_one(selector, {"created_at": True})
                        made = None if found is None else found.get("created_at")
                        # Another tool's document may hold anything there: it was not created now.
                        created = isinstance(made, datetime) and _utc(made) == _to_milliseconds(now)
                        action = "created" if created else "updated"
                        self._record_change(replace(event, action=action, detail=UNCONFIRMED), session)

                    _recording_unconfirmed(exc, record)
                raise
            created = result.upserted_id is not None
            if event is not None:
                self._record_change(replace(event, action="created" if created else "updated"), session)
            return created

        with self._writing(SECRETS_COLLECTION):
            try:
                return self._changing(write)
            except DuplicateKeyError as exc:
                if _foreign_index(exc) is not None:
                    raise  # written again, it would be refused again
                # Two upserts raced to insert the same record and the unique index let the other one
                # win: written again, this one finds the record and replaces its value, as a later save.
                return self._changing(write)

    def delete_secret(self, username: str, server: str, key: str, *, event: AuditEvent | None = None) -> bool:
        """Remove one record, recording ``event`` when it did; return False when there was none."""
        selector = _record(username, server, key)

        def write(session: ClientSession | None) -> bool:
            try:
                # One delete as a bulk write: its error says how many it deleted, delete_one's does not.
                deleted = self._secrets.bulk_write([DeleteOne(selector)], session=session).deleted_count > 0
            except BulkWriteError as exc:
                if not _unconfirmed(exc):
                    raise
                if not exc.details.get("nRemoved"):
                    # The server waits for the write concern of a write that changed nothing too.
                    return False
                if event is not None:

                    def record() -> None:
                        if self._secrets.find_one(selector, {"_id": True}) is None:
                            self._record_change(replace(event, detail=UNCONFIRMED), session)

                    _recording_unconfirmed(exc, record)
                raise
            if deleted and event is not None:
                self._record_change(event, session)
            return deleted

        with self._writing(SECRETS_COLLECTION):
            return self._changing(write)

    def _changing(self, write: Callable[[ClientSession | None], T]) -> T:
        """Run ``write`` (a change and its event) in one transaction where the deployment has them."""
        if not self.transactions:
            # A replica set between two primaries when the store opened looked like no replica set: asked
            # again, once a primary is back it says so, and from then on each change is one transaction.
            self.transactions = has_transactions(self._client)
        if not self.transactions:
            return write(None)
        # The driver retries a commit it cannot confirm for 120 s unless a time limit is in force: the
        # URL's timeoutMS bounds the whole change, retries included, as it bounds any other operation.
        limit = self._client.options.timeout
        with self._client.start_session() as session, timeout(limit) if limit is not None else nullcontext():
            # Retries transient faults as the driver advises. It reads nothing: "local" whatever the URL
            # sets, since a server starts no transaction at the levels linearizable and available.
            result: T = session.with_transaction(write, read_concern=_IN_TRANSACTION)
        return result

    @contextmanager
    def _writing(self, collection: str | None = None) -> Iterator[None]:
        """``_available`` for a call that writes: a write sent whose connection then failed is not undone."""
        _UNANSWERED.forget()
        with _available(collection):
            try:
                yield
            except (ConnectionFailure, OperationFailure) as exc:
                # The server's word on the write itself (a write error, a write concern not met) stands; any
                # other refusal may be a retry's, which says nothing of a first try lost on its way.
                if isinstance(exc, WriteError | BulkWriteError | WriteConcernError) or not self._lost(exc):
                    raise
                raise _lost_write(exc) from None

    def _lost(self, exc: PyMongoError) -> bool:
        """Whether ``exc`` broke a write the server had been sent, which it may or may not have made."""
        if exc.has_error_label(_UNKNOWN_COMMIT) or exc.has_error_label("TransientTransactionError"):
            # A transaction's: a commit of no known result is said as such; one not committed made nothing.
            return False
        return self._tells_sent and _UNANSWERED.unanswered()

    def _record_change(self, event: AuditEvent, session: ClientSession | None) -> None:
        """Write a change's event: in its transaction, or (standalone) after it, saying so if it fails."""
        try:
            self._events.insert_one(_event_document(event), session=session)
        except (PyMongoError, *_ENCODE_ERRORS) as exc:
            if session is not None:
                raise  # the transaction is aborted: the change is undone with the event
            if isinstance(exc, WriteConcernError):
                # Written, as lagging secondaries leave every write: not lost, only not yet replicated.
                raise WriteUnconfirmedError(
                    f"the change was made, and its audit event written, but the MongoDB server did not "
                    f"confirm the event as the write concern of MCP_SECRETS_DATABASE_URL asks "
                    f"({type(exc).__name__}): it may or may not last"
                ) from None
            if isinstance(exc, ConnectionFailure) and self._lost(exc):
                raise StoreUnavailableError(
                    f"the change was made, but the connection to the MongoDB server failed as its audit "
                    f"event was written ({type(exc).__name__}): the event may or may not have been written; "
                    "a standalone MongoDB server has no transactions to make both at once"
                ) from None
            foreign = _foreign_index(exc) if isinstance(exc, PyMongoError) else None
            if foreign is not None:
                raise StoreUnavailableError(
                    "the change was made, but its audit event could not be written (a standalone MongoDB "
                    f"server has no transactions to make both at once): {foreign}"
                ) from None
            raise StoreUnavailableError(
                f"the change was made, but its audit event could not be written ({type(exc).__name__}); "
                "a standalone MongoDB server has no transactions to make both at once"
            ) from None

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
        from the (username, server, key) index, however many records the user holds.
        """
        if limit is not None and limit < 1:  # pymongo reads 0 as no limit at all
            return []
        selector: Document = {"username": _text("username", username)}
        if server is not None:
            selector["server"] = _text("server", server)
        if after is not None:
            past_server, past_key = (
                _text(field, name) for field, name in zip(("server", "key"), after, strict=True)
            )
            past = [{"server": {"$gt": past_server}}, {"server": past_server, "key": {"$gt": past_key}}]
            selector = {"$and": [selector, {"$or": past}]}

        def query(secrets: Collection[Any]) -> Cursor[Any]:
            found: Cursor[Any] = secrets.find(selector, {"_id": False}).sort([("server", 1), ("key", 1)])
            return found if limit is None else found.limit(limit)

        documents = _read(self._secrets, query)
        return [_secret(document) for document in documents]

    def stored_keys(self, username: str, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of ``keys``, (server, key) pairs, ``username`` has stored: found by name, values unread.

        One query, each server's clause of it searching the (username, server, key) index alone.
        """
        by_server: dict[str, list[str]] = {}
        for server, key in keys:
            by_server.setdefault(_text("server", server), []).append(_text("key", key))
        if not by_server:
            return set()
        user = _text("username", username)
        selector = {
            "$or": [
                {"username": user, "server": server, "key": {"$in": names}}
                for server, names in by_server.items()
            ]
        }
        documents = _read(
            self._secrets,
            lambda secrets: secrets.find(selector, {"_id": False, "server": True, "key": True}),
        )
        return {(document["server"], document["key"]) for document in documents}

    def count_secrets(self, username: str | None = None) -> int:
        """How many records the store holds, of one user or (None) of all."""
        selector = {} if username is None else {"username": _text("username", username)}
        with _available(SECRETS_COLLECTION):
            return self._secrets.count_documents(selector)

    def record_uses(self, uses: Sequence[SecretUse]) -> None:
        """Write a batch of uses: every record's latest use in one bulk write, then every event at once.

        ``$max`` keeps the later time, so a batch written again or late moves nothing back.
        """
        # One update per record, never one of many documents: a bulk write holding that is not retryable,
        # so a primary stepping down would fail the whole batch instead of the driver retrying it.
        updates = [
            UpdateOne(
                {
                    "username": _text("username", username),
                    "server": _text("server", server),
                    "key": _text("key", key),
                    # A use from before the record was created was a use of another record, deleted since
                    # (one written late, by another process's writer): not this one's last use.
                    "$or": [{"created_at": {"$lte": at}}, {"created_at": {"$not": {"$type": "date"}}}],
                },
                {"$max": {"last_used_at": at}},
            )
            for (username, server, key), at in latest_uses(uses).items()
        ]
        events = [{"_id": _event_id(use), **_event_document(use.event)} for use in uses]
        with self._writing():
            if updates:
                self._secrets.bulk_write(updates, ordered=False)
            if events:
                try:
                    self._events.insert_many(events, ordered=False)
                except BulkWriteError as exc:
                    if not _only_duplicates(exc):
                        raise
                    # A batch written again after a failure the server had in fact applied: its
                    # events are there already, under the same ids, and the rest are now written.

    def add_event(self, event: AuditEvent) -> None:
        """Append one event to the audit trail."""
        with self._writing(EVENTS_COLLECTION):
            self._events.insert_one(_event_document(event))

    def list_events(
        self, actor: str | None = None, server: str | None = None, limit: int = 50
    ) -> list[AuditEvent]:
        """The newest events first, of one actor and one server when given."""
        if limit < 1:  # pymongo reads 0 as no limit at all
            return []
        selector: Document = {}
        if actor is not None:
            selector["actor"] = _text("actor", actor)
        if server is not None:
            selector["server"] = _text("server", server)
        documents = _read(
            self._events,
            lambda events: events.find(selector, {"_id": False}).sort([("at", -1), ("_id", -1)]).limit(limit),
        )
        return [_event(document) for document in documents]

    def iter_events(
        self, actor: str | None = None, server: str | None = None, limit: int = 50, *, page: int = 1000
    ) -> Iterator[AuditEvent]:
        """``list_events``, read ``page`` events at a time, each page a query of its own: memory stays flat.

        A page goes on after the last (``at``, ``_id``) of the one before, from the listing's indexes.
        """
        selector: Document = {}
        if actor is not None:
            selector["actor"] = _text("actor", actor)
        if server is not None:
            selector["server"] = _text("server", server)
        left, last = max(limit, 0), None
        while left:
            query = selector
            if last is not None:
                past = [{"at": {"$lt": last["at"]}}, {"at": last["at"], "_id": {"$lt": last["_id"]}}]
                query = {"$and": [selector, {"$or": past}]}
            size = min(max(page, 1), left)

            def page_of(events: Collection[Any], query: Document = query, size: int = size) -> Cursor[Any]:
                found: Cursor[Any] = events.find(query).sort([("at", -1), ("_id", -1)]).limit(size)
                return found

            documents = _read(self._events, page_of)
            yield from (_event(document) for document in documents)
            if len(documents) < size:
                return
            left -= len(documents)
            last = documents[-1]

    def count_events(self, before: datetime) -> int:
        """How many events of the audit trail, of every actor, happened before ``before``."""
        with _available(EVENTS_COLLECTION):
            return self._events.count_documents({"at": {"$lt": _time("before", before)}})

    def delete_events(
        self, before: datetime, limit: int, keep: Callable[[list[AuditEvent]], None] | None = None
    ) -> int:
        """Delete up to ``limit`` events from before ``before``, first written first; return how many."""
        if limit < 1:  # pymongo reads 0 as no limit at all: every old event would go
            return 0
        selector = {"at": {"$lt": _time("before", before)}}
        with self._writing(EVENTS_COLLECTION):
            # The first written (``_id``, insertion order) go first, ``limit`` at a time: walking ``_id``
            # from the oldest meets old events first, whichever index the server's planner picks.
            documents = _read(self._events, lambda events: events.find(selector).sort("_id", 1).limit(limit))
            if not documents:
                return 0
            if keep is not None:
                keep([_event(document) for document in documents])
            ids = [document["_id"] for document in documents]
            return int(self._events.delete_many({"_id": {"$in": ids}}).deleted_count)

    def scan_secrets(self, after: tuple[str, str, str] | None, limit: int) -> list[SecretRecord]:
        """Up to ``limit`` records of all users, in (username, server, key) order, after ``after``."""
        if limit < 1:  # pymongo reads 0 as no limit at all
            return []
        selector: Document = {}
        if after is not None:
            username, server, key = (
                _text(field, value) for field, value in zip(("username", "server", "key"), after, strict=True)
            )
            selector = {
                "$or": [
                    {"username": {"$gt": username}},
                    {"username": username, "server": {"$gt": server}},
                    {"username": username, "server": server, "key": {"$gt": key}},
                ]
            }
        documents = _read(
            self._secrets,
            lambda secrets: (
                secrets.find(selector, {"_id": False})
                .sort([("username", 1), ("server", 1), ("key", 1)])
                .limit(limit)
            ),
        )
        return [_secret(document) for document in documents]

    def sample_ciphertexts(self, count: int) -> list[str]:
        """The ciphertexts of up to ``count`` records at each end of ``_id`` (oldest, newest), each once.

        Read by the ``_id`` index, never a scan, and only their values: a document's other fields may hold
        anything another tool wrote.
        """
        if count < 1:  # pymongo reads 0 as no limit at all
            return []

        def end(order: int) -> Query:
            return lambda secrets: secrets.find({}, {"value": True}).sort("_id", order).limit(count)

        documents = [*_read(self._secrets, end(1)), *_read(self._secrets, end(-1))]
        ids: list[object] = []  # compared, not hashed: another tool's _id may be a document
        values = []
        for document in documents:
            if document["_id"] not in ids:
                ids.append(document["_id"])
                values.append(document.get("value"))
        return [value for value in values if type(value) is str]

    def replace_value(self, username: str, server: str, key: str, old: str, new: str) -> bool:
        """Swap a record's ciphertext ``old`` for ``new``, only if it is still ``old``; timestamps stay."""
        selector = {**_record(username, server, key), "value": _text("value", old)}
        with self._writing(SECRETS_COLLECTION):
            # Matched, not modified: MongoDB counts a write of the value already there as no change.
            return self._secrets.update_one(selector, {"$set": {"value": new}}).matched_count > 0

    def put_token(self, token: TokenRecord, *, first: bool = False) -> bool:
        """Insert a new API token record; with ``first``, only while the collection holds none.

        A first token takes one fixed ``_id``, unique in every collection: of replicas starting at once on
        a new database, only one puts its token, whatever they read before.
        """
        document = {
            "token_id": token.token_id,
            "username": token.username,
            "token_hash": token.token_hash,
            "created_at": token.created_at,
            "expires_at": token.expires_at,
            "revoked_at": token.revoked_at,
            "label": token.label,
        }
        if not first:
            with self._writing(TOKENS_COLLECTION):
                self._tokens.insert_one(document)
            return True
        with self._writing(TOKENS_COLLECTION):
            if self._tokens.find_one({}, {"_id": True}) is not None:
                return False
            try:
                self._tokens.insert_one({"_id": FIRST_TOKEN_ID, **document})
            except DuplicateKeyError:
                return False
        return True

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token record with this hash, revoked or not."""
        selector = {"token_hash": _text("token_hash", token_hash)}
        documents = _read(self._tokens, lambda tokens: tokens.find(selector, {"_id": False}).limit(1))
        return _token(documents[0]) if documents else None

    def find_token_by_id(self, token_id: str) -> TokenRecord | None:
        """The token record with this id, revoked or not."""
        selector = {"token_id": _text("token_id", token_id)}
        documents = _read(self._tokens, lambda tokens: tokens.find(selector, {"_id": False}).limit(1))
        return _token(documents[0]) if documents else None

    def list_tokens(self, username: str | None = None) -> list[TokenRecord]:
        """Every token record (of one user, when given), oldest first."""
        selector = {} if username is None else {"username": _text("username", username)}
        documents = _read(
            self._tokens,
            lambda tokens: tokens.find(selector, {"_id": False}).sort([("created_at", 1), ("token_id", 1)]),
        )
        return [_token(document) for document in documents]

    def has_tokens(self) -> bool:
        """Whether any token record, revoked or not, is stored: one document is read, by its ``_id`` alone."""
        return bool(_read(self._tokens, lambda tokens: tokens.find({}, {"_id": True}).limit(1)))

    def revoke_token(self, token_id: str, now: datetime) -> TokenRecord | None:
        """Mark a live token revoked; its record as revoked, or None when no live token has this id."""
        with self._writing(TOKENS_COLLECTION):
            document = self._tokens.find_one_and_update(
                {"token_id": _text("token_id", token_id), "revoked_at": None},
                {"$set": {"revoked_at": now}},
                # No projection: mongomock, which the tests run on, finds the document again by its _id.
                return_document=ReturnDocument.AFTER,
            )
        return None if document is None else _token(document)

    def put_link(self, link: LinkRecord) -> None:
        """Insert a new entry link; the TTL index drops expired ones."""
        self.put_links([link])

    def put_links(self, links: Sequence[LinkRecord], *, max_live: int | None = None) -> None:
        """Insert new entry links of one user, all or none; ``max_live`` is checked before the insert.

        Checked before the insert, as ``put_secret`` checks its limit: this bounds growth, not an exact
        count.
        """
        if not links:
            return
        first = links[0]
        if max_live is not None and self.count_live_links(first.username, first.created_at) + len(links) > (
            max_live
        ):
            raise LimitReached
        documents = [
            {
                "link_id": link.link_id,
                "link_hash": link.link_hash,
                "username": link.username,
                "server": link.server,
                "key": link.key,
                "created_at": link.created_at,
                "expires_at": link.expires_at,
                "used_at": link.used_at,
                "claim_id": None,
                "token_id": link.token_id,
                "claimed_by": link.claimed_by,
            }
            for link in links
        ]
        with _available(LINKS_COLLECTION):
            try:
                self._links.insert_many(documents)
            except PyMongoError as exc:
                # One insert, but not all or none: what it inserted before it failed goes again (by the ids
                # the driver gave the documents), or would hold places for ten minutes with unknown tokens.
                inserted = [document["_id"] for document in documents if "_id" in document]
                with suppress(PyMongoError):
                    self._links.delete_many({"_id": {"$in": inserted}})
                if not _unconfirmed(exc):
                    raise
                # Not "made but unconfirmed", as a write concern not met would say: they were taken back.
                raise StoreUnavailableError(
                    f"the entry links could not be created ({type(exc).__name__}); none is handed out"
                ) from None

    def end_token_links(self, token_id: str, now: datetime) -> int:
        """Make the open links of API token ``token_id`` expire at ``now``; return how many there were.

        No index on token_id: a revocation is rare, and the TTL index keeps the collection to live links.
        """
        selector = {
            "token_id": _text("token_id", token_id),
            "used_at": None,
            "expires_at": {"$gt": _time("now", now)},
        }
        with self._writing(LINKS_COLLECTION):
            return self._links.update_many(selector, {"$set": {"expires_at": now}}).modified_count

    def count_live_links(self, username: str, now: datetime) -> int:
        """How many of one user's entry links are neither used nor expired at ``now``."""
        selector = {
            "username": _text("username", username),
            "used_at": None,
            "expires_at": {"$gt": _time("now", now)},
            "created_at": {"$lte": _time("now", now) + LINK_CLOCK_STEP},
        }
        with _available(LINKS_COLLECTION):
            return self._links.count_documents(selector)

    def find_link(self, link_hash: str) -> LinkRecord | None:
        """The entry link with this hash, used or not."""
        selector = {"link_hash": _text("link_hash", link_hash)}
        documents = _read(self._links, lambda links: links.find(selector, {"_id": False}).limit(1))
        return _link(documents[0]) if documents else None

    def claim_link(self, link_hash: str, now: datetime, claim_id: str, *, form: str | None = None) -> bool:
        """Mark an unused, unexpired link used by ``claim_id`` of ``form``, atomically; False if not."""
        selector = {"link_hash": _text("link_hash", link_hash), "used_at": None, "expires_at": {"$gt": now}}
        claimed_by = None if form is None else _text("form", form)
        claim = {"used_at": now, "claim_id": _text("claim_id", claim_id), "claimed_by": claimed_by}
        with self._writing(LINKS_COLLECTION):
            result = self._links.update_one(selector, {"$set": claim})
        return result.modified_count > 0

    def release_link(self, link_hash: str, claim_id: str) -> None:
        """Make a link claimed by ``claim_id`` usable again; any other claim stays.

        By the claim's id, not its time: a BSON date keeps milliseconds, which two claims can share.
        """
        selector = {"link_hash": _text("link_hash", link_hash), "claim_id": _text("claim_id", claim_id)}
        with self._writing(LINKS_COLLECTION):
            self._links.update_one(
                selector, {"$set": {"used_at": None, "claim_id": None, "claimed_by": None}}
            )

    def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless the server answers."""
        with _available():
            self._client.admin.command("ping")

    def before_close(self, method: Callable[[], object]) -> None:
        """Have ``close()`` first call a bound method (held weakly): pending uses are written while it can."""
        self._before_close.add(method)

    def close(self) -> None:
        """Close the client's connections, once the callbacks given to ``before_close`` have run."""
        try:
            self._before_close.run()
        finally:  # a callback that failed leaves no connection open
            self._client.close()


def _dns_failure(exc: BaseException) -> str | None:
    """The kind of DNS failure behind a mongodb+srv:// lookup's error, or None when it is another fault.

    pymongo reports a failed SRV or TXT lookup as a ConfigurationError, like a malformed URL; the
    resolver's own exception, its cause, tells a lookup that failed from a URL that does not parse.
    A mistyped host fails its lookup too (NXDOMAIN), so the message names the DNS fault.
    """
    from dns.exception import DNSException  # noqa: PLC0415 - only when something failed

    cause = exc.__cause__
    return type(cause).__name__ if isinstance(cause, DNSException) else None


_RECORD_KEYS: IndexKeys = [("username", 1), ("server", 1), ("key", 1)]
# The indexes the store makes, by collection: made without a collation, they show the collection's default.
_OWN_INDEXES = {
    SECRETS_COLLECTION: frozenset({"username_server_key_unique"}),
    TOKENS_COLLECTION: frozenset({"token_hash_unique", "token_id_unique", "username"}),
    LINKS_COLLECTION: frozenset({"link_hash_unique", "username_expires_at", "expires_at_ttl"}),
    EVENTS_COLLECTION: frozenset({"actor_at_id", "server_at_id", "actor_server_at_id", "at_id"}),
}
# The keys of its unique indexes, whatever their names: a duplicate of these is the store's own to settle
# (two upserts of one record racing) or to report as any other fault.
_OWN_UNIQUE_KEYS = {
    SECRETS_COLLECTION: frozenset({tuple(field for field, _ in _RECORD_KEYS)}),
    TOKENS_COLLECTION: frozenset({("token_hash",), ("token_id",)}),
    LINKS_COLLECTION: frozenset({("link_hash",)}),
}


def _ensure_index(
    collection: Collection[Document], keys: IndexKeys, name: str, options: Document | None = None
) -> None:
    """Make an index, or take the one of the same keys and options that exists under another name.

    An operator may have made one by hand (the shell names it ``username_1_server_1_key_1``): a real server
    makes no second index of the same keys and uniqueness (5.0 and later also tell sparseness, partial
    filter and collation apart), whatever its name, and refuses with IndexOptionsConflict.
    """
    options = options or {}
    try:
        collection.create_index(keys, name=name, **options)
    except OperationFailure as exc:
        if exc.code == DUPLICATE_KEY:
            # Data written without this index (the original design had none) may hold a record twice.
            fields = ", ".join(field for field, _ in keys)
            raise StoreUnavailableError(
                f"the collection {collection.name} holds more than one document for one ({fields}), so its "
                "unique index cannot be made: keep one of each (README, Storage) and start again"
            ) from None
        if exc.code == NOT_ON_VIEW:
            raise StoreUnavailableError(
                f"the collection {collection.name} is a view, which takes no index: the store needs a "
                "collection of its own there"
            ) from None
        if exc.code == CANNOT_CREATE_INDEX:
            raise StoreUnavailableError(
                f"the collection {collection.name} refuses the store's index {name} (CannotCreateIndex): a "
                "capped collection, for one, takes no TTL index; the store needs a collection made as it "
                "makes them"
            ) from None
        if exc.code not in INDEX_CONFLICTS:
            raise
        if _find_index(collection, keys, options) is None:
            raise StoreUnavailableError(
                f"the collection {collection.name} has an index in the way of the store's index {name} (of "
                "its fields or its name, with other options): drop that index and start again"
            ) from None


def _find_index(collection: Collection[Document], keys: IndexKeys, options: Document) -> str | None:
    """The name of an index on exactly ``keys`` with exactly ``options`` (unique, TTL), whatever its name."""
    for name, index in collection.index_information().items():
        extra = {
            option: value
            for option, value in index.items()
            if option not in _INDEX_BOOKKEEPING and (value or option not in _INDEX_FLAGS)
        }
        # The shell writes 1 for true and 1.0 for 1: compare values, not types.
        if list(index["key"]) == keys and extra == options:
            return name
    return None


def _record(username: str, server: str, key: str) -> Document:
    """The filter of one record, its names checked to be plain strings."""
    return {
        "username": _text("username", username),
        "server": _text("server", server),
        "key": _text("key", key),
    }


def _event_id(use: SecretUse) -> ObjectId:
    """The id of a use's event: made at its first write, in the order uses were made; the same on a retry."""
    if use.event_id is None:
        object.__setattr__(use, "event_id", ObjectId())  # a frozen record: its one field set late, once
    return cast("ObjectId", use.event_id)


def _unconfirmed(exc: PyMongoError) -> bool:
    """True when a write was made but not confirmed to its write concern, and nothing else went wrong."""
    if isinstance(exc, WriteConcernError):
        return True
    return (
        isinstance(exc, BulkWriteError)
        and bool(exc.details.get("writeConcernErrors"))
        and not exc.details.get("writeErrors")
    )


def _only_duplicates(exc: BulkWriteError) -> bool:
    """True when every document a bulk write refused was refused for an ``_id`` already taken.

    An error that names no index keys (mongomock's) is taken as one of ``_id``.
    """
    details = exc.details
    return not details.get("writeConcernErrors") and all(
        error.get("code") == DUPLICATE_KEY and list(error.get("keyPattern", {"_id": 1})) == ["_id"]
        for error in details.get("writeErrors", [])
    )


def _foreign_index(exc: PyMongoError) -> str | None:
    """What a unique index the store did not make says in refusing a write, or None for any other error."""
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])
    elif isinstance(exc, DuplicateKeyError) and isinstance(exc.details, Mapping):
        errors = [exc.details]
    else:
        return None
    return next(filter(None, map(_foreign_duplicate, errors)), None)


def _foreign_duplicate(error: Mapping[str, Any]) -> str | None:
    """One write error's index, where it is a unique index the store did not make; never its values.

    The server names the index's keys in ``keyPattern`` and its collection and name in the message,
    before "dup key"; what follows, and ``keyValue``, quote the values: a ciphertext, a hash, a name.
    """
    keys, message = error.get("keyPattern"), error.get("errmsg")
    if error.get("code") != DUPLICATE_KEY or not isinstance(keys, Mapping) or not isinstance(message, str):
        return None  # no keys named (mongomock): whose index it is cannot be told
    names, values_follow, _ = message.partition(" dup key")
    namespace, _, index = names.partition(" collection: ")[2].partition(" index: ")
    collection = namespace.partition(".")[2]  # after the database's name, which holds no dot
    index = index.partition(" collation: ")[0]  # an index with a collation has it named next
    if not values_follow:
        return None  # a message of another form: nothing of it can be told apart from the values
    fields = tuple(str(field) for field in keys)
    if not collection or fields == ("_id",) or fields in _OWN_UNIQUE_KEYS.get(collection, frozenset()):
        return None
    named = f", `{_escaped(index)}`" if index else ""
    return (
        f"a unique index of the collection {_escaped(collection)}{named} (on "
        f"{', '.join(map(_escaped, fields))}), that mcp-secrets did not make, holds another document with "
        "the same values; drop that index or make it non-unique"
    )


def _escaped(name: str) -> str:
    """A name the server gives, its control characters escaped: whoever made an index chose its name."""
    return name if name.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def _read(collection: Collection[Document], query: Query) -> list[Document]:
    """The documents of ``query`` on ``collection``; one that does not decode is named in the error."""
    with _available(collection.name):
        try:
            return list(query(collection))
        except _DECODE_ERRORS as exc:
            # pymongo decodes a whole batch at once: read it again undecoded, to find which document it was.
            raw = collection.with_options(
                codec_options=collection.codec_options.with_options(document_class=RawBSONDocument)
            )
            raise _unreadable(collection, query(raw), type(exc).__name__) from None


def _unreadable(collection: Collection[Document], documents: Cursor[Any], kind: str) -> UnreadableRecordError:
    """Say which of ``documents`` does not decode, by the fields that name it where they can be read."""
    # A date out of range comes back as a number and a broken string with its bytes escaped: enough to
    # read the names by, never to use.
    lenient = collection.codec_options.with_options(
        datetime_conversion=DatetimeConversion.DATETIME_AUTO, unicode_decode_error_handler="surrogateescape"
    )
    which, record = "a document", None
    broken = next(
        (document for document in documents if _decoded(document, collection.codec_options) is None), None
    )
    fields = None if broken is None else _decoded(broken, lenient)
    if fields is not None:
        names, record = record_names(collection.name, fields)
        which = f"the document of {names}"
        if record is not None and not all(_is_utf8(name) for name in record):
            # A name not as stored: as a cursor to read on after (rotate), the same document would come
            # back for ever, or the records between its two spellings would be passed over.
            record = None
    return UnreadableRecordError(
        f"{which} in the collection {collection.name} cannot be read ({kind}): it holds what no record of "
        "this store holds, such as a date outside years 1 to 9999 or a string that is not UTF-8; correct "
        "or remove it (README, Storage)",
        record=record,
    )


def _is_utf8(text: str) -> bool:
    """Whether ``text`` is as stored: no byte of it was escaped as it was decoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decoded(document: RawBSONDocument, options: CodecOptions[Any]) -> Document | None:
    """A raw document decoded with ``options``, or None where it does not decode."""
    try:
        return dict(bson.decode(document.raw, options))
    except _DECODE_ERRORS:
        return None


@contextmanager
def _available(collection: str | None = None) -> Iterator[None]:
    """Turn any pymongo failure, and a document BSON cannot hold, into ``StoreUnavailableError``."""
    try:
        yield
    except PyMongoError as exc:
        raise _unavailable(exc) from None
    except _DECODE_ERRORS as exc:
        where = "" if collection is None else f" in the collection {collection}"
        raise StoreUnavailableError(f"a document{where} cannot be read ({type(exc).__name__})") from None
    except _ENCODE_ERRORS as exc:
        # Never the exception's text: it can quote the value (a UnicodeEncodeError quotes the string).
        where = "" if collection is None else f" of the collection {collection}"
        raise StoreUnavailableError(
            f"the MongoDB store cannot send a command{where} ({type(exc).__name__}): "
            f"{_UNENCODABLE.get(type(exc).__name__, _UNENCODABLE['InvalidDocument'])}"
        ) from None


_UNENCODABLE = {
    "DocumentTooLarge": "a document is larger than MongoDB's limit of 16 MiB",
    "OverflowError": "an integer is larger than BSON's 8 bytes",
    "UnicodeEncodeError": "a string holds a character UTF-8 cannot encode (a lone surrogate)",
    "InvalidDocument": "a field holds a value BSON has no type for",
}


def _recording_unconfirmed(exc: PyMongoError, record: Callable[[], None]) -> None:
    """Run ``record``, the audit event of a change made but not confirmed (``exc``), or say it failed.

    Its own failure must not stand for the change's: a plain "unavailable" would tell the caller that
    nothing was written, and whatever holds the old value would keep it.
    """
    try:
        record()
    except WriteUnconfirmedError:
        return  # the event was written, as unconfirmed as the change it records (its detail says so)
    except (PyMongoError, StoreUnavailableError, *_DECODE_ERRORS, *_ENCODE_ERRORS):
        unconfirmed = _unavailable(exc)
        raise type(unconfirmed)(f"{unconfirmed}; its audit event could not be written") from None


# The driver's label of a transaction commit whose outcome it could not learn.
_UNKNOWN_COMMIT = "UnknownTransactionCommitResult"


def _lost_write(exc: PyMongoError) -> WriteUnconfirmedError:
    """The error of a write sent whose connection failed before the server answered: made, or not."""
    return WriteUnconfirmedError(
        f"the connection to the MongoDB server failed during the write ({type(exc).__name__}), so the change "
        "may or may not have been made; where making it again is safe (saving or deleting a secret, revoking "
        "a token), do, to confirm it",
        made=False,
    )


def _unavailable(exc: PyMongoError) -> StoreUnavailableError:
    # Name the fault's kind only: pymongo messages can quote hosts and credentials.
    if exc.has_error_label(_UNKNOWN_COMMIT) and not isinstance(exc, WriteConcernError):
        # The driver gave up retrying a commit whose outcome it could not learn, with an error of its own
        # (a timeout) that keeps the commit's label: made, or not. Not "unavailable" either.
        return WriteUnconfirmedError(
            f"the MongoDB server did not confirm the change: the commit of its transaction has no known "
            f"result ({type(exc).__name__}), so it may or may not have been made; where making it again is "
            "safe (saving or deleting a secret, revoking a token), do, to confirm it"
        )
    if _unconfirmed(exc):
        # The primary made the change and then could not have it replicated as asked (w, wtimeoutMS) in
        # time: a later election may roll it back, or not. Not "unavailable" as if nothing was written.
        return WriteUnconfirmedError(
            f"the MongoDB server made the change but did not confirm it as the write concern of "
            f"MCP_SECRETS_DATABASE_URL asks ({type(exc).__name__}): it may or may not last; where making "
            "it again is safe (saving or deleting a secret, revoking a token), do, to confirm it"
        )
    foreign = _foreign_index(exc)
    if foreign is not None:
        # The server answered, and will refuse the write again: not a network fault to look for.
        return StoreUnavailableError(f"the MongoDB server refused the write: {foreign}")
    if isinstance(exc, OperationFailure) and exc.code == AUTHENTICATION_FAILED:
        return StoreUnavailableError(
            "the MongoDB server refused the login (AuthenticationFailed): "
            "check the user name and password in MCP_SECRETS_DATABASE_URL"
        )
    if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
        return StoreUnavailableError(
            "the MongoDB user is not allowed to do this (Unauthorized): changes need the readWrite role"
        )
    return StoreUnavailableError(f"the MongoDB store is unavailable ({type(exc).__name__})")
