"""Every `mcp-secrets` command, run for real as a subprocess with settings confined to tmp_path."""

from __future__ import annotations

import argparse
import base64
import errno
import gc
import getpass
import io
import json
import os
import re
import secrets as _random
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import mcp_secrets
from _mongo_wire import (
    PRIMARY_HELLO,
    WTIMEOUT,
    duplicate_key,
    mongo_wire_server,
    server_holding,
    server_losing_writes,
    server_refusing_duplicates,
)
from conftest import (
    as_an_ordinary_process,
    assert_no_fragment_of,
    assert_not_leaked,
    command_parsers,
    isolated_env,
    new_canary,
)
from mcp_secrets import cli, terminal
from mcp_secrets.bootstrap import MAX_KEY_FILE_BYTES
from mcp_secrets.cli import _getpass, _read_value, build_parser
from mcp_secrets.crypto import generate_master_key
from mcp_secrets.errors import InvalidInputError
from mcp_secrets.store import UNCONFIRMED, AuditEvent, SecretUse
from mcp_secrets.store.sqlite import SQLiteStore
from mcp_secrets.tokens import TOKEN_PREFIX

TOKEN = re.compile(r"mcps_([0-9a-f]{10})_[A-Za-z0-9_-]{43}")
EXIT_CONFIGURATION = 2
UVICORN_STARTUP_FAILURE = 3  # the exit status of a serve that could not start listening, whichever uvicorn


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment minus any MCP_SECRETS_*, with data and config dirs in tmp_path."""
    return isolated_env(tmp_path)


def mcp_secrets_cli(
    env: dict[str, str],
    *args: str,
    command: tuple[str, ...] = (),
    cwd: Path | None = None,
    prefix: tuple[str, ...] = (),
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the command (``python -m mcp_secrets`` unless ``command`` says otherwise), after ``prefix`` (as
    ``as_an_ordinary_process`` gives it); stdin is ``stdin``'s text, or closed."""
    return subprocess.run(
        [*prefix, *(command or (sys.executable, "-m", "mcp_secrets")), *args],
        env=env,
        cwd=cwd,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,  # with input, subprocess makes the pipe
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def created_token(env: dict[str, str], username: str, *options: str) -> tuple[str, str]:
    """``token create USERNAME [OPTIONS]``: the token and its id."""
    done = mcp_secrets_cli(env, "token", "create", username, *options)
    assert done.returncode == 0, done.stderr
    match = TOKEN.fullmatch(done.stdout.strip())
    assert match, done.stdout
    return match.group(0), match.group(1)


# What serving needs and no other command does: the MCP SDK, the web stack, and the modules built on them.
SERVING_ONLY = (
    "mcp",
    "mcp_types",
    "starlette",
    "uvicorn",
    "sse_starlette",
    "httpx",
    "jwt",
)
SERVING_MODULES = ("mcp_secrets.app", "mcp_secrets.web", "mcp_secrets.gateway", "mcp_secrets.serving")


def modules_loaded(env: dict[str, str], *args: str, stdin: bytes = b"") -> tuple[int, set[str]]:
    """Run a command (or ``-c CODE``) with ``-X importtime``: its exit status and every module it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *(args if args[0] == "-c" else ("-m", "mcp_secrets", *args))],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    lines = done.stderr.decode(errors="replace").splitlines()
    return done.returncode, {
        line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")
    }


def serving_modules(modules: set[str]) -> set[str]:
    """Those of ``modules`` that only serving should load."""
    return {
        module
        for module in modules
        if module.split(".")[0] in SERVING_ONLY or module.startswith(SERVING_MODULES)
    }


def test_the_commands_that_do_not_serve_load_neither_the_sdk_nor_the_web_stack(
    env: dict[str, str], canary: str
) -> None:
    # They start in a quarter of the time: the SDK and the web stack are most of a start.
    assert serving_modules(modules_loaded(env, "-c", "import mcp_secrets.serving")[1]) >= {"mcp", "uvicorn"}
    commands: list[tuple[str, ...]] = [
        ("--help",),
        ("keygen",),
        ("set", "github", "TOKEN", "--user", "alice"),
        ("list", "--user", "alice"),
        ("audit",),
        ("token", "create", "alice"),
        ("token", "list"),
        ("rotate", "--dry-run"),
        ("prune-audit", "--older-than", "1", "--dry-run"),
        ("delete", "github", "TOKEN", "--user", "alice"),
    ]
    loaded = {}
    for command in commands:
        status, modules = modules_loaded(env, *command, stdin=canary.encode())
        loaded[command] = (status, sorted(serving_modules(modules)))

    assert loaded == {command: (0, []) for command in commands}


def test_console_script_prints_the_version(env: dict[str, str]) -> None:
    script = Path(sys.executable).with_name("mcp-secrets")

    done = mcp_secrets_cli(env, "--version", command=(str(script),))

    assert done.returncode == 0
    assert done.stdout.strip() == f"mcp-secrets {mcp_secrets.__version__}"


def test_python_dash_m_help_lists_the_commands(env: dict[str, str]) -> None:
    done = mcp_secrets_cli(env, "--help")

    assert done.returncode == 0
    for command in ("serve", "keygen", "token"):
        assert command in done.stdout


def test_every_argument_of_every_command_has_a_help_text() -> None:
    silent = [
        f"{command} {action.dest}"
        for command, parser in command_parsers(build_parser()).items()
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]

    assert silent == []


def test_token_revoke_help_says_it_takes_the_whole_token_too(env: dict[str, str]) -> None:
    listed = mcp_secrets_cli(env, "token", "--help")
    own = mcp_secrets_cli(env, "token", "revoke", "--help")

    assert [listed.returncode, own.returncode] == [0, 0]
    assert "revoke a token by its id, or by the whole token" in " ".join(listed.stdout.split())
    assert "ID the token's id (as `token list` shows it), or the whole token" in " ".join(own.stdout.split())


def test_serve_help_names_the_variable_each_default_comes_from(env: dict[str, str]) -> None:
    """The environment sets these defaults: `--port` said "default 8000" while MCP_SECRETS_PORT said 9000."""
    done = mcp_secrets_cli({**env, "MCP_SECRETS_PORT": "9000"}, "serve", "--help")

    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    for variable, default in (
        ("TRANSPORT", "stdio"),
        ("HOST", "127.0.0.1"),
        ("PORT", "8000"),
        ("USERNAME_CLAIM", "sub"),
        ("LOG_LEVEL", "INFO"),
    ):
        assert f"(default MCP_SECRETS_{variable}, else {default})" in text


def test_serve_help_names_the_variable_behind_every_option() -> None:
    """Every setting is an environment variable that the option overrides (README, Configuration)."""
    serve = command_parsers(build_parser())["mcp-secrets serve"]

    unnamed = [
        action.option_strings[0]
        for action in serve._actions
        if action.dest != "help" and f"MCP_SECRETS_{action.dest.upper()}" not in (action.help or "")
    ]

    assert unnamed == []


def test_each_commands_help_opens_with_what_the_command_does() -> None:
    """``mcp-secrets set --help`` said nothing of where the value comes from; the overview did."""
    parsers = command_parsers(build_parser())
    listed = {
        f"{line} {choice.dest}": choice.help
        for line, parser in parsers.items()
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for choice in action._choices_actions
    }

    undescribed = [
        line
        for line, text in listed.items()
        if not (text and text[1:] in " ".join(parsers[line].format_help().split()))
    ]

    assert undescribed == []


def test_set_help_says_the_value_is_typed_at_a_hidden_prompt_or_piped(env: dict[str, str]) -> None:
    done = mcp_secrets_cli(env, "set", "--help")

    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    assert text.startswith("usage: mcp-secrets set [-h] [--user USERNAME] SERVER KEY ")
    assert "hidden prompt (or read from stdin), never from the command line" in text


def test_keygen_prints_a_fresh_32_byte_base64url_key_each_run(env: dict[str, str]) -> None:
    runs = [mcp_secrets_cli(env, "keygen") for _ in range(2)]

    keys = [run.stdout.strip() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert all(run.stdout == key + "\n" for run, key in zip(runs, keys, strict=True))
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", key) for key in keys)
    assert all(len(base64.urlsafe_b64decode(key + "=")) == 32 for key in keys)
    assert keys[0] != keys[1]
    assert all(key not in run.stderr for run, key in zip(runs, keys, strict=True))


def test_keygen_says_which_settings_take_the_key(env: dict[str, str]) -> None:
    """A key file is read only when MCP_SECRETS_MASTER_KEY_FILE names it: "a 0600 file" alone said not how."""
    done = mcp_secrets_cli(env, "keygen")

    assert done.returncode == 0
    assert "set MCP_SECRETS_MASTER_KEY, or put it in a 0600 file named by MCP_SECRETS_MASTER_KEY_FILE" in (
        " ".join(done.stderr.split())
    )


def test_help_says_where_the_settings_come_from(env: dict[str, str]) -> None:
    done = mcp_secrets_cli(env, "--help")

    assert done.returncode == 0
    assert "Settings come from MCP_SECRETS_* environment variables" in " ".join(done.stdout.split())


def test_token_create_prints_the_token_on_stdout_only(env: dict[str, str]) -> None:
    done = mcp_secrets_cli(env, "token", "create", "alice")

    assert done.returncode == 0, done.stderr
    assert TOKEN.fullmatch(done.stdout.strip())
    assert done.stdout.count("\n") == 1
    assert done.stdout.strip() not in done.stderr
    assert "alice" in done.stderr


def test_token_list_shows_ids_labels_and_status_but_never_a_token(env: dict[str, str]) -> None:
    alice_token, alice_id = created_token(env, "alice", "--label", "laptop", "--expires-days", "30")
    bob_token, bob_id = created_token(env, "bob")

    done = mcp_secrets_cli(env, "token", "list", "--user", "alice")

    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if line.startswith(alice_id)]
    assert row.split()[1] == "alice"
    assert row.split()[-2:] == ["live", "laptop"]
    assert "never" not in row
    assert bob_id not in done.stdout
    assert not TOKEN.search(done.stdout + done.stderr)
    assert alice_token not in done.stdout + done.stderr
    assert bob_token not in done.stdout + done.stderr


def test_token_list_keeps_a_long_username_apart_from_the_next_column(env: dict[str, str]) -> None:
    username = "a" * 128  # the longest a username may be
    _, token_id = created_token(env, username)

    listed = mcp_secrets_cli(env, "token", "list")

    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(token_id)]
    assert re.split(" {2,}", row)[:2] == [token_id, username]
    assert row.split()[-1] == "live"


def test_token_revoke_makes_the_list_say_revoked(env: dict[str, str]) -> None:
    _, token_id = created_token(env, "alice")

    revoked = mcp_secrets_cli(env, "token", "revoke", token_id)
    listed = mcp_secrets_cli(env, "token", "list")

    assert revoked.returncode == 0, revoked.stderr
    assert token_id in revoked.stderr
    assert re.search(rf"^{token_id}\s+alice\s.*\brevoked\b", listed.stdout, re.MULTILINE)
    assert "live" not in listed.stdout


# Characters a terminal acts on: C0 and C1 controls (U+009B is CSI), a bidi override, and DEL.
TERMINAL_MOVES = "\x1b\r\x9b\u202e\x7f"


def test_token_revoke_prints_a_stored_username_with_its_control_characters_escaped(
    env: dict[str, str],
) -> None:
    _, token_id = created_token(env, "alice")
    hostile = f"alice{TERMINAL_MOVES}"  # written by hand, or by an older release
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE api_tokens SET username = ?", (hostile,))

    done = mcp_secrets_cli(env, "token", "revoke", token_id)

    assert done.returncode == 0, done.stderr
    assert not any(char in done.stderr for char in TERMINAL_MOVES)
    assert "of alice\\x1b\\r\\x9b\\u202e\\x7f revoked" in done.stderr


def test_token_list_says_expired_once_a_token_is_past_its_expiry(env: dict[str, str]) -> None:
    _, token_id = created_token(env, "alice", "--expires-days", "1e-9")  # 86 µs

    listed = mcp_secrets_cli(env, "token", "list")

    assert re.search(rf"^{token_id}\s+alice\s.*\bexpired\b", listed.stdout, re.MULTILINE), listed.stdout
    assert "live" not in listed.stdout


def test_revoking_an_unknown_token_fails_without_echoing_it(env: dict[str, str]) -> None:
    created_token(env, "alice")  # a store with a token, just not this one
    unknown = f"mcps_0123456789_{_random.token_urlsafe(32)}"

    done = mcp_secrets_cli(env, "token", "revoke", unknown)

    assert done.returncode != 0
    assert "no live token" in done.stderr
    assert unknown not in done.stdout + done.stderr
    assert "0123456789" not in done.stdout + done.stderr


def cli_on_a_lagging_replica_set(
    env: dict[str, str], answer: Callable[[dict[str, Any]], dict[str, Any]], *args: str
) -> subprocess.CompletedProcess[str]:
    """``mcp-secrets ARGS`` on a primary that answers with ``answer``, asked for a majority within 1 s."""
    with mongo_wire_server(answer, hello=PRIMARY_HELLO) as port:
        url = f"mongodb://127.0.0.1:{port}/db?directConnection=true&w=majority&wtimeoutMS=1000"
        return mcp_secrets_cli({**env, "MCP_SECRETS_DATABASE_URL": url}, *args)


def test_token_revoke_the_replica_set_did_not_confirm_says_to_treat_it_as_revoked_and_records_it(
    env: dict[str, str],
) -> None:
    created = datetime(2025, 3, 14, tzinfo=timezone.utc)
    token = {"token_id": "t1", "username": "alice", "token_hash": "h", "created_at": created, "label": ""}
    inserted: list[dict[str, Any]] = []

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        if name in {"find", "listIndexes"}:
            batch = [token] if (name, collection) == ("find", "api_tokens") else []
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": batch}}
        if name == "update":  # made on the primary, not replicated to a majority within wtimeoutMS
            return {"ok": 1, "n": 1, "nModified": 1, "writeConcernError": WTIMEOUT}
        if name == "findAndModify":  # the same, answered as findAndModify answers: with the document
            revoked = {**token, "revoked_at": created}
            lasterror = {"n": 1, "updatedExisting": True}
            return {"ok": 1, "lastErrorObject": lasterror, "value": revoked, "writeConcernError": WTIMEOUT}
        if name == "insert":
            inserted.extend(command["documents"])
        return {"ok": 1, "n": 1}

    done = cli_on_a_lagging_replica_set(env, answer, "token", "revoke", "t1")

    assert done.returncode == 1, done.stderr
    assert "treat the token as revoked, and revoke it again" in done.stderr
    assert "unavailable" not in done.stderr
    assert [(event["actor"], event["action"], event["detail"]) for event in inserted] == [
        ("alice", "token-revoked", "token t1; not confirmed by the database")
    ]


@pytest.mark.parametrize("revoked_before", [True, False], ids=["revoked-before", "unknown"])
def test_token_revoke_that_revoked_nothing_and_whose_write_concern_is_not_met_says_no_live_token(
    env: dict[str, str], revoked_before: bool
) -> None:
    # The server waits for the write concern of a findAndModify that matched nothing too.
    created = datetime(2025, 3, 14, tzinfo=timezone.utc)
    token = {"token_id": "t1", "username": "alice", "token_hash": "h", "created_at": created, "label": ""}
    stored = [{**token, "revoked_at": created + timedelta(days=1)}] if revoked_before else []
    inserted: list[dict[str, Any]] = []

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        if name in {"find", "listIndexes"}:
            batch = stored if (name, collection) == ("find", "api_tokens") else []
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": batch}}
        if name == "findAndModify":  # no live token of that id: nothing matched, nothing changed
            lasterror = {"n": 0, "updatedExisting": False}
            return {"ok": 1, "lastErrorObject": lasterror, "value": None, "writeConcernError": WTIMEOUT}
        if name == "insert":
            inserted.extend(command["documents"])
        return {"ok": 1, "n": 1}

    done = cli_on_a_lagging_replica_set(env, answer, "token", "revoke", "t1")

    assert done.returncode == 1, done.stderr
    assert "there is no live token with that id (see" in done.stderr
    assert "treat the token as revoked" not in done.stderr
    assert inserted == []


def test_token_create_the_replica_set_did_not_confirm_revokes_the_token_it_never_shows(
    env: dict[str, str],
) -> None:
    """Perhaps made, and nobody would ever hold it: it must not stay live, unknown and without an event."""
    inserted: dict[str, list[dict[str, Any]]] = {}
    revokes: list[dict[str, Any]] = []

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        name, collection = next(iter(command.items()))
        if name in {"find", "listIndexes"}:
            return {"ok": 1, "cursor": {"id": 0, "ns": f"db.{collection}", "firstBatch": []}}
        if name == "insert":
            inserted.setdefault(collection, []).extend(command["documents"])
            if collection == "api_tokens":  # made on the primary, not replicated as asked within wtimeoutMS
                return {"ok": 1, "n": 1, "writeConcernError": WTIMEOUT}
        if name == "findAndModify":  # the revoke, answered with the revoked document
            revokes.append(command["query"])
            revoked = {**inserted["api_tokens"][0], "revoked_at": command["update"]["$set"]["revoked_at"]}
            return {"ok": 1, "lastErrorObject": {"n": 1, "updatedExisting": True}, "value": revoked}
        return {"ok": 1, "n": 1}

    done = cli_on_a_lagging_replica_set(env, answer, "token", "create", "alice")

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    [token] = inserted["api_tokens"]
    assert f"the new token {token['token_id']} was not shown" in done.stderr
    assert "it was revoked; create another" in done.stderr
    assert [query["token_id"] for query in revokes] == [token["token_id"]]
    assert [(event["actor"], event["action"]) for event in inserted["audit_events"]] == [
        ("alice", "token-revoked")
    ]
    assert UNCONFIRMED in inserted["audit_events"][0]["detail"]


def cli_losing_writes(
    env: dict[str, str],
    received: list[str],
    *args: str,
    documents: dict[str, list[dict[str, Any]]] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``mcp-secrets ARGS`` on a standalone server holding ``documents`` that loses the connection of each
    write it receives (``received`` names them), logged in to with a random password, found in no output."""
    password = new_canary()
    with mongo_wire_server(server_losing_writes(received, documents)) as port:
        url = f"mongodb://alice:{password}@127.0.0.1:{port}/db?authMechanism=PLAIN"
        done = mcp_secrets_cli({**env, "MCP_SECRETS_DATABASE_URL": url}, *args, stdin=stdin)
    assert password not in done.stdout + done.stderr
    return done


def test_set_whose_write_is_lost_on_its_way_says_it_may_or_may_not_have_been_made(
    env: dict[str, str],
) -> None:
    received: list[str] = []
    value = new_canary()

    done = cli_losing_writes(env, received, "set", "github", "TOKEN", "--user", "alice", stdin=value + "\n")

    assert done.returncode == 1, done.stderr
    assert received == ["update user_secrets"]
    assert "the connection to the MongoDB server failed during the write" in done.stderr
    assert "may or may not have been made" in done.stderr
    assert "unavailable" not in done.stderr
    assert value not in done.stdout + done.stderr


def test_token_create_whose_write_is_lost_names_the_token_that_may_exist_and_how_to_revoke_it(
    env: dict[str, str],
) -> None:
    """Perhaps made: a live token nobody was shown, that its revocation, lost as well, may not have ended."""
    received: list[str] = []

    done = cli_losing_writes(env, received, "token", "create", "alice")

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert received == ["insert api_tokens", "findAndModify api_tokens"]
    named = re.search(r"the new token (\w+) was not shown: its creation was not confirmed", done.stderr)
    assert named, done.stderr
    assert f"it could not be revoked; revoke token {named[1]} (`mcp-secrets token revoke {named[1]}`)" in (
        done.stderr
    )
    assert "unavailable" not in done.stderr


def test_token_revoke_whose_write_is_lost_and_that_reads_the_token_live_says_to_revoke_again_unrecorded(
    env: dict[str, str],
) -> None:
    created = datetime(2025, 3, 14, tzinfo=timezone.utc)
    token = {"token_id": "t1", "username": "alice", "token_hash": "h", "created_at": created, "label": ""}
    received: list[str] = []

    done = cli_losing_writes(env, received, "token", "revoke", "t1", documents={"api_tokens": [token]})

    assert done.returncode == 1, done.stderr
    assert "the token was still live when read back: revoke it again" in done.stderr
    assert "unavailable" not in done.stderr
    assert received == ["findAndModify api_tokens"]  # no revocation recorded: none was made


def test_token_create_on_a_server_that_cannot_be_reached_says_the_store_is_unavailable(
    env: dict[str, str],
) -> None:
    password = new_canary()
    with mongo_wire_server(server_holding({})) as port:
        pass  # closed: nothing listens on its port
    url = f"mongodb://alice:{password}@127.0.0.1:{port}/db?authMechanism=PLAIN&serverSelectionTimeoutMS=200"

    done = mcp_secrets_cli({**env, "MCP_SECRETS_DATABASE_URL": url}, "token", "create", "alice")

    assert done.returncode == 1, done.stderr
    assert "the MongoDB store is unavailable (ServerSelectionTimeoutError)" in done.stderr
    assert "may or may not" not in done.stderr
    assert password not in done.stdout + done.stderr


def test_set_refused_by_a_unique_index_the_store_did_not_make_names_it_in_one_line_never_the_value(
    env: dict[str, str],
) -> None:
    """An operator's unique index on `value` refuses the save, quoting the ciphertext it holds already."""
    value = new_canary()
    sent: list[str] = []
    holding = server_holding({})

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        if "update" not in command:
            return holding(command)
        sent.extend(update["u"]["$set"]["value"] for update in command["updates"])
        refused = server_refusing_duplicates(
            "update user_secrets", duplicate_key("user_secrets", "value_1", {"value": sent[-1]})
        )
        return refused(command)

    with mongo_wire_server(answer) as port:
        env["MCP_SECRETS_DATABASE_URL"] = f"mongodb://127.0.0.1:{port}/db"
        done = mcp_secrets_cli(env, "set", "github", "TOKEN", "--user", "alice", stdin=value + "\n")

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        "mcp-secrets: error: the MongoDB server refused the write: a unique index of "
    )
    assert "the collection user_secrets, `value_1` (on value), that mcp-secrets did not make" in done.stderr
    assert "drop that index or make it non-unique" in done.stderr
    assert "Traceback" not in done.stderr
    assert sent
    for shown in [value, *sent]:
        assert_no_fragment_of(shown, done.stdout + done.stderr)


