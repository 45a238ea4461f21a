"""Start-up: where the master key comes from, first-run generation, and what the summary says."""

from __future__ import annotations

import logging
import os
import secrets as _random
import select
import signal
import stat
import threading
from datetime import datetime, timezone
from pathlib import Path

import dns.resolver
import pytest
from pydantic import SecretStr

from conftest import assert_not_leaked
from mcp_secrets.bootstrap import (
    MasterKeys,
    build_secrets,
    describe_store,
    load_master_keys,
    open_configured_store,
    open_secrets,
    require_explicit_key,
)
from mcp_secrets.config import Settings
from mcp_secrets.crypto import SecretEncryptor, generate_master_key, key_id_for, parse_master_key
from mcp_secrets.errors import ConfigurationError, StoreUnavailableError
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import SecretStore
from test_crypto import legacy_ciphertext


def settings_in(tmp_path: Path, **fields: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", config_dir=tmp_path / "config", **fields)  # type: ignore[arg-type]


def test_several_keys_in_the_environment_first_writes_all_read(tmp_path: Path) -> None:
    old, new = generate_master_key(), generate_master_key()

    keys = load_master_keys(settings_in(tmp_path, master_key=SecretStr(f"{new}, {old}")))

    assert keys.keys == [parse_master_key(new), parse_master_key(old)]
    assert keys.source == "MCP_SECRETS_MASTER_KEY"
    assert SecretEncryptor(keys.keys).active_key_id == key_id_for(parse_master_key(new))


def test_a_key_file_holds_one_key_a_line_with_comments(tmp_path: Path) -> None:
    new, old = generate_master_key(), generate_master_key()
    key_file = tmp_path / "keys"
    key_file.write_text(f"# rotated 2026-11-29\n{new}\n\n{old}\n")
    key_file.chmod(0o600)

    keys = load_master_keys(settings_in(tmp_path, master_key_file=key_file))

    assert keys.keys == [parse_master_key(new), parse_master_key(old)]
    assert str(key_file) in keys.source


def test_a_key_in_the_environment_and_a_key_file_together_are_refused_without_quoting_either(
    tmp_path: Path,
) -> None:
    in_environment, in_file = generate_master_key(), generate_master_key()
    key_file = tmp_path / "keys"
    key_file.write_text(f"{in_file}\n")
    key_file.chmod(0o600)
    settings = settings_in(tmp_path, master_key=SecretStr(in_environment), master_key_file=key_file)

    # Editing one of two places that may hold the keys, and finding the other one used, is how a
    # rotation goes wrong: say which two, and use neither.
    with pytest.raises(ConfigurationError, match="both set") as refused:
        load_master_keys(settings)

    assert "MCP_SECRETS_MASTER_KEY_FILE" in str(refused.value)
    assert in_environment not in str(refused.value)
    assert in_file not in str(refused.value)


def test_a_key_file_others_can_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = generate_master_key()
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o644)

    with caplog.at_level(logging.WARNING):
        load_master_keys(settings_in(tmp_path, master_key_file=key_file))

    assert "readable by other users" in caplog.text
    assert key not in caplog.text


