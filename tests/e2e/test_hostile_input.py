"""Hostile tool arguments through the in-process client: each call does what the spec says or fails cleanly.

For every tool, Hypothesis sends arbitrary Unicode, control characters, lone
surrogates, ``$``-prefixed and dotted names, strings up to ~100 KB, wrong JSON
types (numbers, booleans, null, lists, Mongo-style operator objects), missing
and extra arguments. An oracle written from the spec (``secrets.py``'s name and
value rules, the tools' signatures) predicts success or the field an error must
name. Every call must match it, no result may quote a value or a rejected input,
and the server must still answer afterwards.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp_types import CallToolResult
from pydantic import TypeAdapter, ValidationError

from conftest import SchemaValidator, text_of
from mcp_secrets.app import build_server
from mcp_secrets.crypto import SecretEncryptor, generate_master_key, parse_master_key
from mcp_secrets.identity import LocalIdentity
from mcp_secrets.secrets import MAX_VALUE_BYTES, Secrets
from mcp_secrets.store import SecretStore
from mcp_secrets.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

USERNAME = "alice"
SEEDED = ("github", "TOKEN")
NAME_PATTERN = r"[A-Za-z0-9_.\-]{1,128}"
NAME = re.compile(NAME_PATTERN)
MIN_CHECKED_LENGTH = 4  # shorter strings turn up in any text by chance
MISSING = object()
# Stand-ins for text a result may legitimately hold (names it echoes, timestamps), before the leak check.
ERASED = "\U0010fffe"
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?Z?")
PROBE_SERVER = "probe"
HOSTILE_SETTINGS = settings(
    max_examples=100,  # per store backend: 200 a tool over SQLite and mongomock
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- what Hypothesis sends ------------------------------------------------------------------------


def _repeated(char: str, size_bytes: int) -> str:
    return char * max(1, size_bytes // len(char.encode("utf-8")))


NAMES = st.one_of(
    st.from_regex(NAME_PATTERN, fullmatch=True),
    st.sampled_from([*SEEDED, "a.b", "..", ".", "-", "__proto__", "null", "A" * 128]),
    st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), min_size=2, max_size=4).map(".".join),
)
# Either side of the 64 KiB limit, in one-, two- and four-byte characters.
VALUE_BOUNDARIES = st.builds(
    lambda char, over: _repeated(char, MAX_VALUE_BYTES) + "x" * over,
    st.sampled_from(["x", "é", "😀"]),
    st.sampled_from([0, 1]),
)
HOSTILE_TEXT = st.one_of(
    st.text(),
    st.text(st.characters(exclude_categories=[]), min_size=1),  # lone surrogates included
    st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp"]), min_size=1),
    st.text().map(lambda text: "$" + text),
    NAMES.map(lambda name: "$" + name),
    NAMES,
    NAMES.map(lambda name: name + "\n"),
    st.builds(_repeated, st.sampled_from(["x", "é", "€", "😀", "\x00", "$", "."]), st.integers(1, 100_000)),
    VALUE_BOUNDARIES,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    HOSTILE_TEXT,
)
OPERATORS = st.builds(
    lambda operator, operand: {operator: operand},
    st.sampled_from(["$ne", "$gt", "$regex", "$where", "$exists", "$in", "$expr"]),
    SCALARS,
)
JSON_JUNK = st.recursive(
    SCALARS | OPERATORS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Draw from each strategy in proportion to its weight (``one_of`` weighs its flattened leaves)."""
    return st.sampled_from([choice for weight, choice in choices for _ in range(weight)]).flatmap(
        lambda choice: choice
    )


# Weighted towards plausible input, so that the spec's success paths are reached often too.
ARGUMENT = weighted((1, st.just(MISSING)), (6, NAMES), (4, HOSTILE_TEXT), (1, JSON_JUNK))
VALUES = weighted((1, st.just(MISSING)), (6, st.text(min_size=1)), (4, HOSTILE_TEXT), (1, JSON_JUNK))
LIMITS = weighted(
    (2, st.just(MISSING)),
    (3, st.integers(-5, 1005)),
    (1, st.integers(1, 1000).map(str)),
    (1, st.sampled_from(["5.0", "1e2", "[5]", "null", "true", " 7 ", "0x10"])),
    (1, st.floats(allow_nan=False, allow_infinity=False)),
    (1, JSON_JUNK),
)
EXTRA_NAMES = st.one_of(
    st.sampled_from(
        [
            "ctx",
            "username",
            "user",
            "$where",
            "__proto__",
            "constructor",
            "Value",
            "value\u200b",
            "server\u200b",
        ]
    ),
    st.text(max_size=12),
)


