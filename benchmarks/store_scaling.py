"""How the SQLite store scales: get_secrets with 10³ to 10⁶ records, and single-row upserts.

    .venv/bin/python benchmarks/store_scaling.py [--max-records 1000000] [--blocks 15] [--calls 200]

1. ``Secrets.get_secrets`` of one user's 20 keys in stores of 10³, 10⁴, 10⁵ and
   10⁶ records (``--max-records`` caps the largest; 10⁶ takes about a minute to
   load). Rows are bulk-inserted with ``executemany`` in one transaction into
   ``user_secrets`` of a file the store created; only the measured user's 20
   have real ciphertexts. All stores stay open, and get_secrets on each is
   timed in block pairs against get_secrets on the 10³ store: a ratio near 1.0
   means flat. ``EXPLAIN QUERY PLAN`` shows the query the store runs uses the
   primary key.
2. 10,000 single-row upserts (over 1,000 keys: first inserts, then updates)
   through ``SQLiteStore.put_secret`` vs bare ``sqlite3``: one
   ``INSERT … ON CONFLICT DO UPDATE`` per row, each its own commit, on a file of
   the same schema with the same pragmas (WAL, synchronous=NORMAL). The ratio
   is bare time ÷ put_secret time (higher is better; target ≥ 0.5). A third
   row adds ``secure_delete=ON``, which the store also sets, to the bare side.

MongoDB is not measured here (and never mongomock).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from _harness import block_pairs_sync, machine, micros, table, verdict

from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.secrets import Secrets
from mcp_secrets.store.sqlite import SQLiteStore

SIZES = (10**3, 10**4, 10**5, 10**6)
KEYS = 20
SERVER = "github"
VALUE = "ghp_" + "x" * 36
# The shape of a real ciphertext of VALUE: "v1:" key id ":" base64url of nonce + 40 bytes + tag.
FILLER = "v1:00000000:" + "A" * 91
STAMP = "2025-01-01T00:00:00+00:00"
# The store's own query (SQLiteStore.find_secrets with a server), for EXPLAIN QUERY PLAN.
FIND_QUERY = (
    "SELECT username, server, key, value, created_at, updated_at, last_used_at FROM user_secrets "
    "WHERE username = ? AND server = ? ORDER BY server, key"
)
# The last-use write of SQLiteStore.record_uses, one per record used.
MARK_USED_QUERY = (
    "UPDATE user_secrets SET last_used_at = ? WHERE username = ? AND server = ? AND key = ? "
    "AND (last_used_at IS NULL OR last_used_at < ?)"
)
UPSERT = (
    "INSERT INTO user_secrets (username, server, key, value, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (username, server, key) "
    "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
UPSERT_KEYS = 1000
UPSERT_TARGET = 0.5


def measured_user(records: int) -> str:
    """The measured user sorts in the middle of the others, not at one end of the index."""
    return f"user{records // KEYS // 2:07d}m"


def _rows(records: int, encryptor: SecretEncryptor) -> Iterator[tuple[str, ...]]:
    """``records`` rows in primary-key order: users of 20 keys on 5 servers, and the measured user."""
    username = measured_user(records)
    measured = [
        (
            username,
            SERVER,
            f"KEY_{index:02d}",
            encryptor.encrypt(VALUE, username=username, server=SERVER, key=f"KEY_{index:02d}"),
        )
        for index in range(KEYS)
    ]
    others = records - KEYS
    for index in range(others):
        user = f"user{index // KEYS:07d}"
        if measured and user > username:
            yield from ((*row, STAMP, STAMP) for row in measured)
            measured = []
        yield user, f"server{index % 5}", f"KEY_{index % KEYS:02d}", FILLER, STAMP, STAMP
    yield from ((*row, STAMP, STAMP) for row in measured)


def build(path: Path, records: int, encryptor: SecretEncryptor) -> float:
    """A store file of ``records`` rows, loaded in one transaction; return the seconds it took."""
    SQLiteStore(path).close()  # the store's own schema and pragmas
    start = time.perf_counter()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=OFF")  # loading only: the measured stores use their own
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO user_secrets (username, server, key, value, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            _rows(records, encryptor),
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return time.perf_counter() - start


def explain(path: Path) -> None:
    """Print the query plans of the store's read and of its last-use write."""
    connection = sqlite3.connect(path)
    try:
        for name, query, params in (
            ("find_secrets", FIND_QUERY, ("u", SERVER)),
            ("record_uses (last use)", MARK_USED_QUERY, (STAMP, "u", SERVER, "a", STAMP)),
        ):
            plan = connection.execute(f"EXPLAIN QUERY PLAN {query}", params).fetchall()
            print(f"  {name}: " + "; ".join(str(row[-1]) for row in plan))
    finally:
        connection.close()


