"""The original design's ciphertexts as its own code wrote them, on Node.js's crypto, migrated for real.

``legacy_encryptor.mjs`` encrypts and decrypts as the original TypeScript ``SecretEncryptor`` did, in its
idiom: the key is SHA-256 of the master key string, AES-256-GCM with a random IV, ``iv:authTag:ciphertext``
in hex. What it writes goes into a SQLite store and into MongoDB documents as Mongoose left them (mongomock),
and the real CLI migrates it: ``migrate-legacy`` dry, run, stopped and run again, run with nothing left; then
``verify``, ``list``, the library's ``get_secrets`` and the ``list_secret_keys`` tool, without the legacy key.
The other way, what our own test helper writes decrypts in Node.js: both read the format alike. Skipped
where Node.js is not installed; CI sets MCP_SECRETS_REQUIRE_INSPECTOR, so that there it fails instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import anyio
import mongomock
import pytest
from bson import ObjectId
from mcp import Client

from conftest import new_canary
from e2e.conftest import CLI_TIMEOUT, isolated_env, run_cli
from e2e.test_inspector import needed
from e2e.test_rotate_cli import (
    Summary,
    audit_json,
    ciphertexts,
    database,
    key_id,
    run_signalled_once_done,
    summary_of,
)
from mcp_secrets import Settings, cli, open_secrets
from mcp_secrets.app import build_server
from mcp_secrets.crypto import SecretEncryptor, generate_master_key, parse_master_key
from mcp_secrets.identity import LocalIdentity
from mcp_secrets.secrets import MAX_VALUE_BYTES, Secrets
from mcp_secrets.store.mongo import MongoStore
from mcp_secrets.store.sqlite import SQLiteStore
from test_crypto import legacy_ciphertext

SCRIPT = Path(__file__).with_name("legacy_encryptor.mjs")
CANARY = re.compile(r"canary-[0-9a-f]{32}")  # as conftest.new_canary makes them
Record = tuple[str, str, str]

# Key strings the original design may have hashed, each as its environment or key file gave it.
LEGACY_KEYS: dict[str, Callable[[], str]] = {
    "ascii": new_canary,
    "read-from-a-file": lambda: new_canary() + "\n",  # fs.readFileSync without trim()
    "non-ascii": lambda: f"clé-ключ-鍵-🔑-{new_canary()}",
    "long": lambda: " ".join(new_canary() for _ in range(100)),  # 4 KiB, spaces within
}


def values() -> dict[str, str]:
    """A value of each kind the original design could store, by name; each but the empty one a canary."""
    canary = new_canary()
    return {
        "ASCII": new_canary(),
        "EMPTY": "",
        "ACCENTS_CJK": f"pässwörd 密码 ключ {new_canary()}",
        "ASTRAL": f"🔑𝄞😀{new_canary()}🚀",  # surrogate pairs in JavaScript
        "NUL": f"\0{new_canary()}\0",
        "CRLF_LINES": f"line one\r\n{new_canary()}\r\n",
        "MAX_64KIB": (canary * (MAX_VALUE_BYTES // len(canary) + 1))[:MAX_VALUE_BYTES],
    }


# An IV of 12 bytes, as randomBytes(12) gives, and of 16, as many tutorials have it.
IV_BYTES = (12, 16)


@pytest.fixture(scope="module")
def node() -> str:
    return needed("node", "the original design's encryptor")


@pytest.fixture(autouse=True)
def no_caller_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process runs read only the settings a test sets, never the caller's MCP_SECRETS_*."""
    for name in [name for name in os.environ if name.startswith("MCP_SECRETS_")]:
        monkeypatch.delenv(name)


