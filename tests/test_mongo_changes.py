"""On MongoDB, a change to a record and its audit event: one transaction where the deployment has them.

mongomock has no sessions, and no MongoDB server can run here, so ``Transactions`` stands in for a
replica set's: a transaction runs its writes and, when one fails, puts every collection back as it
was, the all-or-nothing a real transaction gives. What these tests show is the store's side: both
writes go into one transaction, each carrying its session, and a failed event leaves no change
behind. With ``MONGODB_URI`` naming a replica set, the backend suite runs the same code on a real one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import mongomock
import pymongo
import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect
from pymongo.hello import Hello
from pymongo.server_description import ServerDescription
from pymongo.synchronous.settings import TopologySettings
from pymongo.topology_description import TOPOLOGY_TYPE, TopologyDescription

from _mongo_wire import MONGOS_HELLO, mongo_wire_server
from conftest import new_canary
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.errors import StoreUnavailableError
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import AuditEvent
from mcp_secrets.store.mongo import MongoStore, has_transactions

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's own is 3.11+

T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
T1 = datetime(2025, 3, 14, 9, 27, 53, tzinfo=timezone.utc)


class Transactions:
    """Sessions for a mongomock database: a failed transaction restores every collection."""

    def __init__(self, database: mongomock.Database) -> None:
        self.database = database
        self.active: Session | None = None
        self.writes: list[tuple[str, str, bool]] = []  # (collection, method, carried the active session)
        self.failing_inserts = False
        self.options = SimpleNamespace(timeout=None)  # a client's options: no timeoutMS in its URL

    def start_session(self) -> Session:
        return Session(self)


class Session:
    def __init__(self, owner: Transactions) -> None:
        self.owner = owner

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def with_transaction(self, callback: Callable[[Session], Any], **_options: object) -> Any:
        database = self.owner.database
        saved = {name: list(database[name].find()) for name in database.list_collection_names()}
        self.owner.active = self
        try:
            return callback(self)
        except BaseException:
            for name, documents in saved.items():
                database[name].delete_many({})
                if documents:
                    database[name].insert_many(documents)
            raise
        finally:
            self.owner.active = None


class Watched:
    """A collection whose calls are noted with whether they carried the open transaction's session."""

    def __init__(self, collection: mongomock.Collection, owner: Transactions) -> None:
        self._collection = collection
        self._owner = owner

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._collection, name)

        def call(*args: Any, session: Session | None = None, **kwargs: Any) -> Any:
            carried = session is not None and session is self._owner.active
            self._owner.writes.append((self._collection.name, name, carried))
            if self._owner.failing_inserts and self._collection.name == "audit_events":
                raise AutoReconnect("connection lost")  # as a failover that outlasts the driver's retry
            return method(*args, **kwargs)

        return call


@pytest.fixture
def client() -> mongomock.MongoClient:
    return mongomock.MongoClient(tz_aware=True)


def watched_store(
    client: mongomock.MongoClient, monkeypatch: pytest.MonkeyPatch, *, transactions: bool
) -> tuple[MongoStore, Transactions]:
    store = MongoStore(client, "db")
    owner = Transactions(client["db"])
    monkeypatch.setattr(store, "transactions", transactions)
    monkeypatch.setattr(store, "_client", owner)
    monkeypatch.setattr(store, "_secrets", Watched(client["db"]["user_secrets"], owner))
    monkeypatch.setattr(store, "_events", Watched(client["db"]["audit_events"], owner))
    return store, owner


def created(username: str = "alice") -> AuditEvent:
    return AuditEvent(T0, username, "created", "github", "TOKEN", "test")


CHANGES: dict[str, Callable[[MongoStore], object]] = {
    "create": lambda store: store.put_secret("alice", "github", "NEW", "v1:x:new", T1, event=created()),
    "update": lambda store: store.put_secret("alice", "github", "TOKEN", "v1:x:new", T1, event=created()),
    "delete": lambda store: store.delete_secret("alice", "github", "TOKEN", event=created()),
}


def state(client: mongomock.MongoClient) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    records = [(doc["key"], doc["value"]) for doc in client["db"]["user_secrets"].find().sort("key")]
    events = [(doc["action"], doc["key"]) for doc in client["db"]["audit_events"].find().sort("_id")]
    return records, events