def arguments_for(**params: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any] | None]:
    """Tool arguments: each parameter present or missing, plus unknown extra arguments."""
    declared = st.fixed_dictionaries(params)
    extras = st.dictionaries(EXTRA_NAMES.filter(lambda name: name not in params), JSON_JUNK, max_size=3)

    def combine(values: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        return extra | {name: value for name, value in values.items() if value is not MISSING}

    return weighted((1, st.just(None)), (9, st.builds(combine, declared, extras)))


# --- the spec, as an oracle -----------------------------------------------------------------------


@dataclass
class Expected:
    """What a call must do: succeed, or fail with a message that names what is wrong.

    The SDK reports every missing or mistyped argument at once (``type_errors``); the
    library then stops at the first argument that breaks its rule (``rule_error``).
    """

    succeeds: bool
    type_errors: tuple[str, ...] = ()
    rule_error: str | None = None
    says: str = ""

    def check_error_text(self, text: str) -> None:
        assert self.says in text, text
        for field in self.type_errors:
            assert f"{field}: " in text, text
        if self.rule_error is not None:
            assert re.search(rf"\b{self.rule_error} must\b", text), text


def _pre_parsed(value: Any) -> Any:
    """What the SDK's ``pre_parse_json`` makes of an argument of a parameter not typed ``str``.

    A string holding JSON becomes the decoded value, unless that is a string or a number. So a
    ``str | None`` parameter reads the string "null" as None: see the test about "null" below.
    """
    if not isinstance(value, str):
        return value
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):
        return value
    return value if isinstance(decoded, str | int | float) else decoded


def _value_ok(value: str) -> bool:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return 1 <= size <= MAX_VALUE_BYTES


# Each tool's parameters, in the order the library checks them, and what each one is.
TOOL_PARAMETERS: dict[str, dict[str, str]] = {
    "set_secret": {"server": "name", "key": "name", "value": "value"},
    "delete_secret": {"server": "name", "key": "name"},
    "request_secret": {"server": "name", "key": "name"},
    "list_secret_keys": {"server": "optional name"},
    "list_secret_events": {"server": "optional name", "limit": "limit"},
}
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


def _typed(kind: str, raw: Any) -> tuple[bool, Any]:
    """Whether the SDK's argument model accepts ``raw`` for a parameter of ``kind``, and what it passes on."""
    if kind in ("name", "value"):  # plain ``str`` parameters: strict, no pre-parsing
        return type(raw) is str, raw
    if kind == "optional name":  # a plain ``str`` too (no pre-parsing); null and "" both mean "all servers"
        return raw is None or type(raw) is str, raw or None
    parsed = _pre_parsed(raw)
    if isinstance(parsed, bool | str):  # a JSON number only: lax pydantic would read "5" as 5, true as 1
        return False, None
    try:
        return True, TypeAdapter(int).validate_python(parsed)
    except ValidationError:
        return False, None


def _follows_rule(kind: str, value: Any) -> bool:
    """Whether a well-typed argument passes the library's own rule for its kind."""
    if kind == "value":
        return _value_ok(value)
    if kind == "limit":
        return 1 <= value <= MAX_LIMIT
    return value is None or NAME.fullmatch(value) is not None


def expect(tool: str, arguments: dict[str, Any]) -> tuple[Expected, dict[str, Any]]:
    """The outcome the spec gives, and the arguments as the tool body would see them."""
    defaults = {"optional name": None, "limit": DEFAULT_LIMIT}
    seen: dict[str, Any] = {}
    type_errors = []
    for name, kind in TOOL_PARAMETERS[tool].items():
        accepted, seen[name] = _typed(kind, arguments.get(name, defaults.get(kind, MISSING)))
        if not accepted:
            type_errors.append(name)
    if type_errors:
        event(f"refused: wrong type or missing ({', '.join(type_errors)})")
        return Expected(succeeds=False, type_errors=tuple(type_errors)), seen
    for name, kind in TOOL_PARAMETERS[tool].items():
        if not _follows_rule(kind, seen[name]):
            event(f"refused: breaks the rule for {name}")
            return Expected(succeeds=False, rule_error=name), seen
    event("valid")
    return Expected(succeeds=True), seen


# --- what every result must satisfy ---------------------------------------------------------------