@pytest.mark.parametrize("content", ["", "# nothing here\n", "too-short\n"])
def test_a_key_file_without_a_valid_key_is_refused_without_quoting_it(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(content)

    with pytest.raises(ConfigurationError) as raised:
        load_master_keys(settings_in(tmp_path, master_key_file=key_file))

    assert str(key_file) in str(raised.value)
    assert "too-short" not in str(raised.value)


def test_a_key_file_of_raw_bytes_is_refused_naming_it_without_quoting_a_byte(tmp_path: Path) -> None:
    raw = b"\xca" + _random.token_bytes(31)  # as `head -c 32 /dev/urandom > key` writes: not UTF-8
    key_file = tmp_path / "key"
    key_file.write_bytes(raw)

    with pytest.raises(ConfigurationError, match="not text") as raised:
        load_master_keys(settings_in(tmp_path, master_key_file=key_file))

    assert str(key_file) in str(raised.value)
    assert_not_leaked(raised.value, "0xca", "\\xca", raw.hex()[:8])


def test_a_key_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # As Windows editors save UTF-8 text.
    key = generate_master_key()
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xef\xbb\xbf" + key.encode() + b"\r\n")

    assert load_master_keys(settings_in(tmp_path, master_key_file=key_file)).keys == [parse_master_key(key)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_key_file_that_is_a_named_pipe_is_refused_rather_than_waited_on(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    os.mkfifo(key_file, 0o600)

    with pytest.raises(ConfigurationError, match="not a regular file"):
        load_master_keys(settings_in(tmp_path, master_key_file=key_file))


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_first_run_under_a_umask_that_masks_everything_still_makes_a_key_file_it_can_read(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path)
    previous = os.umask(0o777)
    try:
        first = load_master_keys(settings, generate=True)
    finally:
        os.umask(previous)

    key_file = tmp_path / "config" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_master_keys(settings).keys == first.keys


def test_a_missing_key_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_master_keys(settings_in(tmp_path, master_key_file=tmp_path / "nowhere"))


def test_first_run_on_the_embedded_store_generates_a_private_key_file_in_the_config_dir(
    tmp_path: Path,
) -> None:
    settings = settings_in(tmp_path)

    first = load_master_keys(settings, generate=True)
    second = load_master_keys(settings, generate=True)

    key_file = tmp_path / "config" / "master.key"
    assert first.generated
    assert not second.generated
    assert first.keys == second.keys
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not any((tmp_path / "data").glob("*.key"))


def test_two_first_runs_at_once_both_use_the_one_key_file_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when a client starts several stdio servers at once on a new machine: the first run is held
    # while it makes its key, and the second runs from start to end meanwhile.
    settings = settings_in(tmp_path)
    first_making_its_key, second_done = threading.Event(), threading.Event()

    def held_generate_master_key() -> str:
        key = generate_master_key()
        if not first_making_its_key.is_set():
            first_making_its_key.set()
            assert second_done.wait(30)
        return key

    monkeypatch.setattr("mcp_secrets.bootstrap.generate_master_key", held_generate_master_key)
    outcome: list[MasterKeys | Exception] = []
    first_run = threading.Thread(target=lambda: outcome.append(_loaded_or_raised(settings)))
    first_run.start()
    assert first_making_its_key.wait(30)
    try:
        second = _loaded_or_raised(settings)
    finally:
        second_done.set()
        first_run.join(30)

    [first] = outcome
    assert isinstance(first, MasterKeys), first
    assert isinstance(second, MasterKeys), second
    assert first.keys == second.keys == load_master_keys(settings).keys
    assert (first.generated, second.generated) == (False, True)
    assert stat.S_IMODE((tmp_path / "config" / "master.key").stat().st_mode) == 0o600
    assert [path.name for path in (tmp_path / "config").iterdir()] == ["master.key"]


def test_a_generated_key_file_is_on_disk_before_the_first_run_goes_on(
    tmp_path: Path, synced_inodes: list[int]
) -> None:
    # Else a power cut soon after could leave the file empty while the database, which syncs
    # itself, keeps the secrets encrypted under its key.

    load_master_keys(settings_in(tmp_path), generate=True)

    key_file = tmp_path / "config" / "master.key"
    assert key_file.stat().st_ino in synced_inodes  # its key
    assert key_file.parent.stat().st_ino in synced_inodes  # its name in the directory
    assert synced_inodes.index(key_file.stat().st_ino) < synced_inodes.index(key_file.parent.stat().st_ino)


def test_the_directories_a_first_run_makes_for_its_key_file_are_on_disk_too(
    tmp_path: Path, synced_inodes: list[int]
) -> None:
    # A new directory's name is in its parent: unsynced, a power cut could take the directory, and the key
    # file with it, while the database kept the secrets it encrypted.
    config_dir = tmp_path / "home" / ".config" / "mcp-secrets"

    load_master_keys(Settings(data_dir=tmp_path / "data", config_dir=config_dir), generate=True)

    for directory in (tmp_path, tmp_path / "home", tmp_path / "home" / ".config", config_dir):
        assert directory.stat().st_ino in synced_inodes, directory


def test_first_run_on_a_file_system_without_hard_links_writes_the_key_file_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hard_links(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("mcp_secrets.bootstrap.os.link", no_hard_links)

    generated = load_master_keys(settings_in(tmp_path), generate=True)

    assert generated.generated
    assert load_master_keys(settings_in(tmp_path)).keys == generated.keys
    key_file = tmp_path / "config" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [path.name for path in key_file.parent.iterdir()] == ["master.key"]


def _loaded_or_raised(settings: Settings) -> MasterKeys | Exception:
    try:
        return load_master_keys(settings, generate=True)
    except Exception as exc:  # reported by the test
        return exc


def test_no_key_is_generated_over_a_store_that_already_holds_secrets(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    store = open_configured_store(settings)
    store.put_secret("alice", "github", "TOKEN", "v1:00000000:AAAA", datetime.now(timezone.utc))

    with pytest.raises(ConfigurationError, match="already holds secrets"):
        load_master_keys(settings, store, generate=True)
    assert not (tmp_path / "config" / "master.key").exists()
    store.close()


def test_mongodb_needs_an_explicit_master_key(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, database_url=SecretStr("mongodb://db.example:27017/team"))

    with pytest.raises(ConfigurationError, match="explicit master key"):
        require_explicit_key(settings)
    with pytest.raises(ConfigurationError, match="explicit master key"):
        load_master_keys(settings, generate=True)


def test_the_library_entry_point_never_generates_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no master key is configured"):
        open_secrets(settings_in(tmp_path))
    assert not (tmp_path / "config" / "master.key").exists()


def test_the_library_entry_point_reads_what_the_server_wrote(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, master_key=SecretStr(generate_master_key()))
    store = open_configured_store(settings)
    secrets, _ = build_secrets(settings, store)
    secrets.set_secret("alice", "github", "TOKEN", "from the server")
    store.close()

    library = open_secrets(settings)

    assert library.get_secrets("alice", "github") == {"TOKEN": "from the server"}
    library.close()
    library.store.close()


@pytest.mark.parametrize("named_by", ["default path", "database URL"])
def test_the_library_entry_point_can_refuse_a_missing_store_instead_of_creating_an_empty_one(
    tmp_path: Path, named_by: str
) -> None:
    # A mistyped path would otherwise read as a store holding no secrets (the CLI's reading commands refuse).
    url = None if named_by == "default path" else SecretStr(f"sqlite:///{tmp_path / 'mistyped.db'}")
    settings = settings_in(tmp_path, master_key=SecretStr(generate_master_key()), database_url=url)

    with pytest.raises(StoreUnavailableError, match="there is no SQLite store at"):
        open_secrets(settings, create=False)

    assert not (tmp_path / "mistyped.db").exists()
    assert not settings.default_database_path.exists()


def test_the_library_entry_point_told_not_to_create_opens_a_store_that_exists(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, master_key=SecretStr(generate_master_key()))
    first = open_secrets(settings)  # the default creates it
    first.set_secret("alice", "github", "TOKEN", "stored before")
    first.close()
    first.store.close()

    library = open_secrets(settings, create=False)

    assert library.get_secrets("alice", "github") == {"TOKEN": "stored before"}
    library.close()
    library.store.close()


def test_the_store_summary_never_shows_database_credentials(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, database_url=SecretStr("mongodb://admin:hunter22@db.example:27017/team"))

    summary = describe_store(settings)

    assert summary == "MongoDB db.example:27017, database team"
    assert "hunter22" not in summary
    assert repr(settings).count("hunter22") == 0


def test_the_store_summary_of_a_srv_url_looks_nothing_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # serve prints it once the store is open, whose opening has just looked the SRV record up: a DNS fault
    # at this moment stopped a server that was ready, with a traceback.
    password = _random.token_urlsafe(16)
    url = f"mongodb+srv://admin:{password}@cluster0.example.net/team?retryWrites=true"
    settings = settings_in(tmp_path, database_url=SecretStr(url))

    def resolve(*_args: object, **_kwargs: object) -> object:
        raise dns.resolver.NXDOMAIN

    monkeypatch.setattr("pymongo.synchronous.srv_resolver._resolve", resolve)

    summary = describe_store(settings)

    assert summary == "MongoDB cluster0.example.net (SRV), database team"
    assert (password in summary) is False


def test_the_library_entry_point_refuses_mongodb_without_a_master_key_before_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_connection(_: Settings) -> object:
        raise AssertionError("the store was opened before the settings were checked")

    monkeypatch.setattr("mcp_secrets.bootstrap.open_configured_store", no_connection)
    settings = settings_in(tmp_path, database_url=SecretStr("mongodb://127.0.0.1:1/team"))

    with pytest.raises(ConfigurationError, match="explicit master key"):
        open_secrets(settings)


def test_the_library_entry_point_reports_a_malformed_setting_as_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, canary: str
) -> None:
    monkeypatch.setenv("MCP_SECRETS_SQLITE_BUSY_TIMEOUT", canary)

    with pytest.raises(ConfigurationError, match="sqlite_busy_timeout") as raised:
        open_secrets()

    assert_not_leaked(raised.value, canary)


# The settings a malformed value can make invalid: numbers, choices, flags, and paths (by "~name/…" of
# no such user); the others take any text.
MALFORMED_SETTINGS = [
    *("port", "sqlite_busy_timeout", "max_secrets_per_user", "max_sessions_per_user", "entry_wait_seconds"),
    *("entry_link_minutes", "shutdown_grace_seconds", "request_timeout_seconds", "gateway_max_connections"),
    *("gateway_idle_seconds", "gateway_start_seconds", "max_listen_streams_per_user", "transport"),
    *("stateless_http", "log_level", "data_dir", "config_dir", "master_key_file", "servers"),
]
ANY_TEXT_SETTINGS = [
    *("master_key", "legacy_key", "database_url", "user", "host", "public_url", "allowed_hosts"),
    *("allowed_origins", "jwks_url", "issuer", "audience", "username_claim"),
]


def test_every_setting_is_tried_malformed_or_takes_any_text() -> None:
    assert sorted(MALFORMED_SETTINGS + ANY_TEXT_SETTINGS) == sorted(Settings.model_fields)


@pytest.mark.parametrize("setting", MALFORMED_SETTINGS)
def test_a_malformed_setting_is_named_by_the_environment_variable_that_holds_it(
    monkeypatch: pytest.MonkeyPatch, canary: str, setting: str
) -> None:
    variable = f"MCP_SECRETS_{setting.upper()}"
    monkeypatch.setenv(variable, f"~{canary}/x" if setting.endswith(("_dir", "_file", "servers")) else canary)

    with pytest.raises(ConfigurationError) as raised:
        open_secrets()

    assert variable in str(raised.value)
    assert_not_leaked(raised.value, canary)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_a_service_forked_after_open_secrets_uses_the_sqlite_store_in_the_child(tmp_path: Path) -> None:
    # As a pre-forking server does (gunicorn --preload): open the library, then fork workers. Here a
    # thread of the parent holds the store at the fork, as the use writer may: the child must not
    # wait for a lock nobody in it will ever release, nor share the parent's SQLite connection.
    canary, later = _random.token_urlsafe(24), _random.token_urlsafe(24)
    library = open_secrets(settings_in(tmp_path, master_key=SecretStr(generate_master_key())))
    library.set_secret("alice", "github", "GITHUB_TOKEN", canary)
    holding, release = threading.Event(), threading.Event()
    holder = threading.Thread(
        target=library.store._run,  # holds the store, as a write in progress does
        args=(lambda _connection: (holding.set(), release.wait()),),
    )
    holder.start()
    holding.wait()
    readable, writable = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report one byte, never the value, then leave without running cleanups
        outcome = b"?"
        try:
            values = library.get_secrets("alice", "github")
            library.set_secret("alice", "github", "LATER", later)
            library.close()
            outcome = b"1" if values == {"GITHUB_TOKEN": canary} else b"0"
        finally:
            os.write(writable, outcome)
            os._exit(0)
    os.close(writable)
    release.set()
    holder.join()
    ready, _, _ = select.select([readable], [], [], 120)  # a child stuck on the lock never answers
    if not ready:
        os.kill(child, signal.SIGKILL)
    outcome = os.read(readable, 1) if ready else b""
    os.waitpid(child, 0)
    os.close(readable)

    assert outcome == b"1"
    assert library.get_secrets("alice", "github") == {"GITHUB_TOKEN": canary, "LATER": later}
    library.close()
    library.store.close()


# --- a master key that is not the store's -------------------------------------------------------

RECORDS = [(f"user{number}", "github", "TOKEN") for number in range(8)]  # written in this, the index's, order


def _key_id(key: str) -> str:
    return key_id_for(parse_master_key(key))


def _store_under(store: SecretStore, keys: list[str], value: str) -> None:
    """``RECORDS`` in order, the n-th encrypted under ``keys[n % len(keys)]``."""
    for number, (username, server, name) in enumerate(RECORDS):
        writer = Secrets(store, SecretEncryptor([parse_master_key(keys[number % len(keys)])]))
        writer.set_secret(username, server, name, value)
        writer.close()


def _key_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "mcp_secrets.bootstrap" and "mcp-secrets verify" in record.getMessage()
    ]


@pytest.mark.parametrize("configured_by", ["environment", "key file"])
def test_a_wrong_master_key_on_a_store_holding_secrets_is_warned_of_once_by_key_ids_only(
    store: SecretStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, canary: str, configured_by: str
) -> None:
    right, wrong = generate_master_key(), generate_master_key()
    _store_under(store, [right], canary)
    if configured_by == "environment":
        settings, source = settings_in(tmp_path, master_key=SecretStr(wrong)), "MCP_SECRETS_MASTER_KEY"
    else:
        key_file = tmp_path / "master.key"
        key_file.write_text(wrong + "\n")
        key_file.chmod(0o600)
        settings, source = settings_in(tmp_path, master_key_file=key_file), str(key_file)

    with caplog.at_level(logging.WARNING):
        secrets, _ = build_secrets(settings, store)
    secrets.close()

    [warning] = _key_warnings(caplog)
    assert f"master key {_key_id(right)}, " in warning
    assert _key_id(wrong) in warning
    assert source in warning
    for never_shown in (right, wrong, canary):
        assert never_shown not in caplog.text


KEY_SETS = {
    "the right key": (["OLD"], ["OLD"]),
    "rotation: the new key readable everywhere first": (["OLD"], ["OLD", "NEW"]),
    "rotation: the new key put first": (["OLD"], ["NEW", "OLD"]),
    "rotation: a replica reading both, another writing under the new key": (["OLD", "NEW"], ["OLD", "NEW"]),
    "rotation: half re-encrypted": (["NEW", "OLD"], ["NEW", "OLD"]),
    "rotation: done, the old key still configured": (["NEW"], ["NEW", "OLD"]),
    "an empty store": ([], ["OLD"]),
}


@pytest.mark.parametrize(("written", "configured"), KEY_SETS.values(), ids=KEY_SETS.keys())
def test_no_warning_while_every_record_read_is_under_a_configured_key(
    store: SecretStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    written: list[str],
    configured: list[str],
) -> None:
    keys = {"OLD": generate_master_key(), "NEW": generate_master_key()}
    if written:
        _store_under(store, [keys[name] for name in written], "value")
    settings = settings_in(tmp_path, master_key=SecretStr(",".join(keys[name] for name in configured)))

    with caplog.at_level(logging.WARNING):
        secrets, _ = build_secrets(settings, store)
    secrets.close()

    assert _key_warnings(caplog) == []


def test_records_of_the_legacy_format_or_of_no_format_have_no_key_id_to_warn_of(
    store: SecretStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A store of the original design, about to be migrated: no record is under any master key yet.
    now = datetime.now(timezone.utc)
    store.put_secret("alice", "github", "TOKEN", legacy_ciphertext("value", "the legacy key"), now)
    store.put_secret("bob", "github", "TOKEN", "not a ciphertext", now)
    settings = settings_in(
        tmp_path, master_key=SecretStr(generate_master_key()), legacy_key=SecretStr("the legacy key")
    )

    with caplog.at_level(logging.WARNING):
        secrets, _ = build_secrets(settings, store)
    secrets.close()

    assert _key_warnings(caplog) == []


@pytest.mark.parametrize("end", ["first", "last"])
def test_a_record_under_a_key_not_configured_at_either_end_of_the_store_is_warned_of(
    store: SecretStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, end: str
) -> None:
    # A store already under two keys: the one configured, and one that wrote its first or newest record.
    right, other = generate_master_key(), generate_master_key()
    _store_under(store, [right], "value")
    username, server, name = RECORDS[0 if end == "first" else -1]
    writer = Secrets(store, SecretEncryptor([parse_master_key(other)]))
    writer.set_secret(username, server, name, "value")
    writer.close()

    with caplog.at_level(logging.WARNING):
        secrets, _ = build_secrets(settings_in(tmp_path, master_key=SecretStr(right)), store)
    secrets.close()

    [warning] = _key_warnings(caplog)
    assert f"master key {_key_id(other)}, " in warning


def test_the_library_entry_point_warns_of_a_master_key_that_is_not_the_stores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, canary: str
) -> None:
    right, wrong = generate_master_key(), generate_master_key()
    written = open_secrets(settings_in(tmp_path, master_key=SecretStr(right)))
    written.set_secret("alice", "github", "TOKEN", canary)
    written.close()
    written.store.close()

    with caplog.at_level(logging.WARNING):
        library = open_secrets(settings_in(tmp_path, master_key=SecretStr(wrong)))
    library.close()
    library.store.close()

    [warning] = _key_warnings(caplog)
    assert _key_id(right) in warning
    assert _key_id(wrong) in warning
    for never_shown in (right, wrong, canary):
        assert never_shown not in caplog.text
