"""Take injected secret values back out of whatever a downstream server returns.

Exact matches, and the encodings a tool is likely to echo them in: base64
(standard and URL-safe, with or without padding), URL-encoding and hex.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

# Shorter values would redact ordinary text; keys that short are not secrets worth the name.
MIN_REDACTED_LENGTH = 4


def _spellings(value: str) -> set[str]:
    if len(value) < MIN_REDACTED_LENGTH:
        return set()
    raw = value.encode("utf-8")
    forms = {
        value,
        quote(value),  # "/" left as is, as in URL paths
        quote(value, safe=""),
        quote_plus(value, safe=""),
        raw.hex(),
        base64.b64encode(raw).decode("ascii"),
        base64.urlsafe_b64encode(raw).decode("ascii"),
    }
    forms |= {form.rstrip("=") for form in forms}
    return forms


class Redactor:
    """Replaces every spelling of the given values with ``[redacted KEY]``."""

    def __init__(self, values: Mapping[str, str]) -> None:
        label_of: dict[str, str] = {}
        for key, value in values.items():
            for form in _spellings(value):
                label_of.setdefault(form, f"[redacted {key}]")
        self._label_of = label_of
        # Longest first, so a value is replaced whole before any shorter spelling inside it.
        ordered = sorted(label_of, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, text: str) -> str:
        """``text`` with every known spelling replaced."""
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda match: self._label_of[match.group(0)], text)

    def data(self, value: Any) -> Any:  # noqa: ANN401 - any JSON value
        """A JSON-like value with every string in it (keys included) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(key)): self.data(item) for key, item in value.items()}
        if isinstance(value, Iterable) and not isinstance(value, bytes | bytearray):
            return [self.data(item) for item in value]
        return value