def _refusing(env: dict[str, str], trigger: str) -> None:
    """The default store, made, with a year-old event and a trigger that refuses some writes (a later
    version's, an admin's)."""
    assert mcp_secrets_cli(env, "token", "create", "bob").returncode == 0
    with closing(sqlite3.connect(Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db")) as database:
        database.execute(
            "INSERT INTO audit_events (at, actor, action) VALUES ('2025-12-01T00:00:00+00:00', 'bob', 'set')"
        )
        database.execute(trigger)
        database.commit()


def _token_create_refused(
    env: dict[str, str], refused: str
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``token create alice`` where the store refuses the audit events ``refused`` (an SQL condition on
    ``NEW``), then ``token list --user alice``."""
    _refusing(
        env,
        f"CREATE TRIGGER only_later BEFORE INSERT ON audit_events WHEN {refused} "
        "BEGIN SELECT RAISE(ABORT, 'written by a later version only'); END",
    )
    return mcp_secrets_cli(env, "token", "create", "alice"), mcp_secrets_cli(
        env, "token", "list", "--user", "alice"
    )


def test_token_create_whose_event_the_store_refuses_revokes_the_token_without_a_traceback(
    env: dict[str, str],
) -> None:
    done, listed = _token_create_refused(env, "NEW.action = 'token-created'")

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "was not shown: its audit event could not be written; it was revoked" in done.stderr
    assert "Traceback" not in done.stderr
    assert "revoked" in listed.stdout
    assert "live" not in listed.stdout


def test_token_create_whose_events_the_store_all_refuses_says_the_token_was_revoked_unrecorded(
    env: dict[str, str],
) -> None:
    # Its revocation is made, and only that revocation's event refused: "it could not be revoked; revoke
    # it" would have the operator revoke it again, and be told there is no live token.
    done, listed = _token_create_refused(env, "NEW.action LIKE 'token-%'")

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    named = re.search(r"the new token (\w+) was not shown: its audit event could not be written", done.stderr)
    assert named, done.stderr
    assert "it was revoked, but its revocation's audit event could not be written either" in done.stderr
    assert done.stderr.rstrip().endswith(
        "create another (the SQLite store refused a write: written by a later version only)"
    )
    assert "could not be revoked" not in done.stderr
    assert "Traceback" not in done.stderr
    assert "revoked" in listed.stdout
    assert "live" not in listed.stdout


@pytest.mark.parametrize("command", [["serve"], ["set", "s", "K"], ["token", "create", "alice"]])
def test_a_command_that_writes_refuses_at_once_a_store_it_can_only_read(
    env: dict[str, str], command: list[str]
) -> None:
    # A server on a store whose file it cannot write served reads, and said so only at the first write:
    # every use it could not record, lost. Root passes any file mode: it runs without its capabilities.
    assert mcp_secrets_cli(env, "token", "create", "bob").returncode == 0
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"
    for path in database.parent.glob("secrets.db*"):
        path.chmod(0o400)
    before = database.read_bytes()
    value = new_canary()

    done = mcp_secrets_cli(env, *command, prefix=tuple(as_an_ordinary_process()), stdin=value)

    assert done.returncode != 0
    assert f"the SQLite store at {database} can be read but not written" in done.stderr
    assert "Traceback" not in done.stderr
    assert value not in done.stdout + done.stderr
    assert database.read_bytes() == before


@pytest.mark.parametrize("command", [["serve"], ["list", "--user", "alice"]])
@pytest.mark.parametrize("fault", ["file-unreadable", "directory-unwritable"])
def test_a_store_this_process_may_not_open_is_refused_saying_what_keeps_it_out(
    env: dict[str, str], command: list[str], fault: str
) -> None:
    # SQLite says only "unable to open database file", or, of a file this user may write in a directory it
    # may not, "attempt to write a readonly database": neither says which permission to look at.
    assert mcp_secrets_cli(env, "token", "create", "bob").returncode == 0
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"
    changed, mode = (database, 0o000) if fault == "file-unreadable" else (database.parent, 0o500)
    changed.chmod(mode)
    try:
        done = mcp_secrets_cli(env, *command, prefix=tuple(as_an_ordinary_process()))
    finally:
        changed.chmod(0o600 if changed == database else 0o700)

    assert done.returncode == 1
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith(f"mcp-secrets: error: the SQLite store at {database} cannot be opened: "), said
    if fault == "file-unreadable":
        assert said.endswith("; this process may not read the file (Permission denied)"), said
    else:
        assert said.endswith(
            f"; this process may not make in {database.parent} the -wal and -shm files SQLite keeps beside "
            "the file"
        ), said
    assert "Traceback" not in done.stderr


# The tables of the first version, before entry links, the audit trail and last uses.
_FIRST_VERSION_SCHEMA = """
CREATE TABLE user_secrets (
    username TEXT NOT NULL, server TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (username, server, key)
) WITHOUT ROWID;
CREATE TABLE api_tokens (
    token_id TEXT PRIMARY KEY, username TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, label TEXT NOT NULL DEFAULT ''
);
"""


@pytest.mark.parametrize("command", [["list", "--user", "alice"], ["audit"], ["token", "list"]])
def test_a_command_that_only_reads_says_an_earlier_versions_store_it_cannot_write_needs_opening_by_its_owner(
    env: dict[str, str], command: list[str]
) -> None:
    # A file an earlier version made gains tables, columns and indexes when it is opened, which a process
    # that can only read it cannot do: it said "cannot be opened: attempt to write a readonly database".
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"
    database.parent.mkdir(parents=True)
    with closing(sqlite3.connect(database, isolation_level=None)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_FIRST_VERSION_SCHEMA)
        now = datetime.now(timezone.utc).isoformat()
        connection.execute(
            "INSERT INTO user_secrets VALUES ('alice', 'github', 'TOKEN', 'v1:00000000:AAAA', ?, ?)",
            (now, now),
        )
    for path in database.parent.glob("secrets.db*"):
        path.chmod(0o400)
    before = database.read_bytes()

    done = mcp_secrets_cli(env, *command, prefix=tuple(as_an_ordinary_process()))

    assert done.returncode == 1
    assert f"the SQLite store at {database} was made by an earlier version of mcp-secrets" in done.stderr
    assert "open it once as a user who can write it" in done.stderr
    assert "Traceback" not in done.stderr
    assert database.read_bytes() == before


def test_prune_audit_and_audit_read_times_written_by_hand_as_times_in_utc(env: dict[str, str]) -> None:
    # Events imported by hand, a few hours inside the 30 days kept: one with a space for the "T" and no
    # offset (UTC), one with an offset of its own. As text both sorted before the cut-off, and went.
    assert mcp_secrets_cli(env, "token", "create", "bob").returncode == 0
    inside = datetime.now(timezone.utc) - timedelta(days=30) + timedelta(hours=3)
    naive = f"{inside:%Y-%m-%d %H:%M:%S}"
    offset = inside.astimezone(timezone(timedelta(hours=-8))).isoformat()
    with closing(sqlite3.connect(Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db")) as database:
        database.executemany(
            "INSERT INTO audit_events (at, actor, action) VALUES (?, 'bob', ?)",
            [(naive, "naive"), (offset, "offset"), ("2025-01-01 00:00:00", "old")],
        )
        database.commit()

    pruned = mcp_secrets_cli(env, "prune-audit", "--older-than", "30")
    listed = mcp_secrets_cli(env, "audit", "--user", "bob")

    assert pruned.returncode == 0, pruned.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert {row[3] for row in rows} >= {"naive", "offset"}
    assert "old" not in {row[3] for row in rows}
    shown = {row[3]: f"{row[0]} {row[1]}" for row in rows}
    assert shown["naive"] == shown["offset"] == f"{inside:%Y-%m-%d %H:%M:%S}"  # both in UTC, as headed


@pytest.mark.parametrize(
    ("at", "pruned_status"),
    [("0001-01-01T00:00:00+05:00", 1), ("9999-12-31T23:00:00-05:00", 0)],  # the second is not prunable
    ids=["year-1", "year-9999"],
)
def test_audit_and_prune_audit_name_an_event_whose_time_falls_outside_the_years_utc_can_hold(
    env: dict[str, str], tmp_path: Path, at: str, pruned_status: int
) -> None:
    # Imported by hand: a time of ISO 8601 that, in UTC, is in year 0 or 10000. Each command that read it
    # ended in a traceback, where an event it cannot read is named.
    assert mcp_secrets_cli(env, "token", "create", "bob").returncode == 0
    with closing(sqlite3.connect(Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db")) as database:
        database.execute("INSERT INTO audit_events (at, actor, action) VALUES (?, 'bob', 'imported')", (at,))
        database.commit()
    archive = tmp_path / "audit.jsonl"

    listed = mcp_secrets_cli(env, "audit")
    pruned = mcp_secrets_cli(env, "prune-audit", "--older-than", "30", "--export", str(archive))

    named = (
        "the row of actor 'bob', server '', key '' in the table audit_events cannot be read "
        "(its field at holds a string, not a time within the years 1 to 9999 in UTC)"
    )
    assert (listed.returncode, pruned.returncode) == (1, pruned_status), listed.stderr + pruned.stderr
    assert named in listed.stderr
    assert (named in pruned.stderr) == bool(pruned_status)
    assert "Traceback" not in listed.stderr + pruned.stderr
    assert archive.read_text(encoding="utf-8") == ""


def test_prune_audit_the_store_refuses_says_so_without_a_traceback(env: dict[str, str]) -> None:
    _refusing(
        env,
        "CREATE TRIGGER append_only BEFORE DELETE ON audit_events "
        "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
    )

    done = mcp_secrets_cli(env, "prune-audit", "--older-than", "30")

    assert done.returncode == 1, done.stderr
    assert "the SQLite store refused a write: the audit trail is append-only" in done.stderr
    assert "Traceback" not in done.stderr


def test_token_revoke_takes_the_whole_token_and_never_echoes_it(env: dict[str, str]) -> None:
    token, token_id = created_token(env, "alice")

    revoked = mcp_secrets_cli(env, "token", "revoke", token)

    assert revoked.returncode == 0, revoked.stderr
    assert f"Token {token_id} of alice revoked." in revoked.stderr
    assert token not in revoked.stdout + revoked.stderr


@pytest.mark.parametrize("days", ["0", "-1", "nan", "inf", "36501"])
def test_token_create_refuses_an_expiry_out_of_range_naming_the_rule(env: dict[str, str], days: str) -> None:
    done = mcp_secrets_cli(env, "token", "create", "alice", "--expires-days", days)

    assert done.returncode == EXIT_CONFIGURATION
    assert "argument --expires-days: must be more than 0 and at most 36500 (days)" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert mcp_secrets_cli(env, "token", "list").stdout.splitlines()[1:] == []


def test_token_create_refuses_a_bad_username(env: dict[str, str]) -> None:
    done = mcp_secrets_cli(env, "token", "create", "bad name")

    assert done.returncode == EXIT_CONFIGURATION
    assert "username" in done.stderr
    assert done.stdout == ""


def test_an_error_is_one_line_and_a_usage_errors_line_follows_the_commands_usage(
    env: dict[str, str], canary: str
) -> None:
    # As the README's exit codes say: scripts read the last line of stderr as the error.
    input_error = set_from_stdin(env, canary + "\n", "bad name", "TOKEN")
    usage_error = mcp_secrets_cli(env, "token", "create", "alice", "--expires-days", "0")

    assert input_error.returncode == usage_error.returncode == EXIT_CONFIGURATION
    assert input_error.stderr.splitlines() == [
        "mcp-secrets: error: server must be 1 to 128 characters of letters, digits, '_', '-' or '.'"
    ]
    *usage, error = usage_error.stderr.splitlines()
    assert " ".join(" ".join(usage).split()) == (
        "usage: mcp-secrets token create [-h] [--label TEXT] [--expires-days DAYS] USERNAME"
    )
    assert error.startswith("mcp-secrets token create: error: argument --expires-days: ")
    assert canary not in input_error.stdout + input_error.stderr


def test_serve_refuses_a_malformed_master_key_without_showing_it(env: dict[str, str]) -> None:
    malformed = f"short{_random.token_hex(4)}"
    env["MCP_SECRETS_MASTER_KEY"] = malformed

    done = mcp_secrets_cli(env, "serve")

    assert done.returncode == EXIT_CONFIGURATION
    assert "MCP_SECRETS_MASTER_KEY" in done.stderr
    assert "32 random bytes" in done.stderr
    assert malformed not in done.stdout + done.stderr


@pytest.mark.parametrize("command", [["serve"], ["set", "github", "TOKEN"], ["list"]])
def test_a_key_in_the_environment_and_a_key_file_together_are_refused_before_a_store_is_made(
    env: dict[str, str], command: list[str]
) -> None:
    key_file = Path(env["MCP_SECRETS_CONFIG_DIR"]) / "keys"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(generate_master_key() + "\n")
    key_file.chmod(0o600)
    env["MCP_SECRETS_MASTER_KEY_FILE"] = str(key_file)

    done = mcp_secrets_cli(env, *command)

    assert done.returncode == EXIT_CONFIGURATION
    assert "are both set" in done.stderr
    assert env["MCP_SECRETS_MASTER_KEY"] not in done.stdout + done.stderr
    assert not Path(env["MCP_SECRETS_DATA_DIR"]).exists()


def test_serve_on_mongodb_without_a_master_key_fails_before_connecting(env: dict[str, str]) -> None:
    """The key is checked before the store is opened: nothing listens on port 1, and that never comes up."""
    del env["MCP_SECRETS_MASTER_KEY"]
    env["MCP_SECRETS_DATABASE_URL"] = "mongodb://127.0.0.1:1/x"

    done = mcp_secrets_cli(env, "serve")

    assert done.returncode == EXIT_CONFIGURATION
    assert "MongoDB needs an explicit master key" in done.stderr
    assert "unavailable" not in done.stderr
    assert not Path(env["MCP_SECRETS_CONFIG_DIR"], "master.key").exists()


def test_serve_refuses_an_unsupported_database_url_without_showing_it(env: dict[str, str]) -> None:
    password = _random.token_hex(8)
    env["MCP_SECRETS_DATABASE_URL"] = f"postgresql://admin:{password}@db.example/secrets"

    done = mcp_secrets_cli(env, "serve")

    assert done.returncode == EXIT_CONFIGURATION
    assert "MCP_SECRETS_DATABASE_URL" in done.stderr
    assert password not in done.stdout + done.stderr


def test_serve_names_a_database_url_with_surrounding_whitespace_as_the_store_it_opened(
    env: dict[str, str], tmp_path: Path
) -> None:
    """An env file or a mounted secret often ends the URL with a line end; the store opens it all the same."""
    database = tmp_path / "elsewhere.db"
    env["MCP_SECRETS_DATABASE_URL"] = f" sqlite:///{database}\n"

    done = mcp_secrets_cli(env, "serve")  # stdio, stdin closed: it serves nothing and ends

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(rf"store:\s+SQLite {re.escape(str(database))}\n", done.stderr), done.stderr
    assert database.exists()


def test_the_log_level_setting_takes_any_case_as_the_option_does(env: dict[str, str]) -> None:
    env["MCP_SECRETS_LOG_LEVEL"] = "debug"  # `--log-level debug` is accepted

    done = mcp_secrets_cli(env, "serve")  # stdio, stdin closed: it serves nothing and ends

    assert done.returncode == 0, done.stderr
    assert " DEBUG " in done.stderr


@pytest.mark.parametrize("seconds", ["inf", "1e9"])
def test_a_sqlite_busy_timeout_sqlite_cannot_keep_is_refused_naming_the_setting(
    env: dict[str, str], seconds: str
) -> None:
    """SQLite keeps it as milliseconds in a C int: past that a write did not wait at all, and inf crashed."""
    env["MCP_SECRETS_SQLITE_BUSY_TIMEOUT"] = seconds

    done = mcp_secrets_cli(env, "list")

    assert done.returncode == EXIT_CONFIGURATION
    assert "mcp-secrets: error: invalid setting: sqlite_busy_timeout" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [("serve",), ("list",), ("set", "github", "TOKEN")])
def test_an_unsupported_database_url_without_a_master_key_is_named_as_unsupported(
    env: dict[str, str], command: tuple[str, ...]
) -> None:
    """Not "MongoDB needs an explicit master key": the URL names no MongoDB, and a key would not help."""
    del env["MCP_SECRETS_MASTER_KEY"]
    env["MCP_SECRETS_DATABASE_URL"] = "postgresql://db.example/secrets"

    done = mcp_secrets_cli(env, *command)

    assert done.returncode == EXIT_CONFIGURATION
    assert "MCP_SECRETS_DATABASE_URL must start with mongodb://" in done.stderr
    assert "MongoDB needs" not in done.stderr
    assert not Path(env["MCP_SECRETS_CONFIG_DIR"], "master.key").exists()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param(("--public-url", "secrets.example.com"), "--public-url", id="public-url-without-scheme"),
        pytest.param(("--host", "bad host"), "--host", id="host-with-a-space"),
        pytest.param(
            ("--jwks-url", "https://id.example.com/jwks", "--issuer", "id.example.com", "--audience", "a"),
            "--issuer",
            id="issuer-without-scheme",
        ),
        pytest.param(
            ("--jwks-url", "id.example.com/jwks", "--issuer", "https://id.example.com", "--audience", "a"),
            "--jwks-url",
            id="jwks-url-without-scheme",
        ),
        pytest.param(
            ("--jwks-url", "file:///etc/jwks.json", "--issuer", "https://id.example.com", "--audience", "a"),
            "--jwks-url",
            id="jwks-url-of-a-file",
        ),
        pytest.param(
            ("--jwks-url", "https://[::1/jwks", "--issuer", "https://id.example.com", "--audience", "a"),
            "--jwks-url",
            id="jwks-url-with-an-unclosed-bracket",
        ),
        pytest.param(
            ("--public-url", "https://[::1/mcp"), "--public-url", id="public-url-with-an-unclosed-bracket"
        ),
    ],
)
def test_serve_over_http_names_an_option_that_makes_no_url(
    env: dict[str, str], options: tuple[str, ...], named: str
) -> None:
    done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http", *options)

    assert done.returncode == EXIT_CONFIGURATION
    assert f"mcp-secrets: error: {named} " in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(("--public-url", "secrets.example.com"), id="public-url"),
        pytest.param(("--host", "bad host"), id="host"),
        pytest.param(
            ("--jwks-url", "https://id.example.com/jwks", "--issuer", "id.example.com", "--audience", "a"),
            id="issuer",
        ),
        pytest.param(("--jwks-url", "https://id.example.com/jwks"), id="jwks-url-alone"),
        pytest.param(("--issuer", "https://id.example.com"), id="issuer-without-jwks-url"),
    ],
)
def test_a_first_start_refused_for_an_option_makes_no_master_key_and_no_store(
    env: dict[str, str], options: tuple[str, ...]
) -> None:
    """A refused option is corrected and the start run again: it must not leave a key file behind,
    said to be the one to back up, nor a store, before the start that counts."""
    del env["MCP_SECRETS_MASTER_KEY"]

    done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http", *options)

    assert done.returncode == EXIT_CONFIGURATION
    assert "mcp-secrets: error: " in done.stderr
    assert "generated" not in done.stderr
    assert not Path(env["MCP_SECRETS_CONFIG_DIR"], "master.key").exists()
    assert not Path(env["MCP_SECRETS_DATA_DIR"], "secrets.db").exists()


@pytest.mark.parametrize(
    ("given", "named"),
    [
        pytest.param(("--issuer", "https://id.example.com"), "--issuer", id="issuer"),
        pytest.param(("--audience", "secrets"), "--audience", id="audience"),
        pytest.param({"MCP_SECRETS_ISSUER": "https://id.example.com"}, "MCP_SECRETS_ISSUER", id="env-issuer"),
        pytest.param({"MCP_SECRETS_AUDIENCE": "secrets"}, "MCP_SECRETS_AUDIENCE", id="env-audience"),
    ],
)
def test_serve_over_http_refuses_a_jwt_setting_without_a_jwks_url_rather_than_ignore_it(
    env: dict[str, str], given: tuple[str, ...] | dict[str, str], named: str
) -> None:
    """Without a JWKS URL no JWT is accepted: a server started so would refuse every JWT the user meant
    to let in, its summary saying only "bearer API tokens"."""
    options = given if isinstance(given, tuple) else ()
    if isinstance(given, dict):
        env.update(given)

    done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http", *options)

    assert done.returncode == EXIT_CONFIGURATION
    assert f"mcp-secrets: error: {named} is only used with " in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        pytest.param(
            {"MCP_SECRETS_PUBLIC_URL": "secrets.example.com"}, "MCP_SECRETS_PUBLIC_URL", id="public-url"
        ),
        pytest.param({"MCP_SECRETS_HOST": "bad host"}, "MCP_SECRETS_HOST", id="host"),
        pytest.param(
            {"MCP_SECRETS_JWKS_URL": "file:///etc/jwks.json", "MCP_SECRETS_ISSUER": "https://id.example.com"}
            | {"MCP_SECRETS_AUDIENCE": "a"},
            "MCP_SECRETS_JWKS_URL",
            id="jwks-url",
        ),
        pytest.param(
            {"MCP_SECRETS_JWKS_URL": "https://id.example.com/jwks", "MCP_SECRETS_ISSUER": "id.example.com"}
            | {"MCP_SECRETS_AUDIENCE": "a"},
            "MCP_SECRETS_ISSUER",
            id="issuer",
        ),
    ],
)
def test_serve_over_http_names_a_setting_that_makes_no_url_by_its_environment_variable(
    env: dict[str, str], environment: dict[str, str], named: str
) -> None:
    """Not by the option the user never gave."""
    env.update(environment)

    done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http")

    assert done.returncode == EXIT_CONFIGURATION
    assert f"mcp-secrets: error: {named} " in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_a_public_url_holding_a_password_which_its_links_would_publish(
    env: dict[str, str],
) -> None:
    """Entry links, the start's summary and the open /openapi.json all name the public URL."""
    password = new_canary()
    env["MCP_SECRETS_PUBLIC_URL"] = f"https://proxy:{password}@example.com"

    done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http")

    assert done.returncode == EXIT_CONFIGURATION
    assert "mcp-secrets: error: MCP_SECRETS_PUBLIC_URL must not hold a user name or password" in done.stderr
    assert password not in done.stdout + done.stderr


def test_serve_refuses_port_0_whose_urls_would_name_no_port(env: dict[str, str]) -> None:
    """Port 0 binds any free port, but the start's URL, the client configs and every entry link said :0."""
    done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http", "--port", "0")

    assert done.returncode == EXIT_CONFIGURATION
    assert "mcp-secrets: error: invalid setting: port" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("given", ["environment", "option"])
def test_an_invalid_port_is_named_as_the_user_gave_it(env: dict[str, str], given: str) -> None:
    """Not by the setting's name inside mcp-secrets ("port") alone, which the user never typed."""
    canary = new_canary()
    if given == "environment":
        env["MCP_SECRETS_PORT"] = canary
    options = ["--port", "0"] if given == "option" else []

    done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http", *options)

    assert done.returncode == EXIT_CONFIGURATION
    named = "MCP_SECRETS_PORT" if given == "environment" else "--port"
    assert f"mcp-secrets: error: invalid setting: port ({named}): " in done.stderr
    leaked = canary in done.stderr  # a bare bool: a failure prints no value
    assert not leaked
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("gateway", [False, True], ids=["alone", "with-a-gateway"])
def test_serve_on_a_port_in_use_says_so_in_one_line(
    env: dict[str, str], tmp_path: Path, gateway: bool
) -> None:
    """With a gateway, uvicorn's exit came out of the gateway's task group as a traceback instead."""
    options: list[str] = []
    if gateway:
        servers = tmp_path / "servers.json"
        servers.write_text('{"mcpServers": {}}', encoding="utf-8")
        options = ["--servers", str(servers)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http", "--port", str(port), *options)

    assert f"could not serve on 127.0.0.1 port {port}" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.returncode == UVICORN_STARTUP_FAILURE


def test_serve_on_a_host_name_no_resolver_takes_says_so_in_one_line_and_makes_no_token(
    env: dict[str, str],
) -> None:
    # A label over 63 characters is refused by the name's encoding before any lookup, not as one not found.
    host = "a" * 64 + ".example"

    done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http", "--host", host, "--port", "8000")

    assert f"could not serve on {host} port 8000: " in done.stderr
    assert "Traceback" not in done.stderr
    assert done.returncode == UVICORN_STARTUP_FAILURE
    assert TOKEN_PREFIX not in done.stdout + done.stderr


# --- set: the value comes from a hidden prompt or stdin, never from argv ---------------------------


def set_bytes_from_stdin(env: dict[str, str], stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``mcp-secrets set ARGS`` with ``stdin`` piped in as it is, as a script or `echo … |` would."""
    return subprocess.run(
        [sys.executable, "-m", "mcp_secrets", "set", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def set_from_stdin(env: dict[str, str], stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``set_bytes_from_stdin`` with text in UTF-8, and its output read back as text."""
    done = set_bytes_from_stdin(env, stdin.encode(), *args)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


PROMPT_END = b"(hidden): "


def set_at_a_terminal(env: dict[str, str], typed: bytes, *args: str) -> tuple[int, str]:
    """``mcp-secrets set ARGS`` on a pseudo-terminal, as a person runs it: its exit code and all it showed.

    ``typed`` is sent once the hidden prompt is on the screen (echo is off by then), as keystrokes.
    """
    import pty  # noqa: PLC0415 - POSIX only: the module does not import on Windows

    pid, terminal = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execve(sys.executable, [sys.executable, "-m", "mcp_secrets", "set", *args], env)  # noqa: S606 - fixed argv
    shown = b""
    sent = False
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        if not sent and shown.endswith(PROMPT_END):
            os.write(terminal, typed)
            sent = True
    os.close(terminal)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def stored_secrets(env: dict[str, str], username: str, server: str) -> dict[str, str]:
    """What the store of ``env`` holds for one user and server, read through the library."""
    settings = mcp_secrets.Settings(
        master_key=env["MCP_SECRETS_MASTER_KEY"],
        data_dir=Path(env["MCP_SECRETS_DATA_DIR"]),
        config_dir=Path(env["MCP_SECRETS_CONFIG_DIR"]),
        database_url=None,
    )
    secrets = mcp_secrets.open_secrets(settings)
    try:
        return secrets.get_secrets(username, server)
    finally:
        secrets.close()
        secrets.store.close()


@pytest.mark.parametrize("line_end", ["\n", "\r\n", ""], ids=["lf", "crlf", "no-newline"])
def test_set_stores_the_value_read_from_stdin_without_printing_it(
    env: dict[str, str], canary: str, line_end: str
) -> None:
    done = set_from_stdin(env, canary + line_end, "github", "TOKEN", "--user", "alice")

    assert done.returncode == 0, done.stderr
    assert stored_secrets(env, "alice", "github") == {"TOKEN": canary}
    assert done.stdout == ""
    assert "TOKEN" in done.stderr
    assert "created for alice" in done.stderr
    assert canary not in done.stdout + done.stderr


@pytest.mark.parametrize("line_end", ["\n", "\r\n", ""], ids=["lf", "crlf", "no-newline"])
def test_set_keeps_every_line_of_a_piped_multi_line_value(env: dict[str, str], line_end: str) -> None:
    pem = "-----BEGIN KEY-----\r\n" + new_canary() + "\n" + new_canary() + "\n-----END KEY-----"
    done = set_bytes_from_stdin(env, (pem + line_end).encode(), "github", "APP_KEY", "--user", "alice")

    assert done.returncode == 0, done.stderr
    assert stored_secrets(env, "alice", "github") == {"APP_KEY": pem}  # less the one final line end
    for line in pem.splitlines():
        assert line.encode() not in done.stdout + done.stderr


def test_set_keeps_a_final_carriage_return_that_ends_no_line(env: dict[str, str]) -> None:
    value = new_canary() + "\r"
    done = set_bytes_from_stdin(env, value.encode(), "github", "TOKEN", "--user", "alice")

    assert done.returncode == 0, done.stderr
    assert stored_secrets(env, "alice", "github") == {"TOKEN": value}  # only a whole line end goes
    assert value.strip().encode() not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("stdin", "refusal"),
    [
        (b"x" * (64 * 1024 + 1), "at most 65536 bytes"),
        (b"\xff\xfe not utf-8", "UTF-8 text"),
        (b"\n", "empty"),
    ],
    ids=["too-long", "not-utf-8", "empty"],
)
def test_set_refuses_a_piped_value_it_cannot_store_and_stores_nothing(
    env: dict[str, str], stdin: bytes, refusal: str
) -> None:
    done = set_bytes_from_stdin(env, stdin, "github", "TOKEN", "--user", "alice")

    assert done.returncode != 0
    assert refusal in done.stderr.decode()
    assert stored_secrets(env, "alice", "github") == {}


def test_a_first_set_without_a_key_generates_one_and_says_to_back_it_up_once(
    env: dict[str, str], canary: str
) -> None:
    del env["MCP_SECRETS_MASTER_KEY"]
    key_file = Path(env["MCP_SECRETS_CONFIG_DIR"]) / "master.key"

    first = set_from_stdin(env, canary + "\n", "github", "TOKEN", "--user", "alice")
    second = set_from_stdin(env, canary + "\n", "linear", "TOKEN", "--user", "alice")

    assert [first.returncode, second.returncode] == [0, 0], first.stderr + second.stderr
    assert f"master key: key file {key_file} (generated now)" in first.stderr
    assert "A new master key was generated. Back up that file" in first.stderr
    assert "generated" not in second.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text(encoding="utf-8").strip() not in first.stdout + first.stderr
    assert canary not in first.stdout + first.stderr


def test_a_store_restored_without_its_key_is_told_to_configure_that_key_not_to_generate_one(
    env: dict[str, str], canary: str
) -> None:
    """A database restored before its master key: `serve` refuses to generate a key over it, so no command
    may send the user there; each that needs the key names the settings that take the one that encrypted
    them. A listing needs none: it shows what is there."""
    stored = set_from_stdin(env, canary + "\n", "github", "TOKEN", "--user", "alice")
    assert stored.returncode == 0, stored.stderr
    del env["MCP_SECRETS_MASTER_KEY"]

    written = set_from_stdin(env, canary + "\n", "github", "OTHER", "--user", "alice")
    served = mcp_secrets_cli(env, "serve")
    listed = mcp_secrets_cli(env, "list", "--user", "alice")

    assert [written.returncode, served.returncode] == [EXIT_CONFIGURATION, EXIT_CONFIGURATION]
    for refused in (written, served):
        assert "to generate" not in refused.stderr
        assert "MCP_SECRETS_MASTER_KEY_FILE to the key that encrypted them" in refused.stderr
    assert not Path(env["MCP_SECRETS_CONFIG_DIR"], "master.key").exists()
    assert listed.returncode == 0, listed.stderr
    assert [row.split()[:2] for row in listed.stdout.splitlines()[1:]] == [["github", "TOKEN"]]
    outputs = [written.stdout, written.stderr, served.stdout, served.stderr, listed.stdout, listed.stderr]
    assert (canary in "".join(outputs)) is False


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize(
    "umask",
    [
        # The directories above the key file and the database (``~/.config``, say) were made
        # world-writable: another user could then swap the directory holding the key or the database.
        pytest.param(0o000, id="permissive"),
        # The directories and the database were made mode 000: the run failed, unable to open the file it
        # had just made, and every later run failed too on the directories it left (not as root).
        pytest.param(0o777, id="masking-the-owners-bits"),
    ],
)
def test_a_first_set_under_any_umask_makes_every_missing_directory_and_file_owner_only(
    env: dict[str, str], canary: str, tmp_path: Path, umask: int
) -> None:
    del env["MCP_SECRETS_MASTER_KEY"]
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env.update(HOME=str(home), MCP_SECRETS_CONFIG_DIR="~/.config/mcp-secrets")
    env.update(MCP_SECRETS_DATA_DIR="~/.local/share/mcp-secrets")

    done = subprocess.run(
        [sys.executable, "-m", "mcp_secrets", "set", "github", "TOKEN", "--user", "alice"],
        env=env,
        input=canary + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=umask,
    )

    assert done.returncode == 0, done.stderr
    made = {str(path.relative_to(home)): path.stat().st_mode & 0o777 for path in home.rglob("*")}
    assert made == {
        ".config": 0o700,
        ".config/mcp-secrets": 0o700,
        ".config/mcp-secrets/master.key": 0o600,
        ".local": 0o700,
        ".local/share": 0o700,
        ".local/share/mcp-secrets": 0o700,
        ".local/share/mcp-secrets/secrets.db": 0o600,
    }
    assert canary not in done.stdout + done.stderr


def test_a_first_set_for_a_login_name_that_is_no_username_makes_no_key(env: dict[str, str]) -> None:
    """Refused before the key is made: a key made then would have been left without its backup reminder."""
    del env["MCP_SECRETS_MASTER_KEY"]
    env["LOGNAME"] = "John Doe"  # what getpass reads first; a Windows account name may have a space

    done = set_from_stdin(env, "value\n", "github", "TOKEN")

    assert done.returncode == EXIT_CONFIGURATION
    assert "set MCP_SECRETS_USER" in done.stderr
    assert not Path(env["MCP_SECRETS_CONFIG_DIR"], "master.key").exists()


def test_a_first_serve_that_stops_after_making_the_key_still_says_to_back_it_up(env: dict[str, str]) -> None:
    """A port in use stops a start only once it listens, after the key is made (a bad option, before)."""
    del env["MCP_SECRETS_MASTER_KEY"]
    key_file = Path(env["MCP_SECRETS_CONFIG_DIR"]) / "master.key"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        done = mcp_secrets_cli(env, "serve", "--transport", "streamable-http", "--port", port)

    assert done.returncode == UVICORN_STARTUP_FAILURE
    assert f"could not serve on 127.0.0.1 port {port}" in done.stderr
    assert key_file.exists()
    assert f"master key: key file {key_file} (generated now)" in done.stderr
    assert "A new master key was generated. Back up that file" in done.stderr


def test_a_first_set_that_cannot_create_the_key_file_says_so_and_stores_nothing(
    env: dict[str, str], canary: str, tmp_path: Path
) -> None:
    del env["MCP_SECRETS_MASTER_KEY"]
    regular_file = tmp_path / "not-a-directory"
    regular_file.write_text("")
    env["MCP_SECRETS_CONFIG_DIR"] = str(regular_file / "config")

    done = set_from_stdin(env, canary + "\n", "github", "TOKEN", "--user", "alice")

    assert done.returncode == EXIT_CONFIGURATION
    assert "Traceback" not in done.stderr
    assert f"the master key file {regular_file / 'config' / 'master.key'} cannot be created" in done.stderr
    assert canary not in done.stdout + done.stderr


def test_a_config_dir_this_user_cannot_look_in_is_a_configuration_error_naming_it(
    env: dict[str, str], tmp_path: Path, canary: str
) -> None:
    # As MCP_SECRETS_CONFIG_DIR under /root for another user: it was "the output could not be written".
    prefix = tuple(as_an_ordinary_process())
    locked = tmp_path / "locked"
    config = locked / "mcp-secrets"
    config.mkdir(parents=True)
    env["MCP_SECRETS_CONFIG_DIR"] = str(config)
    del env["MCP_SECRETS_MASTER_KEY"]  # the key file there is the one to look for
    locked.chmod(0)
    try:
        done = mcp_secrets_cli(env, "set", "github", "TOKEN", prefix=prefix, stdin=canary)
    finally:
        locked.chmod(0o700)

    assert done.returncode == EXIT_CONFIGURATION, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"mcp-secrets: error: MCP_SECRETS_CONFIG_DIR {config} cannot be looked in ")
    assert "Permission denied" in line
    assert canary not in done.stdout + done.stderr


def test_directories_under_the_home_directory_are_found_from_any_working_directory(
    env: dict[str, str], canary: str, tmp_path: Path
) -> None:
    """``~`` in a directory setting is the home directory, as in the key file's: no shell expands it in a
    client's config file, and a key made under a literal ``~`` beside the working directory was lost."""
    del env["MCP_SECRETS_MASTER_KEY"]
    home = tmp_path / "home"
    env.update(HOME=str(home), MCP_SECRETS_CONFIG_DIR="~/config", MCP_SECRETS_DATA_DIR="~/data")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()

    runs = [
        subprocess.run(
            [sys.executable, "-m", "mcp_secrets", "set", "github", "TOKEN", "--user", "alice"],
            env=env,
            cwd=cwd,
            input=canary + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for cwd in (first, second)
    ]

    assert [run.returncode for run in runs] == [0, 0], runs[1].stderr
    assert f"key file {home / 'config' / 'master.key'} (generated now)" in runs[0].stderr
    assert "updated for alice" in runs[1].stderr
    assert not (first / "~").exists()
    assert canary not in "".join(run.stdout + run.stderr for run in runs)


@pytest.mark.parametrize("setting", ["config_dir", "data_dir", "master_key_file"])
def test_a_path_under_the_home_of_no_such_user_is_an_invalid_setting(
    env: dict[str, str], setting: str
) -> None:
    """`~name/…` of an unknown name ended in a traceback."""
    env[f"MCP_SECRETS_{setting.upper()}"] = f"~no-such-user-{_random.token_hex(4)}/mcp-secrets"

    done = mcp_secrets_cli(env, "list", "--user", "alice")

    assert done.returncode == EXIT_CONFIGURATION
    assert f"mcp-secrets: error: invalid setting: {setting}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("setting", ["config_dir", "data_dir", "master_key_file", "servers"])
def test_an_empty_path_setting_is_invalid_rather_than_the_working_directory(
    env: dict[str, str], tmp_path: Path, setting: str
) -> None:
    """An empty variable was the working directory: the key and the store were made side by side there."""
    env[f"MCP_SECRETS_{setting.upper()}"] = ""
    work = tmp_path / "checkout"
    work.mkdir()

    done = mcp_secrets_cli(env, "token", "create", "alice", cwd=work)

    assert done.returncode == EXIT_CONFIGURATION
    assert f"mcp-secrets: error: invalid setting: {setting}" in done.stderr
    assert f"MCP_SECRETS_{setting.upper()}" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(work.iterdir()) == []


# A container's arbitrary uid: no entry in /etc/passwd, and (here) no HOME either.
WITHOUT_A_HOME = (
    sys.executable,
    "-c",
    (
        "import pwd, sys\n"
        "def no_entry(uid): raise KeyError(uid)\n"
        "pwd.getpwuid = no_entry\n"
        "from mcp_secrets.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    ),
)


@pytest.mark.parametrize(
    ("given", "missing"), [({}, "DATA_DIR"), ({"MCP_SECRETS_DATA_DIR": "data"}, "CONFIG_DIR")]
)
def test_a_user_without_a_home_directory_is_told_which_setting_to_give(
    env: dict[str, str], tmp_path: Path, given: dict[str, str], missing: str
) -> None:
    homes = ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "MCP_SECRETS_DATA_DIR", "MCP_SECRETS_CONFIG_DIR")
    for name in homes:
        env.pop(name, None)
    env.update({name: str(tmp_path / value) for name, value in given.items()})

    done = mcp_secrets_cli(env, "list", "--user", "alice", command=WITHOUT_A_HOME)

    assert done.returncode == EXIT_CONFIGURATION
    assert done.stderr == (
        "mcp-secrets: error: no home directory to keep mcp-secrets' files under: "
        f"set HOME, or MCP_SECRETS_{missing}\n"
    )


@pytest.mark.parametrize("command", [("serve",), ("list",), ("token", "list")])
def test_a_sqlite_url_under_the_home_of_no_such_user_is_a_configuration_error(
    env: dict[str, str], command: tuple[str, ...]
) -> None:
    env["MCP_SECRETS_DATABASE_URL"] = f"sqlite:///~no-such-user-{_random.token_hex(4)}/secrets.db"

    done = mcp_secrets_cli(env, *command)

    assert done.returncode == EXIT_CONFIGURATION
    assert "mcp-secrets: error: MCP_SECRETS_DATABASE_URL" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("given", ["environment", "option"])
def test_a_gateway_file_under_the_home_of_no_such_user_is_an_invalid_setting(
    env: dict[str, str], given: str
) -> None:
    servers = f"~no-such-user-{_random.token_hex(4)}/servers.json"
    if given == "environment":
        env["MCP_SECRETS_SERVERS"] = servers

    done = mcp_secrets_cli(env, "serve", *(["--servers", servers] if given == "option" else []))

    assert done.returncode == EXIT_CONFIGURATION
    assert "mcp-secrets: error: invalid setting: servers" in done.stderr
    assert "Traceback" not in done.stderr


def test_set_again_replaces_the_value_and_says_updated(env: dict[str, str], canary: str) -> None:
    first = set_from_stdin(env, "old\n", "github", "TOKEN", "--user", "alice")

    second = set_from_stdin(env, canary + "\n", "github", "TOKEN", "--user", "alice")

    assert [first.returncode, second.returncode] == [0, 0]
    assert "updated for alice" in second.stderr
    assert stored_secrets(env, "alice", "github") == {"TOKEN": canary}


def test_set_past_the_configured_number_of_secrets_per_user_is_refused(
    env: dict[str, str], canary: str
) -> None:
    limited = {**env, "MCP_SECRETS_MAX_SECRETS_PER_USER": "2"}
    kept = [set_from_stdin(limited, "v\n", "github", key, "--user", "alice") for key in ("ONE", "TWO")]

    refused = set_from_stdin(limited, canary + "\n", "github", "THREE", "--user", "alice")
    replaced = set_from_stdin(limited, "v2\n", "github", "TWO", "--user", "alice")

    assert [done.returncode for done in kept] == [0, 0]
    assert refused.returncode == 2
    assert "at most 2 secrets" in refused.stderr
    assert canary not in refused.stdout + refused.stderr
    assert replaced.returncode == 0, replaced.stderr
    assert stored_secrets(env, "alice", "github") == {"ONE": "v", "TWO": "v2"}


def test_set_stores_for_the_named_user_only(env: dict[str, str], canary: str) -> None:
    env["MCP_SECRETS_USER"] = "bob"

    done = set_from_stdin(env, canary, "github", "TOKEN", "--user", "alice")
    defaulted = set_from_stdin(env, "bobs", "github", "OTHER")

    assert [done.returncode, defaulted.returncode] == [0, 0]
    assert stored_secrets(env, "alice", "github") == {"TOKEN": canary}
    assert stored_secrets(env, "bob", "github") == {"OTHER": "bobs"}


# set's arguments with one bad name, and the field its error names
BAD_NAMES = [
    pytest.param(("github", "BAD KEY", "--user", "alice"), "key", id="bad-key"),
    pytest.param(("git/hub", "TOKEN", "--user", "alice"), "server", id="bad-server"),
    pytest.param(("github", "TOKEN", "--user", "bad user"), "username", id="bad-user"),
]


@pytest.mark.parametrize(("args", "field"), BAD_NAMES)
def test_set_with_a_bad_name_exits_2_without_storing_or_echoing_the_value(
    env: dict[str, str], canary: str, args: tuple[str, ...], field: str
) -> None:
    done = set_from_stdin(env, canary + "\n", *args)

    assert done.returncode == EXIT_CONFIGURATION
    assert f"{field} must be" in done.stderr
    assert canary not in done.stdout + done.stderr
    assert stored_secrets(env, "alice", "github") == {}


@pytest.mark.parametrize("command", [("set", "github", "TOKEN"), ("delete", "github", "TOKEN"), ("list",)])
def test_an_empty_user_is_refused_not_read_as_the_login_name(
    env: dict[str, str], canary: str, command: tuple[str, ...]
) -> None:
    # `--user "$TARGET"` with the variable unset must not act on the operator's own secrets.
    env["MCP_SECRETS_USER"] = "bob"
    assert set_from_stdin(env, "bobs", "github", "TOKEN").returncode == 0

    done = mcp_secrets_cli(env, *command, "--user", "", stdin=canary)

    assert done.returncode == EXIT_CONFIGURATION
    assert "username must be" in done.stderr
    assert canary not in done.stdout + done.stderr
    assert stored_secrets(env, "bob", "github") == {"TOKEN": "bobs"}


@pytest.mark.parametrize(("args", "field"), BAD_NAMES)
def test_set_names_a_bad_name_before_a_missing_master_key(
    env: dict[str, str], canary: str, args: tuple[str, ...], field: str
) -> None:
    del env["MCP_SECRETS_MASTER_KEY"]
    env["MCP_SECRETS_DATABASE_URL"] = "mongodb://127.0.0.1:9/mcp_secrets"

    done = set_from_stdin(env, canary + "\n", *args)

    assert done.returncode == EXIT_CONFIGURATION
    assert f"{field} must be" in done.stderr
    assert canary not in done.stdout + done.stderr


def test_set_with_an_empty_value_exits_2(env: dict[str, str]) -> None:
    done = set_from_stdin(env, "\n", "github", "TOKEN", "--user", "alice")

    assert done.returncode == EXIT_CONFIGURATION
    assert "value must not be empty" in done.stderr
    assert stored_secrets(env, "alice", "github") == {}


def test_set_with_stdin_closed_says_there_is_no_value_and_makes_no_key(env: dict[str, str]) -> None:
    done = mcp_secrets_cli(
        env,
        "set",
        "github",
        "TOKEN",
        command=("sh", "-c", 'exec "$0" -m mcp_secrets "$@" <&-', sys.executable),
    )

    assert done.returncode == EXIT_CONFIGURATION
    assert (
        done.stderr
        == "mcp-secrets: error: no value: stdin is closed; pipe the value in, or run this at a terminal\n"
    )
    assert not (Path(env["MCP_SECRETS_CONFIG_DIR"]) / "master.key").exists()


def test_a_stdin_that_fails_to_read_is_an_input_error_not_an_output_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Read in-process: no stdin a real process can be given fails to read before Python starts.
    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, _: Any) -> int:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Failing())))

    with pytest.raises(InvalidInputError, match=r"^no value: stdin cannot be read \(Input/output error\)$"):
        _read_value("Value (hidden): ")


