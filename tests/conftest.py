"""Fixtures shared by every test: stores of each backend, an encryptor, a Secrets service, canaries."""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets as _random
import shutil
import subprocess
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import mongomock
import pymongo
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from mcp_types import CallToolResult

import _mongomock_threads
import _mongomock_update_sort
from mcp_secrets.crypto import SecretEncryptor, generate_master_key, parse_master_key
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import SecretStore
from mcp_secrets.store.mongo import MongoStore
from mcp_secrets.store.sqlite import SQLiteStore

_mongomock_threads.install()
_mongomock_update_sort.install()

MONGODB_URI = os.environ.get("MONGODB_URI")


def _mongomock_store() -> SecretStore:
    return MongoStore(mongomock.MongoClient(tz_aware=True), "mcp_secrets_test")


def _real_mongo_store() -> SecretStore:
    database = f"mcp_secrets_test_{_random.token_hex(4)}"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        MONGODB_URI, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    return MongoStore(client, database)


STORE_KINDS = [
    "sqlite",
    "mongomock",
    pytest.param(
        "mongodb",
        marks=[
            pytest.mark.mongodb,
            pytest.mark.skipif(not MONGODB_URI, reason="set MONGODB_URI to run against a real MongoDB"),
        ],
    ),
]


def make_store(kind: str, tmp_path: Path) -> SecretStore:
    """A fresh, empty store of one backend."""
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "secrets.db")
    if kind == "mongomock":
        return _mongomock_store()
    return _real_mongo_store()


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SecretStore]:
    """Each backend in turn: SQLite, mongomock, and a real MongoDB when MONGODB_URI is set."""
    opened = make_store(request.param, tmp_path)
    yield opened
    if request.param == "mongodb":
        assert isinstance(opened, MongoStore)
        opened._client.drop_database(opened._secrets.database.name)
    opened.close()


@pytest.fixture
def master_key() -> bytes:
    return parse_master_key(generate_master_key())


@pytest.fixture
def encryptor(master_key: bytes) -> SecretEncryptor:
    return SecretEncryptor([master_key])


@pytest.fixture
def secrets(store: SecretStore, encryptor: SecretEncryptor) -> Iterator[Secrets]:
    """A Secrets service over each backend in turn; closed (its pending uses written) before the store."""
    service = Secrets(store, encryptor)
    yield service
    service.close()


@pytest.fixture
def sqlite_secrets(tmp_path: Path, encryptor: SecretEncryptor) -> Iterator[Secrets]:
    """A Secrets service over SQLite only, for tests about something other than the backend."""
    store = SQLiteStore(tmp_path / "secrets.db")
    service = Secrets(store, encryptor)
    yield service
    service.close()
    store.close()


def assert_not_leaked(error: BaseException, *values: str) -> None:
    """Neither the message, the repr nor the printed traceback of ``error`` holds a value, nor those of
    an exception it carries as its ``__cause__`` or ``__context__`` (``from None`` only hides the latter
    from a printed traceback: whatever walks the chain, an error reporter, still finds it)."""
    shown: list[str] = []
    seen: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and not any(link is earlier for earlier in seen):
        seen.append(link)
        shown += [str(link), repr(link), "".join(traceback.format_exception(link))]
        link = link.__cause__ or link.__context__
    for value in values:
        assert not any(value in text for text in shown)


FRAGMENT_CHARS = 12  # 48 random bits of a canary: no text holds them by chance


def assert_no_fragment_of(value: str, shown: str) -> None:
    """No 12-character piece of ``value`` is in ``shown``: tools that shorten a long text (pydantic's
    ``input_value``, a log formatter) cut it in the middle, and what is left of a secret still leaks."""
    for start in range(len(value) - FRAGMENT_CHARS + 1):
        leaked = value[start : start + FRAGMENT_CHARS] in shown  # a bare bool: a failure prints neither
        assert not leaked, f"the piece of the value at character {start} got through"


JWKS_PATH = "/.well-known/jwks.json"


class _JwksHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if urlsplit(self.path).path != JWKS_PATH:
            self.send_error(404)
            return
        body: bytes = self.server.jwks_body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        """Keep the test output quiet."""


