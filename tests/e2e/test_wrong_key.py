"""A master key that is not the store's, noticed as `mcp-secrets serve` and `set` start: a warning, once."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path

import pytest
from bson import ObjectId

from _mongo_wire import mongo_wire_server, server_holding
from conftest import new_canary
from e2e.conftest import HTTP_TRANSPORTS, Deployment, isolated_env, run_cli
from e2e.test_rotate_cli import cli_set, cli_set_run, key_id
from mcp_secrets.crypto import SecretEncryptor, generate_master_key, parse_master_key

WARNING = "WARNING mcp_secrets.bootstrap: the store holds records under master key"


def warnings_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if WARNING in line]


def assert_none_shown(text: str, *never: str) -> None:
    for value in never:
        shown = value in text  # a bare bool: a failure prints neither
        assert not shown


@pytest.fixture
def stored(tmp_path: Path) -> tuple[dict[str, str], str, str]:
    """An isolated environment whose store holds two secrets under its master key; the key and a value."""
    env = isolated_env(tmp_path)
    value = new_canary()
    cli_set(env, "alice", "github", "TOKEN", value)
    cli_set(env, "bob", "slack", "TOKEN", value)
    return env, env["MCP_SECRETS_MASTER_KEY"], value


@pytest.mark.anyio
async def test_serve_on_stdio_with_a_wrong_master_key_warns_once_naming_key_ids_only(
    stored: tuple[dict[str, str], str, str], tmp_path: Path
) -> None:
    env, right, value = stored
    wrong = generate_master_key()
    deployment = Deployment("stdio", {**env, "MCP_SECRETS_MASTER_KEY": wrong}, tmp_path / "server.log")
    later = new_canary()

    async with deployment.connect("alice") as client:
        listed = await client.call_tool("list_secret_keys", {})
        saved = await client.call_tool("set_secret", {"server": "github", "key": "LATER", "value": later})

    assert not listed.is_error
    assert not saved.is_error  # a warning, not a refusal: the README's recovery from a lost key needs this
    [warning] = warnings_in(deployment.log())
    assert f"master key {key_id(right)}, which is not configured" in warning
    assert f"MCP_SECRETS_MASTER_KEY holds {key_id(wrong)}" in warning
    assert "run `mcp-secrets verify` and check MCP_SECRETS_MASTER_KEY" in warning
    assert_none_shown(deployment.log() + str(listed) + str(saved), right, wrong, value, later)


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_serve_over_http_with_a_wrong_master_key_warns_once_as_it_starts(
    stored: tuple[dict[str, str], str, str],
    tmp_path: Path,
    start_server: Callable[..., AbstractContextManager[Deployment]],
    transport: str,
) -> None:
    env, right, value = stored
    wrong = generate_master_key()

    with start_server({**env, "MCP_SECRETS_MASTER_KEY": wrong}, transport, tmp_path / "server.log") as server:
        log = server.log()

    [warning] = warnings_in(log)
    assert f"master key {key_id(right)}, which is not configured" in warning
    assert_none_shown(log, right, wrong, value)


def test_set_with_a_wrong_master_key_warns_and_stores_under_it(
    stored: tuple[dict[str, str], str, str],
) -> None:
    env, right, value = stored
    wrong = generate_master_key()
    later = new_canary()

    done = cli_set_run({**env, "MCP_SECRETS_MASTER_KEY": wrong}, later, "github", "LATER")

    assert done.returncode == 0, done.stderr
    [warning] = warnings_in(done.stderr)
    assert f"master key {key_id(right)}, which is not configured" in warning
    assert f"encrypted under {key_id(wrong)}" in warning
    assert_none_shown(done.stdout + done.stderr, right, wrong, value, later)


# The keys each process is given, by name ("RIGHT" wrote the store, "NEW" is a rotation's new key), and the
# keys of the records the store holds, written before it starts.
KEY_SETS = {
    "the right key": (["RIGHT"], ["RIGHT"]),
    "rotation: the new key readable first": (["RIGHT"], ["RIGHT", "NEW"]),
    "rotation: the new key put first, half re-encrypted": (["RIGHT", "NEW"], ["NEW", "RIGHT"]),
    "an empty store": ([], ["NEW"]),
}


def _rotation_env(tmp_path: Path, written: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """An environment whose store holds records under the keys ``written`` names; the keys by name."""
    env = isolated_env(tmp_path)
    keys = {"RIGHT": env["MCP_SECRETS_MASTER_KEY"], "NEW": generate_master_key()}
    for number, name in enumerate(written):
        cli_set({**env, "MCP_SECRETS_MASTER_KEY": keys[name]}, f"user{number}", "github", "TOKEN", "value")
    return env, keys


@pytest.mark.anyio
@pytest.mark.parametrize(("written", "configured"), KEY_SETS.values(), ids=KEY_SETS.keys())
async def test_serve_on_stdio_warns_of_nothing_while_the_keys_are_right(
    tmp_path: Path, written: list[str], configured: list[str]
) -> None:
    env, keys = _rotation_env(tmp_path, written)
    given = ",".join(keys[name] for name in configured)
    deployment = Deployment("stdio", {**env, "MCP_SECRETS_MASTER_KEY": given}, tmp_path / "server.log")

    async with deployment.connect("alice") as client:
        assert not (await client.call_tool("list_secret_keys", {})).is_error

    assert "serving stdio" in deployment.log()
    assert warnings_in(deployment.log()) == []


@pytest.mark.parametrize(("written", "configured"), KEY_SETS.values(), ids=KEY_SETS.keys())
def test_set_warns_of_nothing_while_the_keys_are_right(
    tmp_path: Path, written: list[str], configured: list[str]
) -> None:
    env, keys = _rotation_env(tmp_path, written)
    given = ",".join(keys[name] for name in configured)

    done = cli_set_run({**env, "MCP_SECRETS_MASTER_KEY": given}, "value", "github", "LATER")

    assert done.returncode == 0, done.stderr
    assert warnings_in(done.stderr) == []


COMMANDS = {
    "list": (["list", "--user", "alice"], False),  # needs no key: it reads none
    "delete": (["delete", "github", "TOKEN", "--user", "alice"], False),
    "verify": (["verify"], False),  # names each record a configured key does not decrypt
    "rotate": (["rotate", "--dry-run"], False),  # names each record under a key not configured
    "migrate-legacy": (["migrate-legacy", "--dry-run"], True),  # would re-encrypt under the wrong key unsaid
}


@pytest.mark.parametrize(("args", "warns"), COMMANDS.values(), ids=COMMANDS.keys())
def test_with_a_wrong_master_key_only_the_commands_that_would_not_say_so_otherwise_warn(
    stored: tuple[dict[str, str], str, str], args: list[str], warns: bool
) -> None:
    env, right, value = stored
    wrong = generate_master_key()

    done = run_cli({**env, "MCP_SECRETS_MASTER_KEY": wrong}, *args)

    assert len(warnings_in(done.stderr)) == warns, done.stderr
    if args[0] in ("verify", "rotate"):
        assert f"encrypted with master key {key_id(right)}, which is not configured" in done.stderr
    assert_none_shown(done.stdout + done.stderr, right, wrong, value)


@pytest.mark.parametrize("configured", ["wrong", "right"])
def test_set_on_mongodb_warns_of_a_master_key_that_is_not_the_stores(tmp_path: Path, configured: str) -> None:
    right, wrong = generate_master_key(), generate_master_key()
    value = new_canary()
    ciphertext = SecretEncryptor([parse_master_key(right)]).encrypt(
        value, username="alice", server="github", key="TOKEN"
    )
    now = datetime.now(timezone.utc)
    record = {
        "_id": ObjectId(),
        "username": "alice",
        "server": "github",
        "key": "TOKEN",
        "value": ciphertext,
        "created_at": now,
        "updated_at": now,
    }
    key = wrong if configured == "wrong" else right
    with mongo_wire_server(server_holding({"user_secrets": [record]})) as port:
        env = isolated_env(
            tmp_path,
            MCP_SECRETS_DATABASE_URL=f"mongodb://127.0.0.1:{port}/db",
            MCP_SECRETS_MASTER_KEY=key,
        )
        done = cli_set_run(env, new_canary(), "github", "LATER")

    assert done.returncode == 0, done.stderr
    warnings = warnings_in(done.stderr)
    assert len(warnings) == (configured == "wrong"), done.stderr
    if warnings:
        assert f"master key {key_id(right)}, which is not configured" in warnings[0]
    assert_none_shown(done.stdout + done.stderr, right, wrong, value, ciphertext)