def change_whose_event_fails(
    client: mongomock.MongoClient,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[MongoStore], object],
    *,
    transactions: bool,
) -> pytest.ExceptionInfo[StoreUnavailableError]:
    """Make ``change`` with every event insert failing; the error it raised."""
    store, owner = watched_store(client, monkeypatch, transactions=transactions)
    owner.failing_inserts = True
    with pytest.raises(StoreUnavailableError) as raised:
        change(store)
    assert all(carried is transactions for _, _, carried in owner.writes), owner.writes
    return raised


@pytest.fixture
def stored(client: mongomock.MongoClient) -> None:
    MongoStore(client, "db").put_secret("alice", "github", "TOKEN", "v1:x:old", T0)


@pytest.mark.usefixtures("stored")
@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_on_a_replica_set_a_change_and_its_event_are_written_in_one_transaction(
    client: mongomock.MongoClient, monkeypatch: pytest.MonkeyPatch, change: Callable[[MongoStore], object]
) -> None:
    store, owner = watched_store(client, monkeypatch, transactions=True)

    change(store)

    assert [collection for collection, _, _ in owner.writes] == ["user_secrets", "audit_events"]
    assert all(carried for _, _, carried in owner.writes), owner.writes
    _, events = state(client)
    assert len(events) == 1


@pytest.mark.usefixtures("stored")
@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_on_a_replica_set_an_event_that_cannot_be_written_undoes_its_change(
    client: mongomock.MongoClient, monkeypatch: pytest.MonkeyPatch, change: Callable[[MongoStore], object]
) -> None:
    before = state(client)

    raised = change_whose_event_fails(client, monkeypatch, change, transactions=True)

    assert state(client) == before == ([("TOKEN", "v1:x:old")], [])
    assert "AutoReconnect" in str(raised.value)
    assert "change was made" not in str(raised.value)


@pytest.mark.usefixtures("stored")
@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_on_a_standalone_server_a_change_whose_event_is_lost_says_it_was_made(
    client: mongomock.MongoClient, monkeypatch: pytest.MonkeyPatch, change: Callable[[MongoStore], object]
) -> None:
    before = state(client)

    raised = change_whose_event_fails(client, monkeypatch, change, transactions=False)

    records, events = state(client)
    assert records != before[0]  # made: a standalone server cannot undo it
    assert events == []
    assert "the change was made, but its audit event could not be written" in str(raised.value)


def test_through_the_service_a_lost_event_names_no_value(
    client: mongomock.MongoClient, monkeypatch: pytest.MonkeyPatch, encryptor: SecretEncryptor
) -> None:
    store, owner = watched_store(client, monkeypatch, transactions=False)
    secrets = Secrets(store, encryptor)
    value = new_canary()
    owner.failing_inserts = True

    with pytest.raises(StoreUnavailableError) as raised:
        secrets.set_secret("alice", "github", "TOKEN", value)

    assert "the change was made" in str(raised.value)
    assert value not in str(raised.value)
    owner.failing_inserts = False
    assert secrets.get_secrets("alice", "github") == {"TOKEN": value}
    secrets.close()


@pytest.mark.usefixtures("stored")
def test_an_insert_race_lost_to_the_unique_index_is_written_again_as_an_update(
    client: mongomock.MongoClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = watched_store(client, monkeypatch, transactions=True)
    calls = {"n": 0}
    update_one = client["db"]["user_secrets"].update_one

    def racing_update(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # another server's insert of the same record won
            raise pymongo.errors.DuplicateKeyError("E11000 duplicate key")
        return update_one(*args, **kwargs)

    monkeypatch.setattr(client["db"]["user_secrets"], "update_one", racing_update)

    was_created = store.put_secret("alice", "github", "TOKEN", "v1:x:new", T1, event=created())

    assert was_created is False
    assert state(client) == ([("TOKEN", "v1:x:new")], [("updated", "TOKEN")])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("ReplicaSetWithPrimary", True),
        ("Sharded", True),
        ("LoadBalanced", True),
        ("Single", False),
        ("ReplicaSetNoPrimary", False),
        ("Unknown", False),
    ],
)
def test_transactions_are_used_on_the_deployments_that_have_them(kind: str, expected: bool) -> None:
    client = SimpleNamespace(topology_description=SimpleNamespace(topology_type_name=kind))

    assert has_transactions(client) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hello", "expected"),
    [
        ({"isWritablePrimary": True, "setName": "rs0", "hosts": ["db.example:27017"]}, True),
        ({"isWritablePrimary": True, "msg": "isdbgrid"}, True),
        ({"isWritablePrimary": True}, False),
    ],
    ids=["replica-set-primary", "mongos", "standalone"],
)
def test_a_direct_connection_has_transactions_when_its_server_does(
    hello: dict[str, Any], expected: bool
) -> None:
    # directConnection=true (as MongoDB Compass writes URLs) makes the topology "Single" on any server.
    address = ("db.example", 27017)
    server = ServerDescription(address, Hello({"ok": 1, "maxWireVersion": 21, **hello}))
    topology = TopologyDescription(
        TOPOLOGY_TYPE.Single, {address: server}, None, None, None, TopologySettings(direct_connection=True)
    )
    client = SimpleNamespace(topology_description=topology)

    assert has_transactions(client) is expected  # type: ignore[arg-type]


