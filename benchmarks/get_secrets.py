"""What ``Secrets.get_secrets`` costs over the raw query and bare decrypts, and where its time goes.

    .venv/bin/python benchmarks/get_secrets.py [--blocks 15] [--calls 200]
    MONGODB_URI=mongodb://… .venv/bin/python benchmarks/get_secrets.py --store mongodb

The store is SQLite (a temporary file) or, with ``--store mongodb``, a
throwaway database on the real MongoDB server named by ``MONGODB_URI``
(dropped at the end). It holds 20 keys of one user for one MCP server, among
2,000 records of other users and servers. Subject:
``Secrets.get_secrets(username, server)``, which validates its arguments,
queries, decrypts the 20 values, and queues the use for the background writer
(``mcp_secrets.usage``), which writes the ``used`` audit event and
``last_used_at`` of the 20 records off the call path. Each block of subject
calls ends with ``Secrets.flush()``, timed with it, so that the writes of its
uses are paid for in its own block, never in the floor's. Floor: the same
query through ``store.find_secrets`` plus 20 bare ``AESGCM`` decrypts of
values of the same size, pre-decoded. The ratio is get_secrets time ÷ floor
time, the median of block pairs (lower is better; target ≤ 1.5).

The breakdown times each part on its own, each in block pairs against the same
floor: the query, and the 20 decrypts by SecretEncryptor and by bare AESGCM.
The use writes are timed too, as the writer makes them for one use
(``store.record_uses``), though they are no longer on the call path, and so is
``get_secrets`` with its use not recorded at all, which shows what the audit
trail's use events cost it. The
"rest" row is the whole less the query and the decrypts: the argument checks,
the clock, queueing the use, the writer thread's share of the machine, and the
parts running back to back rather than each alone in a loop. There is no way to
run it on mongomock: an in-memory fake says nothing about a database server.
"""

from __future__ import annotations

import argparse
import os
import secrets as _random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pymongo
from _harness import block_pairs_sync, machine, micros, table, verdict
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mcp_secrets.crypto import SecretEncryptor, associated_data
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import AuditEvent, SecretStore, SecretUse
from mcp_secrets.store.mongo import MongoStore
from mcp_secrets.store.sqlite import SQLiteStore

USERNAME = "alice"
SERVER = "github"
KEYS = [f"KEY_{index:02d}" for index in range(20)]
VALUE = "ghp_" + "x" * 36
TARGET = 1.5


def fill(secrets: Secrets) -> None:
    """The measured user's 20 keys, and 2,000 records of 100 other users on 5 servers, untimed."""
    for key in KEYS:
        secrets.set_secret(USERNAME, SERVER, key, VALUE)
    for index in range(2000):
        secrets.set_secret(f"user{index // 20:03d}", f"server{index % 5}", f"KEY_{index % 20}", VALUE)


class Workload:
    """The measured user's get_secrets, its floor, and each of its parts, on one store."""

    def __init__(self, store: SecretStore, calls: int) -> None:
        self.store = store
        self.store_name = "MongoDB" if isinstance(store, MongoStore) else "SQLite"
        self.calls_per_block = calls
        self.calls = 0
        self.encryptor = SecretEncryptor([os.urandom(32)])
        self.secrets = Secrets(store, self.encryptor)
        fill(self.secrets)
        if self.get_secrets() != dict.fromkeys(KEYS, VALUE):
            raise RuntimeError("get_secrets does not return the 20 values set up")
        self.records = store.find_secrets(USERNAME, SERVER)
        self.aes = AESGCM(AESGCM.generate_key(bit_length=256))
        self.sealed = []
        for key in KEYS:
            nonce = os.urandom(12)
            aad = associated_data(USERNAME, SERVER, key)
            self.sealed.append((nonce, self.aes.encrypt(nonce, VALUE.encode(), aad), aad))

    def get_secrets(self) -> dict[str, str]:
        """The subject; the last call of a block also waits until the block's uses are written."""
        values = self.secrets.get_secrets(USERNAME, SERVER)
        self.calls += 1
        if self.calls % self.calls_per_block == 0 and not self.secrets.flush():
            raise RuntimeError("the uses of a block were not written")
        return values

    def get_secrets_unrecorded(self) -> None:
        """The subject without its use: no event, no last use, nothing for the writer."""
        self.secrets.get_secrets(USERNAME, SERVER, record_use=False)

    def floor(self) -> None:
        """The raw query, and 20 bare decrypts."""
        self.query()
        self.bare_decrypts()

    def query(self) -> None:
        """The store's one query."""
        self.store.find_secrets(USERNAME, SERVER)

    def bare_decrypts(self) -> None:
        """20 AESGCM decrypts of pre-decoded bytes, to text."""
        for nonce, body, aad in self.sealed:
            self.aes.decrypt(nonce, body, aad).decode()

    def project_decrypts(self) -> None:
        """20 ``SecretEncryptor.decrypt`` of the stored ciphertexts."""
        for record in self.records:
            self.encryptor.decrypt(record.value, username=USERNAME, server=SERVER, key=record.key)

    def use_writes(self) -> None:
        """The writer's store call for one use: the 20 last uses and the event, in one transaction."""
        event = AuditEvent(datetime.now(timezone.utc), USERNAME, "used", SERVER, ",".join(KEYS), "library")
        self.store.record_uses([SecretUse(USERNAME, SERVER, tuple(KEYS), event)])