def test_a_piped_value_that_is_not_utf8_is_refused_by_an_error_carrying_none_of_its_bytes(
    monkeypatch: pytest.MonkeyPatch, canary: str
) -> None:
    piped = io.BytesIO(canary.encode() + b"\xff\xfe")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(piped))

    with pytest.raises(InvalidInputError, match="value must be UTF-8 text") as raised:
        _read_value("Value (hidden): ")

    assert_not_leaked(raised.value, canary)


def test_a_value_read_by_getpass_that_is_not_utf8_is_refused_by_an_error_carrying_none_of_its_bytes(
    monkeypatch: pytest.MonkeyPatch, canary: str
) -> None:
    # getpass reads the prompt's line (on Windows, or with no controlling terminal) as text, decoded
    # strictly: the codec's error holds the line's bytes.
    typed = io.TextIOWrapper(io.BytesIO(canary.encode() + b"\xff\n"), encoding="utf-8", errors="strict")
    monkeypatch.setattr(getpass, "getpass", lambda _prompt: typed.readline())

    with pytest.raises(InvalidInputError, match="value must be UTF-8 text") as raised:
        _getpass("Value (hidden): ")

    assert_not_leaked(raised.value, canary)


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")
def test_set_at_a_terminal_stores_the_value_typed_at_the_hidden_prompt_and_never_shows_it(
    env: dict[str, str], canary: str
) -> None:
    returncode, shown = set_at_a_terminal(env, canary.encode() + b"\r", "github", "TOKEN", "--user", "alice")

    assert returncode == 0, shown
    assert "created for alice" in shown
    assert canary not in shown
    assert stored_secrets(env, "alice", "github") == {"TOKEN": canary}


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")
def test_set_at_a_terminal_ended_with_ctrl_d_stores_nothing_and_says_why(env: dict[str, str]) -> None:
    returncode, shown = set_at_a_terminal(env, b"\x04", "github", "TOKEN", "--user", "alice")

    assert returncode == EXIT_CONFIGURATION
    assert "Traceback" not in shown
    assert "no value was entered" in shown
    assert stored_secrets(env, "alice", "github") == {}


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")
@pytest.mark.parametrize("last_line_end", [b"\r", b""], ids=["ended", "unended"])
def test_set_at_a_terminal_refuses_a_pasted_multi_line_value_instead_of_keeping_its_first_line(
    env: dict[str, str], canary: str, last_line_end: bytes
) -> None:
    pasted = (
        b"-----BEGIN PRIVATE KEY-----\r" + canary.encode() + b"\r-----END PRIVATE KEY-----" + last_line_end
    )

    returncode, shown = set_at_a_terminal(env, pasted, "github", "PEM", "--user", "alice")

    assert returncode == EXIT_CONFIGURATION
    assert "pipe it on stdin" in shown
    assert canary not in shown
    assert stored_secrets(env, "alice", "github") == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's terminal line limit")
