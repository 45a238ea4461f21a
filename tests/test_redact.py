"""The Redactor takes injected values back out of downstream results, in every spelling a tool may use."""

from __future__ import annotations

import base64
import gc
import html
import html.entities
import json
import re
import secrets
import string
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from mcp_secrets.gateway import redact as redact_module
from mcp_secrets.gateway.redact import MIN_REDACTED_LENGTH, REDACT_INLINE_CHARS, Redactor

LABEL = "[redacted TOKEN]"
_JSON_SHORT_ESCAPES = {"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def dotnet_json(value: str) -> str:
    """A JSON string's inside as .NET's System.Text.Json writes it by default (MCP servers in C#).

    Its encoder writes '"', the HTML-sensitive characters, '+', '`' and everything but printable ASCII
    as \\uXXXX escapes in upper-case hex, each UTF-16 unit on its own.
    """
    units = value.encode("utf-16-be")
    shown = []
    for index in range(0, len(units), 2):
        code = int.from_bytes(units[index : index + 2], "big")
        char = chr(code)
        if char in _JSON_SHORT_ESCAPES:
            shown.append(_JSON_SHORT_ESCAPES[char])
        elif 0x20 <= code < 0x7F and char not in "\"&'+<>`":
            shown.append(char)
        else:
            shown.append(f"\\u{code:04X}")
    return "".join(shown)


def form_encoded(value: str, kept: str) -> str:
    """``value`` in a form body: ASCII letters, digits and ``kept`` as they are, a space as "+", else %XX."""
    return "".join(
        chr(byte)
        if chr(byte) in string.ascii_letters + string.digits + kept
        else "+"
        if byte == 0x20
        else f"%{byte:02X}"
        for byte in value.encode()
    )


# How a downstream tool may hand a value back, each as the standard library spells it.
ENCODINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda value: value,
    "base64": lambda value: base64.b64encode(value.encode()).decode(),
    "base64 unpadded": lambda value: base64.b64encode(value.encode()).decode().rstrip("="),
    "base64url": lambda value: base64.urlsafe_b64encode(value.encode()).decode(),
    "base64url unpadded": lambda value: base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
    "quote": quote,
    "quote, nothing safe": lambda value: quote(value, safe=""),
    "quote_plus": quote_plus,
    # JavaScript's encodeURIComponent, as MCP servers written for Node use it: it leaves !'()* as they are.
    "encodeURIComponent": lambda value: quote(value, safe="!'()*"),
    # A URL's path and query as httpx (and a browser's URL parser) write them: RFC 3986 leaves these as is.
    "URL path": lambda value: quote(value, safe="!$&'()*+,;=:@/"),
    "URL query": lambda value: quote(value, safe="!$&'()*+,;=:@/?"),
    # A form body (application/x-www-form-urlencoded) as the URL standard writes it: URLSearchParams (Node,
    # browsers) and Java's URLEncoder, which escape "~" and leave "*"; and PHP's urlencode, "*" escaped.
    "form, URL standard": lambda value: form_encoded(value, kept="*-._"),
    "form, PHP urlencode": lambda value: form_encoded(value, kept="-._"),
    "hex": lambda value: value.encode().hex(),
    "hex, upper case": lambda value: value.encode().hex().upper(),
    "quote, lower-case escapes": lambda value: re.sub(
        r"%[0-9A-F]{2}", lambda escape: escape.group(0).lower(), quote(value, safe="")
    ),
    "JSON string": lambda value: json.dumps(value)[1:-1],
    "JSON string, not ASCII-only": lambda value: json.dumps(value, ensure_ascii=False)[1:-1],
    # Python's repr, as in f"{value!r}" and pydantic's input_value: it escapes "'" when both quotes are in.
    "Python repr": lambda value: repr(value)[1:-1],
    # Go's encoding/json, as MCP servers written in Go use it: '&', '<', '>' and two line separators
    # as \\u escapes.
    "JSON string, HTML-safe": lambda value: json.dumps(value, ensure_ascii=False)[1:-1].translate(
        {ord(char): f"\\u{ord(char):04x}" for char in "&<>\u2028\u2029"}
    ),
    # PHP's json_encode, as MCP servers written in PHP use it: '/' as '\\/' too, which JSON allows.
    "JSON string, slashes escaped": lambda value: json.dumps(value)[1:-1].replace("/", "\\/"),
    "JSON string, slashes escaped, not ASCII-only": lambda value: json.dumps(value, ensure_ascii=False)[
        1:-1
    ].replace("/", "\\/"),
    "JSON string, .NET": dotnet_json,
    # Java's Gson, HTML-safe by default: '=' and "'" as well as Go's three, in lower-case hex.
    "JSON string, Gson": lambda value: json.dumps(value, ensure_ascii=False)[1:-1].translate(
        {ord(char): f"\\u{ord(char):04x}" for char in "&<>='\u2028\u2029"}
    ),
    # HTML, as a tool that writes a page or an HTML error may escape it: Python's html.escape,
    "HTML": html.escape,
    # Go's html.EscapeString, Jinja2's and lodash's quotes as numeric entities,
    "HTML, quotes as &#34; and &#39;": lambda value: html.escape(value, quote=False).translate(
        {ord('"'): "&#34;", ord("'"): "&#39;"}
    ),
    # PHP's htmlspecialchars, with "'" as &#039;, and its htmlentities, with named entities for accents,
    "HTML, PHP": lambda value: html.escape(value).replace("&#x27;", "&#039;"),
    "HTML, named entities": lambda value: "".join(
        f"&{html.entities.codepoint2name[ord(char)]};" if ord(char) in html.entities.codepoint2name else char
        for char in value
    ),
    # OWASP's encoders, which escape "/" as &#x2F; too,
    "HTML, OWASP": lambda value: html.escape(value).replace("/", "&#x2F;"),
    # .NET's HtmlEncoder, every character but plain ASCII as &#xHH; in upper case,
    "HTML, .NET": lambda value: "".join(
        char if char.isascii() and char.isprintable() and char not in "&<>\"'+" else f"&#x{ord(char):X};"
        for char in value
    ),
    # and every character as a numeric entity, in decimal or hex, as e-mail addresses are hidden from bots.
    "HTML, decimal entities": lambda value: "".join(f"&#{ord(char)};" for char in value),
    "HTML, hex entities": lambda value: "".join(f"&#x{ord(char):x};" for char in value),
}

