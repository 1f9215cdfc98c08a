"""The one way livetag reads JSON from outside the process: strictly, failing with a reason.

Every decode path (Kafka records and media headers, websocket messages, archive files)
parses with :func:`loads` and turns :class:`JsonInputError` into its own error (a record
error, a protocol error, ...). Python's ``json`` alone lets through what no livetag input
may hold, and fails in ways that are not a decode error:

- an integer of more than 4300 digits raises a plain ``ValueError`` (the int conversion
  limit), and one of 20 digits becomes a value no Parquet column or other language's
  Kafka client holds;
- deep nesting raises ``RecursionError``, at a depth that depends on the caller's stack;
- ``NaN`` and ``Infinity`` are accepted although they are not JSON, and ``1e999`` becomes
  ``inf``;
- a key given twice silently keeps the last value (another reader may keep the first);
- an escaped lone surrogate (``"\\ud800"``) becomes a string that cannot be written out as
  UTF-8 again;
- bytes are read as UTF-8, UTF-16 or UTF-32, by guess.

Here each of those is refused: integers fit in a signed 64-bit integer, floats are finite,
nesting is at most ``max_depth`` arrays and objects, keys are unique, text is UTF-8.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any, Final

__all__ = ["INT_MAX", "INT_MIN", "MAX_DEPTH", "JsonInputError", "loads", "loads_object"]

#: Arrays and objects inside each other, at most. The deepest livetag payload (a label
#: window: raters > labels > label) has 4 levels; the limit only has to keep the parser's
#: and the validators' recursion far from Python's own limit.
MAX_DEPTH: Final = 32
#: Every integer on the wire fits in a signed 64-bit integer (Parquet int64, Java long).
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
_INT_DIGITS_MAX: Final = len(str(INT_MAX))  # 19: a longer integer is refused unparsed


class JsonInputError(ValueError):
    """The text is not JSON livetag accepts; ``reason`` says why, for people."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _Refused(Exception):
    """Carries a refusal's reason out of the parser's hooks."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _excerpt(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}...{text[-6:]} ({len(text)} characters)"


def _parse_int(text: str) -> int:
    # Checked before int(): a huge one would cost quadratic time, then raise ValueError.
    if len(text.lstrip("-")) > _INT_DIGITS_MAX:
        raise _Refused(f"integer {_excerpt(text)} is outside the signed 64-bit range")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _Refused(f"integer {text} is outside the signed 64-bit range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {_excerpt(text)} is outside the 64-bit float range")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"key {_excerpt(key)!r} is given twice")
            seen.add(key)
    return document


_DECODER: Final = json.JSONDecoder(
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_parse_constant,
    object_pairs_hook=_object,
)

# A JSON string (escapes skipped as pairs, so an escaped quote does not end it), or an
# unterminated one up to the end: it always matches from a quote, so the scan stays linear
# (an unterminated string retried from every quote inside it would be quadratic).
_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_NESTING_STEP: Final = {"[": 1, "{": 1, "]": -1, "}": -1}
# Escapes in order: a surrogate pair (one character), a lone surrogate, any other escape
# (consumed whole, so the "u" after an escaped backslash is not read as an escape).
_ESCAPE: Final = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|(u[dD][89a-fA-F][0-9a-fA-F]{2})|.)",
    re.DOTALL,
)


def _deepest(text: str) -> int:
    """How deep the text's arrays and objects go (brackets inside strings not counted)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(itertools.accumulate(map(_NESTING_STEP.__getitem__, brackets)), default=0)


def _lone_surrogate(text: str) -> str | None:
    if "\\u" not in text:
        return None
    for escape in _ESCAPE.finditer(text):
        if escape.group(1) is not None:
            return escape.group(0)
    return None


def loads(data: str | bytes, *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in ``data`` (UTF-8 if bytes), or :class:`JsonInputError` saying why
    not. ``max_bytes``: the largest input accepted, in UTF-8 bytes."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if max_bytes is not None and len(raw) > max_bytes:
            raise JsonInputError(f"{len(raw)} bytes, more than the {max_bytes} accepted")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"not UTF-8: byte {exc.start}: {exc.reason}") from None
    else:
        text = data
        if max_bytes is not None and len(text) > max_bytes:
            raise JsonInputError(f"{len(text)} characters, more than the {max_bytes} bytes")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise JsonInputError(f"not Unicode text: a lone surrogate at {exc.start}") from None
        if max_bytes is not None and size > max_bytes:
            raise JsonInputError(f"{size} bytes, more than the {max_bytes} accepted")
    # Cheap first: a text with few brackets cannot be nested deeply.
    if text.count("[") + text.count("{") > max_depth and _deepest(text) > max_depth:
        raise JsonInputError(f"nested too deeply: over {max_depth} arrays or objects")
    surrogate = _lone_surrogate(text)
    if surrogate is not None:
        raise JsonInputError(f"{surrogate} is a lone surrogate, not a character")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise JsonInputError(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except _Refused as exc:
        raise JsonInputError(exc.reason) from None
    except RecursionError:  # not reached below max_depth; kept as the last guard
        raise JsonInputError("nested too deeply") from None


def loads_object(
    data: str | bytes, *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH
) -> dict[str, Any]:
    """Like :func:`loads`, for inputs that must be a JSON object."""
    document = loads(data, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(document, dict):
        raise JsonInputError(f"expected a JSON object, got {_json_kind(document)}")
    return document


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"
