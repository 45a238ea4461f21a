"""The MCP tools through the SDK's in-process client, over every store backend."""

from __future__ import annotations

import json
import logging
import secrets as _random
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcp import Client
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult

from conftest import SchemaValidator, assert_no_fragment_of, assert_not_leaked, parse_time
from mcp_secrets.app import build_server
from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.errors import DecryptionError
from mcp_secrets.gateway import DownstreamError
from mcp_secrets.identity import LocalIdentity
from mcp_secrets.logs import PAYLOAD_LOGGERS
from mcp_secrets.secrets import MAX_VALUE_BYTES, Secrets
from mcp_secrets.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def alice(secrets: Secrets) -> AsyncIterator[Client]:
    """An in-process client session of the server acting for alice."""
    async with Client(build_server(secrets, LocalIdentity("alice"))) as client:
        yield client


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1
    assert result.content[0].type == "text"
    return result.content[0].text


def everything_in(result: CallToolResult) -> str:
    """All a client can read in a result: its text and its structured content."""
    return json.dumps([result.model_dump(mode="json")])


async def keys_of(client: Client, server: str | None = None) -> list[tuple[str, str]]:
    listed = await client.call_tool("list_secret_keys", {} if server is None else {"server": server})
    assert not listed.is_error, text_of(listed)
    assert listed.structured_content is not None
    return [(entry["server"], entry["key"]) for entry in listed.structured_content["keys"]]


async def test_set_list_delete_round_trip(alice: Client) -> None:
    created = await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": "one"})
    updated = await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": "two"})
    assert [created.structured_content, updated.structured_content] == [
        {"server": "github", "key": "TOKEN", "status": "created"},
        {"server": "github", "key": "TOKEN", "status": "updated"},
    ]
    assert await keys_of(alice) == [("github", "TOKEN")]

    deleted = await alice.call_tool("delete_secret", {"server": "github", "key": "TOKEN"})

    assert deleted.structured_content == {"server": "github", "key": "TOKEN", "status": "deleted"}
    assert await keys_of(alice) == []


async def test_tools_have_output_schemas_and_say_values_are_write_only(alice: Client) -> None:
    tools = {tool.name: tool for tool in (await alice.list_tools()).tools}

    assert set(tools) == {
        "set_secret",
        "delete_secret",
        "list_secret_keys",
        "request_secret",
        "list_secret_events",
    }
    assert all(tool.output_schema and tool.output_schema.get("properties") for tool in tools.values())
    assert all(tool.description for tool in tools.values())
    # Written as the docstrings are, not with their source indentation: clients show them as they come.
    assert not any("\n " in (tool.description or "") for tool in tools.values())
    assert all((tool.description or "") == (tool.description or "").strip() for tool in tools.values())
    assert "write-only" in (tools["set_secret"].description or "")
    assert "write-only" in tools["set_secret"].input_schema["properties"]["value"]["description"].lower()
    assert "never their values" in (tools["list_secret_keys"].description or "")
    assert "write-only" in (alice.instructions or "")
    keys_schema = tools["list_secret_keys"].output_schema["properties"]["keys"]
    assert set(keys_schema["$defs"]["SecretKeyEntry"]["properties"]) == {
        "server",
        "key",
        "created_at",
        "updated_at",
        "last_used_at",
    }


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_tool_listing_with_a_cursor_it_never_handed_out_is_invalid_params(
    sqlite_secrets: Secrets, mode: str
) -> None:
    # Every tool is on the one page, which has no nextCursor: any cursor is one this server never made.
    cursor = _random.token_urlsafe(16)

    async with Client(build_server(sqlite_secrets, LocalIdentity("alice")), mode=mode) as alice:
        with pytest.raises(MCPError) as refused:
            await alice.list_tools(cursor=cursor)
        listed = await alice.list_tools()

    assert refused.value.code == INVALID_PARAMS
    assert "cursor" in refused.value.message
    assert cursor not in refused.value.message
    assert listed.next_cursor is None


