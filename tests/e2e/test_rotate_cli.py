"""`mcp-secrets rotate`, `migrate-legacy`, `audit` and `prune-audit`, run for real on an isolated store."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

import pytest

from conftest import new_canary
from e2e.conftest import CLI_TIMEOUT, MCP_SECRETS, isolated_env, run_cli, run_program, serving
from mcp_secrets import Settings, open_secrets
from mcp_secrets.crypto import SecretEncryptor, generate_master_key, key_id_for, parse_master_key
from mcp_secrets.store import AuditEvent
from mcp_secrets.store.sqlite import SQLiteStore
from test_cli import ANOTHER_UID, needs_root_to_give_files_away
from test_crypto import legacy_ciphertext

Record = tuple[str, str, str]

SEEDED: tuple[Record, ...] = (("alice", "github", "TOKEN"), ("bob", "slack", "TOKEN"))
LEGACY: tuple[Record, ...] = (("alice", "linear", "OLD"), ("carol", "github", "TOKEN"))
SUMMARY = re.compile(
    r"(?P<scanned>\d+) records scanned; (?P<verb>would re-encrypt|re-encrypted) (?P<rewrapped>\d+) "
    r"(?:legacy )?records to key (?P<key_id>[0-9a-f]{8}) \(.+\); (?P<current>\d+) left as they were; "
    r"(?P<meanwhile>\d+) changed meanwhile; (?P<failed>\d+) failed\."
)
PROGRESS = re.compile(r"\d+/\d+ records")
MANY = 4000  # enough that a rotation in batches of 50 is far from done when its first batch is reported


@pytest.fixture(autouse=True)
def no_caller_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process checks read only the settings a test passes, never the caller's MCP_SECRETS_*."""
    for name in [name for name in os.environ if name.startswith("MCP_SECRETS_")]:
        monkeypatch.delenv(name)


def key_id(master_key: str) -> str:
    return key_id_for(parse_master_key(master_key))


def database(env: dict[str, str]) -> Path:
    return Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"