def _jwks_body(keys: dict[str, rsa.RSAPublicKey]) -> bytes:
    published = [
        {**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": kid, "use": "sig", "alg": "RS256"}
        for kid, key in keys.items()
    ]
    return json.dumps({"keys": published}).encode()


@contextmanager
def jwks_provider(
    keys: dict[str, rsa.RSAPublicKey],
) -> Iterator[tuple[str, Callable[[dict[str, rsa.RSAPublicKey] | bytes], None]]]:
    """A local OIDC provider's JWKS of ``keys`` by kid; yields its URL, and a function to publish others
    (or any body, as bytes)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
    server.jwks_body = _jwks_body(keys)  # type: ignore[attr-defined]

    def publish(new_keys: dict[str, rsa.RSAPublicKey] | bytes) -> None:
        body = new_keys if isinstance(new_keys, bytes) else _jwks_body(new_keys)
        server.jwks_body = body  # type: ignore[attr-defined]

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{JWKS_PATH}", publish
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def serving_jwks(public_key: rsa.RSAPublicKey, kid: str) -> Iterator[str]:
    """A local OIDC provider's JWKS holding ``public_key`` under ``kid``; yields its URL."""
    with jwks_provider({kid: public_key}) as (url, _):
        yield url


def parse_time(text: str) -> datetime:
    """An ISO 8601 timestamp as JSON carries it ("Z" included, which Python 3.10 does not read)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the loop the server runs on."""
    return "asyncio"


def _ecma_pattern(
    validator: jsonschema.protocols.Validator, pattern: str, instance: object, _schema: object
) -> Iterator[jsonschema.ValidationError]:
    """JSON Schema's ``pattern`` as ECMA-262 reads it: a final ``$`` ends the string (Python's also
    matches before a final newline)."""
    python_pattern = re.sub(r"\$$", r"\\Z", pattern)
    if validator.is_type(instance, "string") and not re.search(python_pattern, str(instance)):
        yield jsonschema.ValidationError(f"does not match {pattern!r}")


# Checks arguments against a tool's input schema as a client would.
SchemaValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


def text_of(result: CallToolResult) -> str:
    """The text of a tool result's first content block."""
    assert result.content[0].type == "text"
    return result.content[0].text


def command_parsers(
    parser: argparse.ArgumentParser, name: str = "mcp-secrets"
) -> dict[str, argparse.ArgumentParser]:
    """``parser`` and every command's parser under it, by command line (``mcp-secrets token create``)."""
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found.update(command_parsers(sub, f"{name} {sub_name}"))
    return found


def isolated_env(root: Path, **overrides: str) -> dict[str, str]:
    """The process environment without any MCP_SECRETS_* of the caller, confined to ``root``, with a key."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MCP_SECRETS_")}
    env.update(
        MCP_SECRETS_DATA_DIR=str(root / "data"),
        MCP_SECRETS_CONFIG_DIR=str(root / "config"),
        MCP_SECRETS_MASTER_KEY=generate_master_key(),
    )
    env.update(overrides)
    return env


def new_canary() -> str:
    """A random value that must never show up anywhere but inside the encrypted store."""
    return f"canary-{_random.token_hex(16)}"


@pytest.fixture
def synced_inodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The inode of every file and directory ``os.fsync`` is called on from now, in order."""
    synced: list[int] = []
    fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced.append(os.fstat(descriptor).st_ino)
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


@pytest.fixture
def canary() -> str:
    return new_canary()


def as_an_ordinary_process() -> list[str]:
    """The command prefix that runs a process as an ordinary one of this user: root loses its capabilities.

    Root reads and writes anything: without them, it meets file permissions as any user does.
    """
    if not hasattr(os, "geteuid"):
        pytest.skip("no POSIX users here")
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux) to drop root's capabilities")
    prefix = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--"]
    # Dropping the bounding set needs CAP_SETPCAP, which some containers take from root.
    if subprocess.run([*prefix, "true"], capture_output=True, timeout=60, check=False).returncode:
        pytest.skip("running as root in a container where setpriv may not drop root's capabilities")
    return prefix