VALUES = [
    pytest.param("tok-3f9a1c", id="ascii"),
    # '/', '+', '=' and ' ' make every encoding differ from the value; 'é' is two bytes in UTF-8.
    pytest.param("p@ss/w+rd= é~", id="url-special"),
    # JSON escapes '"' and '\\', and a control character as \\n or \\u0001.
    pytest.param('q"uo\\te\n\x01 é', id="json-special"),
    # Both quotes: Python's repr escapes one of them, JSON the other.
    pytest.param("p\"a'ss-w0rd", id="both-quotes"),
    # Go's JSON escapes these three, which passwords often hold.
    pytest.param("p&ss<w>rd", id="html-special"),
    # JavaScript's encodeURIComponent leaves these as they are, where Python escapes them.
    pytest.param("Pa55 w0rd!(*)'", id="uri-component-special"),
    # Its base64 holds "+" and "/", so standard and URL-safe base64 differ, and ends in "=".
    pytest.param("a?>~b?>~", id="base64-special"),
    # A key written in base64 (a cloud storage account's, say): "+", "/" and its "=" padding.
    pytest.param("Eby8vdM02xNOcqFl+/k7gG==", id="base64-key"),
]


def spellings(value: str) -> dict[str, str]:
    """Every encoding of ``value`` by name."""
    return {name: encode(value) for name, encode in ENCODINGS.items()}


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_each_encoding_of_a_value_is_replaced_by_its_keys_label(value: str, encoding: str) -> None:
    encoded = ENCODINGS[encoding](value)

    shown = Redactor({"TOKEN": value}).text(f"before {encoded} after")

    assert shown == f"before {LABEL} after"