async def test_list_secret_keys_description_names_all_it_lists(alice: Client) -> None:
    """A model finds the missing secrets of a downstream server only if it knows where to look."""
    tools = {tool.name: tool for tool in (await alice.list_tools()).tools}
    description = tools["list_secret_keys"].description or ""

    assert "last used" in description
    assert "downstream server" in description


@pytest.mark.parametrize(
    ("tool", "field", "item"),
    [("list_secret_keys", "keys", "SecretKeyEntry"), ("list_secret_events", "events", "SecretEventEntry")],
)
async def test_list_items_match_the_item_schema_their_tool_declares(
    alice: Client, secrets: Secrets, tool: str, field: str, item: str
) -> None:
    """The client does not check list items (it would cost more than the call): this test does."""
    for key in ("USED", "UNUSED"):
        await alice.call_tool("set_secret", {"server": "github", "key": key, "value": "v"})
    await alice.call_tool("set_secret", {"server": "other", "key": "USED", "value": "v"})
    secrets.get_secrets("alice", "other")  # one entry with a last use, one without
    schema = next(t for t in (await alice.list_tools()).tools if t.name == tool).output_schema
    assert schema is not None
    item_schema = schema["properties"][field]["$defs"][item]
    result = await alice.call_tool(tool, {})
    assert result.structured_content is not None
    entries = result.structured_content[field]
    assert len(entries) >= 3
    for entry in entries:
        jsonschema.validate(entry, item_schema)
        assert set(entry) == set(item_schema["properties"])
    if field == "keys":
        assert {entry["last_used_at"] is None for entry in entries} == {True, False}


async def test_results_are_structured_and_readable_as_text(alice: Client) -> None:
    stored = await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": "v"})
    listed = await alice.call_tool("list_secret_keys", {})

    assert stored.structured_content == {"server": "github", "key": "TOKEN", "status": "created"}
    assert "TOKEN" in text_of(stored)
    assert "github" in text_of(stored)
    assert listed.structured_content is not None
    assert listed.structured_content["username"] == "alice"
    entry = listed.structured_content["keys"][0]
    assert parse_time(entry["updated_at"]).tzinfo is not None
    assert "alice" in text_of(listed)
    assert "github/TOKEN" in text_of(listed)