def _strings_in(value: Any, *, keys: bool = True) -> Iterator[str]:
    """Every string inside a JSON-like value; with ``keys``, object keys too."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if keys:
                yield from _strings_in(key)
            yield from _strings_in(item, keys=keys)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_in(item, keys=keys)


def _visible(result: CallToolResult, echoed: list[str]) -> str:
    """All a client can read in a result, minus the names it may echo and the timestamps."""
    # Object keys of the result are its schema's field names, not anything the caller sent.
    text = "\n".join(_strings_in(result.model_dump(mode="json"), keys=False))
    for name in sorted(echoed, key=len, reverse=True):
        text = text.replace(name, ERASED)
    return TIMESTAMP.sub(ERASED, text)


def assert_nothing_quoted(
    result: CallToolResult, secret: list[Any], echoed: list[str], vocabulary: str
) -> None:
    """No string of ``secret`` (values, rejected input, unknown arguments) appears in the result."""
    visible = _visible(result, echoed)
    for sent in _strings_in(secret):
        if len(sent) >= MIN_CHECKED_LENGTH and sent not in echoed and sent not in vocabulary:
            assert sent not in visible, f"the result quotes input it was sent: {visible[:500]!r}"


def error_text(result: CallToolResult) -> str:
    assert result.is_error
    assert len(result.content) == 1
    assert result.content[0].type == "text"
    text = result.content[0].text
    assert text.strip()
    assert "Traceback" not in text
    assert len(text) < 1000, "an error message is one clear line, not a dump"
    return text


async def assert_still_serving(client: Client) -> None:
    after = await client.call_tool("list_secret_keys", {"server": PROBE_SERVER})
    assert not after.is_error, after.content
    assert after.structured_content is not None
    assert after.structured_content["keys"] == []


def _never_shown(tool: str, arguments: dict[str, Any], *, refused: bool) -> list[Any]:
    """What must not come back: a value, unknown arguments (names too), and any input that was refused."""
    declared = TOOL_PARAMETERS[tool]
    unknown = {name: value for name, value in arguments.items() if name not in declared}
    inputs: list[Any] = [arguments.get("value"), *unknown, *unknown.values()]
    if refused:
        inputs += [arguments.get(name) for name in declared]
    return inputs


async def call_and_check(
    client: Client,
    tool: str,
    arguments: dict[str, Any],
    *,
    expected: Expected,
    vocabulary: str,
    on_success: Callable[[CallToolResult], list[str]],
    echoed_on_error: tuple[str, ...] = (),
) -> None:
    """Call ``tool``; check the outcome against ``expected`` and that the server quotes nothing and lives.

    ``on_success`` checks a successful result and returns the names it may echo.
    """
    result = await client.call_tool(tool, arguments)

    if expected.succeeds:
        assert not result.is_error, result.content
        echoed = on_success(result)
    else:
        expected.check_error_text(error_text(result))
        echoed = list(echoed_on_error)
        # A name or limit the tool refuses, its input schema refuses too (a value's bytes it cannot count).
        if expected.rule_error not in (None, "value"):
            schema = next(t for t in (await client.list_tools()).tools if t.name == tool).input_schema
            assert not SchemaValidator(schema).is_valid(arguments), arguments
    assert_nothing_quoted(
        result, _never_shown(tool, arguments, refused=not expected.succeeds), echoed, vocabulary
    )
    await assert_still_serving(client)


def _stored(secrets: Secrets, server: str) -> dict[str, str]:
    return {record.key: record.value for record in secrets.store.find_secrets(USERNAME, server)}


def _structured(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None
    return result.structured_content


NEUTRAL = {"server": "srv0", "key": "key0", "value": "v"}
REFERENCE_CALLS = [
    ("set_secret", NEUTRAL),
    ("set_secret", NEUTRAL),
    ("request_secret", NEUTRAL),
    ("list_secret_keys", {}),
    ("list_secret_events", {}),
    ("delete_secret", {**NEUTRAL, "key": "key1"}),
    ("delete_secret", NEUTRAL),
    ("delete_secret", NEUTRAL),
    ("set_secret", {**NEUTRAL, "value": ""}),
    ("set_secret", {**NEUTRAL, "value": "\u2603" * (MAX_VALUE_BYTES // 3 + 1)}),
    ("set_secret", {**NEUTRAL, "value": "\ud800"}),
    ("list_secret_events", {"limit": 0}),
    *(
        (tool, dict.fromkeys(parameters, bad))
        for tool, parameters in TOOL_PARAMETERS.items()
        for bad in ({}, 1, 1.5, [1], {"a": 1}, True, None, "a b", "")
    ),
    *((tool, {}) for tool in TOOL_PARAMETERS),
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def vocabulary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Everything the tools say whatever the input, from calls with neutral arguments.

    A sent string found in here is the server's own wording (a username "user" in "ask the
    user to run..."), so the leak check does not count it as quoted input.
    """
    said = []
    store = SQLiteStore(tmp_path_factory.mktemp("reference") / "secrets.db")
    encryptor = SecretEncryptor([parse_master_key(generate_master_key())])
    async with Client(build_server(Secrets(store, encryptor), LocalIdentity(USERNAME))) as reference:
        for tool, arguments in REFERENCE_CALLS:
            result = await reference.call_tool(tool, arguments)
            said.append(_visible(result, [USERNAME, "srv0", "key0", "key1"]))
    store.close()
    return "\n".join(sorted(set(said)))


