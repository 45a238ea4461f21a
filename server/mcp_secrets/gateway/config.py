"""The gateway's configuration file: downstream MCP servers in the shape MCP clients use.

    {"mcpServers": {
        "github": {
            "command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"],
            "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "${secret:GITHUB_TOKEN}"},
            "secrets": {"GITHUB_TOKEN": {"description": "A GitHub personal access token"}}
        },
        "linear": {"url": "https://mcp.example.com/mcp", "transport": "streamable-http",
                   "headers": {"Authorization": "Bearer ${secret:LINEAR_API_KEY}"}}
    }}

``${secret:KEY}`` stands for the caller's secret KEY of that server (the record
whose ``server`` is the entry's name), in ``env`` values, ``headers``, ``url``,
and in ``args`` only with ``"allowSecretsInArgs": true``: a process's arguments
are readable by every local user (``ps``, ``/proc/<pid>/cmdline``), so an entry
has to accept that in so many words. ``secrets`` is optional: it describes keys
for users and marks optional ones (``"required": false``); when present, every
referenced key must be declared there.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_secrets.errors import ConfigurationError
from mcp_secrets.file_modes import others_may_write, owned_elsewhere
from mcp_secrets.secrets import NAME_RULE, validate_name

logger = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"\$\{secret:([^}]*)\}")
SEPARATOR = "__"
# Offered tool names, "<server>__<tool>", stay within the length the MCP specification recommends; a
# longer tool name is cut and given a hash of itself (see the gateway), which needs this much room.
MAX_TOOL_NAME_LENGTH = 128
MIN_TOOL_PART_LENGTH = 16
MAX_SERVER_NAME_LENGTH = MAX_TOOL_NAME_LENGTH - len(SEPARATOR) - MIN_TOOL_PART_LENGTH
# The names a process environment and an HTTP request can carry (RFC 9110's token for a header):
# with any other, every call of the server failed as it started.
_ENV_NAME = re.compile(r"[^=\x00]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class SecretSpec(BaseModel):
    """What a downstream server's secret is for."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    required: bool = True