async def test_no_tool_result_contains_the_value(alice: Client, canary: str) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("set_secret", {"server": "github", "key": "TOKEN", "value": canary}),
        ("set_secret", {"server": "github", "key": "TOKEN", "value": canary + "-2"}),
        ("list_secret_keys", {}),
        ("list_secret_keys", {"server": "github"}),
        ("list_secret_events", {}),
        ("list_secret_events", {"server": "github"}),
        ("set_secret", {"server": "a b", "key": "TOKEN", "value": canary}),
        ("set_secret", {"server": "github", "key": "", "value": canary}),
        (
            "set_secret",
            {"server": "github", "key": "BIG", "value": canary * (MAX_VALUE_BYTES // len(canary) + 1)},
        ),
        ("set_secret", {"server": "github", "key": "TOKEN", "value": {"$ne": canary}}),
        ("set_secret", {"server": "github", "key": "TOKEN", "value": [canary]}),
        ("set_secret", {"server": canary + " x", "key": "TOKEN", "value": "v"}),
        ("delete_secret", {"server": "github", "key": "TOKEN", "value": canary}),
        ("delete_secret", {"server": "github", "key": "TOKEN"}),
    ]

    results = [await alice.call_tool(name, arguments) for name, arguments in calls]

    assert [result.is_error for result in results] == [False] * 6 + [True] * 6 + [False, True]
    for result in results:
        assert canary not in everything_in(result)


@pytest.mark.parametrize("field", ["server", "key"])
@pytest.mark.parametrize("name", ["a b", "", "k" * 200, "$where", "github/../x", "ключ"])
async def test_bad_name_is_refused_naming_the_field_not_the_input(
    alice: Client, field: str, name: str
) -> None:
    arguments = {"server": "github", "key": "TOKEN", "value": "v", field: name}

    result = await alice.call_tool("set_secret", arguments)

    assert result.is_error
    assert result.structured_content is None
    assert field in text_of(result)
    assert not name or name not in text_of(result)
    assert await keys_of(alice) == []


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        pytest.param("set_secret", {"server": "a b", "key": "TOKEN", "value": "v"}, id="server-space"),
        pytest.param("set_secret", {"server": "github", "key": "k" * 129, "value": "v"}, id="key-too-long"),
        pytest.param("set_secret", {"server": "github", "key": "", "value": "v"}, id="key-empty"),
        pytest.param("set_secret", {"server": "github", "key": "TOKEN", "value": ""}, id="value-empty"),
        pytest.param("delete_secret", {"server": "github", "key": "ключ"}, id="key-cyrillic"),
        pytest.param("delete_secret", {"server": "github", "key": "TOKEN\n"}, id="key-final-newline"),
        pytest.param("request_secret", {"server": "git/hub", "key": "TOKEN"}, id="server-slash"),
        pytest.param("list_secret_keys", {"server": "$where"}, id="filter-operator"),
        pytest.param("list_secret_events", {"server": "a b"}, id="events-filter-space"),
        pytest.param("list_secret_events", {"limit": 0}, id="limit-zero"),
        pytest.param("list_secret_events", {"limit": 1001}, id="limit-over"),
    ],
)
async def test_input_schemas_refuse_what_the_tools_refuse(
    alice: Client, tool: str, arguments: dict[str, Any]
) -> None:
    """A client or model reading the schema learns the rules before a call fails on them."""
    schema = next(t for t in (await alice.list_tools()).tools if t.name == tool).input_schema

    result = await alice.call_tool(tool, arguments)

    assert result.is_error
    assert not SchemaValidator(schema).is_valid(arguments)


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("set_secret", {"server": "a.b-c_D9", "key": "k" * 128, "value": "v"}),
        ("request_secret", {"server": "github", "key": "TOKEN"}),
        ("list_secret_keys", {"server": ""}),
        ("list_secret_events", {"server": "github", "limit": 1000}),
        ("list_secret_events", {"limit": 1}),
    ],
)
async def test_input_schemas_accept_what_the_tools_accept(
    alice: Client, tool: str, arguments: dict[str, Any]
) -> None:
    schema = next(t for t in (await alice.list_tools()).tools if t.name == tool).input_schema

    result = await alice.call_tool(tool, arguments)

    assert not result.is_error, text_of(result)
    SchemaValidator(schema).validate(arguments)


async def test_dotted_names_are_valid(alice: Client) -> None:
    result = await alice.call_tool("set_secret", {"server": "a.b", "key": "c.d", "value": "v"})

    assert not result.is_error, text_of(result)
    assert await keys_of(alice) == [("a.b", "c.d")]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(lambda _canary: "", "must not be empty", id="empty"),
        # A canary at each end, where a shortened echo (pydantic's input_value) would show it.
        pytest.param(
            lambda canary: canary + "x" * (MAX_VALUE_BYTES - 2 * len(canary) + 1) + canary,
            f"at most {MAX_VALUE_BYTES} bytes",
            id="64KiB-plus-one-byte",
        ),
        pytest.param(
            lambda canary: canary + "é" * ((MAX_VALUE_BYTES - 2 * len(canary)) // 2 + 1) + canary,
            f"at most {MAX_VALUE_BYTES} bytes",
            id="64KiB-utf8-plus-one",
        ),
    ],
)
async def test_bad_value_is_refused_without_echoing_it(
    alice: Client, value: Callable[[str], str], problem: str, canary: str
) -> None:
    sent = value(canary)
    result = await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": sent})

    assert result.is_error
    assert "value" in text_of(result)
    assert problem in text_of(result)
    assert_no_fragment_of(canary, everything_in(result))
    assert "x" * 100 not in text_of(result)
    assert "é" * 100 not in text_of(result)
    assert await keys_of(alice) == []