def cli_set_run(
    env: dict[str, str], value: str, *names: str, username: str = "alice"
) -> subprocess.CompletedProcess[str]:
    """``mcp-secrets set NAMES --user USERNAME`` with ``value`` on stdin, as a script would; not checked."""
    return subprocess.run(
        [*MCP_SECRETS, "set", *names, "--user", username],
        env=env,
        input=value + "\n",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def cli_set(env: dict[str, str], username: str, server: str, key: str, value: str) -> None:
    """``mcp-secrets set SERVER KEY --user USERNAME`` with the value on stdin, which must succeed."""
    done = cli_set_run(env, value, server, key, username=username)
    assert done.returncode == 0, done.stderr


def ciphertexts(env: dict[str, str]) -> dict[Record, str]:
    """The raw stored ciphertexts, read straight from the SQLite file."""
    store = SQLiteStore(database(env))
    try:
        return {(r.username, r.server, r.key): r.value for r in store.scan_secrets(None, 100_000)}
    finally:
        store.close()


def read_back(env: dict[str, str], master_key: str, legacy_key: str | None = None) -> dict[Record, str]:
    """Every stored secret decrypted by the library with only these keys, without recording a use."""
    settings = Settings(
        data_dir=Path(env["MCP_SECRETS_DATA_DIR"]),
        config_dir=Path(env["MCP_SECRETS_CONFIG_DIR"]),
        master_key=master_key,
        legacy_key=legacy_key,
    )
    secrets = open_secrets(settings)
    try:
        return {
            (r.username, r.server, r.key): secrets.encryptor.decrypt(
                r.value, username=r.username, server=r.server, key=r.key
            )
            for r in secrets.store.scan_secrets(None, 100_000)
        }
    finally:
        secrets.store.close()


@dataclass(frozen=True)
class Summary:
    """The final count line of a rotate or migrate-legacy run."""

    scanned: int
    verb: str
    rewrapped: int
    key_id: str
    current: int
    meanwhile: int
    failed: int


def summary_of(stderr: str) -> Summary:
    [line] = [line for line in stderr.splitlines() if SUMMARY.fullmatch(line)]
    match = SUMMARY.fullmatch(line)
    assert match is not None
    fields = match.groupdict()
    numbers = {name: int(value) for name, value in fields.items() if name not in ("verb", "key_id")}
    return Summary(verb=fields["verb"], key_id=fields["key_id"], **numbers)


# --- a store of a few secrets, made once by the real CLI and copied for each test ----------------


@dataclass(frozen=True)
class Seed:
    data_dir: Path
    key_a: str
    values: dict[Record, str]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    root = tmp_path_factory.mktemp("seed")
    key_a = generate_master_key()
    env = isolated_env(root, MCP_SECRETS_MASTER_KEY=key_a)
    values = {record: new_canary() for record in SEEDED}
    for (username, server, key), value in values.items():
        cli_set(env, username, server, key, value)
    return Seed(root / "data", key_a, values)


@pytest.fixture
def key_b() -> str:
    return generate_master_key()


@pytest.fixture
def env(seed: Seed, tmp_path: Path) -> dict[str, str]:
    """This test's own copy of the seeded store, with key A configured."""
    shutil.copytree(seed.data_dir, tmp_path / "data")
    return isolated_env(tmp_path, MCP_SECRETS_MASTER_KEY=seed.key_a)


# --- rotate --------------------------------------------------------------------------------------


def test_dry_run_prints_what_it_would_re_encrypt_and_changes_nothing(
    env: dict[str, str], seed: Seed, key_b: str
) -> None:
    before = ciphertexts(env)

    done = run_cli({**env, "MCP_SECRETS_MASTER_KEY": f"{key_b},{seed.key_a}"}, "rotate", "--dry-run")

    assert done.returncode == 0, done.stderr
    assert summary_of(done.stderr) == Summary(
        len(SEEDED), "would re-encrypt", len(SEEDED), key_id(key_b), 0, 0, 0
    )
    assert ciphertexts(env) == before


def test_rotate_re_encrypts_every_secret_so_the_new_key_alone_reads_them(
    env: dict[str, str], seed: Seed, key_b: str
) -> None:
    done = run_cli({**env, "MCP_SECRETS_MASTER_KEY": f"{key_b},{seed.key_a}"}, "rotate")

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert f"{len(SEEDED)}/{len(SEEDED)} records" in lines
    assert summary_of(lines[-1]) == Summary(len(SEEDED), "re-encrypted", len(SEEDED), key_id(key_b), 0, 0, 0)
    assert {value.split(":")[1] for value in ciphertexts(env).values()} == {key_id(key_b)}
    assert read_back(env, key_b) == seed.values


def test_rotate_without_the_old_key_names_it_for_each_record_and_exits_1(
    env: dict[str, str], seed: Seed, key_b: str
) -> None:
    before = ciphertexts(env)

    done = run_cli({**env, "MCP_SECRETS_MASTER_KEY": key_b}, "rotate")

    assert done.returncode == 1
    assert summary_of(done.stderr) == Summary(
        len(SEEDED), "re-encrypted", 0, key_id(key_b), 0, 0, len(SEEDED)
    )
    failures = [line.strip() for line in done.stderr.splitlines() if line.startswith("  failed: ")]
    assert [line.split(":")[1] for line in failures] == [
        f" user {username}, server {server}, key {key}" for username, server, key in sorted(SEEDED)
    ]
    assert all(f"master key {key_id(seed.key_a)}, which is not configured" in line for line in failures)
    assert not any(value in done.stderr for value in seed.values.values())
    assert ciphertexts(env) == before


# --- verify --------------------------------------------------------------------------------------


def test_verify_counts_the_records_that_decrypt_by_key_and_names_each_that_does_not(
    env: dict[str, str], seed: Seed, key_b: str
) -> None:
    both = {**env, "MCP_SECRETS_MASTER_KEY": f"{key_b},{seed.key_a}"}
    newer = new_canary()
    cli_set(both, "dave", "github", "TOKEN", newer)

    done = run_cli(both, "verify")

    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr.splitlines()[-1] == (
        f"3 records scanned; 3 decrypt (1 under key {key_id(key_b)} (active), 2 under key "
        f"{key_id(seed.key_a)}); 0 do not."
    )
    # A record altered in the store, under the active key: a rotation would leave it as it is, unread.
    with closing(sqlite3.connect(database(env))) as connection, connection:
        connection.execute(
            "UPDATE user_secrets SET value = substr(value, 1, length(value) - 4) || "
            "CASE WHEN substr(value, -4) = 'AAAA' THEN 'BAAA' ELSE 'AAAA' END WHERE username = 'dave'"
        )
    assert summary_of(run_cli(both, "rotate", "--dry-run").stderr).rewrapped == 2

    done = run_cli(both, "verify")

    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert f"3 records scanned; 2 decrypt (2 under key {key_id(seed.key_a)}); 1 does not." in lines
    named = "  does not decrypt: user dave, server github, key TOKEN: secret 'TOKEN' of server 'github' "
    assert [line for line in lines if line.startswith("  does not decrypt: ")] == [
        named + "does not decrypt: it was altered, or copied from another record"
    ]
    assert not any(value in done.stderr for value in [newer, *seed.values.values()])


def test_verify_with_none_of_the_stores_keys_asks_whether_they_are_the_right_ones(
    env: dict[str, str], seed: Seed, key_b: str
) -> None:
    # A restore with the wrong key file: every record fails, and the operator is told where to look.
    done = run_cli({**env, "MCP_SECRETS_MASTER_KEY": key_b}, "verify")

    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert f"{len(SEEDED)} records scanned; 0 decrypt; {len(SEEDED)} do not." in lines
    assert lines[-1] == (
        "None decrypts: are these the master keys this store was written with (MCP_SECRETS_MASTER_KEY)?"
    )
    assert not any(value in done.stderr for value in seed.values.values())


README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the README's backup runs the sqlite3 shell")
def test_the_readme_backup_of_a_running_servers_store_restores_every_secret(tmp_path: Path) -> None:
    """While the server runs, its latest writes sit in secrets.db-wal: a copy of secrets.db alone can hold
    none of them. The backup the README gives must, and restore with the key as the README says."""
    section = README.read_text(encoding="utf-8").split("\n## Key rotation, backup and recovery\n", 1)[1]
    backup_command = re.search(r"`(sqlite3 [^`]+)`", section)
    assert backup_command, "the README gives no way to back up the SQLite store"
    env = isolated_env(tmp_path / "live")
    backup = tmp_path / "backups" / "secrets.db"
    backup.parent.mkdir()
    command = backup_command.group(1).replace("~/.local/share/mcp-secrets/secrets.db", str(database(env)))
    command = command.replace("/backups/secrets.db", str(backup))
    values = {("alice", "github", key): new_canary() for key in ("A", "B", "C")}

    with serving(env, "streamable-http", tmp_path / "server.log"):
        for (username, server, key), value in values.items():
            cli_set(env, username, server, key, value)
        done = subprocess.run(
            ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
        )
    assert done.returncode == 0, done.stderr
    restored = isolated_env(tmp_path / "restored")
    database(restored).parent.mkdir(parents=True)
    shutil.copyfile(backup, database(restored))

    read = read_back(restored, env["MCP_SECRETS_MASTER_KEY"])
    assert sorted(read) == sorted(values)
    same = read == values  # a bare bool: a failure prints no value
    assert same, "a restored secret does not decrypt to what was stored"


def test_a_restore_as_the_readme_says_gives_the_backup_not_the_last_writes_of_a_killed_server(
    tmp_path: Path,
) -> None:
    """A server killed with SIGKILL leaves secrets.db-wal behind, and SQLite replays it onto whatever file
    is then at secrets.db: the README's restore removes it first, so the store is the backup and only it."""
    section = README.read_text(encoding="utf-8").split("\n## Key rotation, backup and recovery\n", 1)[1]
    restore_steps = " ".join(section.split("\n## ", 1)[0].split())
    assert "delete `secrets.db-wal` and `secrets.db-shm`" in restore_steps
    env = isolated_env(tmp_path)
    backup = tmp_path / "backup.db"
    before, after = new_canary(), new_canary()

    with serving(env, "streamable-http", tmp_path / "server.log") as deployment:
        assert deployment.process is not None
        cli_set(env, "alice", "github", "BEFORE", before)
        with closing(sqlite3.connect(database(env))) as live, closing(sqlite3.connect(backup)) as copy:
            live.backup(copy)
        cli_set(env, "alice", "github", "AFTER", after)
        deployment.process.kill()
        deployment.process.wait()
    wal = database(env).with_name("secrets.db-wal")
    assert wal.exists()  # what the killed server left: the write of AFTER, at least
    for leftover in (wal, database(env).with_name("secrets.db-shm")):
        leftover.unlink()
    shutil.copyfile(backup, database(env))

    restored = read_back(env, env["MCP_SECRETS_MASTER_KEY"])
    assert sorted(restored) == [("alice", "github", "BEFORE")]


def test_rotate_against_an_unreachable_store_says_it_is_unavailable(tmp_path: Path) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_DATABASE_URL="mongodb://127.0.0.1:1/x")

    done = run_cli(env, "rotate")

    assert done.returncode != 0
    assert "unavailable" in done.stderr
    assert "Traceback" not in done.stderr


# --- migrate-legacy ------------------------------------------------------------------------------


@pytest.fixture
def legacy_key() -> str:
    return new_canary()


@pytest.fixture
def legacy_values(env: dict[str, str], legacy_key: str) -> dict[Record, str]:
    """Records of the original iv:authTag:ciphertext format, put straight into the seeded store."""
    values = {record: new_canary() for record in LEGACY}
    store = SQLiteStore(database(env))
    try:
        for (username, server, key), value in values.items():
            old = legacy_ciphertext(value, legacy_key)
            store.put_secret(username, server, key, old, datetime.now(timezone.utc))
    finally:
        store.close()
    return values


def test_a_store_of_legacy_records_only_is_told_to_make_a_master_key_and_then_migrates(
    tmp_path: Path, legacy_key: str
) -> None:
    # As one coming from the original design starts: its records, its legacy key, no master key yet.
    env = {**isolated_env(tmp_path), "MCP_SECRETS_LEGACY_KEY": legacy_key}
    env.pop("MCP_SECRETS_MASTER_KEY", None)
    values = {record: new_canary() for record in LEGACY}
    store = SQLiteStore(database(env))
    try:
        for (username, server, key), value in values.items():
            store.put_secret(
                username, server, key, legacy_ciphertext(value, legacy_key), datetime.now(timezone.utc)
            )
    finally:
        store.close()

    refused = run_cli(env, "migrate-legacy")
    made = run_cli(env, "keygen")
    done = run_cli({**env, "MCP_SECRETS_MASTER_KEY": made.stdout.strip()}, "migrate-legacy")

    assert refused.returncode == 2
    assert "to the key that encrypted them" not in refused.stderr  # none did: the legacy key did
    assert "`mcp-secrets keygen`" in refused.stderr
    assert done.returncode == 0, done.stderr
    assert read_back(env, made.stdout.strip()) == values
    for run in (refused, made, done):
        assert not any(value in run.stdout + run.stderr for value in values.values())