def ratio(work: Workload, blocks: int, calls: int) -> None:
    """get_secrets against its floor."""
    pairs = block_pairs_sync(work.floor, work.get_secrets, blocks=blocks, calls=calls)["wall"]
    cost = pairs.cost_ratio()
    row = [
        "get_secrets ÷ (find_secrets + 20 bare decrypts)",
        micros(pairs.floor_median),
        micros(pairs.subject_median),
        str(cost),
        f"≤ {TARGET}",
        verdict(cost.median, TARGET, higher_is_better=False),
    ]
    table(
        ["20 keys", "floor/call", "get_secrets/call", "ratio median (p25-p75)", "target", ""],
        [row],
        title=f"Secrets.get_secrets on {work.store_name}, {blocks} block pairs of {calls} calls "
        f"({machine()})",
    )


def breakdown(work: Workload, blocks: int, calls: int) -> None:
    """Each part of get_secrets against the same floor."""
    parts = {
        "query: store.find_secrets": work.query,
        "20 decrypts: SecretEncryptor.decrypt": work.project_decrypts,
        "20 decrypts: bare AESGCM": work.bare_decrypts,
        "use writes, off the call path: store.record_uses, 1 use": work.use_writes,
        "get_secrets, the use not recorded (record_use=False)": work.get_secrets_unrecorded,
        "get_secrets, all of it": work.get_secrets,
    }
    rows, medians = [], {}
    for name, part in parts.items():
        pairs = block_pairs_sync(work.floor, part, blocks=blocks, calls=calls)["wall"]
        medians[name] = pairs.cost_ratio().median
        rows.append([name, micros(pairs.subject_median), str(pairs.cost_ratio())])
    named = ("query: store.find_secrets", "20 decrypts: SecretEncryptor.decrypt")
    rest = medians["get_secrets, all of it"] - sum(medians[name] for name in named)
    rows.insert(-1, ["rest, by difference: checks, clock, queueing, the writer", "", f"{rest:.2f}"])
    table(["part", "per call", "÷ floor, median (p25-p75)"], rows, title="Where the time goes")


@contextmanager
def opened_store(kind: str) -> Iterator[SecretStore]:
    """A fresh, empty store: a temporary SQLite file, or a throwaway database on MONGODB_URI's server."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="mcp-secrets-bench-") as tmp:
            store = SQLiteStore(Path(tmp) / "secrets.db")
            try:
                yield store
            finally:
                store.close()
        return
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        raise SystemExit("--store mongodb needs MONGODB_URI, the URL of a real MongoDB server")
    database = f"mcp_secrets_bench_{_random.token_hex(4)}"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    try:
        yield MongoStore(client, database)
    finally:
        client.drop_database(database)
        client.close()


def main(kind: str, blocks: int, calls: int) -> None:
    """The ratio, then the breakdown, on a fresh store of ``kind``."""
    with opened_store(kind) as store:
        work = Workload(store, calls)
        try:
            ratio(work, blocks, calls)
            breakdown(work, blocks, calls)
        finally:
            work.secrets.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "mongodb"], default="sqlite", help="default sqlite")
    parser.add_argument("--blocks", type=int, default=15, help="block pairs (default 15)")
    parser.add_argument("--calls", type=int, default=200, help="calls per block (default 200)")
    options = parser.parse_args()
    main(options.store, options.blocks, options.calls)
