"""Settings: what a terminal command is told of this process's store and key."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

from conftest import new_canary
from mcp_secrets.config import StoreLocation, load_settings
from mcp_secrets.crypto import generate_master_key
from mcp_secrets.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _no_settings_of_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_DIR", "CONFIG_DIR", "DATABASE_URL", "MASTER_KEY", "MASTER_KEY_FILE"):
        monkeypatch.delenv(f"MCP_SECRETS_{name}", raising=False)


def test_the_store_location_names_the_given_data_dir_and_key_file_as_absolute_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCP_SECRETS_DATA_DIR", "data")
    monkeypatch.setenv("MCP_SECRETS_MASTER_KEY_FILE", "keys/master.key")

    location = load_settings().store_location()

    assert location == StoreLocation(
        {
            "MCP_SECRETS_DATA_DIR": str(tmp_path / "data"),
            "MCP_SECRETS_MASTER_KEY_FILE": str(tmp_path / "keys" / "master.key"),
        }
    )


def test_the_store_location_of_a_relative_sqlite_url_is_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCP_SECRETS_DATABASE_URL", "sqlite:///db/secrets.db")
    monkeypatch.setenv("MCP_SECRETS_CONFIG_DIR", str(tmp_path / "config"))

    location = load_settings().store_location()

    assert location == StoreLocation(
        {
            "MCP_SECRETS_DATABASE_URL": f"sqlite:///{tmp_path / 'db' / 'secrets.db'}",
            "MCP_SECRETS_CONFIG_DIR": str(tmp_path / "config"),
        }
    )


def test_the_store_location_of_a_sqlite_url_under_home_names_the_file_the_store_opens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A client config's env is not expanded by a shell: the store expands the `~` itself, and the
    # terminal's command must name that file, not a `~` directory beside the server's working directory.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCP_SECRETS_DATABASE_URL", "sqlite:///~/db/secrets.db")

    location = load_settings().store_location()

    opened = tmp_path / "home" / "db" / "secrets.db"
    assert location.variables == {"MCP_SECRETS_DATABASE_URL": f"sqlite:///{opened}"}


def test_the_store_location_never_holds_a_master_key_or_a_mongodb_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    password, master_key = new_canary(), generate_master_key()
    monkeypatch.setenv("MCP_SECRETS_DATABASE_URL", f"mongodb://alice:{password}@db.example/secrets")
    monkeypatch.setenv("MCP_SECRETS_MASTER_KEY", master_key)
    monkeypatch.setenv("MCP_SECRETS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MCP_SECRETS_CONFIG_DIR", str(tmp_path / "config"))

    location = load_settings().store_location()

    assert (password in repr(location)) is False
    assert (master_key in repr(location)) is False
    assert list(location.variables) == []  # names only, should it fail
    # Named, so that a terminal's command is told it needs them too.
    assert location.withheld == ("MCP_SECRETS_DATABASE_URL", "MCP_SECRETS_MASTER_KEY")


def test_nothing_given_leaves_the_store_location_empty() -> None:
    assert load_settings().store_location() == StoreLocation()


def test_settings_holding_keys_are_shown_masked_and_refuse_to_be_pickled_without_quoting_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key, legacy_key, password = generate_master_key(), new_canary(), new_canary()
    monkeypatch.setenv("MCP_SECRETS_MASTER_KEY", key)
    monkeypatch.setenv("MCP_SECRETS_LEGACY_KEY", legacy_key)
    monkeypatch.setenv("MCP_SECRETS_DATABASE_URL", f"mongodb://app:{password}@db.example/secrets")
    monkeypatch.setenv("MCP_SECRETS_DATA_DIR", str(tmp_path))
    settings = load_settings()

    # A pickle is a copy in the clear, kept wherever it is sent (a task queue, a cache, a file).
    with pytest.raises(TypeError, match="load_settings") as refused:
        pickle.dumps(settings)

    shown = [repr(settings), str(settings), settings.model_dump_json(), str(refused.value)]
    for secret in (key, legacy_key, password):
        assert not any(secret in text for text in shown)
    for copied in (copy.copy(settings), copy.deepcopy(settings)):  # in memory, as the settings are
        assert copied.master_key is not None
        assert copied.master_key.get_secret_value() == key


@pytest.mark.parametrize(
    ("variable", "given"),
    [
        pytest.param("MCP_SECRETS_MASTER_KEY", "{key}\udcff", id="master-key-not-utf8"),
        pytest.param("MCP_SECRETS_DATA_DIR", "mongodb://app:{key}@db.example/", id="data-dir-a-url"),
        pytest.param("MCP_SECRETS_PORT", "{key}", id="port-not-a-number"),
    ],
)
def test_a_malformed_setting_is_refused_by_an_error_carrying_none_that_holds_what_was_given(
    monkeypatch: pytest.MonkeyPatch, variable: str, given: str
) -> None:
    key = generate_master_key()
    monkeypatch.setenv(variable, given.format(key=key))

    with pytest.raises(ConfigurationError, match=variable) as raised:
        load_settings()

    # Pydantic's error keeps what was given (its `input`), whatever its message shows.
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None
    assert key not in str(raised.value)