def test_set_at_a_terminal_refuses_a_value_the_terminal_may_have_cut_short(
    env: dict[str, str], canary: str
) -> None:
    typed = (canary * 200).encode()[:5000] + b"\r"  # past the 4095 bytes a Linux terminal keeps of a line

    returncode, shown = set_at_a_terminal(env, typed, "github", "TOKEN", "--user", "alice")

    assert returncode == EXIT_CONFIGURATION
    assert "pipe it on stdin" in shown
    assert canary not in shown
    assert stored_secrets(env, "alice", "github") == {}


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")
def test_set_at_a_terminal_refuses_bytes_that_are_not_utf8_in_one_line(
    env: dict[str, str], canary: str
) -> None:
    typed = canary.encode() + b"\xff\xfe\r"
    returncode, shown = set_at_a_terminal(env, typed, "github", "TOKEN", "--user", "alice")

    assert returncode == EXIT_CONFIGURATION
    assert "Traceback" not in shown
    assert "value must be UTF-8 text" in shown
    assert canary not in shown
    assert stored_secrets(env, "alice", "github") == {}


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")
@pytest.mark.parametrize(("args", "field"), BAD_NAMES)
def test_set_at_a_terminal_refuses_a_bad_name_before_asking_for_the_value(
    env: dict[str, str], canary: str, args: tuple[str, ...], field: str
) -> None:
    del env["MCP_SECRETS_MASTER_KEY"]  # a first run: a refused command makes no key either

    returncode, shown = set_at_a_terminal(env, canary.encode() + b"\r", *args)

    assert returncode == EXIT_CONFIGURATION
    assert f"{field} must be" in shown
    assert PROMPT_END.decode() not in shown
    assert not (Path(env["MCP_SECRETS_CONFIG_DIR"]) / "master.key").exists()