async def test_value_of_exactly_64_kib_is_accepted(alice: Client) -> None:
    result = await alice.call_tool(
        "set_secret", {"server": "github", "key": "BIG", "value": "x" * MAX_VALUE_BYTES}
    )

    assert not result.is_error, text_of(result)


@pytest.mark.parametrize(
    ("arguments", "field", "echo"),
    [
        pytest.param({"value": 987654321}, "value", "987654321", id="value-number"),
        pytest.param({"value": {"$ne": 1}}, "value", "$ne", id="value-operator"),
        pytest.param({"value": None}, "value", "None", id="value-null"),
        pytest.param({"server": ["xyzzy"]}, "server", "xyzzy", id="server-list"),
        pytest.param({"key": {"$gt": ""}}, "key", "$gt", id="key-operator"),
    ],
)
async def test_wrong_json_type_is_refused_naming_the_field(
    alice: Client, arguments: dict[str, Any], field: str, echo: str
) -> None:
    result = await alice.call_tool(
        "set_secret", {"server": "github", "key": "TOKEN", "value": "v", **arguments}
    )

    assert result.is_error
    assert field in text_of(result)
    assert echo not in text_of(result)
    assert await keys_of(alice) == []


@pytest.mark.parametrize(
    ("server", "key", "problem"),
    [
        pytest.param("gitlab", "TOKEN", "no secrets for server", id="unknown-server"),
        pytest.param("github", "OTHER", "no secret", id="unknown-key"),
    ],
)
async def test_deleting_a_missing_secret_is_not_found(
    alice: Client, server: str, key: str, problem: str
) -> None:
    await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": "v"})

    result = await alice.call_tool("delete_secret", {"server": server, "key": key})

    assert result.is_error
    assert problem in text_of(result)
    assert await keys_of(alice) == [("github", "TOKEN")]


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("list_secret_keys", {"server": {"$ne": ""}}),
        ("list_secret_keys", {"server": {"$regex": ".*"}}),
        ("delete_secret", {"server": {"$ne": ""}, "key": {"$ne": ""}}),
        ("set_secret", {"server": {"$ne": ""}, "key": "bobs-key", "value": "overwritten"}),
        ("delete_secret", {"server": "$where", "key": "bobs-key"}),
    ],
)
async def test_operator_arguments_never_reach_another_users_data(
    secrets: Secrets, alice: Client, tool: str, arguments: dict[str, Any]
) -> None:
    secrets.set_secret("bob", "bobs-server", "bobs-key", "bobs-value")

    result = await alice.call_tool(tool, arguments)

    assert result.is_error
    assert "bobs-server" not in everything_in(result)
    assert secrets.get_secrets("bob", "bobs-server") == {"bobs-key": "bobs-value"}
    assert await keys_of(alice) == []


async def test_alice_lists_none_of_bobs_keys(secrets: Secrets, alice: Client) -> None:
    secrets.set_secret("bob", "github", "BOB_TOKEN", "bobs-value")
    await alice.call_tool("set_secret", {"server": "github", "key": "ALICE_TOKEN", "value": "v"})

    assert await keys_of(alice) == [("github", "ALICE_TOKEN")]
    assert await keys_of(alice, "github") == [("github", "ALICE_TOKEN")]


async def test_list_secret_keys_filters_by_server(alice: Client) -> None:
    for server, key in [("github", "TOKEN"), ("github", "APP_ID"), ("slack", "TOKEN")]:
        await alice.call_tool("set_secret", {"server": server, "key": key, "value": "v"})

    assert await keys_of(alice, "github") == [("github", "APP_ID"), ("github", "TOKEN")]
    assert await keys_of(alice, "slack") == [("slack", "TOKEN")]
    assert await keys_of(alice, "gitlab") == []
    assert await keys_of(alice) == [("github", "APP_ID"), ("github", "TOKEN"), ("slack", "TOKEN")]