@pytest.fixture
async def alice(secrets: Secrets) -> AsyncIterator[Client]:
    """An in-process session acting for alice, over a store holding one secret of hers."""
    secrets.set_secret(USERNAME, *SEEDED, "seeded-value")
    async with Client(build_server(secrets, LocalIdentity(USERNAME))) as client:
        yield client


# --- the properties -------------------------------------------------------------------------------


@HOSTILE_SETTINGS
@given(arguments=arguments_for(server=ARGUMENT, key=ARGUMENT, value=VALUES))
async def test_set_secret_stores_valid_input_and_refuses_the_rest_without_quoting_it(
    alice: Client, secrets: Secrets, vocabulary: str, arguments: dict[str, Any] | None
) -> None:
    arguments = arguments or {}
    expected, seen = expect("set_secret", arguments)
    existed = expected.succeeds and seen["key"] in _stored(secrets, seen["server"])

    def stored_and_encrypted(result: CallToolResult) -> list[str]:
        status = "updated" if existed else "created"
        assert _structured(result) == {"server": seen["server"], "key": seen["key"], "status": status}
        ciphertext = _stored(secrets, seen["server"])[seen["key"]]
        names = {"server": seen["server"], "key": seen["key"]}
        assert secrets.encryptor.decrypt(ciphertext, username=USERNAME, **names) == seen["value"]
        return [seen["server"], seen["key"]]

    await call_and_check(
        alice,
        "set_secret",
        arguments,
        expected=expected,
        vocabulary=vocabulary,
        on_success=stored_and_encrypted,
    )


@HOSTILE_SETTINGS
@given(arguments=arguments_for(server=ARGUMENT, key=ARGUMENT))
async def test_delete_secret_deletes_only_an_existing_secret_and_refuses_the_rest(
    alice: Client, secrets: Secrets, vocabulary: str, arguments: dict[str, Any] | None
) -> None:
    arguments = arguments or {}
    expected, seen = expect("delete_secret", arguments)
    echoed: tuple[str, ...] = ()
    if expected.succeeds and seen["key"] not in _stored(secrets, seen["server"]):
        # Valid names of a secret alice does not have: "not found", naming them back.
        expected, echoed = Expected(succeeds=False, says="no secret"), (seen["server"], seen["key"])

    def deleted(result: CallToolResult) -> list[str]:
        assert _structured(result) == {"server": seen["server"], "key": seen["key"], "status": "deleted"}
        assert seen["key"] not in _stored(secrets, seen["server"])
        return [seen["server"], seen["key"]]

    await call_and_check(
        alice,
        "delete_secret",
        arguments,
        expected=expected,
        vocabulary=vocabulary,
        on_success=deleted,
        echoed_on_error=echoed,
    )


@HOSTILE_SETTINGS
@given(arguments=arguments_for(server=ARGUMENT, key=ARGUMENT))
async def test_request_secret_on_stdio_points_to_the_terminal_or_refuses_the_input(
    alice: Client, vocabulary: str, arguments: dict[str, Any] | None
) -> None:
    arguments = arguments or {}
    expected, seen = expect("request_secret", arguments)

    def terminal_hint(result: CallToolResult) -> list[str]:
        structured = _structured(result)
        assert (structured["server"], structured["key"], structured["status"]) == (
            seen["server"],
            seen["key"],
            "use_terminal",
        )
        return [seen["server"], seen["key"]]

    await call_and_check(
        alice, "request_secret", arguments, expected=expected, vocabulary=vocabulary, on_success=terminal_hint
    )


