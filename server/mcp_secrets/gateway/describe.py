"""How a downstream's failure is told to its caller and to the log, quoting nothing of the downstream.

Libraries quote what they failed on: pydantic a shortened repr of the input, jsonschema the instance
pretty-printed, httpx the URL. A shortened or re-spelt injected value matches no spelling the redactor
knows, so such texts are replaced by where the problem is and what it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx2
from jsonschema.exceptions import ValidationError as SchemaValidationError
from pydantic import ValidationError

# pydantic's "input_value=<repr>, input_type=<type>", the repr shortened to about 50 characters: one on a
# line, the last ", input_type=" within reach ending it (the repr may hold one).
_INPUT_VALUE = re.compile(r"input_value=[^\n]{0,200}, (input_type=\w+)")
# Exceptions of a chain looked at for one a library raised quoting the downstream's data.
_CAUSES_SEEN = 8
# Problems of a pydantic ValidationError shown (a result of an unknown content type has twelve).
_PROBLEMS_SHOWN = 3


def describe(exc: BaseException) -> str:
    """What went wrong, for the caller and the log, quoting nothing a library quoted of the downstream."""
    inner = getattr(exc, "exceptions", None)  # an exception group: describe its first member
    if isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
        return describe(inner[0])
    if isinstance(exc, httpx2.HTTPStatusError):
        # Its message quotes the URL as httpx writes it (a space as %20 but ':' as it is), a spelling of
        # an injected value the redactor does not know: the status says what went wrong.
        return f"{type(exc).__name__}: {exc.response.status_code} {exc.response.reason_phrase}"
    text = str(exc)
    for cause in _causes(exc):
        if isinstance(cause, ValidationError):
            # Its text quotes what it failed on shortened (a dict's repr cut to its start and end), which
            # no spelling of a value matches: where and what is enough.
            shown = _validation_problems(cause)
        elif isinstance(cause, SchemaValidationError):
            # Its text pretty-prints the instance, a long string cut at its spaces into quoted pieces: a
            # passphrase there is whole, in no spelling the redactor knows. Its message quotes it too.
            shown = schema_problem(cause)
        else:
            continue
        if cause is exc:
            text = shown
        elif str(cause):  # inside a wrapper's own message, where it quotes it
            text = text.replace(str(cause), shown)
    # The SDK passes some such texts on inside its own message (an MCPError), without the error itself.
    text = _INPUT_VALUE.sub(r"\1", text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or while handling, and so on, up to ``_CAUSES_SEEN``."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < _CAUSES_SEEN and current not in seen:
        seen.append(current)
        yield current
        current = current.__cause__ or current.__context__


def schema_problem(error: SchemaValidationError) -> str:
    """A jsonschema ValidationError as where the instance fails which keyword of the schema, without it."""
    keyword = f"{error.validator!r}"
    if isinstance(error.validator_value, str | int | float | bool):  # not a whole subschema
        keyword += f": {error.validator_value!r}"
    return f"the value at {error.json_path} fails the schema's {keyword}"


def _validation_problems(error: ValidationError) -> str:
    """A pydantic ValidationError as where and what each problem is, without the input or a link."""
    problems = error.errors(include_url=False, include_context=False, include_input=False)
    shown = "; ".join(
        f"{'.'.join(map(str, problem['loc'])) or 'the whole'}: {problem['msg']}"
        for problem in problems[:_PROBLEMS_SHOWN]
    )
    more = f"; and {len(problems) - _PROBLEMS_SHOWN} more" if len(problems) > _PROBLEMS_SHOWN else ""
    count = f"{len(problems)} validation error{'s' if len(problems) != 1 else ''}"
    return f"{count} for {error.title}: {shown}{more}"
