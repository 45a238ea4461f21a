"""The gateway's configuration file: placeholders, required keys, and start-up errors that say where."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import assert_not_leaked, isolated_env, new_canary
from mcp_secrets.errors import ConfigurationError
from mcp_secrets.gateway.config import GatewayConfig, load_gateway_config, references, substitute

EXIT_CONFIGURATION = 2
STDIO: dict[str, Any] = {"command": "python", "args": ["server.py"]}
REMOTE: dict[str, Any] = {"url": "https://mcp.example.com/mcp"}


def write(tmp_path: Path, document: object) -> Path:
    """A configuration file holding ``document`` as JSON, or as it is when it is a string."""
    path = tmp_path / "servers.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def load(tmp_path: Path, servers: dict[str, Any]) -> GatewayConfig:
    return load_gateway_config(write(tmp_path, {"mcpServers": servers}))


def startup_error(tmp_path: Path, document: object) -> tuple[Path, str]:
    """The file and the message ``load_gateway_config`` refuses it with."""
    path = write(tmp_path, document)
    with pytest.raises(ConfigurationError) as refused:
        load_gateway_config(path)
    message = str(refused.value)
    assert "\n" not in message, "a start-up error is one line"
    return path, message


# --- placeholders ---------------------------------------------------------------------------------


def test_references_are_the_keys_named_by_placeholders() -> None:
    text = "Bearer ${secret:TOKEN} for ${secret:org.name-2} and ${secret:TOKEN} again; $TOKEN {secret:X}"

    assert references(text) == {"TOKEN", "org.name-2"}


def test_substitute_fills_every_placeholder_with_its_value() -> None:
    text = "--token=${secret:TOKEN} --org ${secret:ORG} ${secret:TOKEN}"

    filled = substitute(text, {"TOKEN": "t0k", "ORG": "acme", "UNUSED": "x"})

    assert filled == "--token=t0k --org acme t0k"


def test_substitute_leaves_text_without_placeholders_as_it_is() -> None:
    assert substitute("plain $HOME ${other:X}", {"X": "value"}) == "plain $HOME ${other:X}"


def test_placeholders_are_read_from_args_env_headers_and_url(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "local": {
                "command": "npx",
                "args": ["--key=${secret:ARG_KEY}"],
                "allowSecretsInArgs": True,
                "env": {"A": "${secret:ENV_KEY}"},
            },
            "remote": {
                "url": "https://mcp.example.com/${secret:URL_KEY}/mcp",
                "headers": {"Authorization": "Bearer ${secret:HEADER_KEY}"},
            },
        },
    )

    assert config.servers["local"].referenced == {"ARG_KEY", "ENV_KEY"}
    assert config.servers["remote"].referenced == {"URL_KEY", "HEADER_KEY"}


def test_a_secret_in_args_is_refused_unless_the_entry_accepts_that_any_local_user_can_read_it(
    tmp_path: Path,
) -> None:
    entry = {**STDIO, "args": ["server.js", "postgresql://app:${secret:PASSWORD}@db/app"]}

    path, message = startup_error(tmp_path, {"mcpServers": {"db": entry}})
    accepted = load(tmp_path, {"db": {**entry, "allowSecretsInArgs": True}})

    assert message.startswith(f"{path}: server 'db', field args[1]: a secret in args can be read by every")
    assert "pass it in env" in message
    assert accepted.servers["db"].referenced == {"PASSWORD"}


# --- required and optional keys -------------------------------------------------------------------


def test_referenced_keys_are_required_without_a_secrets_block(tmp_path: Path) -> None:
    config = load(tmp_path, {"down": {**STDIO, "env": {"T": "${secret:TOKEN}", "O": "${secret:ORG}"}}})

    assert config.servers["down"].required == {"TOKEN", "ORG"}


def test_declared_keys_are_required_unless_marked_optional(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "down": {
                **STDIO,
                "env": {"T": "${secret:TOKEN}", "R": "${secret:REGION}"},
                "secrets": {
                    "TOKEN": {"description": "An API token"},
                    "REGION": {"description": "Where to run", "required": False},
                    "ACCOUNT": {"description": "Declared but not referenced"},
                },
            }
        },
    )

    server = config.servers["down"]
    assert server.referenced == {"TOKEN", "REGION"}
    assert server.required == {"TOKEN", "ACCOUNT"}
    assert server.descriptions == {
        "TOKEN": "An API token",
        "REGION": "Where to run",
        "ACCOUNT": "Declared but not referenced",
    }


def test_a_server_without_placeholders_requires_nothing(tmp_path: Path) -> None:
    config = load(tmp_path, {"time": {"command": "uvx", "args": ["mcp-server-time"]}})

    assert config.servers["time"].required == frozenset()
    assert config.servers["time"].is_stdio


@pytest.mark.parametrize(
    ("entry", "transport"),
    [
        pytest.param(REMOTE, "streamable-http", id="default"),
        pytest.param({**REMOTE, "type": "sse"}, "sse", id="type-sse"),
        pytest.param({**REMOTE, "transport": "sse"}, "sse", id="transport-sse"),
    ],
)
def test_remote_servers_use_streamable_http_unless_told_sse(
    tmp_path: Path, entry: dict[str, Any], transport: str
) -> None:
    server = load(tmp_path, {"remote": entry}).servers["remote"]

    assert not server.is_stdio
    assert server.remote_transport == transport


@pytest.mark.parametrize(
    ("url", "fixed"),
    [
        pytest.param("https://mcp.example.com/mcp", ("https", "mcp.example.com", None), id="no-placeholder"),
        pytest.param(
            "https://${secret:USER}:${secret:PASS}@mcp.example.com:8443/mcp/${secret:ID}?key=${secret:KEY}",
            ("https", "mcp.example.com", 8443),
            id="user-part-path-and-query",
        ),
        pytest.param("${secret:ENDPOINT}", None, id="whole-url"),
        pytest.param("https://${secret:HOST}/mcp", None, id="host"),
        pytest.param("https://mcp.example.com:${secret:PORT}/mcp", None, id="port"),
    ],
)
def test_a_remote_url_keeps_its_host_fixed_unless_a_placeholder_is_in_the_host_itself(
    tmp_path: Path, url: str, fixed: tuple[str, str, int | None] | None
) -> None:
    server = load(tmp_path, {"remote": {"url": url}}).servers["remote"]

    assert server.fixed_origin == fixed


@pytest.mark.parametrize("fault", ["not-json", "headers-not-an-object"])
def test_a_file_refused_carries_no_error_holding_what_it_has_in_the_clear(tmp_path: Path, fault: str) -> None:
    # A header may be given as it is, a token in it: json's error keeps the whole file as its `doc`,
    # pydantic's the field it refused as its input.
    token = new_canary()
    header = f"Authorization: Bearer {token}"
    headers = header if fault == "headers-not-an-object" else dict([header.split(": ")])
    text = json.dumps({"mcpServers": {"api": {**REMOTE, "headers": headers}}})

    with pytest.raises(ConfigurationError) as refused:
        load_gateway_config(write(tmp_path, text + "," if fault == "not-json" else text))

    assert refused.value.__context__ is None
    assert_not_leaked(refused.value, token)


# --- start-up errors name the file, the server and the field --------------------------------------

ENTRY_ERRORS = [
    pytest.param(
        {**STDIO, "env": {"T": "${secret:TOKEN}"}, "secrets": {"OTHER": {}}},
        "field env.T",
        "not declared",
        id="undeclared-key",
    ),
    pytest.param(
        {**STDIO, "args": ["--token=${secret:bad key}"]}, "field args[0]", "valid key", id="bad-key"
    ),
    pytest.param({**STDIO, "args": ["${secret:}"]}, "field args[0]", "valid key", id="empty-key"),
    pytest.param(
        {**REMOTE, "headers": {"Authorization": "Bearer ${secret:TOKEN"}},
        "field headers.Authorization",
        "unterminated",
        id="unterminated",
    ),
    pytest.param({**REMOTE, "url": "https://x/${secret:TOKEN/mcp"}, "field url", "unterminated", id="url"),
    pytest.param({**STDIO, **REMOTE}, "field command/url", "exactly one", id="command-and-url"),
    pytest.param({"args": ["x"]}, "field command/url", "exactly one", id="neither"),
    pytest.param(
        {**STDIO, "headers": {"Authorization": "x"}}, "field headers/transport", "remote", id="stdio-headers"
    ),
    pytest.param({**STDIO, "transport": "sse"}, "field headers/transport", "remote", id="stdio-transport"),
    pytest.param({**STDIO, "type": "sse"}, "field type", "command", id="stdio-of-type-sse"),
    pytest.param({**REMOTE, "type": "stdio"}, "field type", "url", id="remote-of-type-stdio"),
    pytest.param(
        {"command": "${secret:BINARY}"}, "field command", "args, env, headers and url", id="command"
    ),
    pytest.param(
        {**STDIO, "cwd": "/srv/${secret:TENANT}"}, "field cwd", "args, env, headers and url", id="cwd"
    ),
    pytest.param({**STDIO, "env": {"TOKEN=": "x"}}, "field env", "without '='", id="env-name-with-equals"),
    pytest.param({**STDIO, "env": {"": "x"}}, "field env", "non-empty", id="env-name-empty"),
    pytest.param(
        {**REMOTE, "headers": {"Authorization: Bearer": "x"}}, "field headers", "HTTP token", id="header-name"
    ),
    pytest.param({**STDIO, "enviroment": {}}, "field enviroment", "Extra inputs", id="unknown-field"),
    pytest.param({**STDIO, "args": "server.py"}, "field args", "valid list", id="args-not-a-list"),
    pytest.param({**STDIO, "env": {"PORT": 8080}}, "field env.PORT", "valid string", id="env-not-text"),
    pytest.param({**REMOTE, "transport": "websocket"}, "field transport", "sse", id="unknown-transport"),
    pytest.param(
        {**STDIO, "secrets": {"TOKEN": {"required": "maybe"}}},
        "field secrets.TOKEN.required",
        "boolean",
        id="required-not-boolean",
    ),
    pytest.param({**STDIO, "secrets": {"bad key": {}}}, "field secrets", "1 to 128", id="bad-declared-key"),
    pytest.param("python server.py", "field (entry)", "valid dictionary", id="entry-not-an-object"),
]


@pytest.mark.parametrize(("entry", "field", "problem"), ENTRY_ERRORS)
def test_a_bad_entry_is_refused_naming_file_server_and_field(
    tmp_path: Path, entry: object, field: str, problem: str
) -> None:
    path, message = startup_error(tmp_path, {"mcpServers": {"good": STDIO, "down": entry}})

    assert message.startswith(f"{path}: server 'down', {field}:"), message
    assert problem in message


@pytest.mark.parametrize("name", ["git__hub", "my server", "", "ünïcode", "x" * 129])
def test_a_bad_server_name_is_refused_naming_file_and_server(tmp_path: Path, name: str) -> None:
    path, message = startup_error(tmp_path, {"mcpServers": {name: STDIO}})

    assert message.startswith(f"{path}: server {name!r}: the name must")


def test_a_name_with_the_tool_separator_says_why_it_is_refused(tmp_path: Path) -> None:
    _, message = startup_error(tmp_path, {"mcpServers": {"git__hub": STDIO}})

    assert "'__'" in message
    assert "tool names" in message


def test_a_name_ending_in_an_underscore_is_refused_as_its_tool_names_would_split_wrongly(
    tmp_path: Path,
) -> None:
    # "git_" + "__" + "create" reads as server "git", tool "_create": its tools could never be called.
    path, message = startup_error(tmp_path, {"mcpServers": {"git_": STDIO}})

    assert message.startswith(f"{path}: server 'git_': the name must not end in '_'")
    assert "tool names" in message


def test_a_name_too_long_to_leave_room_for_its_tool_names_is_refused(tmp_path: Path) -> None:
    # "<server>__<tool>" must fit in 128 characters, with room for a shortened tool name.
    assert load(tmp_path, {"s" * 110: STDIO}).servers
    path, message = startup_error(tmp_path, {"mcpServers": {"s" * 111: STDIO}})

    assert message.startswith(f"{path}: server {'s' * 111!r}: the name must be at most 110 characters")
    assert "tool names" in message


def test_invalid_json_is_refused_with_its_line_and_column(tmp_path: Path) -> None:
    document = '{\n  "mcpServers": {\n    "down": {"command": "python",}\n  }\n}\n'

    path, message = startup_error(tmp_path, document)

    # Python 3.13 points at the trailing comma itself; earlier versions at the brace after it.
    column = 33 if sys.version_info >= (3, 13) else 34
    assert message == f"{path}: not valid JSON (line 3, column {column})"


@pytest.mark.parametrize(
    ("document", "name"),
    [
        pytest.param('{"mcpServers": {"down": {"command": "a"}, "down": {}}}', "down", id="server"),
        pytest.param('{"mcpServers": {"down": {"command": "a", "env": {"T": "1", "T": ""}}}}', "T", id="env"),
    ],
)
def test_a_name_given_twice_in_one_object_is_refused(tmp_path: Path, document: str, name: str) -> None:
    # JSON keeps the last of two members of one name: a server copied and not renamed would vanish.
    path, message = startup_error(tmp_path, document)

    assert message == f"{path}: the name {name!r} is given twice in one object"


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"servers": {"down": STDIO}}, id="missing"),
        pytest.param({"mcpServers": [STDIO]}, id="a-list"),
        pytest.param([{"mcpServers": {}}], id="top-level-list"),
    ],
)
def test_a_file_without_an_mcpservers_object_is_refused(tmp_path: Path, document: object) -> None:
    path, message = startup_error(tmp_path, document)

    assert message == f'{path}: needs an object "mcpServers" of downstream servers'


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"

    with pytest.raises(ConfigurationError, match="cannot be read") as refused:
        load_gateway_config(path)

    assert str(refused.value).startswith(f"{path}: ")


# --- the CLI stops before serving -----------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment minus any MCP_SECRETS_*, confined to tmp_path, with a master key."""
    return isolated_env(tmp_path, MCP_SECRETS_USER="alice")


@pytest.mark.parametrize("given_by", ["option", "environment"])
def test_serve_with_a_bad_servers_file_exits_2_saying_where(
    tmp_path: Path, cli_env: dict[str, str], given_by: str
) -> None:
    bad = write(tmp_path, {"mcpServers": {"down": {**STDIO, "headers": {"Authorization": "x"}}}})
    args = ["serve", "--servers", str(bad)] if given_by == "option" else ["serve"]
    env = {**cli_env, "MCP_SECRETS_SERVERS": str(bad)} if given_by == "environment" else cli_env

    done = subprocess.run(
        [sys.executable, "-m", "mcp_secrets", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == EXIT_CONFIGURATION, done.stderr
    assert f"mcp-secrets: error: {bad}: server 'down', field headers/transport:" in done.stderr
    assert done.stdout == ""