def test_set_takes_no_value_argument(env: dict[str, str], canary: str) -> None:
    done = set_from_stdin(env, "", "github", "TOKEN", canary)

    assert done.returncode == EXIT_CONFIGURATION  # argparse's usage error
    assert "unrecognized arguments" in done.stderr


@pytest.mark.parametrize(
    "misplaced",
    [
        pytest.param(lambda value: ("github", "TOKEN", value), id="third-argument"),
        pytest.param(lambda value: ("github", "TOKEN", f"--value={value}"), id="made-up-option"),
        pytest.param(lambda value: ("github", "--user", "alice", "TOKEN", value), id="after-an-option"),
    ],
)
def test_set_with_a_value_on_the_command_line_refuses_it_without_repeating_it(
    env: dict[str, str], canary: str, misplaced: Callable[[str], tuple[str, ...]]
) -> None:
    done = set_from_stdin(env, "", *misplaced(canary))

    assert done.returncode == EXIT_CONFIGURATION
    assert "unrecognized arguments" in done.stderr
    assert "hidden prompt" in done.stderr
    assert canary not in done.stdout + done.stderr
    assert stored_secrets(env, "alice", "github") == {}


@pytest.mark.parametrize("option", ["-h{}", "--help={}", "--user=alice -h{}"])
def test_set_with_a_value_given_to_help_refuses_it_without_repeating_it(
    env: dict[str, str], canary: str, option: str
) -> None:
    done = set_from_stdin(env, "", "github", "TOKEN", *option.format(canary).split())

    assert done.returncode == EXIT_CONFIGURATION
    assert "takes no value" in done.stderr
    assert canary not in done.stdout + done.stderr
    assert stored_secrets(env, "alice", "github") == {}


