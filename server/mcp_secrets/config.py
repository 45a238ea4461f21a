"""Settings: every environment variable mcp-secrets reads, with its default.

Nothing else in the package reads ``os.environ``. Secrets among the settings
(master keys, the legacy key, a database URL that may carry a password) are
``SecretStr`` so that no repr or log line can show them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mcp_secrets.crypto import parse_master_key
from mcp_secrets.errors import ConfigurationError

APP_NAME = "mcp-secrets"
Transport = Literal["stdio", "sse", "streamable-http"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
DEFAULT_DATABASE_FILE = "secrets.db"
DEFAULT_KEY_FILE = "master.key"
MAX_SQLITE_BUSY_TIMEOUT = 2_147_483  # seconds: 2**31 - 1 milliseconds, rounded down
# How long request_secret waits for the entry page, from the call's start: under the 60 s after which
# clients on the TypeScript SDK give up on a request, so that they get its answer (stored, or not yet)
# rather than a timeout.
ENTRY_WAIT_SECONDS = 50.0
# A client holds one subscriptions/listen stream, as it holds one session: as many as the session bound.
LISTEN_STREAMS_PER_USER = 100


def _under_home(directory_of: Callable[[str], str], setting: str) -> Path:
    """The default directory ``directory_of`` gives, which is under the user's home directory."""
    try:
        return Path(directory_of(APP_NAME))
    except RuntimeError:  # no HOME, and no passwd entry for this uid (a container's arbitrary user)
        raise ConfigurationError(
            f"no home directory to keep mcp-secrets' files under: set HOME, or MCP_SECRETS_{setting}"
        ) from None


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _refuse_undecodable(value: object) -> object:
    # The environment's bytes that are not UTF-8 arrive as lone surrogates: the legacy key's hash and
    # a MongoDB URL's driver would fail on them later, with a traceback that quotes one of those bytes.
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("it is not UTF-8 text") from None
    return value


def _refuse_a_key_for_a_path(value: object) -> object:
    # The two key settings are easily swapped: a key given as the key file's path was quoted whole by
    # the refusal to read that file, into the logs of the client that started the server.
    if isinstance(value, str) and not os.path.lexists(value.strip()):
        try:
            parse_master_key(value)
        except ConfigurationError:
            return value
        raise ValueError(
            "it holds a master key, not the path of a file: set MCP_SECRETS_MASTER_KEY to the key, or "
            "this setting to a file holding it"
        )
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")


def _path_text(value: object) -> object:
    """A path setting without the spaces and line end around it, as the database URL and keys are read.

    An env file saved with CRLF line ends gives every value a trailing CR: a first run made its key in a
    directory named with it, and said so on a line the CR broke.
    """
    if not isinstance(value, str):
        return value
    # Path("") is the working directory: the key and the store would be made side by side in whatever
    # directory a command ran in, a different one each time.
    if not value.strip():
        raise ValueError("it is empty: give a path, or unset it for the default")
    # A database URL set here by mistake made a local store under a directory named by it, and the start
    # printed that path, a MongoDB password and all. Two letters at least: `C://` is a Windows drive.
    if _URL.match(value.strip()):
        raise ValueError("it is a URL, not a path (a database URL goes in MCP_SECRETS_DATABASE_URL)")
    return value.strip()


def _expand_home(value: Path | None) -> Path | None:
    try:
        return None if value is None else value.expanduser()
    except RuntimeError:  # `~name` of no such user; as a ValueError it is reported naming the setting
        raise ValueError("no such home directory") from None


def _sqlite_file(path: str) -> Path:
    """The absolute file of a ``sqlite:///`` URL's path, with ``~`` expanded as the store expands it."""
    try:
        return Path(path).expanduser().absolute()
    except RuntimeError:  # `~name/…` of no such user: the store refuses it at start
        return Path(path).absolute()


@dataclass(frozen=True)
class StoreLocation:
    """What a command run elsewhere (a terminal) must be given to reach a process's store and key."""

    # Shown, with their values; read-only, as the empty default is shared.
    variables: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    withheld: tuple[str, ...] = ()  # needed too, but they hold secrets: named, never shown
    program: str = "mcp-secrets"  # the command, for the shell: a path when a terminal's PATH may not find it

    def needs(self) -> str:
        """A sentence naming the withheld variables, or "" when there are none."""
        if not self.withheld:
            return ""
        names = " and ".join(self.withheld)
        return (
            f" The terminal needs {names} set as this server's configuration sets "
            f"{'it' if len(self.withheld) == 1 else 'them'} (not shown here: "
            f"{'it holds a secret' if len(self.withheld) == 1 else 'they hold secrets'})."
        )