def test_migrate_legacy_dry_run_counts_legacy_records_and_changes_nothing(
    env: dict[str, str], seed: Seed, legacy_key: str, legacy_values: dict[Record, str]
) -> None:
    before = ciphertexts(env)

    done = run_cli({**env, "MCP_SECRETS_LEGACY_KEY": legacy_key}, "migrate-legacy", "--dry-run")

    assert done.returncode == 0, done.stderr
    assert summary_of(done.stderr) == Summary(
        len(SEEDED) + len(LEGACY), "would re-encrypt", len(LEGACY), key_id(seed.key_a), len(SEEDED), 0, 0
    )
    assert ciphertexts(env) == before
    assert set(legacy_values) <= set(before)


def test_migrate_legacy_converts_legacy_records_so_the_legacy_key_can_go(
    env: dict[str, str], seed: Seed, legacy_key: str, legacy_values: dict[Record, str]
) -> None:
    seeded = {record: value for record, value in ciphertexts(env).items() if record in SEEDED}

    done = run_cli({**env, "MCP_SECRETS_LEGACY_KEY": legacy_key}, "migrate-legacy")

    assert done.returncode == 0, done.stderr
    assert summary_of(done.stderr) == Summary(
        len(SEEDED) + len(LEGACY), "re-encrypted", len(LEGACY), key_id(seed.key_a), len(SEEDED), 0, 0
    )
    after = ciphertexts(env)
    assert {record: after[record] for record in SEEDED} == seeded
    assert read_back(env, seed.key_a) == {**seed.values, **legacy_values}


@pytest.mark.parametrize("options", [(), ("--dry-run",)], ids=["run", "dry-run"])
def test_migrate_legacy_with_a_wrong_legacy_key_names_each_legacy_record_and_exits_1(
    env: dict[str, str], seed: Seed, legacy_values: dict[Record, str], options: tuple[str, ...]
) -> None:
    before = ciphertexts(env)

    done = run_cli({**env, "MCP_SECRETS_LEGACY_KEY": new_canary()}, "migrate-legacy", *options)

    assert done.returncode == 1, done.stderr
    verb = "would re-encrypt" if options else "re-encrypted"
    assert summary_of(done.stderr) == Summary(
        len(SEEDED) + len(LEGACY), verb, 0, key_id(seed.key_a), len(SEEDED), 0, len(LEGACY)
    )
    failures = [line.strip() for line in done.stderr.splitlines() if line.startswith("  failed: ")]
    assert len(failures) == len(LEGACY)
    assert all("does not decrypt with the legacy key" in line for line in failures)
    assert ciphertexts(env) == before


@pytest.mark.parametrize("options", [(), ("--dry-run",)], ids=["run", "dry-run"])
def test_migrate_legacy_without_the_legacy_key_says_so_and_exits_0_when_nothing_needs_it(
    env: dict[str, str], options: tuple[str, ...]
) -> None:
    done = run_cli(env, "migrate-legacy", *options)

    assert done.returncode == 0, done.stderr
    assert "MCP_SECRETS_LEGACY_KEY is not set: records of the original" in done.stderr
    assert "cannot be read without it" in done.stderr
    assert f"{len(SEEDED)} records scanned; none is in the legacy format: nothing to migrate." in done.stderr
    assert "re-encrypted 0" not in done.stderr
    assert [event["action"] for event in audit_json(env)].count("migrated-legacy") == 0


@pytest.mark.parametrize("options", [(), ("--dry-run",)], ids=["run", "dry-run"])
def test_migrate_legacy_without_the_legacy_key_names_each_legacy_record_and_exits_1(
    env: dict[str, str], seed: Seed, legacy_values: dict[Record, str], options: tuple[str, ...]
) -> None:
    before = ciphertexts(env)

    done = run_cli(env, "migrate-legacy", *options)

    assert done.returncode == 1
    assert "MCP_SECRETS_LEGACY_KEY is not set" in done.stderr
    scanned = len(SEEDED) + len(LEGACY)
    assert f"{scanned} records scanned; {len(LEGACY)} in the legacy format cannot be read" in done.stderr
    failures = [line.strip() for line in done.stderr.splitlines() if line.startswith("  failed: ")]
    assert [line.split(":")[1] for line in failures] == [
        f" user {username}, server {server}, key {key}" for username, server, key in sorted(LEGACY)
    ]
    assert not SUMMARY.search(done.stderr)
    assert ciphertexts(env) == before
    assert [event["action"] for event in audit_json(env)].count("migrated-legacy") == 0
    shown = done.stdout + done.stderr
    assert not any(value in shown for value in [*seed.values.values(), *legacy_values.values()])


def store_records_in_no_format(env: dict[str, str], value: str) -> list[Record]:
    """Rows holding, in place of a ciphertext, text of no format, a BLOB and bytes that are not UTF-8."""
    at = datetime.now(timezone.utc).isoformat()
    rows = [
        (("dave", "github", "GARBAGE"), "?", f"not-a-ciphertext-{value}"),
        (("dave", "github", "BLOB"), "?", value.encode()),
        (("dave", "github", "LATIN1"), "CAST(? AS TEXT)", b"\xff" + value.encode()),
    ]
    with closing(sqlite3.connect(database(env))) as connection, connection:
        for (username, server, key), cell, stored in rows:
            connection.execute(
                "INSERT INTO user_secrets (username, server, key, value, created_at, updated_at) "  # noqa: S608
                f"VALUES (?, ?, ?, {cell}, ?, ?)",
                (username, server, key, stored, at, at),
            )
    return sorted(record for record, _, _ in rows)


@pytest.mark.parametrize("options", [(), ("--dry-run",)], ids=["run", "dry-run"])
def test_migrate_legacy_without_the_legacy_key_tells_records_of_no_format_apart_and_exits_0(
    env: dict[str, str], canary: str, options: tuple[str, ...]
) -> None:
    garbled = store_records_in_no_format(env, canary)

    done = run_cli(env, "migrate-legacy", *options)

    assert done.returncode == 0, done.stderr
    scanned = len(SEEDED) + len(garbled)
    assert f"{scanned} records scanned; none is in the legacy format: nothing to migrate." in done.stderr
    assert f"{len(garbled)} records are in neither the legacy nor the current format" in done.stderr
    listed = [line.strip() for line in done.stderr.splitlines() if line.startswith("  unreadable: ")]
    assert sorted(line.split(":")[1] for line in listed) == [
        f" user {username}, server {server}, key {key}" for username, server, key in garbled
    ]
    assert "failed:" not in done.stderr
    assert canary not in done.stdout + done.stderr


def test_migrate_legacy_migrates_the_legacy_records_and_leaves_records_of_no_format_alone(
    env: dict[str, str], seed: Seed, legacy_key: str, legacy_values: dict[Record, str], canary: str
) -> None:
    garbled = store_records_in_no_format(env, canary)
    env["MCP_SECRETS_LEGACY_KEY"] = legacy_key

    done = run_cli(env, "migrate-legacy")

    assert done.returncode == 0, done.stderr
    summary = summary_of(done.stderr)
    assert (summary.rewrapped, summary.current, summary.failed) == (len(LEGACY), len(SEEDED), 0)
    assert done.stderr.count("  unreadable: user dave, server github, key ") == len(garbled)
    assert canary not in done.stdout + done.stderr
    del env["MCP_SECRETS_LEGACY_KEY"]
    after = run_cli(env, "migrate-legacy", "--dry-run")
    assert after.returncode == 0, after.stderr
    assert "none is in the legacy format: nothing to migrate." in after.stderr