@pytest.mark.parametrize(
    "command", [["audit", "--user"], ["list", "--user"], ["token", "revoke"], ["audit", "--unknown"]]
)
def test_an_argument_that_is_not_utf8_is_a_usage_error_not_a_traceback(
    env: dict[str, str], command: list[str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_secrets", *command, b"al\xffice"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert b"not valid UTF-8" in done.stderr
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize(
    "setting", ["MCP_SECRETS_LEGACY_KEY", "MCP_SECRETS_DATABASE_URL", "MCP_SECRETS_MASTER_KEY"]
)
def test_a_secret_setting_that_is_not_utf8_is_named_without_a_traceback_or_its_bytes(
    env: dict[str, str], setting: str
) -> None:
    canary, master_key = new_canary(), generate_master_key()
    given = {"MCP_SECRETS_MASTER_KEY": master_key}
    given[setting] = "mongodb://u:" if setting == "MCP_SECRETS_DATABASE_URL" else ""
    raw_env = {name.encode(): value.encode() for name, value in {**env, **given}.items()}
    raw_env[setting.encode()] += canary.encode() + b"\xff\xfe@localhost/db"

    done = subprocess.run(
        [sys.executable, "-m", "mcp_secrets", "set", "github", "TOKEN"],
        env=raw_env,
        input=b"value",
        capture_output=True,
        check=False,
    )

    assert done.returncode == EXIT_CONFIGURATION, done.stderr
    assert f"({setting}): it is not UTF-8 text".encode() in done.stderr
    assert b"Traceback" not in done.stderr
    for output in (done.stdout, done.stderr):
        assert canary.encode() not in output
        assert b"\\udcff" not in output
        assert b"\xff" not in output
        assert master_key.encode() not in output


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda _path: None, "cannot be read: No such file or directory"),
        (lambda path: path.mkdir(), "cannot be read: Is a directory"),
        (os.mkfifo, "is not a regular file"),
        (lambda path: os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)), "holds no master key"),
    ],
)
def test_a_key_file_that_gives_no_key_is_refused_naming_its_setting(
    env: dict[str, str], tmp_path: Path, make: Callable[[Path], object], why: str
) -> None:
    key_file = tmp_path / "master.key"
    make(key_file)
    del env["MCP_SECRETS_MASTER_KEY"]
    env["MCP_SECRETS_MASTER_KEY_FILE"] = str(key_file)

    done = mcp_secrets_cli(env, "serve")

    assert done.returncode == EXIT_CONFIGURATION, done.stderr
    assert done.stderr == f"mcp-secrets: error: MCP_SECRETS_MASTER_KEY_FILE {key_file} {why}\n"
    assert done.stdout == ""


def test_a_key_file_too_large_to_be_one_is_refused_unread(env: dict[str, str], tmp_path: Path) -> None:
    master_key = generate_master_key()
    key_file = tmp_path / "disk.img"
    with key_file.open("wb") as image:
        image.write(f"{master_key}\n".encode())
        image.truncate(MAX_KEY_FILE_BYTES + 1)  # sparse: no disk taken
    key_file.chmod(0o600)
    del env["MCP_SECRETS_MASTER_KEY"]
    env["MCP_SECRETS_MASTER_KEY_FILE"] = str(key_file)

    done = mcp_secrets_cli(env, "set", "github", "TOKEN", stdin="value")

    assert done.returncode == EXIT_CONFIGURATION, done.stderr
    assert f"MCP_SECRETS_MASTER_KEY_FILE {key_file} is larger than a key file can be" in done.stderr
    assert master_key not in done.stdout + done.stderr


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_database_others_can_write_is_named_as_open_to_their_tokens(env: dict[str, str]) -> None:
    # Whoever can write the file can add a token for any user: "names and times, no values" undersold it.
    canary = new_canary()
    assert set_from_stdin(env, canary, "github", "TOKEN", "--user", "alice").returncode == 0
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"
    database.chmod(0o666)

    done = mcp_secrets_cli(env, "list", "--user", "alice")

    assert done.returncode == 0, done.stderr
    assert (
        f"the database file {database} is writable by other users, who can add API tokens for any user "
        f"and change or delete records; run: chmod 600 {database}"
    ) in done.stderr
    assert "readable by other users" not in done.stderr
    assert canary not in done.stdout + done.stderr


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode", [0o1777, 0o770], ids=["world-writable-sticky-as-tmp", "group-writable"])
def test_a_database_in_a_directory_others_can_write_is_named_as_open_to_their_tokens(
    env: dict[str, str], tmp_path: Path, mode: int
) -> None:
    # SQLite reads a -wal file it finds beside the database as part of it: whoever can create one there while
    # no process has the store open (the sticky bit of /tmp does not stop that) can add a token for any user.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    database = shared / "secrets.db"
    env["MCP_SECRETS_DATABASE_URL"] = f"sqlite:///{database}"
    canary = new_canary()

    made = set_from_stdin(env, canary, "github", "TOKEN", "--user", "alice")
    listed = mcp_secrets_cli(env, "list", "--user", "alice")

    assert (made.returncode, listed.returncode) == (0, 0), made.stderr + listed.stderr
    for done in (made, listed):
        assert (
            f"the database file {database} is in {shared}, a directory other users can write: they can put "
            "a -wal file of theirs beside it, which SQLite reads as part of the store, and so add API tokens "
            "for any user and change or delete records; keep the store in a directory only its owner can "
            "write"
        ) in done.stderr
        assert canary not in done.stdout + done.stderr


def _key_in_a_file(env: dict[str, str], directory: Path) -> tuple[str, Path]:
    """Move the master key of ``env`` to a 0600 file in a new owner-only ``directory``: the key, the file."""
    master_key = env.pop("MCP_SECRETS_MASTER_KEY")
    key_file = directory / "master.key"
    directory.mkdir(mode=0o700)
    key_file.write_text(master_key + "\n")
    key_file.chmod(0o600)
    env["MCP_SECRETS_MASTER_KEY_FILE"] = str(key_file)
    return master_key, key_file


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_key_file_others_can_write_is_named_as_open_to_their_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    master_key, key_file = _key_in_a_file(env, tmp_path / "keys")
    key_file.chmod(0o622)  # not readable by others, but writable: a key of theirs would encrypt what comes
    canary = new_canary()

    done = set_from_stdin(env, canary, "github", "TOKEN", "--user", "alice")

    assert done.returncode == 0, done.stderr
    assert (
        f"the master key file {key_file} is writable by other users, who can put a key of theirs in it; "
        f"run: chmod 600 {key_file}"
    ) in done.stderr
    assert master_key not in done.stdout + done.stderr
    assert canary not in done.stdout + done.stderr


ANOTHER_UID = 4242  # a user with no name here: the warning names it by its number
needs_root_to_give_files_away = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give a file to another user"
)


@needs_root_to_give_files_away
def test_a_key_file_another_user_owns_is_named_as_open_to_their_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Its owner may rewrite it whatever its mode: a key of theirs would encrypt what comes.
    master_key, key_file = _key_in_a_file(env, tmp_path / "keys")
    canary = new_canary()

    unowned = set_from_stdin(env, canary, "github", "TOKEN", "--user", "alice")
    os.chown(key_file, ANOTHER_UID, -1)
    owned_by_another = set_from_stdin(env, canary, "github", "TOKEN", "--user", "alice")
    os.chown(key_file, 0, -1)
    os.chown(key_file.parent, ANOTHER_UID, -1)  # the directory's owner can put another file in its place
    in_their_directory = set_from_stdin(env, canary, "github", "TOKEN", "--user", "alice")

    assert (unowned.returncode, owned_by_another.returncode, in_their_directory.returncode) == (0, 0, 0)
    assert "owned by" not in unowned.stderr
    assert (
        f"the master key file {key_file} is owned by another user (uid {ANOTHER_UID}), who can put a key "
        "of theirs in it"
    ) in owned_by_another.stderr
    assert (
        f"the master key file {key_file} is in {key_file.parent}, owned by another user (uid {ANOTHER_UID}), "
        "who can put a key of theirs in it"
    ) in in_their_directory.stderr
    outputs = "".join(done.stdout + done.stderr for done in (unowned, owned_by_another, in_their_directory))
    assert master_key not in outputs
    assert canary not in outputs


@needs_root_to_give_files_away
def test_a_key_file_named_by_a_link_in_a_directory_another_user_owns_is_named_as_open_to_their_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    # The file and the directories it really is in are this user's, but the link naming it is not: the
    # directory's owner can point it at a key of theirs.
    master_key, key_file = _key_in_a_file(env, tmp_path / "keys")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "master.key").symlink_to(key_file)
    os.chown(theirs, ANOTHER_UID, -1)
    env["MCP_SECRETS_MASTER_KEY_FILE"] = str(theirs / "master.key")
    canary = new_canary()

    done = set_from_stdin(env, canary, "github", "TOKEN", "--user", "alice")

    assert done.returncode == 0, done.stderr
    assert (
        f"the master key file {theirs / 'master.key'} is in {theirs}, owned by another user "
        f"(uid {ANOTHER_UID}), who can put a key of theirs in it"
    ) in done.stderr
    assert master_key not in done.stdout + done.stderr
    assert canary not in done.stdout + done.stderr


@needs_root_to_give_files_away
def test_a_database_another_user_owns_is_named_as_open_to_their_tokens(env: dict[str, str]) -> None:
    canary = new_canary()
    assert set_from_stdin(env, canary, "github", "TOKEN", "--user", "alice").returncode == 0
    data_dir = Path(env["MCP_SECRETS_DATA_DIR"])
    database = data_dir / "secrets.db"

    os.chown(database, ANOTHER_UID, -1)
    owned_by_another = mcp_secrets_cli(env, "list", "--user", "alice")
    os.chown(database, 0, -1)
    os.chown(data_dir, ANOTHER_UID, -1)
    in_their_directory = mcp_secrets_cli(env, "list", "--user", "alice")

    assert (owned_by_another.returncode, in_their_directory.returncode) == (0, 0)
    assert (
        f"the database file {database} is owned by another user (uid {ANOTHER_UID}), who can add API tokens "
        "for any user and change or delete records"
    ) in owned_by_another.stderr
    assert (
        f"the database file {database} is in {data_dir}, owned by another user (uid {ANOTHER_UID}), who can "
        "add API tokens for any user and change or delete records"
    ) in in_their_directory.stderr
    assert canary not in owned_by_another.stdout + owned_by_another.stderr + in_their_directory.stderr


GATEWAY_OPEN_TO = "who can have users' secrets sent to a program of theirs"


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_gateway_file_others_can_write_is_named_as_open_to_their_programs(
    env: dict[str, str], tmp_path: Path
) -> None:
    # A downstream's command is run with its users' secrets: whoever writes the file chooses the command.
    servers = tmp_path / "servers.json"
    servers.write_text('{"mcpServers": {}}', encoding="utf-8")
    servers.chmod(0o644)
    kept = mcp_secrets_cli(env, "serve", "--servers", str(servers))
    servers.chmod(0o664)
    open_to_others = mcp_secrets_cli(env, "serve", "--servers", str(servers))

    assert (kept.returncode, open_to_others.returncode) == (0, 0), open_to_others.stderr
    assert GATEWAY_OPEN_TO not in kept.stderr
    assert (
        f"the gateway file {servers} is writable by other users, {GATEWAY_OPEN_TO}; run: chmod go-w {servers}"
    ) in open_to_others.stderr
    assert open_to_others.stderr.count(GATEWAY_OPEN_TO) == 1  # read twice at the start, named once


@needs_root_to_give_files_away
def test_a_gateway_file_another_user_owns_is_named_as_open_to_their_programs(
    env: dict[str, str], tmp_path: Path
) -> None:
    servers = tmp_path / "servers.json"
    servers.write_text('{"mcpServers": {}}', encoding="utf-8")
    os.chown(servers, ANOTHER_UID, -1)

    done = mcp_secrets_cli(env, "serve", "--servers", str(servers))

    assert done.returncode == 0, done.stderr
    assert (
        f"the gateway file {servers} is owned by another user (uid {ANOTHER_UID}), {GATEWAY_OPEN_TO}"
    ) in done.stderr


@pytest.mark.parametrize("spelling", ["base64url", "base64"])
def test_a_master_key_given_as_the_key_files_path_is_refused_without_quoting_it(
    env: dict[str, str], spelling: str
) -> None:
    raw = os.urandom(32)
    master_key = generate_master_key() if spelling == "base64url" else base64.b64encode(raw).decode()
    del env["MCP_SECRETS_MASTER_KEY"]
    env["MCP_SECRETS_MASTER_KEY_FILE"] = master_key

    done = mcp_secrets_cli(env, "serve")

    assert done.returncode == EXIT_CONFIGURATION, done.stderr
    assert "(MCP_SECRETS_MASTER_KEY_FILE): it holds a master key, not the path" in done.stderr
    for output in (done.stdout, done.stderr):
        assert_no_fragment_of(master_key, output)


@pytest.mark.parametrize("where", ["MCP_SECRETS_MASTER_KEY", "MCP_SECRETS_MASTER_KEY_FILE"])
def test_a_master_key_given_twice_is_refused_naming_where_it_is_given(
    env: dict[str, str], tmp_path: Path, where: str
) -> None:
    master_key, other = generate_master_key(), generate_master_key()
    keys = f"{master_key}\n{other}\n# the old one again\n{master_key}\n"
    if where == "MCP_SECRETS_MASTER_KEY":
        env[where] = keys.replace("\n", ",")
        named = where
    else:
        key_file = tmp_path / "keys"
        key_file.write_text(keys)
        key_file.chmod(0o600)
        del env["MCP_SECRETS_MASTER_KEY"]
        env[where] = str(key_file)
        named = f"MCP_SECRETS_MASTER_KEY_FILE {key_file}"

    done = mcp_secrets_cli(env, "set", "github", "TOKEN", stdin="value")

    assert done.returncode == EXIT_CONFIGURATION, done.stderr
    assert f"{named} holds master key " in done.stderr
    assert "twice: keep one" in done.stderr
    for output in (done.stdout, done.stderr):
        assert master_key not in output
        assert other not in output


def test_other_commands_still_name_an_unrecognized_argument(env: dict[str, str]) -> None:
    done = mcp_secrets_cli(env, "audit", "--limt", "5")

    assert done.returncode == EXIT_CONFIGURATION
    assert "unrecognized arguments: --limt 5" in done.stderr


HUGE = "9" * 20  # past SQLite's integers, C's and dates'