@pytest.fixture
def impatient_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A SQLite store that gives up on a locked database after 0.3 s instead of 10 s."""
    store = SQLiteStore(tmp_path / "secrets.db", busy_timeout=0.3)
    yield store
    store.close()


async def test_locked_store_is_a_tool_error_and_the_same_server_recovers(
    impatient_store: SQLiteStore, encryptor: SecretEncryptor
) -> None:
    server = build_server(Secrets(impatient_store, encryptor), LocalIdentity("alice"))
    locker = sqlite3.connect(impatient_store.path, isolation_level=None)
    async with Client(server) as alice:
        try:
            locker.execute("BEGIN EXCLUSIVE")
            refused = await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": "v"})
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        recovered = await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": "v"})

        assert refused.is_error
        assert "store is unavailable" in text_of(refused)
        assert not recovered.is_error, text_of(recovered)
        assert recovered.structured_content == {"server": "github", "key": "TOKEN", "status": "created"}
        assert await keys_of(alice) == [("github", "TOKEN")]


def _altered(ciphertext: str) -> str:
    """The ciphertext with one character in the middle of its payload changed."""
    head, payload = ciphertext.rsplit(":", 1)
    middle = len(payload) // 2
    replacement = "A" if payload[middle] != "A" else "B"
    return f"{head}:{payload[:middle]}{replacement}{payload[middle + 1 :]}"


# Each makes a forged ciphertext for TOKEN out of the stored {key: ciphertext}.
TAMPERINGS: dict[str, Callable[[dict[str, str]], str]] = {
    "copied-from-another-record": lambda stored: stored["APP_ID"],
    "one-character-altered": lambda stored: _altered(stored["TOKEN"]),
    "truncated": lambda stored: stored["TOKEN"][:-8],
    "not-a-ciphertext": lambda _: "plain text",
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
async def test_tampered_record_still_lists_but_never_decrypts(
    secrets: Secrets, alice: Client, canary: str, tampering: str
) -> None:
    await alice.call_tool("set_secret", {"server": "github", "key": "APP_ID", "value": "other-value"})
    await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": canary})
    stored = {record.key: record.value for record in secrets.store.find_secrets("alice", "github")}
    forged = TAMPERINGS[tampering](stored)
    secrets.store.put_secret("alice", "github", "TOKEN", forged, datetime.now(timezone.utc))

    assert await keys_of(alice) == [("github", "APP_ID"), ("github", "TOKEN")]
    with pytest.raises(DecryptionError, match="TOKEN") as raised:
        secrets.get_secrets("alice", "github")
    assert canary not in str(raised.value)
    assert "other-value" not in str(raised.value)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record at DEBUG, at the levels ``configure_logging("DEBUG")`` sets."""
    for name in PAYLOAD_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    # Last, because set_level also sets the capturing handler's level.
    caplog.set_level(logging.DEBUG)
    return caplog


async def test_canary_stays_out_of_results_logs_and_the_database_file(
    sqlite_secrets: Secrets, debug_logs: pytest.LogCaptureFixture, canary: str, tmp_path: Path
) -> None:
    async with Client(build_server(sqlite_secrets, LocalIdentity("alice"), log_level="DEBUG")) as alice:
        results = [
            await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": canary}),
            await alice.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": canary + "-2"}),
            await alice.call_tool("set_secret", {"server": "bad name", "key": "TOKEN", "value": canary}),
            await alice.call_tool("set_secret", {"server": "github", "key": "X", "value": {"v": canary}}),
            await alice.call_tool("list_secret_keys", {}),
        ]
    database = b"".join(path.read_bytes() for path in sorted(tmp_path.glob("secrets.db*")))

    assert sqlite_secrets.get_secrets("alice", "github") == {"TOKEN": canary + "-2"}
    assert debug_logs.records, "nothing was logged, so the log check would prove nothing"
    for result in results:
        assert canary not in everything_in(result)
    assert canary not in debug_logs.text
    assert all(canary not in str(record.args) for record in debug_logs.records)
    assert canary.encode() not in database