def test_every_occurrence_is_replaced_and_labelled_with_its_own_key() -> None:
    redactor = Redactor({"GITHUB_TOKEN": "ghp_first_value", "LINEAR_KEY": "lin_second_value"})

    shown = redactor.text("ghp_first_value, lin_second_value and ghp_first_value again")

    assert shown == "[redacted GITHUB_TOKEN], [redacted LINEAR_KEY] and [redacted GITHUB_TOKEN] again"


def test_a_value_holding_another_is_replaced_whole() -> None:
    redactor = Redactor({"SHORT": "abcd", "LONG": "abcdefgh"})

    assert redactor.text("x abcdefgh y abcd") == "x [redacted LONG] y [redacted SHORT]"


def test_values_overlapping_in_the_text_are_both_replaced_whole() -> None:
    # The end of one value is the start of the other: the text holds both, sharing that piece.
    head, shared, tail = (secrets.token_hex(6) for _ in range(3))
    redactor = Redactor({"FIRST": head + shared, "SECOND": shared + tail})

    shown = redactor.text(f"<{head}{shared}{tail}>")

    leaked = tail in shown  # a bare bool: a failure prints neither value
    assert not leaked
    assert shown == "<[redacted FIRST]>"


def test_nested_data_is_redacted_in_values_keys_and_lists() -> None:
    value = "tok-3f9a1c"
    hexed = value.encode().hex()
    document = {
        "text": f"token={value}",
        f"key {value}": [value, {"deeper": [hexed, 7]}],
        "numbers": [1, 2.5, True, None],
    }

    redacted = Redactor({"TOKEN": value}).data(document)

    assert redacted == {
        "text": f"token={LABEL}",
        f"key {LABEL}": [LABEL, {"deeper": [LABEL, 7]}],
        "numbers": [1, 2.5, True, None],
    }


def test_a_number_spelling_a_value_is_replaced_in_data() -> None:
    # An account id or PIN is often all digits, and a tool's structured output may give it as a number.
    value = str(secrets.randbelow(10**12) + 10**11)

    redacted = Redactor({"ACCOUNT": value}).data({"account": int(value), "other": 7, "flag": True})

    leaked = value in json.dumps(redacted)  # a bare bool: a failure prints neither the value nor where it was
    assert not leaked
    assert redacted == {"account": "[redacted ACCOUNT]", "other": 7, "flag": True}


def test_text_without_a_value_is_returned_unchanged() -> None:
    text = "nothing secret here: 0123456789abcdef"

    assert Redactor({"TOKEN": "tok-3f9a1c"}).text(text) == text
    assert Redactor({}).text(text) == text


@pytest.mark.parametrize("value", ["a", "12", "abc", "é"])
def test_values_shorter_than_the_minimum_are_not_redacted_in_any_spelling(value: str) -> None:
    assert len(value) < MIN_REDACTED_LENGTH
    text = " ".join(spellings(value).values())

    assert Redactor({"TOKEN": value}).text(text) == text


def test_a_value_of_the_minimum_length_is_redacted() -> None:
    value = "x" * MIN_REDACTED_LENGTH

    assert Redactor({"TOKEN": value}).text(f"<{value}>") == f"<{LABEL}>"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # Base64 drops its "=" padding; a value made of "=" has nothing left, which matched everywhere.
        ("====", ""),
        ("====", "plain text"),
        # A value ending in "=" is not base64: without its "=" it is other text.
        ("tok-3f9a=", "tok-3f9a"),
    ],
)
def test_a_value_ending_in_padding_leaves_text_without_it_untouched(value: str, text: str) -> None:
    assert Redactor({"TOKEN": value}).text(text) == text
    assert Redactor({"TOKEN": value}).text(f"<{value}>") == f"<{LABEL}>"