def test_a_failed_records_names_reach_the_terminal_with_their_control_characters_escaped(
    env: dict[str, str], legacy_key: str
) -> None:
    # Names are validated on every write now, but a store written before (by the original design) may
    # hold any: this one would clear the admin's screen, retitle the window and fake a line.
    hostile = "TOKEN\x1b[2J\x1b]0;owned\x07\n  failed: user root"
    store = SQLiteStore(database(env))
    try:
        old = legacy_ciphertext(new_canary(), legacy_key)
        store.put_secret("alice", "linear", hostile, old, datetime.now(timezone.utc))
    finally:
        store.close()

    done = run_cli(env, "migrate-legacy", "--dry-run")

    assert done.returncode == 1
    assert "\x1b" not in done.stderr
    assert "\x07" not in done.stderr
    assert "key TOKEN\\x1b[2J\\x1b]0;owned\\x07\\n  failed: user root:" in done.stderr


# --- audit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), [("bob", "slack", "TOKEN"), ("alice", "github", "TOKEN")]),
        (("--user", "alice", "--server", "github"), [("alice", "github", "TOKEN")]),
        (("--limit", "1"), [("bob", "slack", "TOKEN")]),
    ],
    ids=["all", "user-and-server", "limit"],
)
def test_audit_lists_the_events_newest_first_and_never_a_value(
    env: dict[str, str], seed: Seed, options: tuple[str, ...], expected: list[Record]
) -> None:
    done = run_cli(env, "audit", *options)

    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["TIME", "(UTC)", "USER", "ACTION", "SERVER", "KEY", "VIA", "DETAIL"]
    fields = [row.split() for row in rows]
    assert [(user, server, key) for _, _, user, _, server, key, *_ in fields] == expected
    assert {(action, via) for _, _, _, action, _, _, via, *_ in fields} == {("created", "cli")}
    assert not any(value in done.stdout + done.stderr for value in seed.values.values())


def test_audit_prints_control_characters_of_a_stored_field_escaped(env: dict[str, str], seed: Seed) -> None:
    # Written straight into the store, as a foreign or older writer could: erase the line, go up one.
    forged = "tools/call x\r\x1b[2K\x1b[1Aalice deleted nothing"
    store = SQLiteStore(database(env))
    try:
        store.add_event(AuditEvent(datetime.now(timezone.utc), "alice", "injected", "down", "T", "x", forged))
    finally:
        store.close()

    done = run_cli(env, "audit", "--limit", "1")

    assert done.returncode == 0, done.stderr
    assert not any(char in done.stdout for char in "\r\x1b")
    assert done.stdout.rstrip("\n").endswith("tools/call x\\r\\x1b[2K\\x1b[1Aalice deleted nothing")
    assert len(done.stdout.splitlines()) == 2  # the header and the one event


def test_audit_json_escapes_what_a_terminal_would_act_on_and_still_reads_back(
    env: dict[str, str], seed: Seed
) -> None:
    # C1 controls (U+009B is a terminal's CSI) and bidi overrides pass ensure_ascii=False unescaped.
    forged = "tools/call x\x9b2K\x9b1A\u202eecnalab\x7f \U000e0041"
    store = SQLiteStore(database(env))
    try:
        store.add_event(AuditEvent(datetime.now(timezone.utc), "alice", "injected", "down", "T", "x", forged))
    finally:
        store.close()

    done = run_cli(env, "audit", "--limit", "1", "--json")

    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.isprintable()
    assert json.loads(line)["detail"] == forged


def test_audit_keeps_two_spaces_between_columns_however_long_a_field(env: dict[str, str], seed: Seed) -> None:
    # A gateway use names every key it handed on, comma-separated, in one field.
    keys = ",".join(f"DOWNSTREAM_KEY_{n}" for n in range(4))
    long_user = "a.very.long.username@example.org"
    event = AuditEvent(
        datetime.now(timezone.utc), long_user, "injected", "a-long-server-name", keys, "streamable-http", "x"
    )
    store = SQLiteStore(database(env))
    try:
        store.add_event(event)
    finally:
        store.close()

    done = run_cli(env, "audit")

    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    (long_row,) = [row for row in rows if long_user in row]
    assert re.split(" {2,}", long_row)[1:] == [
        long_user,
        "injected",
        "a-long-server-name",
        keys,
        "streamable-http",
        "x",
    ]
    starts = [header.index(name) for name in ("USER", "ACTION", "SERVER", "KEY", "VIA")]
    for row in rows:  # every column starts where its header does, after at least two spaces
        assert all(row[start - 2 : start] == "  " and row[start] != " " for start in starts), row


def audit_json(env: dict[str, str], *options: str) -> list[dict[str, str]]:
    done = run_cli(env, "audit", "--json", *options)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_audit_json_prints_one_object_per_event_with_every_field_and_never_a_value(
    env: dict[str, str], seed: Seed
) -> None:
    done = run_cli(env, "audit", "--json")

    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["actor"], e["action"], e["server"], e["key"], e["transport"]) for e in events] == [
        ("bob", "created", "slack", "TOKEN", "cli"),
        ("alice", "created", "github", "TOKEN", "cli"),
    ]
    assert all(
        set(event) == {"at", "actor", "action", "server", "key", "transport", "detail"} for event in events
    )
    assert all(datetime.fromisoformat(event["at"]).utcoffset() == timedelta(0) for event in events)
    assert not any(value in done.stdout + done.stderr for value in seed.values.values())


def backdate(env: dict[str, str], days: range) -> None:
    """Events of ``days`` and a half ago (clear of a whole-day cut-off), written straight into the store."""
    store = SQLiteStore(database(env))
    try:
        now = datetime.now(timezone.utc)
        for day in sorted(days, reverse=True):
            store.add_event(
                AuditEvent(now - timedelta(days=day), "alice", "used", "github", "TOKEN", "library")
            )
    finally:
        store.close()


def test_prune_audit_deletes_older_events_without_the_master_key_and_records_itself(
    env: dict[str, str], seed: Seed
) -> None:
    backdate(env, range(25, 41))  # 16 events, 25.5 to 40.5 days old: 11 older than 30 days
    keyless = {name: value for name, value in env.items() if name != "MCP_SECRETS_MASTER_KEY"}

    done = run_cli(keyless, "prune-audit", "--older-than", "30", "--batch-size", "4")

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert re.search(r"^11 audit events from before \S+ \S+ UTC deleted", done.stderr, re.MULTILINE)
    assert re.findall(r"^(\d+)/11 events$", done.stderr, re.MULTILINE) == ["4", "8", "11"]
    events = audit_json(env)
    assert (events[0]["actor"], events[0]["action"], events[0]["transport"]) == (
        "(operator)",
        "audit-pruned",
        "cli",
    )
    assert events[0]["detail"].startswith("11 events before ")
    ages = [datetime.now(timezone.utc) - datetime.fromisoformat(event["at"]) for event in events[1:]]
    assert len(ages) == 2 + 5  # the seed's two changes, and the events 25.5 to 29.5 days old
    assert max(ages) < timedelta(days=30)