class Shown:
    """Everything printed or logged where a value or key could leak, searched for them at the end."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *texts: str) -> None:
        self.texts.extend(texts)

    def assert_hides(self, legacy_key: str, stored: dict[Record, str]) -> None:
        """No value, no piece of the legacy key, nor the key it hashes to, in anything shown."""
        everything = "\n".join(self.texts)
        hidden = [value for value in stored.values() if value]
        # Each canary alone too, so that a piece of a long value or key is found.
        hidden += sorted(
            {canary for text in [legacy_key, *stored.values()] for canary in CANARY.findall(text)}
        )
        hidden += [legacy_key.strip(), hashlib.sha256(legacy_key.encode()).hexdigest()]
        for index, secret in enumerate(hidden):
            leaked = secret in everything  # a bare bool: a failure prints neither
            assert not leaked, f"hidden item {index} was shown"


def node_run(node: str, mode: str, items: list[dict[str, object]], shown: Shown | None = None) -> list[str]:
    """Run the original design's code on ``items``; its results, one per item."""
    done = subprocess.run(
        [node, str(SCRIPT), mode],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # names an item by its index only
    if shown is not None:
        shown.add(done.stdout if mode == "encrypt" else "", done.stderr)
    results: list[str] = json.loads(done.stdout)
    assert len(results) == len(items)
    return results


def originals(
    node: str, legacy_key: str, plain: dict[Record, str], shown: Shown, **variant: int
) -> dict[Record, str]:
    """What the original design stored for each record: IVs of 12 and 16 bytes in turn, unless ``variant``."""
    items: list[dict[str, object]] = [
        {"masterKey": legacy_key, "text": value, "ivBytes": IV_BYTES[index % 2], **variant}
        for index, value in enumerate(plain.values())
    ]
    return dict(zip(plain, node_run(node, "encrypt", items, shown), strict=True))


def records_of(named: dict[str, str]) -> dict[Record, str]:
    """Each value as a record: two users, each with records of two servers."""
    users = [("alice", "github"), ("alice", "legacy-app"), ("bob", "github"), ("bob", "legacy-app")]
    return {(*users[index % len(users)], name): value for index, (name, value) in enumerate(named.items())}


def put_in_sqlite(env: dict[str, str], stored: dict[Record, str]) -> None:
    database(env).parent.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(database(env))
    try:
        for (username, server, key), ciphertext in stored.items():
            store.put_secret(username, server, key, ciphertext, datetime.now(timezone.utc))
    finally:
        store.close()


def read_through_the_library(secrets: Secrets, plain: dict[Record, str]) -> dict[Record, str]:
    """Every value as ``get_secrets`` gives it to the gateway, by (username, server)."""
    read: dict[Record, str] = {}
    for username, server in sorted({(username, server) for username, server, _ in plain}):
        for key, value in secrets.get_secrets(username, server).items():
            read[username, server, key] = value
    return read


def listed_by_the_tool(secrets: Secrets, username: str) -> list[dict[str, str]]:
    """What ``list_secret_keys`` answers ``username`` through the SDK's in-process client."""

    async def listing() -> list[dict[str, str]]:
        async with Client(build_server(secrets, LocalIdentity(username))) as client:
            result = await client.call_tool("list_secret_keys", {})
        assert not result.is_error
        assert result.structured_content is not None
        keys: list[dict[str, str]] = result.structured_content["keys"]
        return keys

    return anyio.run(listing)


def assert_read_back(secrets: Secrets, plain: dict[Record, str], shown: Shown) -> list[dict[str, str]]:
    """Every value read back exactly, and every key listed by the tool; the tool's listings."""
    same = read_through_the_library(secrets, plain) == plain  # a bare bool: a failure prints no value
    assert same, "a value read back is not what the original design stored"
    listings = []
    for username in sorted({username for username, _, _ in plain}):
        listed = listed_by_the_tool(secrets, username)
        shown.add(json.dumps(listed))
        assert sorted((entry["server"], entry["key"]) for entry in listed) == sorted(
            (server, key) for user, server, key in plain if user == username
        )
        listings += listed
    return listings


# --- the format, both ways ------------------------------------------------------------------------


def test_every_ciphertext_the_original_code_writes_decrypts_to_its_value(node: str) -> None:
    master_key = parse_master_key(generate_master_key())
    cases = [
        (legacy_key, value, iv)
        for legacy_key in (make() for make in LEGACY_KEYS.values())
        for value in values().values()
        for iv in (8, *IV_BYTES, 128)  # AES-GCM's bounds here, and the usual two
    ]
    items: list[dict[str, object]] = [{"masterKey": k, "text": v, "ivBytes": iv} for k, v, iv in cases]

    stored = node_run(node, "encrypt", items)

    for index, ((legacy_key, value, _), ciphertext) in enumerate(zip(cases, stored, strict=True)):
        encryptor = SecretEncryptor([master_key], legacy_key=legacy_key)
        same = encryptor.decrypt(ciphertext, username="u", server="s", key="K") == value
        assert same, f"case {index} does not read back"


def test_the_original_code_decrypts_what_our_test_helper_writes(node: str) -> None:
    cases = [(make(), value) for make in LEGACY_KEYS.values() for value in values().values()]

    read = node_run(node, "decrypt", [{"masterKey": k, "stored": legacy_ciphertext(v, k)} for k, v in cases])

    for index, ((_, value), plain) in enumerate(zip(cases, read, strict=True)):
        same = plain == value
        assert same, f"case {index} does not read back in Node.js"


# --- SQLite, through the CLI run as a program ---------------------------------------------------------


@pytest.mark.parametrize("legacy_key", LEGACY_KEYS.values(), ids=LEGACY_KEYS.keys())
def test_the_cli_takes_the_legacy_key_as_the_original_code_hashed_it(
    node: str, tmp_path: Path, legacy_key: Callable[[], str]
) -> None:
    key = legacy_key()
    plain = records_of({"ONE": new_canary(), "TWO": new_canary()})
    shown = Shown()
    env = isolated_env(tmp_path, MCP_SECRETS_LEGACY_KEY=key)
    put_in_sqlite(env, originals(node, key, plain, shown))

    done = run_cli(env, "migrate-legacy", "--dry-run")

    shown.add(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    master = key_id(env["MCP_SECRETS_MASTER_KEY"])
    assert summary_of(done.stderr) == Summary(2, "would re-encrypt", 2, master, 0, 0, 0)
    shown.assert_hides(key, plain)


def test_migrate_legacy_re_encrypts_what_the_original_code_wrote_into_sqlite(
    node: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    legacy_key = LEGACY_KEYS["non-ascii"]() + "\n"
    plain = records_of(values())
    shown = Shown()
    stored = originals(node, legacy_key, plain, shown)
    env = isolated_env(tmp_path, MCP_SECRETS_LEGACY_KEY=legacy_key)
    without_legacy_key = {name: value for name, value in env.items() if name != "MCP_SECRETS_LEGACY_KEY"}
    put_in_sqlite(env, stored)
    master, records = key_id(env["MCP_SECRETS_MASTER_KEY"]), len(plain)

    def cli_run(*args: str, env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        done = run_cli(env, *args)
        shown.add(done.stdout, done.stderr)
        return done

    dry = cli_run("migrate-legacy", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert summary_of(dry.stderr) == Summary(records, "would re-encrypt", records, master, 0, 0, 0)
    assert ciphertexts(env) == stored

    # Ctrl-C once the first record is swapped: that one is migrated, the others are as they were.
    stopped = run_signalled_once_done(
        env, signal.SIGINT, "replace_value", "migrate-legacy", "--batch-size", "3"
    )
    shown.add(stopped.stdout, stopped.stderr)
    assert stopped.returncode == 130, stopped.stderr
    after_stop = ciphertexts(env)
    assert sum(ciphertext.startswith(f"v1:{master}:") for ciphertext in after_stop.values()) == 1
    assert sum(ciphertext == stored[record] for record, ciphertext in after_stop.items()) == records - 1

    rerun = cli_run("migrate-legacy", "--batch-size", "3")
    assert rerun.returncode == 0, rerun.stderr
    assert summary_of(rerun.stderr) == Summary(records, "re-encrypted", records - 1, master, 1, 0, 0)
    again = cli_run("migrate-legacy")
    assert summary_of(again.stderr) == Summary(records, "re-encrypted", 0, master, records, 0, 0)
    assert all(ciphertext.startswith(f"v1:{master}:") for ciphertext in ciphertexts(env).values())

    # The legacy key can go.
    verified = cli_run("verify", env=without_legacy_key)
    assert verified.returncode == 0, verified.stderr
    assert (
        f"{records} records scanned; {records} decrypt ({records} under key {master} (active)); 0 do not."
        in (verified.stderr.splitlines())
    )
    nothing = cli_run("migrate-legacy", env=without_legacy_key)
    assert nothing.returncode == 0, nothing.stderr
    assert f"{records} records scanned; none is in the legacy format: nothing to migrate." in nothing.stderr
    for username in ("alice", "bob"):
        listed = cli_run("list", "--user", username, env=without_legacy_key)
        assert listed.returncode == 0, listed.stderr
        rows = [line.split()[:2] for line in listed.stdout.splitlines()[1:]]
        assert sorted(rows) == sorted([server, key] for user, server, key in plain if user == username)
    secrets = open_secrets(
        Settings(
            data_dir=Path(env["MCP_SECRETS_DATA_DIR"]),
            config_dir=Path(env["MCP_SECRETS_CONFIG_DIR"]),
            master_key=env["MCP_SECRETS_MASTER_KEY"],
        )
    )
    try:
        assert_read_back(secrets, plain, shown)
    finally:
        secrets.close()
        secrets.store.close()
    events = [event for event in audit_json(without_legacy_key) if event["action"] == "migrated-legacy"]
    assert [event["detail"].split(",")[0] for event in reversed(events)] == [
        f"1 re-encrypted to key {master}",
        f"{records - 1} re-encrypted to key {master}",
        f"0 re-encrypted to key {master}",
    ]
    assert events[-1]["detail"].endswith(", then stopped by SIGINT")
    shown.add(caplog.text)
    shown.assert_hides(legacy_key, plain)


def test_variants_the_readme_does_not_promise_fail_each_record_by_name_and_the_rest_migrate(
    node: str, tmp_path: Path
) -> None:
    legacy_key = new_canary()
    shown = Shown()
    readable = records_of({"READABLE": new_canary()})
    short_iv = records_of({"SHORT_IV": new_canary()})  # randomBytes(4): Node.js takes it, AES-GCM here not
    short_tag = records_of({"SHORT_TAG": new_canary()})  # createCipheriv(..., {authTagLength: 12})
    # The key file ended in a newline that the operator's `$(cat file)` dropped.
    with_newline = records_of({"KEY_WITH_NEWLINE": new_canary()})
    stored = {
        **originals(node, legacy_key, readable, shown),
        **originals(node, legacy_key, short_iv, shown, ivBytes=4),
        **originals(node, legacy_key, short_tag, shown, authTagLength=12),
        **originals(node, legacy_key + "\n", with_newline, shown),
    }
    env = isolated_env(tmp_path, MCP_SECRETS_LEGACY_KEY=legacy_key)
    put_in_sqlite(env, stored)

    done = run_cli(env, "migrate-legacy")

    shown.add(done.stdout, done.stderr)
    assert done.returncode == 1
    assert summary_of(done.stderr) == Summary(
        4, "re-encrypted", 1, key_id(env["MCP_SECRETS_MASTER_KEY"]), 0, 0, 3
    )
    failures = {
        line.split(": ", 2)[1]: line.split(": ", 2)[2]
        for line in done.stderr.splitlines()
        if line.startswith("  failed: ")
    }
    named = {f"user {username}, server {server}, key {key}": key for username, server, key in stored}
    reasons = {named[record]: reason for record, reason in failures.items()}
    assert sorted(reasons) == ["KEY_WITH_NEWLINE", "SHORT_IV", "SHORT_TAG"]
    assert "a 4-byte IV" in reasons["SHORT_IV"]
    assert "a 12-byte authentication tag" in reasons["SHORT_TAG"]
    assert "does not decrypt with the legacy key" in reasons["KEY_WITH_NEWLINE"]
    assert not any("damaged" in reason for reason in (reasons["SHORT_IV"], reasons["SHORT_TAG"]))
    assert {record: value.startswith("v1:") for record, value in ciphertexts(env).items()} == {
        record: record in readable for record in stored
    }
    shown.assert_hides(legacy_key, {**readable, **short_iv, **short_tag, **with_newline})


# --- MongoDB documents as Mongoose left them, through the CLI's own main() on mongomock --------------

CREATED = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
UPDATED = datetime(2025, 7, 9, 8, 30, tzinfo=timezone.utc)


@dataclass
class InProcessCli:
    """``mcp-secrets`` run by its own ``main()`` in this process, where mongomock is; what it said, kept."""

    capsys: pytest.CaptureFixture[str]
    shown: Shown

    def __call__(self, *args: str) -> tuple[int, str]:
        code = cli.main(list(args))
        out, err = self.capsys.readouterr()
        self.shown.add(out, err)
        return code, out + err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> InProcessCli:
    return InProcessCli(capsys, Shown())


@pytest.fixture
def mongo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> mongomock.MongoClient:
    """One mongomock server that every store of the test opens, and the settings of a master key and it."""
    client = mongomock.MongoClient(tz_aware=True)
    monkeypatch.setattr("mcp_secrets.store.mongo.MongoClient", lambda *_url, **_options: client)
    monkeypatch.setenv("MCP_SECRETS_DATABASE_URL", "mongodb://db.invalid/legacy")
    monkeypatch.setenv("MCP_SECRETS_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("MCP_SECRETS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MCP_SECRETS_CONFIG_DIR", str(tmp_path / "config"))
    return client


def insert_as_mongoose_did(collection: mongomock.Collection, stored: dict[Record, str]) -> None:
    """The original design's documents: its fields, and the _id, timestamps and version key of Mongoose."""
    for (username, server, key), value in stored.items():
        original = {"username": username, "server": server, "key": key, "value": value}
        collection.insert_one(
            {"_id": ObjectId(), **original, "createdAt": CREATED, "updatedAt": UPDATED, "__v": 0}
        )


def migrate_stopped_at_the_second_swap(run: InProcessCli, monkeypatch: pytest.MonkeyPatch) -> int:
    """``migrate-legacy`` stopped (Ctrl-C) as its second swap begins: the first is made, no other."""
    swap = MongoStore.replace_value
    swaps: list[tuple[str, ...]] = []

    def stopped_at_the_second(store: MongoStore, *names_and_values: str) -> bool:
        swaps.append(names_and_values[:3])
        if len(swaps) > 1:
            raise KeyboardInterrupt
        return swap(store, *names_and_values)

    with monkeypatch.context() as patched:
        patched.setattr(MongoStore, "replace_value", stopped_at_the_second)
        code, _ = run("migrate-legacy", "--batch-size", "3")
    return code


def test_migrate_legacy_re_encrypts_the_original_codes_mongoose_documents(
    node: str,
    mongo: mongomock.MongoClient,
    *,
    monkeypatch: pytest.MonkeyPatch,
    run: InProcessCli,
    caplog: pytest.LogCaptureFixture,
) -> None:
    legacy_key = LEGACY_KEYS["long"]()
    plain = records_of(values())
    stored = originals(node, legacy_key, plain, run.shown)
    collection = mongo["legacy"]["user_secrets"]
    insert_as_mongoose_did(collection, stored)
    monkeypatch.setenv("MCP_SECRETS_LEGACY_KEY", legacy_key)
    master, records = key_id(os.environ["MCP_SECRETS_MASTER_KEY"]), len(plain)

    def ciphertexts_now() -> dict[Record, str]:
        return {(d["username"], d["server"], d["key"]): d["value"] for d in collection.find()}

    code, said = run("migrate-legacy", "--dry-run")
    assert code == 0, said
    assert summary_of(said) == Summary(records, "would re-encrypt", records, master, 0, 0, 0)
    assert ciphertexts_now() == stored
    assert migrate_stopped_at_the_second_swap(run, monkeypatch) == 130
    assert sum(value.startswith(f"v1:{master}:") for value in ciphertexts_now().values()) == 1
    code, said = run("migrate-legacy", "--batch-size", "3")
    assert code == 0, said
    assert summary_of(said) == Summary(records, "re-encrypted", records - 1, master, 1, 0, 0)
    code, said = run("migrate-legacy")
    assert summary_of(said) == Summary(records, "re-encrypted", 0, master, records, 0, 0)

    # The legacy key can go; Mongoose's own fields stay as they were, and its times are the records'.
    monkeypatch.delenv("MCP_SECRETS_LEGACY_KEY")
    code, said = run("verify")
    assert code == 0, said
    assert (
        f"{records} records scanned; {records} decrypt ({records} under key {master} (active)); 0 do not."
        in said
    )
    code, said = run("migrate-legacy")
    assert (code, "none is in the legacy format: nothing to migrate." in said) == (0, True)
    for username in ("alice", "bob"):
        code, said = run("list", "--user", username)
        assert code == 0, said
        assert said.count(" 2024-03-01 12:00  2025-07-09 08:30 ") == sum(
            user == username for user, _, _ in plain
        )
    for document in collection.find():
        assert document["value"].startswith(f"v1:{master}:")
        assert (document["createdAt"], document["updatedAt"], document["__v"]) == (CREATED, UPDATED, 0)
    secrets = open_secrets()
    try:
        listings = assert_read_back(secrets, plain, run.shown)
    finally:
        secrets.close()
        secrets.store.close()
    assert {(entry["created_at"], entry["updated_at"]) for entry in listings} == {
        ("2024-03-01T12:00:00Z", "2025-07-09T08:30:00Z")
    }
    run.shown.add(caplog.text)
    run.shown.assert_hides(legacy_key, plain)
