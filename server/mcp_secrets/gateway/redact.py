"""Take injected secret values back out of whatever a downstream server returns.

Exact matches, and the encodings a tool is likely to echo them in: base64 (standard
and URL-safe, with or without padding, and inside longer base64 text such as ``Basic
base64(user:token)``), URL-encoding (Python's, JavaScript's, a form body's as the
URL standard and PHP write it, and a URL's path and query as httpx writes them;
either case of hex digit), hex (either case), JSON string escapes (Go's, Gson's,
PHP's and .NET's too), Python's repr, pydantic's ``input_value`` (shortened to the
start and end of the repr around "..." when long, as pydantic_core cuts it), base64
wrapped into MIME's or PEM's lines, and any of these with any of its characters as
an HTML character reference (``&lt;``, ``&#39;``, ``&#x2F;``). Of each value, also
the value trimmed of surrounding whitespace and, for a multi-line value, each of its
lines: a program may trim what it reads, and may show a PEM key or a JSON credential
line by line or with other line ends. Of a value that is a JSON object or array (a
service account's key file), also each string in it, at any depth, and each of its
lines: a program parses the file and shows one field (the private key, with real
line ends) or the parsed object's repr. Every such string counts, public ones too (a
key file's URLs are redacted wherever they appear), but a ``type``'s
(``service_account``), which tools and schemas are named with. Not covered: a value
shortened inside a longer repr (pydantic's ``input_value`` of a dict holding it: the
gateway drops those from the errors it shows), and, as for every form, a string
shorter than ``MIN_REDACTED_LENGTH``.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from html.entities import html5
from typing import Any
from urllib.parse import quote, quote_plus

from pydantic import BaseModel

# Shorter values would redact ordinary text; keys that short are not secrets worth the name.
MIN_REDACTED_LENGTH = 4

# Characters of what a downstream sends (a result, a listing, a log message) past which it is redacted in
# a worker thread, so that other users' calls go on meanwhile: a hop there and back costs about what
# redacting 8 KiB of plain text does (70 µs, measured), and text full of HTML character references costs
# 10 to 100 times as much.
REDACT_INLINE_CHARS = 8 * 1024
# Spellings of the usual values (a token or two: about 30 each), at which REDACT_INLINE_CHARS was measured.
# A text costs about as much to redact per spelling searched: for values with more (a PEM key has about
# a thousand, 6,000 short lines forty thousand), each Redactor says how much less to redact inline.
USUAL_SPELLINGS = 64
# Characters of a text (a logger's name, a progress number, a key) that may be redacted by looking each
# of its pieces up (435 at most) instead of searching it for each spelling, when those are more.
SHORT_TEXT_CHARS = 32
# Characters of injected values past which their Redactor is built in a worker thread: spelling values
# every way costs about 50 µs, then 0.6 µs a character (measured: 1 KiB, 0.63 ms; a service account's key
# file, 15 ms), where the hop costs about 70 µs.
BUILD_INLINE_CHARS = 256


_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_TO_URLSAFE = str.maketrans("+/", "-_")
# Go's encoding/json (MCP servers written in Go) escapes these in every string, for embedding in HTML.
_JSON_HTML_SAFE = {ord(char): f"\\u{ord(char):04x}" for char in "&<>\u2028\u2029"}
# Java's Gson, HTML-safe by default, escapes "=" (base64 padding) and "'" as well.
_JSON_GSON_SAFE = {ord(char): f"\\u{ord(char):04x}" for char in "&<>='\u2028\u2029"}
# Python's ASCII-only JSON, escape by escape (an escaped backslash before "u" starts no \\u escape), and
# the characters .NET's System.Text.Json (MCP servers written in C#) escapes too, for embedding in HTML.
_DOTNET_ESCAPES = re.compile(r"\\(?:u[0-9a-f]{4}|.)|[&'+<>`\x7f]", re.DOTALL)
# An HTML character reference as escapers write them: named ones end in ";" (what follows a bare "&name"
# is ordinary text), numeric ones may not. The bounded digits keep int() cheap and within range.
_CHARACTER_REFERENCE = re.compile(r"&(?:#[0-9]{1,8};?|#[xX][0-9a-fA-F]{1,6};?|[A-Za-z][A-Za-z0-9]{1,31};)")
# MIME writes base64 in lines of 76 characters, PEM in lines of 64.
_BASE64_LINE_WIDTHS = (64, 76)
# pydantic_core shows an input_value whose repr is longer than 50 bytes of UTF-8 as its first 25 bytes,
# "..." and its last 24, each cut to whole characters (write_truncated_to_limited_bytes).
_PYDANTIC_SHOWN_BYTES = 50
_PYDANTIC_HEAD_BYTES = 25


def _spellings(value: str) -> set[str]:
    if len(value) < MIN_REDACTED_LENGTH:
        return set()
    raw = value.encode("utf-8")
    quoted = {
        quote(value),  # "/" left as is, as in URL paths
        quote(value, safe=""),
        quote(value, safe="!'()*"),  # JavaScript's encodeURIComponent (servers written for Node)
        # A URL's path and query as httpx and browsers write them (an error quoting a downstream's URL):
        # RFC 3986 leaves these characters as they are there.
        quote(value, safe="!$&'()*+,;=:@/"),
        quote(value, safe="!$&'()*+,;=:@/?"),
        quote_plus(value, safe=""),
        # A form body as the URL standard writes it (URLSearchParams in Node and browsers, Java's
        # URLEncoder: "*" kept) and PHP's urlencode: "~" escaped, which Python never escapes. Spelled
        # apart from quote_plus's only for a value holding "~" or "*".
        quote_plus(value, safe="*").replace("~", "%7E"),
        quote_plus(value, safe="").replace("~", "%7E"),
    }
    forms = {
        value,
        *quoted,
        # RFC 3986 lets the hex digits of an escape be either case; Python writes upper case.
        *(_PERCENT_ESCAPE.sub(lambda escape: escape.group(0).lower(), form) for form in quoted),
        raw.hex(),
        raw.hex().upper(),
        *_json_insides(value),
        repr(value)[1:-1],  # Python's f"{value!r}" and pydantic's input_value escape "'" and controls
    }
    shortened = _pydantic_shortened(value)
    if shortened is not None:
        # A downstream's error may be JSON text too: its own spellings there, not those of its pieces.
        forms |= {shortened, *_json_insides(shortened)}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        padded = encode(raw).decode("ascii")
        forms |= {padded, padded.rstrip("=")}
    forms |= _base64_wrapped(base64.b64encode(raw).decode("ascii"))
    # Only base64 loses its padding: the value itself may end in "=", and stripped it is another text.
    forms |= _base64_inside(raw)
    # Any of them may come back in JSON text written by a server in PHP, C# or Java, which escape more.
    forms |= {escaped for form in forms for escaped in _in_other_json(form)}
    return {form for form in forms if len(form) >= MIN_REDACTED_LENGTH}


def _json_insides(text: str) -> set[str]:
    """``text`` inside a JSON string as Python (ASCII-only or not) and Go write it."""
    unicode = json.dumps(text, ensure_ascii=False)[1:-1]  # quotes, backslashes, controls
    return {json.dumps(text)[1:-1], unicode, unicode.translate(_JSON_HTML_SAFE)}


def _pydantic_shortened(value: str) -> str | None:
    """``value``'s repr as pydantic's ValidationError shows a long ``input_value``, or None if not shortened.

    Cut by bytes of UTF-8, then to whole characters: the head drops a character it would split, the tail
    starts at the next whole one, as "ignore" decoding does.
    """
    shown = repr(value).encode("utf-8")  # repr escapes lone surrogates: it always encodes
    if len(shown) <= _PYDANTIC_SHOWN_BYTES:
        return None
    head = shown[:_PYDANTIC_HEAD_BYTES].decode("utf-8", "ignore")
    tail = shown[len(shown) - (_PYDANTIC_HEAD_BYTES - 1) :].decode("utf-8", "ignore")
    return f"{head}...{tail}"


def _in_other_json(text: str) -> set[str]:
    """``text`` inside a JSON string as PHP's json_encode, .NET's System.Text.Json and Gson write it."""
    ascii_only = json.dumps(text)[1:-1]
    unicode = json.dumps(text, ensure_ascii=False)[1:-1]
    return {
        ascii_only.replace("/", "\\/"),  # PHP: "/" as "\\/", which JSON allows
        unicode.replace("/", "\\/"),
        _DOTNET_ESCAPES.sub(_dotnet_escape, ascii_only),
        unicode.translate(_JSON_GSON_SAFE),
    }


def _dotnet_escape(match: re.Match[str]) -> str:
    r"""One escape or character of Python's ASCII-only JSON as .NET writes it: \uXXXX, hex in upper case."""
    found = match.group(0)
    if found.startswith("\\u"):
        return "\\u" + found[2:].upper()
    if found == '\\"':
        return "\\u0022"
    return found if found.startswith("\\") else f"\\u{ord(found):04X}"