# Values from a few characters that make the encodings differ ('/', '+', '=', '%', ' ', 'é'), or from
# any character a stored value may hold (no lone surrogate) but NUL, which the property below stands
# in for the labels it takes out.
secret_values = st.text(st.sampled_from("aZ09/+=% é~-_."), min_size=MIN_REDACTED_LENGTH) | st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=MIN_REDACTED_LENGTH
)


@given(value=secret_values, before=st.text(), between=st.text(), after=st.text())
def test_redacted_text_never_holds_the_value_or_any_encoding_of_it(
    value: str, before: str, between: str, after: str
) -> None:
    text = before + between.join(spellings(value).values()) + after

    shown = Redactor({"TOKEN": value}).text(text)

    # A label may happen to contain the value ("acted"): what counts is the text around the labels.
    around_labels = shown.replace(LABEL, "\x00")
    for name, spelled in spellings(value).items():
        assert spelled not in around_labels, name


@given(value=secret_values, text=st.text())
def test_text_holding_no_spelling_of_the_value_is_untouched(value: str, text: str) -> None:
    # The value trimmed, and each of its lines, are redacted too (the tests at the end).
    parts = {value, value.strip(), *(line.strip() for line in value.splitlines())}
    shown_parts = [part for part in parts if len(part) >= MIN_REDACTED_LENGTH]
    assume(not any(spelled in text for part in shown_parts for spelled in spellings(part).values()))

    assert Redactor({"TOKEN": value}).text(text) == text


def test_a_value_cut_across_texts_is_labelled_where_it_begins_and_cut_from_the_rest() -> None:
    redactor = Redactor({"TOKEN": "tok-3f9a1c"})

    shown = redactor.texts(["nothing here", "my token is tok-", "3f9a", "1c and more", "tok-3f9a1c"])

    assert shown == ["nothing here", f"my token is {LABEL}", "", " and more", LABEL]