def scaling(root: Path, max_records: int, blocks: int, calls: int) -> None:
    """get_secrets on every store size against the smallest."""
    encryptor = SecretEncryptor([os.urandom(32)])
    sizes = [size for size in SIZES if size <= max_records]
    stores: dict[int, Secrets] = {}
    loads: dict[int, float] = {}
    try:
        for size in sizes:
            path = root / f"scaling-{size}.db"
            loads[size] = build(path, size, encryptor)
            stores[size] = Secrets(SQLiteStore(path), encryptor)
            if stores[size].store.count_secrets() != size:
                raise RuntimeError(f"the {size}-record store does not hold {size} records")
            if len(stores[size].get_secrets(measured_user(size), SERVER)) != KEYS:
                raise RuntimeError(f"the {size}-record store does not give the measured user's {KEYS} keys")
        print(f"\nQuery plans on the {sizes[-1]:,}-record store:")
        explain(root / f"scaling-{sizes[-1]}.db")

        base = stores[sizes[0]]
        base_user = measured_user(sizes[0])
        rows = []
        for size in sizes:
            user = measured_user(size)
            secrets = stores[size]
            pairs = block_pairs_sync(
                partial(base.get_secrets, base_user, SERVER),
                partial(secrets.get_secrets, user, SERVER),
                blocks=blocks,
                calls=calls,
            )["wall"]
            name = f"{size:,}" + (" (against itself: the noise)" if size == sizes[0] else "")
            rows.append([name, f"{loads[size]:.1f} s", micros(pairs.subject_median), str(pairs.ratio())])
        table(
            ["records", "load", "get_secrets/call", f"{sizes[0]:,}-record time ÷ this, median (p25-p75)"],
            rows,
            title=f"get_secrets of 20 keys by store size, {blocks} block pairs of {calls} ({machine()})",
        )
    finally:
        for secrets in stores.values():
            secrets.close()
            secrets.store.close()


def upserts(root: Path) -> None:
    """10,000 single-row upserts: SQLiteStore.put_secret against bare sqlite3 per-row commits."""
    store_path, bare_path, secure_path = (root / f"upsert-{name}.db" for name in ("store", "bare", "secure"))
    store = SQLiteStore(store_path)
    for path in (bare_path, secure_path):
        SQLiteStore(path).close()  # the same schema
    bare = sqlite3.connect(bare_path, isolation_level=None)
    secure = sqlite3.connect(secure_path, isolation_level=None)
    for connection in (bare, secure):
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
    secure.execute("PRAGMA secure_delete=ON")
    counters = {"store": 0, "bare": 0, "secure": 0}
    now = datetime.now(timezone.utc)

    def put() -> None:
        counters["store"] += 1
        store.put_secret("alice", SERVER, f"KEY_{counters['store'] % UPSERT_KEYS}", FILLER, now)

    def bare_upsert(connection: sqlite3.Connection, name: str) -> None:
        counters[name] += 1
        key = f"KEY_{counters[name] % UPSERT_KEYS}"
        connection.execute(UPSERT, ("alice", SERVER, key, FILLER, STAMP, STAMP))

    blocks, calls = 25, 400  # 10,000 upserts on each side, after a warm-up pair
    try:
        rows = []
        for label, connection, name in (
            ("put_secret vs bare (WAL, NORMAL)", bare, "bare"),
            ("put_secret vs bare + secure_delete", secure, "secure"),
        ):
            pairs = block_pairs_sync(
                partial(bare_upsert, connection, name),
                put,
                blocks=blocks,
                calls=calls,
            )["wall"]
            ratio = pairs.ratio()
            first = name == "bare"
            rows.append(
                [
                    label,
                    micros(pairs.floor_median),
                    micros(pairs.subject_median),
                    str(ratio),
                    f"≥ {UPSERT_TARGET}" if first else "",
                    verdict(ratio.median, UPSERT_TARGET, higher_is_better=True) if first else "",
                ]
            )
        table(
            [
                "single-row upserts",
                "bare/upsert",
                "put_secret/upsert",
                "ratio median (p25-p75)",
                "target",
                "",
            ],
            rows,
            title=f"{blocks * calls:,} upserts a side, {blocks} block pairs of {calls}: bare ÷ put_secret",
        )
    finally:
        store.close()
        bare.close()
        secure.close()


def main(max_records: int, blocks: int, calls: int) -> None:
    """Both parts, in one temporary directory."""
    with tempfile.TemporaryDirectory(prefix="mcp-secrets-bench-") as tmp:
        scaling(Path(tmp), max_records, blocks, calls)
        upserts(Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-records", type=int, default=SIZES[-1], help="largest store to build (default 1,000,000)"
    )
    parser.add_argument("--blocks", type=int, default=15, help="block pairs per size (default 15)")
    parser.add_argument("--calls", type=int, default=200, help="calls per block (default 200)")
    options = parser.parse_args()
    main(options.max_records, options.blocks, options.calls)