def _parts(value: str) -> set[str]:
    """``value``, and what a downstream may show of it alone: it trimmed, and each of its lines trimmed.

    Of a JSON object or array, also each string in it with its own parts, themselves parsed if JSON.
    """
    parts: set[str] = set()
    pending = [value]
    while pending:
        text = pending.pop()
        trimmed = text.strip()
        parts |= {text, trimmed, *(line.strip() for line in text.splitlines())}
        if trimmed[:1] in ("{", "["):  # only then parse: every other value costs a slice
            pending += _json_strings(trimmed)
    return parts


def _json_strings(text: str) -> list[str]:
    """The strings in JSON ``text`` at any depth (values and items, not keys); none if it is not JSON.

    Not a ``type``'s: a tag naming the document's kind (a key file's ``service_account``) is no secret,
    and taken out wherever it appears it would rename a tool (``create_service_account``) or a schema's
    property, which could then not be called or filled.
    """
    try:
        pending: list[Any] = [json.loads(text)]
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return []
    strings: list[str] = []
    while pending:  # a loop: the parser nests nearly as deep as Python's stack, which recursion would add to
        item = pending.pop()
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, dict):
            pending += (value for name, value in item.items() if name != "type" or not isinstance(value, str))
        elif isinstance(item, list):
            pending += item
    return strings