@pytest.mark.parametrize(
    ("args", "option"),
    [
        pytest.param(("audit", "--limit", HUGE), "--limit", id="audit-limit"),
        pytest.param(("prune-audit", "--older-than", HUGE, "--dry-run"), "--older-than", id="prune-days"),
        pytest.param(("prune-audit", "--older-than", "1000000"), "--older-than", id="prune-days-past-year-1"),
        pytest.param(
            ("prune-audit", "--older-than", "30", "--batch-size", HUGE), "--batch-size", id="prune-batch"
        ),
        pytest.param(
            ("prune-audit", "--older-than", "30", "--batch-size", "100001"),
            "--batch-size",
            id="prune-batch-past-one-delete",
        ),
        pytest.param(("rotate", "--batch-size", HUGE), "--batch-size", id="rotate-batch"),
        pytest.param(("migrate-legacy", "--batch-size", HUGE), "--batch-size", id="migrate-batch"),
    ],
)
def test_a_number_out_of_range_is_a_usage_error_naming_the_option(
    env: dict[str, str], args: tuple[str, ...], option: str
) -> None:
    done = mcp_secrets_cli(env, *args)

    assert done.returncode == EXIT_CONFIGURATION
    assert "Traceback" not in done.stderr
    assert f"argument {option}: must be at least 1 and at most" in done.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        pytest.param(("prune-audit", "--older-than", "1.5"), "--older-than", id="prune-half-days"),
        pytest.param(("audit", "--limit", "ten"), "--limit", id="audit-limit-word"),
        pytest.param(("rotate", "--batch-size", "1e3"), "--batch-size", id="rotate-batch-float"),
        pytest.param(
            ("token", "create", "alice", "--expires-days", "week"), "--expires-days", id="expiry-word"
        ),
    ],
)
def test_a_number_that_is_not_one_is_a_usage_error_saying_what_the_option_takes(
    env: dict[str, str], args: tuple[str, ...], option: str
) -> None:
    """argparse named the CLI's own converter ("invalid _positive value"), which tells a user nothing."""
    done = mcp_secrets_cli(env, *args)

    assert done.returncode == EXIT_CONFIGURATION
    assert f"argument {option}: must be " in done.stderr
    assert "invalid _" not in done.stderr


# --- list and delete: one user's secrets, by name ---------------------------------------------------


LIST_HEADER = ["SERVER", "KEY", "CREATED", "(UTC)", "UPDATED", "(UTC)", "LAST", "USED", "(UTC)"]


def stored(env: dict[str, str], *records: tuple[str, str, str]) -> list[str]:
    """``mcp-secrets set`` each (username, server, key) with a fresh canary; the canaries."""
    values = []
    for username, server, key in records:
        values.append(new_canary())
        done = set_from_stdin(env, values[-1], server, key, "--user", username)
        assert done.returncode == 0, done.stderr
    return values


def test_list_shows_one_users_secret_names_and_times_never_a_value(env: dict[str, str]) -> None:
    values = stored(
        env, ("alice", "github", "TOKEN"), ("alice", "linear", "API_KEY"), ("bob", "slack", "BOT")
    )
    stored_secrets(env, "alice", "github")  # a use: github's TOKEN has a last use, linear's none

    done = mcp_secrets_cli(env, "list", "--user", "alice")

    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == LIST_HEADER
    fields = [row.split() for row in rows]
    assert [(server, key) for server, key, *_ in fields] == [("github", "TOKEN"), ("linear", "API_KEY")]
    assert [len(row) for row in fields] == [8, 7]  # two dates and times, then a third or "never"
    assert fields[1][-1] == "never"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", row[2]) for row in fields)
    assert "slack" not in done.stdout
    assert not any(value in done.stdout + done.stderr for value in values)


def test_list_and_delete_need_no_master_key_where_writing_a_value_does(env: dict[str, str]) -> None:
    """They never read a value: an administrator's shell need not hold the key, and a lost key still lets
    a user see what to store again, and clear what cannot be read any more."""
    values = stored(env, ("alice", "github", "TOKEN"), ("alice", "github", "OLD"))
    del env["MCP_SECRETS_MASTER_KEY"]  # and no key file: nothing in the environment holds a key

    listed = mcp_secrets_cli(env, "list", "--user", "alice")
    deleted = mcp_secrets_cli(env, "delete", "github", "OLD", "--user", "alice")
    left = mcp_secrets_cli(env, "list", "--user", "alice", "--json")
    trail = mcp_secrets_cli(env, "audit", "--user", "alice", "--json")
    written = set_from_stdin(env, new_canary() + "\n", "github", "NEW", "--user", "alice")

    assert listed.returncode == 0, listed.stderr
    rows = [row.split()[:2] for row in listed.stdout.splitlines()[1:]]
    assert rows == [["github", "OLD"], ["github", "TOKEN"]]
    assert deleted.returncode == 0, deleted.stderr
    assert "Secret OLD for server github deleted for alice." in deleted.stderr
    assert [json.loads(line)["key"] for line in left.stdout.splitlines()] == ["TOKEN"]
    newest = json.loads(trail.stdout.splitlines()[0])
    assert (newest["action"], newest["key"], newest["transport"]) == ("deleted", "OLD", "cli")
    # Writing a value still needs the key, and says so; it does not make a new one over these secrets.
    assert written.returncode == EXIT_CONFIGURATION
    assert "MCP_SECRETS_MASTER_KEY" in written.stderr
    assert not Path(env["MCP_SECRETS_CONFIG_DIR"], "master.key").exists()
    outputs = "".join(done.stdout + done.stderr for done in (listed, deleted, left, trail, written))
    assert any(value in outputs for value in values) is False


def test_list_on_mongodb_needs_no_master_key(env: dict[str, str]) -> None:
    """MongoDB refuses to start without an explicit key; a listing, which decrypts nothing, does not."""
    del env["MCP_SECRETS_MASTER_KEY"]
    at = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    held = {"username": "alice", "server": "github", "key": "TOKEN", "value": "v1:x:y"}
    documents = {"user_secrets": [{**held, "created_at": at, "updated_at": at}]}
    with mongo_wire_server(server_holding(documents)) as port:
        env["MCP_SECRETS_DATABASE_URL"] = f"mongodb://127.0.0.1:{port}/db"
        listed = mcp_secrets_cli(env, "list", "--user", "alice", "--json")

    assert listed.returncode == 0, listed.stderr
    assert [(row["server"], row["key"]) for row in map(json.loads, listed.stdout.splitlines())] == [
        ("github", "TOKEN")
    ]


def test_debug_logging_keeps_the_mongodb_driver_s_command_documents_out(env: dict[str, str]) -> None:
    """pymongo logs each command and reply whole at DEBUG: a secret's ciphertext, a token's hash."""
    written: list[dict[str, Any]] = []
    holding = server_holding({})

    def answer(command: dict[str, Any]) -> dict[str, Any]:
        if "update" in command:
            written.extend(command["updates"])
        return holding(command)

    with mongo_wire_server(answer) as port:
        env["MCP_SECRETS_DATABASE_URL"] = f"mongodb://127.0.0.1:{port}/db"
        env["MCP_SECRETS_LOG_LEVEL"] = "DEBUG"
        done = mcp_secrets_cli(env, "set", "github", "TOKEN", "--user", "alice", stdin=new_canary() + "\n")

    ciphertexts = [update["u"]["$set"]["value"] for update in written if "value" in update["u"]["$set"]]
    assert ciphertexts, (done.returncode, done.stderr)
    assert "pymongo.topology" in done.stderr  # the driver's other DEBUG logs still come: DEBUG was on
    assert "Command started" not in done.stderr
    assert any(ciphertext in done.stderr for ciphertext in ciphertexts) is False


def test_list_defaults_to_the_servers_user_and_takes_one_server(env: dict[str, str]) -> None:
    stored(env, ("alice", "github", "TOKEN"), ("bob", "github", "TOKEN"), ("bob", "slack", "BOT"))
    env["MCP_SECRETS_USER"] = "bob"

    done = mcp_secrets_cli(env, "list", "--server", "slack")

    assert done.returncode == 0, done.stderr
    assert [row.split()[:2] for row in done.stdout.splitlines()[1:]] == [["slack", "BOT"]]


def test_list_and_audit_read_an_empty_server_as_every_server_as_the_tools_do(env: dict[str, str]) -> None:
    # `--server "$SERVER"` with SERVER unset: the tools and the REST API list every server for "" too.
    stored(env, ("bob", "github", "TOKEN"), ("bob", "slack", "BOT"))
    env["MCP_SECRETS_USER"] = "bob"

    listed = mcp_secrets_cli(env, "list", "--server", "")
    audited = mcp_secrets_cli(env, "audit", "--user", "bob", "--server", "", "--json")

    assert listed.returncode == 0, listed.stderr
    rows = [row.split()[:2] for row in listed.stdout.splitlines()[1:]]
    assert rows == [["github", "TOKEN"], ["slack", "BOT"]]
    assert audited.returncode == 0, audited.stderr
    assert sorted(json.loads(line)["server"] for line in audited.stdout.splitlines()) == ["github", "slack"]


def test_audit_reads_an_empty_user_as_every_user_as_it_reads_an_empty_server(env: dict[str, str]) -> None:
    # `--user "$AUDITED"` with AUDITED unset showed an empty trail, as if nobody had done anything.
    stored(env, ("alice", "github", "TOKEN"), ("bob", "slack", "BOT"))

    audited = mcp_secrets_cli(env, "audit", "--user", "", "--json")

    assert audited.returncode == 0, audited.stderr
    assert sorted(json.loads(line)["actor"] for line in audited.stdout.splitlines()) == ["alice", "bob"]


def test_list_json_prints_one_object_per_secret_and_never_a_value(env: dict[str, str]) -> None:
    values = stored(env, ("alice", "github", "TOKEN"), ("alice", "linear", "API_KEY"))
    stored_secrets(env, "alice", "github")

    done = mcp_secrets_cli(env, "list", "--user", "alice", "--json")

    assert done.returncode == 0, done.stderr
    listed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(entry["username"], entry["server"], entry["key"]) for entry in listed] == [
        ("alice", "github", "TOKEN"),
        ("alice", "linear", "API_KEY"),
    ]
    assert all(
        set(entry) == {"username", "server", "key", "created_at", "updated_at", "last_used_at"}
        for entry in listed
    )
    assert listed[1]["last_used_at"] is None
    times = [entry[name] for entry in listed for name in ("created_at", "updated_at")]
    times.append(listed[0]["last_used_at"])
    assert all(datetime.fromisoformat(time).utcoffset() == timedelta(0) for time in times)
    assert not any(value in done.stdout + done.stderr for value in values)


def test_list_json_escapes_what_a_terminal_would_act_on_and_still_reads_back(env: dict[str, str]) -> None:
    hostile = f"TOKEN{TERMINAL_MOVES}[2K"
    stored(env, ("alice", "github", "TOKEN"))
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE user_secrets SET key = ?", (hostile,))

    done = mcp_secrets_cli(env, "list", "--user", "alice", "--json")

    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.isprintable()
    assert json.loads(line)["key"] == hostile


def test_list_of_a_user_without_secrets_prints_the_header_and_says_so(env: dict[str, str]) -> None:
    stored(env, ("bob", "github", "TOKEN"))

    done = mcp_secrets_cli(env, "list", "--user", "alice")

    assert done.returncode == 0, done.stderr
    assert [line.split() for line in done.stdout.splitlines()] == [LIST_HEADER]
    assert "No secrets stored for alice." in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["delete", "github", "TOKEN"],
        ["audit"],
        ["prune-audit", "--older-than", "1"],
        ["rotate", "--dry-run"],
        ["migrate-legacy"],
        ["token", "list"],
        ["token", "revoke", "0123456789"],
    ],
)
def test_a_command_that_stores_nothing_makes_no_store_where_there_is_none(
    env: dict[str, str], command: list[str]
) -> None:
    # A mistyped database path would otherwise get an empty store, and every listing of it say "none".
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / "elsewhere.db"
    env["MCP_SECRETS_DATABASE_URL"] = f"sqlite:///{database}"

    done = mcp_secrets_cli(env, *command)

    assert done.returncode == 1
    assert f"there is no SQLite store at {database}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not database.exists()
    assert not Path(env["MCP_SECRETS_DATA_DIR"]).exists()


@pytest.mark.parametrize("holding", ["another program's tables", "nothing"])
@pytest.mark.parametrize(
    "command",
    [["list", "--user", "alice"], ["audit"], ["token", "list"], ["delete", "s", "K", "--user", "alice"]],
)
def test_a_command_that_stores_nothing_leaves_a_file_that_is_not_a_store_as_it_was(
    env: dict[str, str], tmp_path: Path, holding: str, command: list[str]
) -> None:
    # A database URL naming another program's SQLite file (or an empty file) must not have the store's
    # tables written into it, nor the file switched to WAL, by a command that only reads or removes.
    database = tmp_path / "other.db"
    if holding == "nothing":
        database.touch()
    else:
        with closing(sqlite3.connect(database)) as other:
            other.execute("CREATE TABLE notes (body TEXT)")
            other.commit()
    before = database.read_bytes()
    env["MCP_SECRETS_DATABASE_URL"] = f"sqlite:///{database}"

    done = mcp_secrets_cli(env, *command)

    assert done.returncode == 1
    assert f"the file {database} is not an mcp-secrets store" in done.stderr
    assert "Traceback" not in done.stderr
    assert database.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.db"]  # no -wal, no -shm


@pytest.mark.parametrize(
    "command",
    [
        ["list", "--user", "alice"],
        ["audit"],
        ["token", "list"],
        ["verify"],
        ["delete", "s", "K", "--user", "alice"],
    ],
)
def test_a_command_that_stores_nothing_says_an_empty_store_file_is_a_first_run_not_finished(
    env: dict[str, str], command: list[str], canary: str
) -> None:
    # A first run cut short by a full disk leaves secrets.db at 0 bytes: made before SQLite writes a page
    # (a real one: an ext4 with no block left and inodes to spare). No setting names another file.
    data = Path(env["MCP_SECRETS_DATA_DIR"])
    data.mkdir(mode=0o700)
    database = data / "secrets.db"
    database.touch(mode=0o600)

    done = mcp_secrets_cli(env, *command)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last_line = done.stderr.strip().splitlines()[-1]
    assert f"the file {database} is not an mcp-secrets store: it is empty" in last_line, last_line
    assert "a first run that did not finish" in last_line
    assert "mcp-secrets set" in last_line
    assert database.stat().st_size == 0
    assert sorted(path.name for path in data.iterdir()) == ["secrets.db"]  # no -wal, no -shm
    # What the message says to do makes it a store.
    assert mcp_secrets_cli(env, "set", "s", "K", "--user", "alice", stdin=canary).returncode == 0
    listed = mcp_secrets_cli(env, "list", "--user", "alice")
    assert listed.returncode == 0, listed.stderr
    assert canary not in done.stderr + listed.stdout + listed.stderr


