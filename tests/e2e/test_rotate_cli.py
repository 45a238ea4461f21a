"""`mcp-secrets rotate`, `migrate-legacy` and `audit`, run for real as subprocesses on an isolated store."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import pytest

from conftest import new_canary
from e2e.conftest import CLI_TIMEOUT, MCP_SECRETS, isolated_env, run_cli
from mcp_secrets import Settings, open_secrets
from mcp_secrets.crypto import SecretEncryptor, generate_master_key, key_id_for, parse_master_key
from mcp_secrets.store.sqlite import SQLiteStore
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


def cli_set(env: dict[str, str], username: str, server: str, key: str, value: str) -> None:
    """``mcp-secrets set SERVER KEY --user USERNAME`` with the value on stdin, as a script would."""
    done = subprocess.run(
        [*MCP_SECRETS, "set", server, key, "--user", username],
        env=env,
        input=value + "\n",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
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