def _base64_wrapped(encoded: str) -> set[str]:
    """``encoded`` broken into MIME's and PEM's lines, with either line end, and inside a JSON string."""
    wrapped = {
        line_end.join(encoded[start : start + width] for start in range(0, len(encoded), width))
        for width in _BASE64_LINE_WIDTHS
        if len(encoded) > width
        for line_end in ("\n", "\r\n")
    }
    return wrapped | {json.dumps(form)[1:-1] for form in wrapped}


def _base64_inside(raw: bytes) -> set[str]:
    """What base64 of longer data shows of ``raw``, at each of the 3 places it can start in a group.

    Base64 writes 6 bits per character: the characters whose bits all come from ``raw`` are the
    same whatever comes before or after it (``Basic base64("user:" + token)``). Only the one
    character at each edge mixes in the neighbours' bits, and it stays.
    """
    inside = set()
    for offset in range(3):
        aligned = bytes(offset) + raw
        encoded = base64.b64encode(aligned + bytes(-len(aligned) % 3)).decode("ascii")
        first = -(-8 * offset // 6)  # the first character past the offset's bits
        last = 8 * len(aligned) // 6  # the characters before the last one holding a bit past raw
        inside |= {encoded[first:last], encoded[first:last].translate(_TO_URLSAFE)}
    return inside


class Redactor:
    """Replaces every spelling of the given values with ``[redacted KEY]``.

    Plain substring search rather than one regular expression: ``re`` keeps the patterns it compiles
    in a module-wide cache, and a pattern made of the values would outlive the call that needed them.
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        label_of: dict[str, str] = {}
        for key, value in values.items():
            for part in _parts(value):
                for form in _spellings(part):
                    label_of.setdefault(form, f"[redacted {key}]")
        self._label_of = label_of
        self._forms = tuple(label_of)
        # Characters of a text past which it is redacted in a worker thread, for these values; a short text
        # is looked up piece by piece, whatever their number of spellings.
        self.inline_chars = max(
            SHORT_TEXT_CHARS, REDACT_INLINE_CHARS * USUAL_SPELLINGS // max(USUAL_SPELLINGS, len(self._forms))
        )

    def text(self, text: str) -> str:
        """``text`` with every known spelling replaced."""
        return self.texts([text])[0]

    def texts(self, texts: Sequence[str]) -> list[str]:
        """Texts a reader sees one after another (a result's text blocks), each with every spelling replaced.

        A spelling split across texts, as by a tool that writes its output in fixed-size chunks, is
        replaced too: its label goes where it begins, and its rest is cut from the texts that follow.
        """
        spans = self._spans("".join(texts))
        if not spans:
            return list(texts)
        shown: list[str] = []
        offset = 0
        index = 0  # the first span not yet wholly behind the current text
        for text in texts:
            end_of_text = offset + len(text)
            pieces: list[str] = []
            done = offset
            while index < len(spans) and spans[index][0] < end_of_text:
                start, end, label = spans[index]
                if start >= done:  # it begins in this text
                    pieces += (text[done - offset : start - offset], label)
                done = max(done, min(end, end_of_text))
                if end > end_of_text:
                    break  # it goes on in the next text
                index += 1
            pieces.append(text[done - offset :])
            shown.append("".join(pieces))
            offset = end_of_text
        return shown

    def _spans(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, label) of each spelling to replace in ``text``, in order and without overlaps."""
        # (start, -length, label) of each match: sorted, the leftmost comes first, and there the longest.
        found = [(start, start - end, label) for start, end, label in self._matches(text)]
        unescaped = _HtmlUnescaped.of(text) if "&" in text else None
        if unescaped is not None:
            # The same search in the text with its character references decoded, each match widened
            # to the whole references it covers.
            for start, end, label in self._matches(unescaped.text):
                begin = unescaped.begin(start)
                found.append((begin, begin - unescaped.end(end - 1), label))
        found.sort()
        spans: list[tuple[int, int, str]] = []
        for start, negative_length, label in found:
            end = start - negative_length
            if not spans or start >= spans[-1][1]:  # not inside a spelling replaced already
                spans.append((start, end, label))
            elif end > spans[-1][1]:  # it overlaps the one just replaced and goes on: its rest goes with it
                spans[-1] = (spans[-1][0], end, spans[-1][2])
        return spans

    def _matches(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, label) of every occurrence of every spelling in ``text``, overlapping or not."""
        room = len(text) - MIN_REDACTED_LENGTH + 1  # where a spelling can start
        if len(text) <= SHORT_TEXT_CHARS and room * (room + 1) // 2 < len(self._forms):
            # Each piece looked up, fewer than the spellings: a search per spelling costs each of the
            # thousands a multi-line value has a call, even for an empty text.
            label_of = self._label_of
            return [
                (start, end, label_of[text[start:end]])
                for start in range(len(text))
                for end in range(start + MIN_REDACTED_LENGTH, len(text) + 1)
                if text[start:end] in label_of
            ]
        found: list[tuple[int, int, str]] = []
        for form in self._forms:
            start = text.find(form)
            while start != -1:
                found.append((start, start + len(form), self._label_of[form]))
                start = text.find(form, start + 1)
        return found

    def data_read_in_order(self, value: Any) -> Any:  # noqa: ANN401 - any JSON value
        """``data``, but its strings read one after another, as ``texts`` reads them.

        A value cut across them (structured content holding a tool's output in chunks) is replaced too.
        Keys and numbers are redacted each on its own, as ``data`` does.
        """
        strings: list[str] = []
        _collect_strings(value, strings)
        return self._rebuilt(value, iter(self.texts(strings)))

    def _rebuilt(self, value: Any, shown: Iterator[str]) -> Any:  # noqa: ANN401 - any JSON value
        """``value`` with its strings taken from ``shown`` in ``_collect_strings``'s order."""
        if isinstance(value, str):
            return next(shown)
        if isinstance(value, Mapping):
            return {self.text(str(key)): self._rebuilt(item, shown) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._rebuilt(item, shown) for item in value]
        return self.data(value)

    def data(self, value: Any) -> Any:  # noqa: ANN401 - any JSON value
        """A JSON-like value with every string in it (keys included) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            # A value of digits (an account id, a PIN) may come back as a number in structured data.
            shown = self.text(str(value))
            return value if shown == str(value) else shown
        if isinstance(value, Mapping):
            return {self.text(str(key)): self.data(item) for key, item in value.items()}
        if isinstance(value, Iterable) and not isinstance(value, bytes | bytearray):
            return [self.data(item) for item in value]
        return value


def _collect_strings(value: Any, strings: list[str]) -> None:  # noqa: ANN401 - any JSON value
    """Append the strings in JSON-like ``value`` (not its keys) to ``strings``, in the order they are read."""
    if isinstance(value, str):
        strings.append(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_strings(item, strings)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_strings(item, strings)


class _HtmlUnescaped:
    """A text with its HTML character references decoded, and where each character came from."""

    def __init__(self, text: str, references: list[tuple[int, int, int, int]]) -> None:
        self.text = text
        # (start in the decoded text, length there, start, end in the original) of each reference.
        self._references = references
        self._starts = [reference[0] for reference in references]

    @classmethod
    def of(cls, text: str) -> _HtmlUnescaped | None:
        """``text`` decoded, or None when it holds no character reference."""
        pieces: list[str] = []
        references: list[tuple[int, int, int, int]] = []
        done = 0
        length = 0
        for match in _CHARACTER_REFERENCE.finditer(text):
            decoded = _decoded(match.group(0))
            if decoded is None:
                continue
            start, end = match.span()
            pieces += (text[done:start], decoded)
            length += start - done
            references.append((length, len(decoded), start, end))
            length += len(decoded)
            done = end
        if not references:
            return None
        pieces.append(text[done:])
        return cls("".join(pieces), references)

    def begin(self, index: int) -> int:
        """Where the character at ``index`` of the decoded text begins in the original."""
        return self._locate(index)[0]

    def end(self, index: int) -> int:
        """Where the character at ``index`` of the decoded text ends in the original."""
        return self._locate(index)[1]

    def _locate(self, index: int) -> tuple[int, int]:
        found = bisect_right(self._starts, index) - 1
        if found < 0:
            return index, index + 1
        decoded_start, decoded_length, start, end = self._references[found]
        if index < decoded_start + decoded_length:  # a character of the reference: all of it
            return start, end
        original = end + index - decoded_start - decoded_length
        return original, original + 1


def _decoded(reference: str) -> str | None:
    """What a character reference stands for, or None if it names nothing."""
    if not reference.startswith("&#"):
        return html5.get(reference[1:])
    digits = reference[2:].rstrip(";")
    code = int(digits[1:], 16) if digits[0] in "xX" else int(digits)
    return chr(code) if code <= sys.maxunicode else None


def chars_within(values: Iterable[Any], limit: int) -> bool:
    """True when the strings in ``values`` (JSON-like, nested) hold at most ``limit`` characters."""
    return chars_up_to(values, limit) <= limit


def chars_up_to(values: Iterable[Any], limit: int) -> int:
    """The characters of the strings in ``values`` (JSON-like or models, nested), up to past ``limit``.

    Each item of a list or mapping counts one more. Stops counting past ``limit``: a huge value costs no
    more than a small one to find out about.
    """
    pending = list(values)
    count = 0
    while pending and count <= limit:
        value = pending.pop()
        if isinstance(value, str):
            count += len(value)
        elif isinstance(value, BaseModel):
            pending += vars(value).values()
        elif isinstance(value, Mapping | list | tuple):
            count += len(value)
            if count > limit:
                break  # not copied into pending: it may hold millions of items
            pending += [*value.keys(), *value.values()] if isinstance(value, Mapping) else value
        else:
            count += 1
    return count