@pytest.mark.parametrize("command", [["list"], ["audit"], ["token", "list"], ["serve"]])
def test_a_sqlite_path_that_cannot_be_looked_at_is_a_store_error_not_a_traceback(
    env: dict[str, str], command: list[str]
) -> None:
    Path(env["MCP_SECRETS_DATA_DIR"]).mkdir(parents=True)
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / ("d" * 300) / "secrets.db"  # a name too long
    env["MCP_SECRETS_DATABASE_URL"] = f"sqlite:///{database}"

    done = mcp_secrets_cli(env, *command)

    assert done.returncode == 1
    assert f"the SQLite store at {database} cannot be opened" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(lambda env: mcp_secrets_cli(env, "token", "create", "alice"), id="token-create"),
        pytest.param(lambda env: set_from_stdin(env, new_canary(), "github", "TOKEN"), id="set"),
    ],
)
def test_a_command_that_stores_something_makes_the_store_at_its_first_run(
    env: dict[str, str], run: Callable[[dict[str, str]], subprocess.CompletedProcess[str]]
) -> None:
    done = run(env)

    assert done.returncode == 0, done.stderr
    assert (Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db").exists()


def test_directories_given_with_a_crlf_line_end_are_the_directories_named(
    env: dict[str, str], tmp_path: Path
) -> None:
    # As an env file saved on Windows gives them (docker --env-file, a client config's env block).
    config, data = tmp_path / "config", tmp_path / "data"
    del env["MCP_SECRETS_MASTER_KEY"]
    env["MCP_SECRETS_CONFIG_DIR"], env["MCP_SECRETS_DATA_DIR"] = f"{config}\r\n", f"{data} \r"

    first = set_from_stdin(env, new_canary(), "github", "TOKEN")

    assert first.returncode == 0, first.stderr
    assert f"master key: key file {config / 'master.key'} (generated now)\n" in first.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config", "data"]
    assert (data / "secrets.db").is_file()
    env["MCP_SECRETS_MASTER_KEY_FILE"] = f"{config / 'master.key'}\r\n"
    del env["MCP_SECRETS_CONFIG_DIR"]

    verified = mcp_secrets_cli(env, "verify")  # the key just made, through the key file's setting

    assert verified.returncode == 0, verified.stderr
    assert "1 record" in verified.stderr


@pytest.mark.parametrize("setting", ["MCP_SECRETS_DATA_DIR", "MCP_SECRETS_CONFIG_DIR"])
def test_a_database_url_given_as_a_directory_is_refused_without_quoting_its_password(
    env: dict[str, str], tmp_path: Path, setting: str
) -> None:
    password = new_canary()
    env[setting] = f"mongodb://alice:{password}@db.example:27017/mcp"

    done = mcp_secrets_cli(env, "serve", cwd=tmp_path)

    assert done.returncode == EXIT_CONFIGURATION, done.stderr
    assert f"({setting}): it is a URL, not a path" in done.stderr
    for output in (done.stdout, done.stderr):
        assert password not in output
    assert not any(password in str(path) for path in tmp_path.rglob("*"))


def test_an_invalid_mcp_secrets_user_is_named_as_the_setting_at_fault(env: dict[str, str]) -> None:
    env["MCP_SECRETS_USER"] = "bad user"

    done = mcp_secrets_cli(env, "list")

    assert done.returncode == EXIT_CONFIGURATION
    assert done.stderr.startswith("mcp-secrets: error: MCP_SECRETS_USER is not a valid username: it must be ")
    assert "local username" not in done.stderr


def test_list_refuses_a_bad_username(env: dict[str, str]) -> None:
    done = mcp_secrets_cli(env, "list", "--user", "bad user")

    assert done.returncode == EXIT_CONFIGURATION
    assert "username must be" in done.stderr
    assert done.stdout == ""


def test_delete_removes_one_secret_of_one_user_and_records_it(env: dict[str, str]) -> None:
    values = stored(
        env, ("alice", "github", "TOKEN"), ("alice", "github", "OTHER"), ("bob", "github", "TOKEN")
    )

    done = mcp_secrets_cli(env, "delete", "github", "TOKEN", "--user", "alice")

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "Secret TOKEN for server github deleted for alice." in done.stderr
    trail = mcp_secrets_cli(env, "audit", "--json", "--user", "alice", "--limit", "1")
    (event,) = [json.loads(line) for line in trail.stdout.splitlines()]
    assert (event["action"], event["server"], event["key"], event["transport"]) == (
        "deleted",
        "github",
        "TOKEN",
        "cli",
    )
    assert not any(value in done.stdout + done.stderr + trail.stdout for value in values)
    assert stored_secrets(env, "alice", "github") == {"OTHER": values[1]}
    assert stored_secrets(env, "bob", "github") == {"TOKEN": values[2]}


def test_delete_defaults_to_the_servers_user(env: dict[str, str]) -> None:
    values = stored(env, ("alice", "github", "TOKEN"), ("bob", "github", "TOKEN"))
    env["MCP_SECRETS_USER"] = "bob"

    done = mcp_secrets_cli(env, "delete", "github", "TOKEN")

    assert done.returncode == 0, done.stderr
    assert stored_secrets(env, "bob", "github") == {}
    assert stored_secrets(env, "alice", "github") == {"TOKEN": values[0]}


@pytest.mark.parametrize(
    ("server", "key", "message"),
    [
        ("github", "MISSING", "there is no secret 'MISSING' for server 'github' of alice"),
        ("linear", "TOKEN", "there are no secrets for server 'linear' of alice"),
    ],
    ids=["no-such-key", "no-such-server"],
)
def test_delete_of_a_secret_that_does_not_exist_fails_and_deletes_nothing(
    env: dict[str, str], server: str, key: str, message: str
) -> None:
    values = stored(env, ("alice", "github", "TOKEN"))

    done = mcp_secrets_cli(env, "delete", server, key, "--user", "alice")

    assert done.returncode == 1
    assert message in done.stderr
    assert "nothing deleted" in done.stderr
    assert stored_secrets(env, "alice", "github") == {"TOKEN": values[0]}


def test_the_list_command_a_failed_delete_suggests_lists_that_user_in_a_shell(env: dict[str, str]) -> None:
    username = "auth0|5f7c8ec7c33c6c004bbafe82"  # a shell would read the bar as a pipe
    stored(env, (username, "github", "TOKEN"), ("auth0", "github", "OTHER"))
    failed = mcp_secrets_cli(env, "delete", "github", "MISSING", "--user", username)
    command = re.search(r"`(mcp-secrets list .+?)`", failed.stderr)
    assert command, failed.stderr

    # As the user pastes it into a terminal: through a shell, which finds mcp-secrets on the PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    listed = subprocess.run(
        ["/bin/sh", "-c", command.group(1) + " --json"],
        env={**env, "PATH": path},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["username"] for line in listed.stdout.splitlines()] == [username]


def test_delete_refuses_a_bad_key_name(env: dict[str, str]) -> None:
    done = mcp_secrets_cli(env, "delete", "github", "BAD KEY", "--user", "alice")

    assert done.returncode == EXIT_CONFIGURATION
    assert "key must be" in done.stderr


STOPS_WITH_A_FAILING_CLOSE = """
import os, signal, sys
import anyio
from mcp_secrets import serving
from mcp_secrets.logs import configure_logging

def close():
    raise RuntimeError("the store went away")

async def serve():
    os.kill(os.getpid(), signal.SIGTERM)
    await anyio.sleep_forever()

configure_logging("INFO")
anyio.run(serving._serve_stdio, serve, None, close)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_stop_signal_on_stdio_still_ends_the_process_when_closing_fails(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", STOPS_WITH_A_FAILING_CLOSE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert "stopping did not finish cleanly" in done.stderr


def test_a_row_another_tool_altered_fails_the_commands_that_read_it_naming_it_and_no_others(
    env: dict[str, str], canary: str
) -> None:
    for username, server in [("alice", "github"), ("alice", "gitlab"), ("bob", "github")]:
        stored = set_from_stdin(env, new_canary() + "\n", server, "TOKEN", "--user", username)
        assert stored.returncode == 0, stored.stderr
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(
            "UPDATE user_secrets SET updated_at = ? WHERE username = 'alice' AND server = 'github'", (canary,)
        )

    listed = mcp_secrets_cli(env, "list", "--user", "alice")
    others = mcp_secrets_cli(env, "list", "--user", "bob")
    rotated = mcp_secrets_cli(env, "rotate")

    named = "the row of username 'alice', server 'github', key 'TOKEN' in the table user_secrets"
    assert listed.returncode == 1
    assert listed.stderr.startswith(f"mcp-secrets: error: {named} cannot be read (its field updated_at")
    assert len(listed.stderr.splitlines()) == 1  # no traceback
    assert others.returncode == 0, others.stderr
    assert "github" in others.stdout
    assert rotated.returncode == 1, rotated.stderr
    assert "3 records scanned" in rotated.stderr
    assert "1 failed" in rotated.stderr
    assert f"failed: user alice, server github, key TOKEN: {named}" in rotated.stderr
    for done in (listed, others, rotated):
        assert (canary in done.stdout + done.stderr) is False


# --- stdout piped into a reader that stops early ------------------------------------------------------

LONG_LISTING = 3000  # rows: far more than a pipe buffers (64 KiB on Linux)


def seed_long_listing(env: dict[str, str]) -> None:
    """Give alice LONG_LISTING secrets and events, written straight into the store: no values involved."""
    database = Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"
    SQLiteStore(database).close()  # the schema
    at = "2026-01-01T00:00:00+00:00"
    rows = [(f"KEY_{index:05d}", at, at) for index in range(LONG_LISTING)]
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.executemany(
            "INSERT INTO user_secrets (username, server, key, value, created_at, updated_at) "
            "VALUES ('alice', 'github', ?, 'v1:00000000:x', ?, ?)",
            rows,
        )
        connection.executemany(
            "INSERT INTO audit_events (at, actor, action, server, key) "
            "VALUES (?, 'alice', 'used', 'github', ?)",
            [(at, key) for key, at, _ in rows],
        )


@pytest.mark.parametrize(
    "command",
    [
        ("audit", "--limit", str(LONG_LISTING)),
        ("audit", "--limit", str(LONG_LISTING), "--json"),
        ("list", "--user", "alice"),
        ("list", "--user", "alice", "--json"),
    ],
    ids=["audit", "audit-json", "list", "list-json"],
)
def test_a_listing_piped_into_a_reader_that_stops_early_ends_quietly(
    env: dict[str, str], command: tuple[str, ...]
) -> None:
    seed_long_listing(env)
    process = subprocess.Popen(  # as `mcp-secrets audit | head -1`
        [sys.executable, "-m", "mcp_secrets", *command],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    returncode = process.wait(timeout=60)

    assert first.strip()
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr
    assert returncode == 1  # not all of it was delivered


def run_with_stdout(env: dict[str, str], stdout: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with its stdout on a full disk (``/dev/full``) or closed (``>&-``)."""
    redirect = ">/dev/full" if stdout == "full" else ">&-"
    script = f'exec "$0" -m mcp_secrets "$@" {redirect}'
    return mcp_secrets_cli(env, *args, command=("sh", "-c", script, sys.executable))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_a_token_that_cannot_be_printed_is_revoked_and_said_in_one_line(
    env: dict[str, str], stdout: str
) -> None:
    done = run_with_stdout(env, stdout, "token", "create", "alice")

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2  # the error, and that the token was revoked
    assert "revoked" in done.stderr
    assert not TOKEN.search(done.stderr)
    listing = mcp_secrets_cli(env, "token", "list")
    assert "alice" in listing.stdout
    assert " live " not in listing.stdout


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_a_key_that_cannot_be_printed_is_an_error_not_a_success(env: dict[str, str], stdout: str) -> None:
    done = run_with_stdout(env, stdout, "keygen")

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "error" in done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("stdout", ["full", "closed"])
@pytest.mark.parametrize(
    "command",
    [
        ("list", "--user", "alice"),
        ("list", "--user", "alice", "--json"),
        ("audit",),
        ("audit", "--json"),
        ("token", "list"),
    ],
    ids=["list", "list-json", "audit", "audit-json", "token-list"],
)
def test_a_listing_that_cannot_be_written_fails_in_one_line(
    env: dict[str, str], command: tuple[str, ...], stdout: str
) -> None:
    set_from_stdin(env, new_canary(), "github", "TOKEN", "--user", "alice")
    created_token(env, "alice")

    done = run_with_stdout(env, stdout, *command)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1


def test_audit_prints_a_long_trail_as_it_reads_it_holding_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A million events took 750 MB before the first line was printed.
    path = tmp_path / "secrets.db"
    store = SQLiteStore(path)
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    events = [
        AuditEvent(at + timedelta(seconds=n), f"user{n % 3}", "used", "github", "K") for n in range(900)
    ]
    store.record_uses([SecretUse(event.actor, "github", ("K",), event) for event in events])
    store.close()
    monkeypatch.setenv("MCP_SECRETS_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setattr(cli, "AUDIT_PAGE", 50)
    most = [0]
    shown: list[str] = []

    def counting(lines: Iterable[str]) -> None:
        for line in lines:
            shown.append(line)
            if len(shown) % 100 == 0:
                most[0] = max(most[0], sum(type(thing) is AuditEvent for thing in gc.get_objects()))

    monkeypatch.setattr(cli, "write_out", counting)
    monkeypatch.setattr(terminal, "write_out", counting)
    gc.collect()
    held = sum(type(thing) is AuditEvent for thing in gc.get_objects())  # the test's own

    assert cli.main(["audit", "--limit", "10000", "--json"]) == 0
    printed_json, shown[:] = list(shown), []
    assert cli.main(["audit", "--limit", "10000"]) == 0

    assert most[0] - held <= 50 + 1
    assert [json.loads(line)["at"] for line in printed_json] == [e.at.isoformat() for e in reversed(events)]
    assert len(shown) == 1 + len(events)
    assert shown[0].startswith("TIME (UTC)")
    assert shown[1].startswith("2026-01-01 00:14:59  user2  used")


# --- counts in the commands' summaries ----------------------------------------------------------------


@pytest.mark.parametrize("command", [("verify",), ("rotate",), ("rotate", "--dry-run")])
def test_a_store_of_one_record_is_said_to_have_one_record_scanned(
    env: dict[str, str], command: tuple[str, ...]
) -> None:
    stored = set_from_stdin(env, new_canary() + "\n", "github", "TOKEN", "--user", "alice")
    assert stored.returncode == 0, stored.stderr

    done = mcp_secrets_cli(env, *command)

    assert done.returncode == 0, done.stderr
    assert "1 record scanned;" in done.stderr
    assert "records scanned" not in done.stderr


def test_verify_of_one_record_says_it_decrypts(env: dict[str, str]) -> None:
    stored = set_from_stdin(env, new_canary() + "\n", "github", "TOKEN", "--user", "alice")
    assert stored.returncode == 0, stored.stderr

    done = mcp_secrets_cli(env, "verify")

    assert done.returncode == 0, done.stderr
    assert "1 record scanned; 1 decrypts (1 under key " in done.stderr
    assert "0 do not." in done.stderr