class DownstreamServer(BaseModel):
    """One entry of ``mcpServers``: a stdio command or a remote URL."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    transport: Literal["streamable-http", "sse"] | None = None
    type: Literal["stdio", "streamable-http", "http", "sse"] | None = None  # as some clients spell it
    description: str = ""
    secrets: dict[str, SecretSpec] | None = None
    allow_secrets_in_args: bool = Field(default=False, alias="allowSecretsInArgs")


class ServerConfig(BaseModel):
    """A validated downstream server: its name, how to reach it, and the keys it needs."""

    name: str
    spec: DownstreamServer
    referenced: frozenset[str]
    required: frozenset[str]
    descriptions: dict[str, str]

    @property
    def is_stdio(self) -> bool:
        """True for a command started per user, False for a remote URL."""
        return self.spec.command is not None

    @property
    def fixed_origin(self) -> Origin | None:
        """The scheme, host and port of a remote URL when no placeholder is in them; else None.

        A placeholder elsewhere (a path, a query, a password) may hold any value, but none may move the
        connection, with the configured headers, to another host: ``https://${secret:K}@host/`` with
        ``evil.example/`` stored as K would.
        """
        if self.spec.url is None:
            return None
        ones, others = (origin(PLACEHOLDER.sub(filler, self.spec.url)) for filler in ("a", "b"))
        # No host without the values: the whole URL is a placeholder, or its start is.
        return ones if ones == others and ones is not None and ones[1] is not None else None

    @property
    def remote_transport(self) -> Literal["streamable-http", "sse"]:
        """How to talk to a remote server."""
        if self.spec.transport is not None:
            return self.spec.transport
        return "sse" if self.spec.type == "sse" else "streamable-http"


class GatewayConfig(BaseModel):
    """Every downstream server of one configuration file, by name."""

    path: str
    servers: dict[str, ServerConfig]


# A URL's scheme, host and port.
Origin = tuple[str, str | None, int | None]


def origin(url: str) -> Origin | None:
    """The scheme, host and port of ``url``; None when they do not parse (a port that is no number)."""
    try:
        parts = urlsplit(url)
        return parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None


def references(text: str) -> set[str]:
    """The keys ``text`` refers to with ``${secret:KEY}``."""
    return set(PLACEHOLDER.findall(text))


def substitute(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each ``${secret:KEY}`` replaced by ``values[KEY]`` (all must be present)."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def _fields(spec: DownstreamServer) -> dict[str, str]:
    """Every text field that may hold placeholders, named as the error messages name them."""
    named = {f"args[{index}]": arg for index, arg in enumerate(spec.args)}
    named.update({f"env.{name}": value for name, value in spec.env.items()})
    named.update({f"headers.{name}": value for name, value in spec.headers.items()})
    if spec.url is not None:
        named["url"] = spec.url
    return named


def _check_shape(where: str, name: str, spec: DownstreamServer) -> None:
    try:
        validate_name("server", name)
    except ValueError:
        raise ConfigurationError(f"{where}: the name must be {NAME_RULE}") from None
    if SEPARATOR in name:
        raise ConfigurationError(
            f"{where}: the name must not contain {SEPARATOR!r}, which separates tool names"
        )
    if len(name) > MAX_SERVER_NAME_LENGTH:
        raise ConfigurationError(
            f"{where}: the name must be at most {MAX_SERVER_NAME_LENGTH} characters, "
            f"so that its tool names fit in {MAX_TOOL_NAME_LENGTH}"
        )
    if name.endswith("_"):
        # "git_" + "__" + "create" would read as server "git" and tool "_create".
        raise ConfigurationError(
            f"{where}: the name must not end in '_', or its tool names would split at the wrong {SEPARATOR!r}"
        )
    if (spec.command is None) == (spec.url is None):
        raise ConfigurationError(
            f"{where}, field command/url: give exactly one of command (stdio) or url (remote)"
        )
    if spec.command is not None and (spec.headers or spec.transport):
        raise ConfigurationError(f"{where}, field headers/transport: only remote (url) servers take these")
    if spec.type is not None and (spec.type == "stdio") != (spec.command is not None):
        given = "command (stdio)" if spec.command is not None else "url (remote)"
        raise ConfigurationError(f"{where}, field type: {spec.type!r} contradicts the entry's {given}")
    _check_placeholder_places(where, spec)
    _check_names(where, spec)
    for key in spec.secrets or {}:
        if not _is_valid_key(key):
            raise ConfigurationError(f"{where}, field secrets: a declared key must be {NAME_RULE}")


def _check_placeholder_places(where: str, spec: DownstreamServer) -> None:
    """Placeholders are filled in args, env and header values and the url: anywhere else is an error."""
    for field, text in (("command", spec.command or ""), ("cwd", spec.cwd or "")):
        if "${secret:" in text:
            raise ConfigurationError(
                f"{where}, field {field}: secrets may appear in args, env, headers and url only"
            )
    for field, names in (("env", spec.env), ("headers", spec.headers)):
        if any("${secret:" in name for name in names):
            raise ConfigurationError(f"{where}, field {field}: secrets may appear in values, not in names")


def _check_names(where: str, spec: DownstreamServer) -> None:
    """Env and header names a process environment and an HTTP request can carry."""
    if not all(_ENV_NAME.fullmatch(name) for name in spec.env):
        raise ConfigurationError(f"{where}, field env: a variable name must be non-empty, without '=' or NUL")
    if not all(_HEADER_NAME.fullmatch(name) for name in spec.headers):
        raise ConfigurationError(
            f"{where}, field headers: a header name must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~)"
        )


def _is_valid_key(key: str) -> bool:
    try:
        validate_name("key", key)
    except ValueError:
        return False
    return True


def _referenced_keys(where: str, spec: DownstreamServer) -> set[str]:
    referenced: set[str] = set()
    for field, text in _fields(spec).items():
        for key in references(text):
            if not _is_valid_key(key):
                raise ConfigurationError(
                    f"{where}, field {field}: ${{secret:{key}}} does not name a valid key"
                )
            if spec.secrets is not None and key not in spec.secrets:
                raise ConfigurationError(
                    f"{where}, field {field}: ${{secret:{key}}} is not declared in the server's secrets"
                )
            if field.startswith("args[") and not spec.allow_secrets_in_args:
                raise ConfigurationError(
                    f"{where}, field {field}: a secret in args can be read by every user of this machine "
                    '(ps, /proc); pass it in env, or set "allowSecretsInArgs": true to accept that'
                )
            referenced.add(key)
        if "${secret:" in PLACEHOLDER.sub("", text):
            raise ConfigurationError(f"{where}, field {field}: holds an unterminated ${{secret: placeholder")
    return referenced


def _server(path: str, name: str, spec: DownstreamServer) -> ServerConfig:
    where = f"{path}: server {name!r}"
    _check_shape(where, name, spec)
    referenced = _referenced_keys(where, spec)
    declared = spec.secrets or {}
    required = {key for key in referenced if declared.get(key, SecretSpec()).required}
    required |= {key for key, secret in declared.items() if secret.required}
    return ServerConfig(
        name=name,
        spec=spec,
        referenced=frozenset(referenced),
        required=frozenset(required),
        descriptions={key: secret.description for key, secret in declared.items()},
    )


def _members(source: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of the file; a name given twice is refused, as JSON would keep the last silently."""
    members = dict(pairs)
    if len(members) < len(pairs):
        names = [name for name, _ in pairs]
        twice = next(name for name in names if names.count(name) > 1)
        raise ConfigurationError(f"{source}: the name {twice!r} is given twice in one object")
    return members


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read and check a gateway configuration file; every problem names the file, server and field."""
    source = Path(path).expanduser()
    # Refused out of the except blocks below: json's error keeps the whole file, pydantic's the field it
    # refused, either of which may hold a header's or a variable's value given as it is.
    problem = None
    try:
        document = json.loads(
            source.read_text(encoding="utf-8"), object_pairs_hook=functools.partial(_members, source)
        )
    except OSError as exc:
        raise ConfigurationError(f"{source}: cannot be read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        problem = f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno})"
    if problem is not None:
        raise ConfigurationError(problem)
    entries = document.get("mcpServers") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        raise ConfigurationError(f'{source}: needs an object "mcpServers" of downstream servers')
    servers: dict[str, ServerConfig] = {}
    for name, raw in entries.items():
        try:
            spec = DownstreamServer.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors(include_input=False)[0]
            field = ".".join(str(part) for part in error["loc"]) or "(entry)"
            problem = f"{source}: server {name!r}, field {field}: {error['msg']}"
        if problem is not None:
            raise ConfigurationError(problem)
        servers[name] = _server(str(source), name, spec)
    return GatewayConfig(path=str(source), servers=servers)


def warn_of_other_writers(config: GatewayConfig) -> None:
    """Warn when users other than this one may change the gateway file.

    A downstream's command runs with its users' secrets in its environment, and its URL gets them in its
    headers: whoever changes the file chooses where they go.
    """
    path = Path(config.path)
    power = "who can have users' secrets sent to a program of theirs"
    try:
        writable = others_may_write(path.stat().st_mode)
    except OSError:  # gone since it was read: the start reads it no more
        writable = False
    if writable:
        logger.warning(
            "the gateway file %s is writable by other users, %s; run: chmod go-w %s", path, power, path
        )
    if (elsewhere := owned_elsewhere(path)) is not None:
        logger.warning("the gateway file %s %s, %s", path, elsewhere, power)