def test_prune_audit_export_appends_each_event_to_a_private_file_before_deleting_it(
    env: dict[str, str], seed: Seed, tmp_path: Path
) -> None:
    backdate(env, range(25, 41))
    older = [event for event in audit_json(env, "--limit", "1000") if event["action"] == "used"][5:]
    archive = tmp_path / "archive" / "audit.jsonl"
    archive.parent.mkdir()
    archive.write_text('{"earlier": "line"}\n', encoding="utf-8")

    done = run_cli(env, "prune-audit", "--older-than", "30", "--batch-size", "4", "--export", str(archive))

    assert done.returncode == 0, done.stderr
    assert "11 audit events from before" in done.stderr
    assert f"each written to {archive} first" in done.stderr
    first, *lines = archive.read_text(encoding="utf-8").splitlines()
    assert first == '{"earlier": "line"}'  # appended, never overwritten
    assert [json.loads(line) for line in lines] == sorted(older, key=lambda event: event["at"])
    assert not [event for event in audit_json(env, "--limit", "1000") if event in older]


def test_prune_audit_export_to_a_new_file_creates_it_owner_only(
    env: dict[str, str], seed: Seed, tmp_path: Path
) -> None:
    backdate(env, range(29, 32))
    archive = tmp_path / "audit.jsonl"

    done = run_cli(env, "prune-audit", "--older-than", "30", "--export", str(archive))

    assert done.returncode == 0, done.stderr
    assert archive.stat().st_mode & 0o777 == 0o600
    assert len(archive.read_text(encoding="utf-8").splitlines()) == 2


def test_prune_audit_export_creates_the_missing_directories_owner_only(
    env: dict[str, str], seed: Seed, tmp_path: Path
) -> None:
    backdate(env, range(29, 32))
    archive = tmp_path / "archive" / "mcp-secrets" / "audit.jsonl"

    done = run_cli(env, "prune-audit", "--older-than", "30", "--export", str(archive))

    assert done.returncode == 0, done.stderr
    assert len(archive.read_text(encoding="utf-8").splitlines()) == 2
    assert archive.stat().st_mode & 0o777 == 0o600
    assert [path.stat().st_mode & 0o777 for path in (archive.parent, archive.parent.parent)] == [0o700] * 2


# Runs the CLI noting in the file argv[1], in order, the path of each descriptor os.fsync is called on
# and each call of delete_events (Linux: a descriptor's path is read from /proc).
SYNCS_NOTED = """
import os, sys
from mcp_secrets import cli
from mcp_secrets.store.sqlite import SQLiteStore

notes = open(sys.argv[1], "w", encoding="utf-8")
fsync, delete_events = os.fsync, SQLiteStore.delete_events

def noted_fsync(descriptor):
    notes.write("fsync " + os.readlink(f"/proc/self/fd/{descriptor}") + "\\n")
    return fsync(descriptor)

def noted_delete_events(self, *args, **kwargs):
    notes.write("delete_events\\n")
    return delete_events(self, *args, **kwargs)

os.fsync = noted_fsync
SQLiteStore.delete_events = noted_delete_events
try:
    sys.exit(cli.main(sys.argv[2:]))
finally:
    notes.close()
"""


@pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="a descriptor's path is read from Linux's /proc"
)
def test_prune_audit_export_puts_a_new_file_and_its_new_directories_on_disk_before_deleting_anything(
    env: dict[str, str], seed: Seed, tmp_path: Path
) -> None:
    # A file's fsync does not put its name in its directory on disk: after a power cut the deletes could
    # stay while the new file, and with it the events, was never there.
    backdate(env, range(29, 32))
    root = tmp_path.resolve()
    archive = root / "archive" / "mcp-secrets" / "audit.jsonl"
    notes = root / "notes"
    script = [MCP_SECRETS[0], "-c", SYNCS_NOTED, str(notes)]

    done = run_program(env, [*script, "prune-audit", "--older-than", "30", "--export", str(archive)])

    assert done.returncode == 0, done.stderr
    noted = notes.read_text(encoding="utf-8").splitlines()
    before_any_delete = noted[: noted.index("delete_events")]
    directories = [
        root,
        archive.parent.parent,
        archive.parent,
    ]  # each holds the next's name, the last the file's
    assert {f"fsync {directory}" for directory in directories} <= set(before_any_delete)
    assert len(archive.read_text(encoding="utf-8").splitlines()) == 2


def test_prune_audit_refuses_to_export_to_a_file_another_prune_holds(
    env: dict[str, str], seed: Seed, tmp_path: Path
) -> None:
    fcntl = pytest.importorskip("fcntl", reason="flock is POSIX")
    backdate(env, range(25, 41))
    before = audit_json(env, "--limit", "1000")
    archive = tmp_path / "audit.jsonl"
    archive.write_text('{"earlier": "line"}\n', encoding="utf-8")

    with archive.open("a", encoding="utf-8") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run still going holds it
        done = run_cli(env, "prune-audit", "--older-than", "30", "--export", str(archive))

    assert done.returncode == 1
    assert f"the export file {archive} is in use by another prune; run one at a time" in done.stderr
    assert "Traceback" not in done.stderr
    assert archive.read_text(encoding="utf-8") == '{"earlier": "line"}\n'
    assert audit_json(env, "--limit", "1000") == before


@needs_root_to_give_files_away
def test_prune_audit_export_to_a_file_another_user_owns_is_named_in_a_warning(
    env: dict[str, str], seed: Seed, tmp_path: Path
) -> None:
    # Whatever its mode, its owner reads every user's archived names and times, and may rewrite them.
    backdate(env, range(25, 41))
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text("", encoding="utf-8")
    theirs.chmod(0o600)
    os.chown(theirs, ANOTHER_UID, -1)
    link = tmp_path / "link.jsonl"
    link.symlink_to(theirs)
    their_directory = tmp_path / "theirs"
    their_directory.mkdir(mode=0o700)
    os.chown(their_directory, ANOTHER_UID, -1)
    in_theirs = their_directory / "audit.jsonl"
    ours = tmp_path / "ours.jsonl"

    owned, linked, inside, unowned = (
        run_cli(env, "prune-audit", "--older-than", days, "--export", str(target))
        for days, target in (("38", theirs), ("36", link), ("34", in_theirs), ("30", ours))
    )

    assert [done.returncode for done in (owned, linked, inside, unowned)] == [0] * 4, owned.stderr
    power = "who can read every user's archived events, and change or delete them"
    assert f"the export file {theirs} is owned by another user (uid {ANOTHER_UID}), {power}" in owned.stderr
    assert f"the export file {link} is owned by another user (uid {ANOTHER_UID}), {power}" in linked.stderr
    assert (
        f"the export file {in_theirs} is in {their_directory}, owned by another user (uid {ANOTHER_UID}), "
        f"{power}"
    ) in inside.stderr
    assert "owned by" not in unowned.stderr
    outputs = "".join(done.stdout + done.stderr for done in (owned, linked, inside, unowned))
    assert not any(value in outputs for value in seed.values.values())


EXPORT_FAILURES = {
    "cannot-create-directory": ("a-file/archive/audit.jsonl", 2, "cannot create the directory"),
    "cannot-open": ("a-directory", 2, "cannot open the export file"),
    "disk-full": ("/dev/full", 1, "cannot write the export file"),
    # `--export /dev/stdout` into a pipe: nothing there to append to, cut back or flush to disk.
    "pipe": ("a-pipe", 2, "must be a file"),
}


@pytest.mark.parametrize("failure", EXPORT_FAILURES.values(), ids=EXPORT_FAILURES.keys())
def test_prune_audit_whose_export_fails_deletes_nothing(
    env: dict[str, str], seed: Seed, tmp_path: Path, failure: tuple[str, int, str]
) -> None:
    target, status, message = failure
    if not Path(target).is_absolute():
        (tmp_path / "a-file").write_text("", encoding="utf-8")
        (tmp_path / "a-directory").mkdir()
        if hasattr(os, "mkfifo"):  # POSIX only
            os.mkfifo(tmp_path / "a-pipe")
        elif target == "a-pipe":
            pytest.skip("named pipes are POSIX")
        target = str(tmp_path / target)
    elif not Path(target).exists():
        pytest.skip(f"{target} is Linux's")
    backdate(env, range(25, 41))
    before = audit_json(env, "--limit", "1000")

    done = run_cli(env, "prune-audit", "--older-than", "30", "--export", target)

    assert done.returncode == status
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert audit_json(env, "--limit", "1000") == before