@HOSTILE_SETTINGS
@given(arguments=arguments_for(server=ARGUMENT))
async def test_list_secret_keys_lists_the_callers_keys_or_refuses_the_filter(
    alice: Client, secrets: Secrets, vocabulary: str, arguments: dict[str, Any] | None
) -> None:
    arguments = arguments or {}
    expected, seen = expect("list_secret_keys", arguments)

    def listed(result: CallToolResult) -> list[str]:
        structured = _structured(result)
        assert structured["username"] == USERNAME
        keys = [(entry["server"], entry["key"]) for entry in structured["keys"]]
        records = secrets.store.find_secrets(USERNAME, seen["server"])
        assert keys == [(record.server, record.key) for record in records]
        return [
            USERNAME,
            *(name for pair in keys for name in pair),
            *([seen["server"]] if seen["server"] else []),
        ]

    await call_and_check(
        alice, "list_secret_keys", arguments, expected=expected, vocabulary=vocabulary, on_success=listed
    )


@HOSTILE_SETTINGS
@given(arguments=arguments_for(server=ARGUMENT, limit=LIMITS))
async def test_list_secret_events_pages_the_callers_trail_or_refuses_the_arguments(
    alice: Client, secrets: Secrets, vocabulary: str, arguments: dict[str, Any] | None
) -> None:
    arguments = arguments or {}
    expected, seen = expect("list_secret_events", arguments)

    def paged(result: CallToolResult) -> list[str]:
        structured = _structured(result)
        assert structured["username"] == USERNAME
        events = structured["events"]
        trail = secrets.store.list_events(USERNAME, seen["server"], seen["limit"])
        assert [(event["action"], event["server"], event["key"]) for event in events] == [
            (event.action, event.server, event.key) for event in trail
        ]
        return [USERNAME, *(text for event in events for text in _strings_in(event))]

    await call_and_check(
        alice, "list_secret_events", arguments, expected=expected, vocabulary=vocabulary, on_success=paged
    )


# --- one case the SDK's JSON pre-parsing gets wrong -------------------------------------------------


@pytest.mark.parametrize("tool", ["list_secret_keys", "list_secret_events"])
async def test_a_server_named_null_filters_like_any_other_server_name(
    sqlite_secrets: Secrets, tool: str
) -> None:
    """ "null" is a valid server name, so filtering by it must not list every server's secrets.

    The SDK's ``pre_parse_json`` decodes the string "null" to None for a ``str | None``
    parameter, and None means "all servers".
    """
    sqlite_secrets.set_secret(USERNAME, *SEEDED, "seeded-value")
    sqlite_secrets.set_secret(USERNAME, "null", "K", "v")

    async with Client(build_server(sqlite_secrets, LocalIdentity(USERNAME))) as alice:
        result = await alice.call_tool(tool, {"server": "null"})

    assert not result.is_error, result.content
    listed = _structured(result)["keys" if tool == "list_secret_keys" else "events"]
    assert listed
    assert {entry["server"] for entry in listed} == {"null"}


# --- one user filling the store -------------------------------------------------------------------

FEW = 3


async def test_one_user_cannot_store_more_than_the_limit_of_secrets_but_may_replace_and_delete(
    store: SecretStore, encryptor: SecretEncryptor, canary: str
) -> None:
    # Each new key costs up to 64 KiB: without a bound, one user (or a model they run) fills the disk.
    limited = Secrets(store, encryptor, max_secrets_per_user=FEW)
    try:
        async with (
            Client(build_server(limited, LocalIdentity("alice"))) as alice,
            Client(build_server(limited, LocalIdentity("bob"))) as bob,
        ):
            for index in range(FEW):
                stored = await alice.call_tool(
                    "set_secret", {"server": "s", "key": f"K{index}", "value": "v"}
                )
                assert not stored.is_error, text_of(stored)

            one_too_many = await alice.call_tool(
                "set_secret", {"server": "t", "key": "MORE", "value": canary}
            )
            kept = sorted(record.key for record in store.find_secrets("alice"))
            replaced = await alice.call_tool("set_secret", {"server": "s", "key": "K0", "value": "v2"})
            bobs = await bob.call_tool("set_secret", {"server": "s", "key": "K0", "value": "v"})
            await alice.call_tool("delete_secret", {"server": "s", "key": "K1"})
            after_a_delete = await alice.call_tool("set_secret", {"server": "t", "key": "MORE", "value": "v"})
    finally:
        limited.close()

    assert one_too_many.is_error
    assert f"at most {FEW} secrets" in text_of(one_too_many)
    assert canary not in text_of(one_too_many)
    assert kept == ["K0", "K1", "K2"]
    assert not replaced.is_error, text_of(replaced)
    assert not bobs.is_error, text_of(bobs)
    assert not after_a_delete.is_error, text_of(after_a_delete)
    assert sorted(record.key for record in store.find_secrets("alice")) == ["K0", "K2", "MORE"]