@given(
    value=secret_values,
    before=st.text(),
    after=st.text(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_texts_cut_anywhere_read_together_as_the_whole_text_redacted(
    value: str, before: str, after: str, cuts: list[int]
) -> None:
    text = before + value + after
    points = sorted(min(cut, len(text)) for cut in cuts)
    pieces = [text[start:end] for start, end in zip([0, *points], [*points, len(text)], strict=True)]
    redactor = Redactor({"TOKEN": value})

    shown = redactor.texts(pieces)

    assert len(shown) == len(pieces)
    assert "".join(shown) == redactor.text(text)


@pytest.mark.parametrize(
    ("user", "shown"),
    [
        # "alice:" fills two groups of 3 bytes: the value's own base64 follows, and goes whole.
        ("alice", f"YWxpY2U6{LABEL}"),
        # "bob:" does not: one character at each edge mixes the value's bits with its neighbours'.
        ("bob", f"Ym9iOn{LABEL}A="),
    ],
)
def test_basic_auth_of_a_value_keeps_the_user_and_no_more_than_the_edges(user: str, shown: str) -> None:
    value = "tok-3f9a1c-5e7d0"
    header = "Authorization: Basic " + base64.b64encode(f"{user}:{value}".encode()).decode()

    assert Redactor({"TOKEN": value}).text(header) == f"Authorization: Basic {shown}"


@pytest.mark.parametrize("writer", ["JSON string, slashes escaped", "JSON string, .NET"])
def test_base64_of_a_value_in_json_text_of_other_writers_is_replaced(writer: str) -> None:
    # Its base64 holds "+" and "/", which PHP writes as "\\/" and .NET as "\\u002B".
    value = "a?>~b?>~c?>~"
    encoded = ENCODINGS[writer](base64.b64encode(value.encode()).decode())

    shown = Redactor({"TOKEN": value}).text(f"before {encoded} after")

    assert shown == f"before {LABEL} after"


@given(value=secret_values, data=st.data())
def test_a_value_with_any_characters_as_html_entities_is_replaced(value: str, data: st.DataObject) -> None:
    # An escaper picks its own characters to write as entities (.NET every non-ASCII one, ESAPI all but
    # letters and digits): any character may come as a decimal or hex entity, any other as is (but "&").
    spell = st.sampled_from([str, lambda char: f"&#{ord(char)};", lambda char: f"&#X{ord(char):04X};"])
    spelled = "".join(
        html.escape(char, quote=False) if char == "&" else data.draw(spell)(char) for char in value
    )

    shown = Redactor({"TOKEN": value}).text(f"before {spelled} after")

    assert shown == f"before {LABEL} after"


def test_html_entities_around_a_value_are_kept() -> None:
    value = secrets.token_urlsafe(16)
    text = f"<p title=&quot;{html.escape(value)}&quot;>a &amp; b &lt;c&gt; &#39;d&#x27; &copy;&nbsp;e</p>"

    shown = Redactor({"TOKEN": value}).text(text)

    kept = shown == f"<p title=&quot;{LABEL}&quot;>a &amp; b &lt;c&gt; &#39;d&#x27; &copy;&nbsp;e</p>"
    assert kept  # a bare bool: a failure prints no value


@pytest.mark.parametrize("width", [64, 76], ids=["PEM", "MIME"])
@pytest.mark.parametrize("line_end", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_base64_of_a_value_wrapped_into_lines_is_replaced(width: int, line_end: str) -> None:
    # A value longer than a line of base64 (a key file, a service account), as MIME and PEM wrap it.
    value = secrets.token_urlsafe(96) + "/+é"
    encoded = base64.b64encode(value.encode()).decode()
    lines = [encoded[start : start + width] for start in range(0, len(encoded), width)]
    wrapped = line_end.join(lines) + line_end

    redactor = Redactor({"TOKEN": value})
    shown = [redactor.text(f"before {wrapped}after"), redactor.text(json.dumps({"body": wrapped}))]

    leaked = sum(line in text for line in lines for text in shown)  # a bare count: prints none of them
    assert leaked == 0
    replaced = shown == [f"before {LABEL}{line_end}after", json.dumps({"body": LABEL + line_end})]
    assert replaced


@given(
    value=secret_values,
    before=st.binary(max_size=5),
    after=st.binary(max_size=5),
    alphabet=st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]),
)
def test_base64_of_longer_data_keeps_at_most_one_character_of_the_value_at_each_edge(
    value: str, before: bytes, after: bytes, alphabet: Callable[[bytes], bytes]
) -> None:
    raw = value.encode()
    encoded = alphabet(before + raw + after).decode()

    shown = Redactor({"TOKEN": value}).text(encoded)

    # Of the characters carrying the value's bits, only the two at its edges (each mixing in a
    # neighbour's bits) may stay; every character carrying its bits alone is gone.
    assert LABEL in shown
    carrying = -(-8 * (len(before) + len(raw)) // 6) - 8 * len(before) // 6
    assert len(encoded) - len(shown.replace(LABEL, "")) >= carrying - 2


@pytest.mark.parametrize("stored", ["tok-3f9a1c\n", " tok-3f9a1c ", "\ttok-3f9a1c\r\n"])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_a_value_stored_with_surrounding_whitespace_is_replaced_when_shown_trimmed(
    stored: str, encoding: str
) -> None:
    # Programs commonly trim what they read from the environment, then quote it in an error.
    shown = Redactor({"TOKEN": stored}).text(f"bad credentials: {ENCODINGS[encoding](stored.strip())}")

    assert shown == f"bad credentials: {LABEL}"


def pem_key() -> str:
    lines = [base64.b64encode(secrets.token_bytes(48)).decode() for _ in range(8)]
    return "\n".join(["-----BEGIN PRIVATE KEY-----", *lines, "-----END PRIVATE KEY-----"]) + "\n"


@pytest.mark.parametrize(
    "reshape",
    [
        lambda value: value.replace("\n", "\r\n"),
        lambda value: "key: |\n" + "".join(f"  {line}\n" for line in value.splitlines()),
        lambda value: repr(value.splitlines()),
        lambda value: json.dumps(value.splitlines()[3]),
    ],
    ids=["CRLF line ends", "indented YAML block", "list of lines", "one line alone"],
)
def test_no_line_of_a_multi_line_value_is_shown_when_the_value_comes_back_reshaped(
    reshape: Callable[[str], str],
) -> None:
    value = pem_key()

    shown = Redactor({"KEY": value}).text(reshape(value))

    body = value.splitlines()[1:-1]
    leaked = sum(line in shown for line in body)  # a bare count: a failure prints none of the lines
    assert leaked == 0


def test_nothing_of_the_values_outlives_the_redactor_in_a_compiled_pattern() -> None:
    # ``re`` caches what it compiles, module-wide: a pattern spelling the values would keep them.
    canary = secrets.token_urlsafe(24)
    redactor = Redactor({"TOKEN": canary, "KEY": pem_key() + canary})
    assert canary not in redactor.text(f"echo {canary}")
    del redactor
    gc.collect()

    patterns = [item.pattern for item in gc.get_objects() if isinstance(item, re.Pattern)]
    kept = sum(canary in pattern for pattern in patterns if isinstance(pattern, str))  # a count: prints none
    assert kept == 0


def service_account_key() -> str:
    """A key file shaped as a Google service account's: JSON, its private key a PEM with escaped line ends."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    project = f"project-{secrets.token_hex(6)}"
    document = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": f"bot-{secrets.token_hex(4)}@{project}.iam.gserviceaccount.com",
        "client_id": str(secrets.randbelow(10**20) + 10**20),
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return json.dumps(document, indent=2) + "\n"


@pytest.mark.parametrize(
    "show",
    [
        lambda creds: creds["private_key"],
        lambda creds: creds["private_key"].strip(),
        lambda creds: creds["private_key"].splitlines()[5],
        lambda creds: "\n".join(f"  {line}" for line in creds["private_key"].splitlines()),
        repr,
        json.dumps,
        lambda creds: f"key {creds['private_key_id']} of {creds['client_email']}",
    ],
    ids=["private key", "private key trimmed", "one line", "indented lines", "repr", "compact JSON", "ids"],
)
def test_no_string_of_a_json_value_is_shown_when_a_program_parses_it_and_shows_a_field(
    show: Callable[[dict[str, str]], str],
) -> None:
    value = service_account_key()
    creds = json.loads(value)

    shown = Redactor({"KEY": value}).text(f"before {show(creds)} after")

    private_key = creds["private_key"]
    pieces = [
        private_key,
        *private_key.splitlines()[1:-1],
        repr(creds),
        creds["private_key_id"],
        creds["client_email"],
    ]
    leaked = sum(piece in shown for piece in pieces)  # a bare count: a failure prints none of them
    assert leaked == 0
    assert shown.startswith("before ")
    assert shown.endswith(" after")


def test_the_strings_of_a_json_value_that_read_as_words_leave_a_tool_listing_whole() -> None:
    # A listing of a server for Google Cloud, to a user whose key file is injected: had "service_account"
    # been taken out, the tool and its property would be renamed, and neither called nor filled.
    value = service_account_key()
    tool = {
        "name": "create_service_account",
        "description": "Creates a service_account in a project on googleapis.com.",
        "inputSchema": {"type": "object", "properties": {"service_account": {"type": "string"}}},
    }

    assert Redactor({"KEY": value}).data(tool) == tool


def test_values_of_more_spellings_are_redacted_inline_in_shorter_texts() -> None:
    token, pem = Redactor({"TOKEN": secrets.token_urlsafe(30)}), Redactor({"KEY": pem_key()})
    lines = Redactor({"LINES": "\n".join(secrets.token_hex(4) for _ in range(2000))})

    assert token.inline_chars == REDACT_INLINE_CHARS
    assert REDACT_INLINE_CHARS > pem.inline_chars > lines.inline_chars > 0


def test_a_json_values_strings_of_lower_case_words_are_values_still() -> None:
    words = "-".join("".join(secrets.choice(string.ascii_lowercase) for _ in range(7)) for _ in range(4))
    letters = "".join(secrets.choice(string.ascii_lowercase) for _ in range(32))
    value = json.dumps({"type": "basic", "username": "bob", "password": words, "api_key": letters})

    shown = Redactor({"CREDS": value}).text(f"password {words}, key={letters}, {json.loads(value)!r}")

    leaked = words in shown or letters in shown  # a bare bool: a failure prints neither
    assert not leaked
    assert "'type': 'basic'" in shown  # a type names the document's kind: no secret


def test_a_short_text_is_redacted_alike_looked_up_piece_by_piece_or_searched_spelling_by_spelling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Thousands of spellings (a value of many short lines): a short text is looked up piece by piece.
    lines = [secrets.token_hex(3) for _ in range(3000)]
    redactor = Redactor({"LINES": "\n".join(lines)})
    texts = ["", "ok", lines[7], f"x{lines[7]}y", lines[1] + lines[2], f"é{lines[3]}&amp;", "z" * 32]

    looked_up = [redactor.text(text) for text in texts]
    monkeypatch.setattr(redact_module, "SHORT_TEXT_CHARS", -1)
    searched = [redactor.text(text) for text in texts]

    assert looked_up == searched
    assert looked_up[:4] == ["", "ok", "[redacted LINES]", "x[redacted LINES]y"]


def test_the_keys_of_a_json_value_are_kept_and_its_strings_replaced_in_a_repr() -> None:
    token = secrets.token_urlsafe(16)
    value = json.dumps({"auth": {"tokens": [token, {"refresh": token[::-1]}], "expires": 3600}})

    shown = Redactor({"KEY": value}).text(repr(json.loads(value)))

    label = "[redacted KEY]"
    replaced = shown == f"{{'auth': {{'tokens': ['{label}', {{'refresh': '{label}'}}], 'expires': 3600}}}}"
    assert replaced  # a bare bool: a failure prints no value


@pytest.mark.parametrize("value", ["{not json " + "x" * 12, "[" * 100_000, ' {"a": 1}'])
def test_a_value_that_only_looks_like_json_is_redacted_as_text(value: str) -> None:
    assert Redactor({"TOKEN": value}).text(f"<{value}>") == f"<{LABEL}>"


class Limits(BaseModel):
    limit: int


@pytest.mark.parametrize("length", [49, 51, 60, 300])
@pytest.mark.parametrize("edges", ["", "é'\""], ids=["ascii", "quotes-and-accents"])
@pytest.mark.parametrize("show", [str, lambda error: json.dumps({"error": error})], ids=["text", "in JSON"])
def test_a_value_pydantic_shortens_in_a_validation_error_shows_no_piece_of_it(
    length: int, edges: str, show: Callable[[str], str]
) -> None:
    # pydantic shows a long input_value as the start and end of its repr around "...".
    value = edges + secrets.token_hex(length)[: length - 2 * len(edges)] + edges
    assert len(value) == length
    with pytest.raises(ValidationError) as caught:
        Limits(limit=value)  # type: ignore[arg-type]
    error = str(caught.value)
    assert "..." in error  # shortened

    shown = Redactor({"TOKEN": value}).text(show(error))

    around_labels = shown.replace(LABEL, "\x00")
    width = MIN_REDACTED_LENGTH + 1  # any piece longer than the shortest value redacted
    pieces = {value[start : start + width] for start in range(len(value) - width + 1)}
    leaked = sum(piece in around_labels for piece in pieces)  # a bare count: a failure prints none of them
    assert leaked == 0
    assert "input_value=" in shown
    assert "input_type=str" in shown


def test_a_value_cut_across_structured_strings_is_replaced_and_keys_and_numbers_each_alone() -> None:
    value = secrets.token_hex(12)
    data = {
        "chunks": [value[:5], {"more": value[5:17]}],
        "count": 3,
        "last": value[17:],
        value: int(value[:8], 16),
    }

    shown = Redactor({"TOKEN": value}).data_read_in_order(data)

    assert shown == {"chunks": [LABEL, {"more": ""}], "count": 3, "last": "", LABEL: int(value[:8], 16)}