@pytest.mark.parametrize("target", ["", "  "], ids=["empty", "blank"])
def test_prune_audit_with_an_empty_export_path_is_a_usage_error_and_deletes_nothing(
    env: dict[str, str], seed: Seed, target: str
) -> None:
    # As `--export "$ARCHIVE"` is with the variable unset: the events must not go unarchived.
    backdate(env, range(25, 41))
    before = audit_json(env, "--limit", "1000")

    done = run_cli(env, "prune-audit", "--older-than", "30", "--export", target)

    assert done.returncode == 2
    assert "--export" in done.stderr
    assert "Traceback" not in done.stderr
    assert audit_json(env, "--limit", "1000") == before


def test_prune_audit_dry_run_counts_and_deletes_nothing(env: dict[str, str], seed: Seed) -> None:
    backdate(env, range(25, 41))
    before = audit_json(env, "--limit", "1000")

    done = run_cli(env, "prune-audit", "--older-than", "30", "--dry-run")

    assert done.returncode == 0, done.stderr
    assert re.search(
        r"^11 audit events happened before .+; none deleted \(dry run\)\.$", done.stderr, re.MULTILINE
    )
    assert audit_json(env, "--limit", "1000") == before


def test_prune_audit_dry_run_with_an_export_file_leaves_the_file_system_alone(
    env: dict[str, str], seed: Seed, tmp_path: Path
) -> None:
    backdate(env, range(25, 41))
    archive = tmp_path / "archive" / "audit.jsonl"

    done = run_cli(env, "prune-audit", "--older-than", "30", "--dry-run", "--export", str(archive))

    assert done.returncode == 0, done.stderr
    assert "11 audit events happened before" in done.stderr
    assert not archive.parent.exists()


@pytest.mark.parametrize("days", ["0", "-3", "ten"])
def test_prune_audit_refuses_a_period_below_one_day(env: dict[str, str], seed: Seed, days: str) -> None:
    before = audit_json(env)

    done = run_cli(env, "prune-audit", "--older-than", days)

    assert done.returncode == 2
    assert "--older-than" in done.stderr
    assert audit_json(env) == before


# --- a run stopped by SIGTERM (systemd, a job's time limit, `timeout`) or SIGHUP (a closed terminal) -

# Runs the CLI with one store method sending a signal to the process as it is called the second time:
# after one batch is done, as a signal from outside would land mid-run.
TERMINATED_ON_SECOND_CALL = """
import os, signal, sys
from mcp_secrets import cli
from mcp_secrets.store.sqlite import SQLiteStore

stop = getattr(signal, sys.argv[1])
method = sys.argv[2]
original = getattr(SQLiteStore, method)
calls = []

def terminated_on_second_call(self, *args, **kwargs):
    calls.append(method)
    if len(calls) == 2:
        os.kill(os.getpid(), stop)
    return original(self, *args, **kwargs)

setattr(SQLiteStore, method, terminated_on_second_call)
sys.exit(cli.main(sys.argv[3:]))
"""
STOPS = pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=lambda stop: stop.name)


def run_terminated(
    env: dict[str, str], stop: signal.Signals, method: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return run_program(env, [MCP_SECRETS[0], "-c", TERMINATED_ON_SECOND_CALL, stop.name, method, *args])


def the_event_of_a_stopped_run(
    env: dict[str, str], done: subprocess.CompletedProcess[str], stop: signal.Signals, action: str
) -> dict[str, str]:
    """The one ``action`` event of a run that ``stop`` ended: it exited as stopped, and recorded itself."""
    assert done.returncode == 128 + stop, done.stderr
    assert "Traceback" not in done.stderr
    [event] = [event for event in audit_json(env) if event["action"] == action]
    return event


def events_after_a_stopped_prune(
    env: dict[str, str], done: subprocess.CompletedProcess[str], stop: signal.Signals
) -> list[dict[str, str]]:
    """The whole trail after a ``prune-audit`` that ``stop`` ended: it said so, and recorded itself last."""
    assert done.returncode == 128 + stop, done.stderr
    assert "Traceback" not in done.stderr
    events = audit_json(env, "--limit", "1000")
    assert (events[0]["actor"], events[0]["action"]) == ("(operator)", "audit-pruned")
    return events


@STOPS
def test_prune_audit_stopped_by_a_signal_still_records_what_it_deleted(
    env: dict[str, str], seed: Seed, stop: signal.Signals
) -> None:
    backdate(env, range(25, 41))

    done = run_terminated(
        env, stop, "delete_events", "prune-audit", "--older-than", "30", "--batch-size", "4"
    )

    events = events_after_a_stopped_prune(env, done, stop)
    # Signalled as its second batch began: that batch is finished first, as an exported one is.
    assert events[0]["detail"].startswith("8 events before ")
    assert events[0]["detail"].endswith(f", then stopped by {stop.name}")
    assert len(events) == 1 + 2 + 16 - 8  # the prune, the seed's two changes, the events it left


@STOPS
def test_rotate_stopped_by_a_signal_still_records_what_it_re_encrypted(
    env: dict[str, str], seed: Seed, key_b: str, stop: signal.Signals
) -> None:
    env["MCP_SECRETS_MASTER_KEY"] = f"{key_b},{seed.key_a}"

    done = run_terminated(env, stop, "replace_value", "rotate", "--batch-size", "1")

    event = the_event_of_a_stopped_run(env, done, stop, "rotated")
    # Signalled as its second swap began: that swap is finished first, and counted.
    assert event["detail"].startswith(f"2 re-encrypted to key {key_id(key_b)}, ")
    assert event["detail"].endswith(f", then stopped by {stop.name}")
    assert read_back(env, f"{key_b},{seed.key_a}") == seed.values


# Runs the CLI with a signal sent to the process once the first call of a store method has returned:
# its write committed, and not yet counted by the caller.
# The store method's first call is signalled as it ends ("done") or as it starts ("starts").
SIGNALLED_ONCE = """
import os, signal, sys
from mcp_secrets import cli
from mcp_secrets.store.sqlite import SQLiteStore

stop = getattr(signal, sys.argv[1])
method, when = sys.argv[2], sys.argv[3]
original = getattr(SQLiteStore, method)
calls = []

def signalled_once(self, *args, **kwargs):
    calls.append(method)
    if when == "starts" and len(calls) == 1:
        os.kill(os.getpid(), stop)
    result = original(self, *args, **kwargs)
    if when == "done" and len(calls) == 1:
        os.kill(os.getpid(), stop)
    return result

setattr(SQLiteStore, method, signalled_once)
sys.exit(cli.main(sys.argv[4:]))
"""
ALL_STOPS = pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda stop: stop.name
)