def test_mongomock_and_an_unreached_server_have_none(client: mongomock.MongoClient) -> None:
    assert MongoStore(client, "db").transactions is False
    unreached: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        "mongodb://127.0.0.1:1", serverSelectionTimeoutMS=100, connect=False
    )
    assert has_transactions(unreached) is False
    unreached.close()


@pytest.mark.usefixtures("stored")
def test_a_replica_set_without_a_primary_when_the_store_opened_gets_transactions_once_it_has_one(
    client: mongomock.MongoClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The topology the store sees at start is "ReplicaSetNoPrimary" if an election began after its indexes
    # were made: taken for no transactions then, a replica set's changes went without them for good.
    store, owner = watched_store(client, monkeypatch, transactions=False)
    primary_back = SimpleNamespace(topology_type_name="ReplicaSetWithPrimary")
    monkeypatch.setattr(owner, "topology_description", primary_back, raising=False)

    CHANGES["update"](store)

    assert store.transactions is True
    assert [(collection, carried) for collection, _, carried in owner.writes] == [
        ("user_secrets", True),
        ("audit_events", True),
    ]


@pytest.mark.parametrize("level", ["linearizable", "available"])
def test_a_change_starts_its_transaction_with_a_read_concern_transactions_take(level: str) -> None:
    # A server refuses to start a transaction at these levels (InvalidOptions), which a URL may set for its
    # reads: every change would fail. A change's transaction reads nothing, so "local" costs it nothing.
    started: list[object] = []

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name = next(iter(command))
        if command.get("startTransaction"):
            started.append(command.get("readConcern"))
        if name in {"find", "aggregate", "listIndexes"}:
            return {"ok": 1, "cursor": {"id": 0, "ns": "db.x", "firstBatch": []}}
        if name == "update":
            return {"ok": 1, "n": 1, "nModified": 0, "upserted": [{"index": 0, "_id": ObjectId()}]}
        return {"ok": 1, "n": 1}

    mongos = {**MONGOS_HELLO, "logicalSessionTimeoutMinutes": 30}  # a sharded cluster's: transactions
    with mongo_wire_server(answer, hello=mongos) as port:
        store = MongoStore.from_url(f"mongodb://127.0.0.1:{port}/db?readConcernLevel={level}")
        try:
            assert store.transactions is True
            store.put_secret("alice", "github", "TOKEN", "v1:x:new", T1, event=created())
        finally:
            store.close()

    assert started == [{"level": "local"}]


def test_through_the_service_a_change_whose_event_is_lost_is_heard_by_its_listeners(
    client: mongomock.MongoClient, monkeypatch: pytest.MonkeyPatch, encryptor: SecretEncryptor
) -> None:
    # Made, if not recorded: whatever holds the old value (a gateway's downstream) must let it go.
    store, owner = watched_store(client, monkeypatch, transactions=False)
    secrets = Secrets(store, encryptor)
    heard: list[tuple[str, str]] = []
    secrets.on_change(lambda username, server: heard.append((username, server)))
    owner.failing_inserts = True

    with pytest.raises(StoreUnavailableError, match="the change was made"):
        secrets.set_secret("alice", "github", "TOKEN", new_canary())
    with pytest.raises(StoreUnavailableError, match="the change was made"):
        secrets.delete_secret("alice", "github", "TOKEN")

    assert heard == [("alice", "github"), ("alice", "github")]
    assert secrets.get_secrets("alice", "github") == {}