async def test_a_tool_error_for_arguments_quoting_a_value_carries_no_error_that_quotes_it(
    secrets: Secrets, canary: str
) -> None:
    # The SDK's own ToolError quotes the arguments pydantic refused: raised within its except block, ours
    # carried it as its __context__, which a printed traceback hides and an error reporter finds.
    server = build_server(secrets, LocalIdentity("alice"))

    with pytest.raises(ToolError, match="invalid arguments for set_secret: value") as refused:
        await server.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": [canary]})

    assert_not_leaked(refused.value, canary)


class _DownstreamQuotingItsSecret:
    """A gateway whose downstream fails quoting the secret it was given, refused as the gateway does."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def owns(self, name: str) -> bool:
        return name.startswith("probe__")

    async def call_tool(self, *_: object) -> CallToolResult:
        try:
            int(self.secret)  # a ValueError quoting it, as a downstream's error may
        except ValueError:
            raise DownstreamError("downstream server probe failed during run: (redacted)") from None


async def test_a_tool_error_of_a_downstream_failure_carries_no_error_of_the_downstream(
    secrets: Secrets, canary: str
) -> None:
    server = build_server(secrets, LocalIdentity("alice"))
    server.gateway = _DownstreamQuotingItsSecret(canary)  # type: ignore[attr-defined]

    with pytest.raises(ToolError, match="downstream server probe failed") as refused:
        await server.call_tool("probe__run", {}, Context(mcp_server=server))

    assert_not_leaked(refused.value, canary)


async def test_list_secret_keys_answers_a_page_at_a_time_and_its_cursor_goes_on_to_the_rest(
    secrets: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10,000 keys were one answer of 2.3 MB, 690,000 characters of text for the model.
    monkeypatch.setattr("mcp_secrets.app.KEYS_PER_LISTING", 3)
    stored = [("github", "A"), ("github", "B"), ("github", "C"), ("linear", "A"), ("slack", "Z")]
    for server, key in stored:
        secrets.set_secret("alice", server, key, "v")
    pages: list[dict[str, Any]] = []

    async with Client(build_server(secrets, LocalIdentity("alice"))) as alice:
        cursor: str | None = ""
        while cursor is not None:
            listed = await alice.call_tool("list_secret_keys", {"cursor": cursor} if cursor else {})
            assert not listed.is_error, text_of(listed)
            assert listed.structured_content is not None
            pages.append({**listed.structured_content, "text": text_of(listed)})
            cursor = listed.structured_content.get("next_cursor")
        one_server = await alice.call_tool("list_secret_keys", {"server": "github", "cursor": "github/A"})
        wrong = await alice.call_tool("list_secret_keys", {"cursor": "github"})

    assert [len(page["keys"]) for page in pages] == [3, 2]
    assert [(entry["server"], entry["key"]) for page in pages for entry in page["keys"]] == stored
    assert pages[0]["next_cursor"] == "github/C"
    assert "cursor github/C" in pages[0]["text"]
    assert "More follow" not in pages[1]["text"]
    assert one_server.structured_content is not None
    assert [entry["key"] for entry in one_server.structured_content["keys"]] == ["B", "C"]
    assert "next_cursor" not in one_server.structured_content
    assert "next_cursor" not in pages[1]
    assert wrong.is_error
    assert "cursor must be" in text_of(wrong)


def test_a_page_of_keys_is_read_from_the_store_alone_however_many_the_user_holds(secrets: Secrets) -> None:
    for index in range(50):
        secrets.set_secret("alice", "big", f"KEY_{index:02d}", "v")

    page = secrets.store.find_secrets("alice", None, after=("big", "KEY_09"), limit=5)
    missing = secrets.store.find_secrets("alice", "big", limit=1)

    assert [record.key for record in page] == [f"KEY_{index}" for index in range(10, 15)]
    assert len(missing) == 1