class Settings(BaseSettings):
    """mcp-secrets configuration, read from ``MCP_SECRETS_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MCP_SECRETS_", extra="ignore", hide_input_in_errors=True)

    master_key: SecretStr | None = Field(
        default=None,
        description="Master key(s), base64. Several, comma-separated: the first writes, all read.",
    )
    master_key_file: Path | None = Field(
        default=None, description="File holding the master key(s), one per line; the first writes."
    )
    legacy_key: SecretStr | None = Field(
        default=None, description="Key string of the original iv:authTag:ciphertext format, read-only."
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="mongodb://…, mongodb+srv://… or sqlite:///path; unset: the embedded SQLite file.",
    )
    sqlite_busy_timeout: float = Field(
        default=10.0,
        ge=0,
        # SQLite keeps it in milliseconds in a C int: beyond, a write waits not at all (and inf crashes).
        le=MAX_SQLITE_BUSY_TIMEOUT,
        description="Seconds a write waits for another process's lock on the SQLite file.",
    )
    max_secrets_per_user: int = Field(
        default=1000, ge=1, description="How many secrets one user may keep; past it, a new key is refused."
    )
    max_sessions_per_user: int = Field(
        default=100,
        ge=1,
        description="How many HTTP sessions one user may keep open; past it, a new one is refused.",
    )
    max_listen_streams_per_user: int = Field(
        default=LISTEN_STREAMS_PER_USER,
        ge=1,
        description="How many subscriptions/listen streams one user may keep open; past it, one is refused.",
    )
    user: str | None = Field(default=None, description="Username on stdio; default the OS login name.")
    data_dir: Path = Field(default_factory=lambda: _under_home(platformdirs.user_data_dir, "DATA_DIR"))
    config_dir: Path = Field(default_factory=lambda: _under_home(platformdirs.user_config_dir, "CONFIG_DIR"))

    transport: Transport = "stdio"
    host: str = "127.0.0.1"
    # Not 0 (any free port): the start's URL, the client configs it prints and entry links name the port.
    port: int = Field(default=8000, ge=1, le=65535)
    stateless_http: bool = Field(
        default=False, description="Serve Streamable HTTP without sessions, for replicas."
    )
    public_url: str | None = Field(default=None, description="The URL clients use, when behind a proxy.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra Host header values accepted (host:port, or host:* for any port).",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra Origin header values accepted (scheme://host:port)."
    )

    jwks_url: str | None = Field(
        default=None, description="JWKS URL of an OIDC provider whose JWTs are accepted."
    )
    issuer: str | None = Field(default=None, description="Required `iss` of accepted JWTs.")
    audience: str | None = Field(default=None, description="Required `aud` of accepted JWTs.")
    username_claim: str = Field(default="sub", description="JWT claim that holds the username.")

    entry_wait_seconds: float = Field(
        default=ENTRY_WAIT_SECONDS,
        ge=0,
        description="How long request_secret waits for the entry page to be sent, from the call's start.",
    )
    entry_link_minutes: float = Field(
        default=10.0, gt=0, le=24 * 60, description="How long an entry link works."
    )
    shutdown_grace_seconds: int = Field(
        default=5,
        ge=0,
        description="On SIGTERM over HTTP, how long requests in flight may finish before they are cut.",
    )
    request_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Over HTTP, how long a request may take to arrive whole, and a client may read nothing.",
    )

    servers: Path | None = Field(
        default=None, description="Gateway configuration: downstream MCP servers and the secrets they need."
    )
    gateway_max_connections: int = Field(
        default=32, ge=1, description="Bound on live downstream connections."
    )
    gateway_idle_seconds: float = Field(default=300.0, gt=0, description="Idle downstream connections close.")
    gateway_start_seconds: float = Field(
        default=60.0, gt=0, description="How long a downstream may take to start, and to list its tools."
    )

    log_level: LogLevel = "INFO"

    _utf8_secrets = field_validator("master_key", "legacy_key", "database_url", mode="before")(
        _refuse_undecodable
    )
    _not_a_key = field_validator("master_key_file", mode="before")(_refuse_a_key_for_a_path)
    _split_hosts = field_validator("allowed_hosts", "allowed_origins", mode="before")(_split_commas)
    # As `--log-level` takes it: `debug` as well as `DEBUG`.
    _upper_level = field_validator("log_level", mode="before")(_upper)
    # `~/…` as the key file's setting takes it: no shell expands it in a client's config file, and a
    # key generated under a literal `~` beside the working directory was not found from another one.
    _expand_dirs = field_validator("data_dir", "config_dir", "master_key_file", "servers")(_expand_home)
    _trimmed_paths = field_validator("data_dir", "config_dir", "master_key_file", "servers", mode="before")(
        _path_text
    )

    # The command-line option each override was given as, by setting (load_settings): errors name it.
    _given_as: dict[str, str] = PrivateAttr(default_factory=dict)

    def __getstate__(self) -> dict[Any, Any]:
        """Refuse to be pickled: a pickle holds the master keys and the database URL in the clear.

        Whatever a pickle is sent to (a task queue, a cache, a file) would keep them. A process that needs
        the settings reads them itself, with ``load_settings()``.
        """
        raise TypeError(
            "Settings hold the master keys and the database URL, and are not pickled: "
            "call mcp_secrets.config.load_settings() in the process that needs them"
        )

    def named(self, setting: str) -> str:
        """``setting`` as the user gave it: its command-line option, or else its environment variable."""
        return _named(setting, self._given_as)

    @property
    def default_database_path(self) -> Path:
        """The embedded SQLite file, in the user's data directory."""
        return self.data_dir / DEFAULT_DATABASE_FILE

    @property
    def default_key_file(self) -> Path:
        """Where a generated master key is kept: the config directory (the data one too on macOS, Windows)."""
        return self.config_dir / DEFAULT_KEY_FILE

    def store_location(self) -> StoreLocation:
        """Where this process's store and key are, for a command run elsewhere (a terminal) to reach them.

        The variables given for them, with their values, but for those that hold a secret (a master key,
        a MongoDB URL that may carry a password): those are only named. Paths are made absolute, as that
        command's working directory may be another.
        """
        location: dict[str, str] = {}
        withheld: list[str] = []
        url = (self.database_url_text or "").strip()
        if url.startswith("sqlite:///"):
            location["MCP_SECRETS_DATABASE_URL"] = f"sqlite:///{_sqlite_file(url[len('sqlite:///') :])}"
        elif url:
            withheld.append("MCP_SECRETS_DATABASE_URL")
        elif "data_dir" in self.model_fields_set:
            location["MCP_SECRETS_DATA_DIR"] = str(self.data_dir.absolute())
        if self.master_key_file is not None:
            location["MCP_SECRETS_MASTER_KEY_FILE"] = str(self.master_key_file.absolute())
        elif self.master_key is not None:
            withheld.append("MCP_SECRETS_MASTER_KEY")
        elif "config_dir" in self.model_fields_set:
            location["MCP_SECRETS_CONFIG_DIR"] = str(self.config_dir.absolute())
        return StoreLocation(location, tuple(withheld))

    @property
    def uses_mongodb(self) -> bool:
        """True when the database URL names a MongoDB server."""
        url = self.database_url.get_secret_value().strip() if self.database_url else ""
        return url.startswith(("mongodb://", "mongodb+srv://"))

    @property
    def database_url_text(self) -> str | None:
        """The database URL itself, for the one place that opens the store."""
        return self.database_url.get_secret_value() if self.database_url else None


def load_settings(*, given_as: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """The environment's settings, ``overrides`` on top; ConfigurationError names a malformed one.

    The error names each setting as the user gave it: by ``given_as`` (a command-line option, say) for
    an override, else by its environment variable. Pydantic's messages say what was expected, never
    what was given (a master key or a database URL may be the malformed one).
    """
    given_as = dict(given_as or {})
    problems = []
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            setting = str(error["loc"][0])
            # A validator's own message, without the "Value error, " pydantic puts before it.
            message = (
                error["msg"].removeprefix("Value error, ") if error["type"] == "value_error" else error["msg"]
            )
            problems.append(f"{setting} ({_named(setting, given_as)}): {message}")
    if problems:
        # Raised out of the except block: pydantic's error, which would be its __context__, keeps what was
        # given (a master key, a database URL) whatever its message shows.
        raise ConfigurationError(f"invalid setting: {'; '.join(problems)}")
    settings._given_as = given_as  # noqa: SLF001 - set by the one function that knows it
    return settings


def _named(setting: str, given_as: Mapping[str, str]) -> str:
    return given_as.get(setting, f"{Settings.model_config['env_prefix']}{setting.upper()}")