def run_signalled_once_done(
    env: dict[str, str], stop: signal.Signals, method: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return run_program(env, [MCP_SECRETS[0], "-c", SIGNALLED_ONCE, stop.name, method, "done", *args])


def run_signalled_as_it_starts(
    env: dict[str, str], stop: signal.Signals, method: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return run_program(env, [MCP_SECRETS[0], "-c", SIGNALLED_ONCE, stop.name, method, "starts", *args])


@ALL_STOPS
@pytest.mark.parametrize("command", ["rotate", "migrate-legacy"])
def test_a_run_stopped_as_its_event_is_written_still_writes_it(
    env: dict[str, str], seed: Seed, key_b: str, legacy_key: str, *, stop: signal.Signals, command: str
) -> None:
    # The stop lands after the last swap, before the event: every swap made, none of them in the trail.
    env["MCP_SECRETS_MASTER_KEY"] = f"{key_b},{seed.key_a}"
    env["MCP_SECRETS_LEGACY_KEY"] = legacy_key
    store = SQLiteStore(database(env))
    try:
        store.put_secret(*LEGACY[0], legacy_ciphertext(new_canary(), legacy_key), datetime.now(timezone.utc))
    finally:
        store.close()
    rewrapped = 1 if command == "migrate-legacy" else len(SEEDED) + 1

    done = run_signalled_as_it_starts(env, stop, "add_event", command, "--batch-size", "1")

    action = "migrated-legacy" if command == "migrate-legacy" else "rotated"
    event = the_event_of_a_stopped_run(env, done, stop, action)
    assert event["detail"].startswith(f"{rewrapped} re-encrypted to key {key_id(key_b)}, ")


@ALL_STOPS
def test_prune_audit_stopped_as_its_event_is_written_still_writes_it(
    env: dict[str, str], seed: Seed, stop: signal.Signals
) -> None:
    backdate(env, range(25, 41))

    done = run_signalled_as_it_starts(
        env, stop, "add_event", "prune-audit", "--older-than", "30", "--batch-size", "4"
    )

    events = events_after_a_stopped_prune(env, done, stop)
    assert events[0]["detail"].startswith("11 events before ")


@ALL_STOPS
def test_verify_stopped_as_its_event_is_written_still_writes_it(
    env: dict[str, str], seed: Seed, stop: signal.Signals
) -> None:
    # The stop lands after every value was read, before the event: a run that read them all, unrecorded.
    done = run_signalled_as_it_starts(env, stop, "add_event", "verify", "--batch-size", "1")

    event = the_event_of_a_stopped_run(env, done, stop, "verified")
    assert event["detail"] == f"{len(SEEDED)} of {len(SEEDED)} records decrypt, 0 do not"
    assert not any(value in done.stderr + done.stdout for value in seed.values.values())


@ALL_STOPS
def test_prune_audit_stopped_just_after_a_delete_counts_that_batch_in_its_event(
    env: dict[str, str], seed: Seed, stop: signal.Signals
) -> None:
    backdate(env, range(25, 41))

    done = run_signalled_once_done(
        env, stop, "delete_events", "prune-audit", "--older-than", "30", "--batch-size", "4"
    )

    events = events_after_a_stopped_prune(env, done, stop)
    assert events[0]["detail"].startswith("4 events before ")
    assert len(events) == 1 + 2 + 16 - 4  # the prune, the seed's two changes, the events it left


@ALL_STOPS
def test_rotate_stopped_just_after_a_swap_counts_that_record_in_its_event(
    env: dict[str, str], seed: Seed, key_b: str, stop: signal.Signals
) -> None:
    env["MCP_SECRETS_MASTER_KEY"] = f"{key_b},{seed.key_a}"

    done = run_signalled_once_done(env, stop, "replace_value", "rotate", "--batch-size", "1")

    event = the_event_of_a_stopped_run(env, done, stop, "rotated")
    assert event["detail"].startswith(f"1 re-encrypted to key {key_id(key_b)}, ")
    under_b = [value for value in ciphertexts(env).values() if value.startswith(f"v1:{key_id(key_b)}:")]
    assert len(under_b) == 1
    assert read_back(env, f"{key_b},{seed.key_a}") == seed.values


@ALL_STOPS
def test_migrate_legacy_stopped_just_after_a_swap_counts_that_record_in_its_event(
    env: dict[str, str], seed: Seed, legacy_key: str, legacy_values: dict[Record, str], stop: signal.Signals
) -> None:
    env["MCP_SECRETS_LEGACY_KEY"] = legacy_key

    done = run_signalled_once_done(env, stop, "replace_value", "migrate-legacy", "--batch-size", "1")

    event = the_event_of_a_stopped_run(env, done, stop, "migrated-legacy")
    assert event["detail"].startswith(f"1 re-encrypted to key {key_id(seed.key_a)}, ")
    assert len([value for value in ciphertexts(env).values() if not value.startswith("v1:")]) == 1


# Runs the CLI with a signal sent to the process as soon as the first batch is written to the export
# file, before the store deletes it: where a stop would leave that batch in both.
SIGNALLED_ONCE_A_BATCH_IS_EXPORTED = """
import os, signal, sys
from mcp_secrets import cli
from mcp_secrets.store.sqlite import SQLiteStore

stop = getattr(signal, sys.argv[1])
times = int(sys.argv[2])
original = SQLiteStore.delete_events
sent = []

def delete_events(self, before, limit, keep=None):
    def keep_then_signal(events):
        keep(events)
        if not sent:
            sent.append(stop)
            for _ in range(times):
                os.kill(os.getpid(), stop)
    return original(self, before, limit, None if keep is None else keep_then_signal)

SQLiteStore.delete_events = delete_events
sys.exit(cli.main(sys.argv[3:]))
"""


@dataclass
class SignalledExport:
    """A prune exporting in batches of 4, signalled as its first batch is written; and what it left."""

    stopped: subprocess.CompletedProcess[str]
    older: list[dict[str, str]]  # the events older than the cut-off, before the prune
    archive: Path
    prune: tuple[str, ...]

    def exported(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.archive.read_text(encoding="utf-8").splitlines()]

    def left(self, env: dict[str, str]) -> list[dict[str, str]]:
        return [event for event in audit_json(env, "--limit", "1000") if event in self.older]


def signalled_export(
    env: dict[str, str], tmp_path: Path, stop: signal.Signals, times: int
) -> SignalledExport:
    backdate(env, range(25, 41))
    older = [event for event in audit_json(env, "--limit", "1000") if event["action"] == "used"][5:]
    archive = tmp_path / "audit.jsonl"
    prune = ("prune-audit", "--older-than", "30", "--batch-size", "4", "--export", str(archive))
    script = [MCP_SECRETS[0], "-c", SIGNALLED_ONCE_A_BATCH_IS_EXPORTED, stop.name, str(times)]
    return SignalledExport(run_program(env, [*script, *prune]), older, archive, prune)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda stop: stop.name)
def test_prune_audit_export_stopped_by_a_signal_finishes_its_batch_so_a_rerun_writes_each_event_once(
    env: dict[str, str], seed: Seed, tmp_path: Path, stop: signal.Signals
) -> None:
    run = signalled_export(env, tmp_path, stop, times=1)
    exported_then, left_then = len(run.exported()), len(run.left(env))
    recorded = audit_json(env)[0]
    rerun = run_cli(env, *run.prune)

    assert run.stopped.returncode == 128 + stop, run.stopped.stderr
    assert "Traceback" not in run.stopped.stderr
    assert (exported_then, left_then) == (4, len(run.older) - 4)  # the batch in hand, written and deleted
    assert (recorded["action"], recorded["detail"][:16]) == ("audit-pruned", "4 events before ")
    assert rerun.returncode == 0, rerun.stderr
    assert run.exported() == sorted(run.older, key=lambda event: event["at"])


def test_prune_audit_export_stopped_twice_stops_at_once(
    env: dict[str, str], seed: Seed, tmp_path: Path
) -> None:
    # A batch whose delete waits on a busy store can still be stopped: by a second Ctrl-C.
    run = signalled_export(env, tmp_path, signal.SIGINT, times=2)

    assert run.stopped.returncode == 130, run.stopped.stderr
    assert "Traceback" not in run.stopped.stderr
    assert len(run.exported()) == 4
    assert run.left(env) == run.older  # none deleted


# Runs the CLI with its export file deleted as soon as the first batch is written to it, as a clean-up
# job might: what that batch left in the file is copied beside it first, for the test to read.
EXPORT_DELETED_AFTER_ITS_FIRST_BATCH = """
import os, shutil, sys
from mcp_secrets import cli
from mcp_secrets.store.sqlite import SQLiteStore

archive = sys.argv[1]
original = SQLiteStore.delete_events
done = []

def delete_events(self, before, limit, keep=None):
    def keep_then_delete_the_file(events):
        keep(events)
        if not done:
            done.append(archive)
            shutil.copyfile(archive, archive + ".copy")
            os.unlink(archive)
    return original(self, before, limit, None if keep is None else keep_then_delete_the_file)

SQLiteStore.delete_events = delete_events
sys.exit(cli.main(sys.argv[2:]))
"""


def test_prune_audit_whose_export_file_is_deleted_mid_run_stops_and_keeps_the_rest_in_the_store(
    env: dict[str, str], seed: Seed, tmp_path: Path
) -> None:
    # Written on into the deleted file, every later batch went with it: deleted from the store, kept nowhere.
    backdate(env, range(25, 41))
    older = [event for event in audit_json(env, "--limit", "1000") if event["action"] == "used"][5:]
    archive = tmp_path / "audit.jsonl"
    prune = ("prune-audit", "--older-than", "30", "--batch-size", "4", "--export", str(archive))
    script = [MCP_SECRETS[0], "-c", EXPORT_DELETED_AFTER_ITS_FIRST_BATCH, str(archive)]

    done = run_program(env, [*script, *prune])

    assert done.returncode == 1, done.stderr
    assert f"the export file {archive} was deleted during the run" in done.stderr
    assert "Traceback" not in done.stderr
    first = [json.loads(line) for line in Path(f"{archive}.copy").read_text(encoding="utf-8").splitlines()]
    left = [event for event in audit_json(env, "--limit", "1000") if event in older]
    assert len(first) == 4
    assert sorted(first + left, key=lambda event: event["at"]) == sorted(older, key=lambda event: event["at"])
    assert audit_json(env)[0]["detail"].startswith("4 events before ")


# Runs the CLI with the store failing at its second scan: after one batch, as a store lost mid-run.
UNAVAILABLE_ON_SECOND_SCAN = """
import sys
from mcp_secrets import cli
from mcp_secrets.errors import StoreUnavailableError
from mcp_secrets.store.sqlite import SQLiteStore

original = SQLiteStore.scan_secrets
calls = []

def unavailable_on_second_scan(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        raise StoreUnavailableError("the store is unavailable")
    return original(self, *args, **kwargs)

SQLiteStore.scan_secrets = unavailable_on_second_scan
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_error_mid_run_starts_a_line_of_its_own_after_the_progress_bar_on_a_terminal(
    env: dict[str, str], seed: Seed, key_b: str
) -> None:
    import pty  # noqa: PLC0415 - POSIX only: the module does not import on Windows

    env["MCP_SECRETS_MASTER_KEY"] = f"{key_b},{seed.key_a}"
    terminal, stderr = pty.openpty()
    process = subprocess.Popen(
        [MCP_SECRETS[0], "-c", UNAVAILABLE_ON_SECOND_SCAN, "rotate", "--batch-size", "1"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    os.close(stderr)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)

    assert process.wait(timeout=CLI_TIMEOUT) == 1
    assert f"] 1/{len(SEEDED)} records\r\nmcp-secrets: error: the store is unavailable" in shown.decode()


# --- a rotation killed half-way ------------------------------------------------------------------


def fill(env: dict[str, str], master_key: str, count: int) -> dict[Record, str]:
    """``count`` records under ``master_key``, written fast through the store API."""
    encryptor = SecretEncryptor([parse_master_key(master_key)])
    values = {(f"user{n:05d}", "github", "TOKEN"): new_canary() for n in range(count)}
    store = SQLiteStore(database(env))
    try:
        now = datetime.now(timezone.utc)
        for (username, server, key), value in values.items():
            ciphertext = encryptor.encrypt(value, username=username, server=server, key=key)
            store.put_secret(username, server, key, ciphertext, now)
    finally:
        store.close()
    return values


def lines_of(stream: IO[str]) -> Iterator[str]:
    """The stream's lines as they come, each waited for at most CLI_TIMEOUT seconds."""
    arrived: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            arrived.put(line)
        arrived.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while (line := arrived.get(timeout=CLI_TIMEOUT)) is not None:
        yield line.rstrip("\n")


def test_rotation_killed_mid_run_loses_nothing_and_a_rerun_completes_it(tmp_path: Path) -> None:
    key_a, key_b = generate_master_key(), generate_master_key()
    env = isolated_env(tmp_path, MCP_SECRETS_MASTER_KEY=f"{key_b},{key_a}")
    values = fill(env, key_a, MANY)

    process = subprocess.Popen(
        [*MCP_SECRETS, "rotate", "--batch-size", "50"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        progress = next((line for line in lines_of(process.stderr) if PROGRESS.fullmatch(line)), None)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=CLI_TIMEOUT)
        process.stderr.close()

    assert progress is not None, "rotate exited before reporting any progress"
    assert process.returncode == -signal.SIGKILL
    assert read_back(env, f"{key_b},{key_a}") == values
    rewrapped = sum(value.split(":")[1] == key_id(key_b) for value in ciphertexts(env).values())
    assert 0 < rewrapped < MANY, "the kill did not land mid-rotation"

    rerun = run_cli(env, "rotate", "--batch-size", "50")

    assert rerun.returncode == 0, rerun.stderr
    assert summary_of(rerun.stderr) == Summary(
        MANY, "re-encrypted", MANY - rewrapped, key_id(key_b), rewrapped, 0, 0
    )
    assert read_back(env, key_b) == values


# --- a stderr there is no writing to -------------------------------------------------------------


@pytest.mark.parametrize("stderr", ["closed", "full", "reader-gone"])
def test_a_rotation_whose_progress_cannot_be_shown_still_re_encrypts_every_record(
    tmp_path: Path, stderr: str
) -> None:
    # The progress bar is for a person: its first write failing stopped the run after one batch, and said
    # nothing (nowhere to say it). Closed at start (2>&-), a full disk, or a reader that went (| head).
    if stderr == "full" and not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    key_a, key_b = generate_master_key(), generate_master_key()
    env = isolated_env(tmp_path, MCP_SECRETS_MASTER_KEY=f"{key_b},{key_a}")
    values = fill(env, key_a, MANY)
    command = [*MCP_SECRETS, "rotate", "--batch-size", "50"]
    if stderr == "reader-gone":
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stderr is not None
        process.stderr.close()  # before the first batch: Python alone takes longer to start
        out, _ = process.communicate(timeout=CLI_TIMEOUT)
        returncode = process.returncode
    else:
        redirect = "2>&-" if stderr == "closed" else "2>/dev/full"
        done = subprocess.run(
            ["sh", "-c", f'exec "$@" {redirect}', "sh", *command],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        out, returncode = done.stdout, done.returncode

    assert returncode == 0
    assert out == b""  # nothing meant for stderr went to stdout instead
    assert read_back(env, key_b) == values
    audit = run_cli(env, "audit", "--limit", "1")
    assert f"{MANY} re-encrypted to key {key_id(key_b)}, 0 current, 0 failed" in audit.stdout
