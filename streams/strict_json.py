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

from streams.errors import BadInputError

__all__ = ["INT_MAX", "INT_MIN", "MAX_DEPTH", "JsonInputError", "loads", "loads_object"]

#: Arrays and objects inside each other, at most. The deepest livetag payload (a label
#: window: raters > labels > label) has 4 levels; the limit only has to keep the parser's
#: and the validators' recursion far from Python's own limit.
MAX_DEPTH: Final = 32
#: Every integer on the wire fits in a signed 64-bit integer (Parquet int64, Java long).
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
_INT_DIGITS_MAX: Final = len(str(INT_MAX))  # 19: a longer integer is refused unparsed


class JsonInputError(BadInputError, ValueError):
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
# For a text whose numbers are all in range (see _numbers_in_range): Python's own number
# parsing, without a call into Python for each number (a quarter of the time on a record
# of mostly numbers).
_PLAIN_NUMBERS_DECODER: Final = json.JSONDecoder(
    parse_constant=_parse_constant,
    object_pairs_hook=_object,
)

# Digits as "0" and exponents as "e", signs dropped (see _numbers_in_range).
_NUMBER_SHAPES: Final = bytes.maketrans(b"123456789E", b"000000000e")
_NOT_STRUCTURE: Final = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_NESTING_STEP: Final = tuple(
    1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256)
)
# Escapes in order: a surrogate pair (one character), a lone surrogate, any other escape
# (consumed whole, so the "u" after an escaped backslash is not read as an escape).
_ESCAPE: Final = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|(u[dD][89a-fA-F][0-9a-fA-F]{2})|.)",
    re.DOTALL,
)


def _numbers_in_range(raw: bytes) -> bool:
    """True when no number in the text can fall outside int64 or the float range, so
    they need no checking one by one.

    A number that could has at least 19 digits in a row (INT_MAX has 19, and a float
    needs 309 before the point to overflow without an exponent) or an exponent of 3
    digits or more: with neither, an integer is below 10**18 and a float below 10**117.
    Digits and signs in strings only make this answer False when it need not be."""
    shapes = raw.translate(_NUMBER_SHAPES, b"+-")
    return b"0" * _INT_DIGITS_MAX not in shapes and b"e000" not in shapes


def _depth(raw: bytes) -> int:
    """How deep a valid JSON text's arrays and objects go (brackets in strings not counted),
    with bytes operations that run in C: a regex or a loop over the text cost twice what
    parsing it does."""
    if b"\\" in raw:
        # Escaped backslashes first, so that the quote in \\" still ends its string.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = raw.translate(None, _NOT_STRUCTURE)
    # Every quote left opens or closes a string. Two quotes in a row have no bracket
    # between them and can go without changing which brackets are inside a string; quotes
    # remain only around strings that hold brackets.
    marks = marks.replace(b'""', b"")
    if b'"' in marks:
        marks = b"".join(marks.split(b'"')[::2])
    return max(itertools.accumulate(map(_NESTING_STEP.__getitem__, marks)), default=0)


def _lone_surrogate(text: str) -> str | None:
    # One character is found at memory speed; two take a search 80 times slower.
    if "\\" not in text or "\\u" not in text:
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
            raw = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise JsonInputError(f"not Unicode text: a lone surrogate at {exc.start}") from None
        if max_bytes is not None and len(raw) > max_bytes:
            raise JsonInputError(f"{len(raw)} bytes, more than the {max_bytes} accepted")
    surrogate = _lone_surrogate(text)
    if surrogate is not None:
        raise JsonInputError(f"{surrogate} is a lone surrogate, not a character")
    too_deep = f"nested too deeply: over {max_depth} arrays or objects"
    decoder = _PLAIN_NUMBERS_DECODER if _numbers_in_range(raw) else _DECODER
    try:
        document = decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise JsonInputError(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except _Refused as exc:
        raise JsonInputError(exc.reason) from None
    except RecursionError:
        # The parser recurses once per level (in C, counted against Python's recursion
        # limit), so nesting far past max_depth ends here, after at most ~1000 levels.
        raise JsonInputError(too_deep) from None
    # Depth is checked on the text it came from, now known to be valid JSON; cheap first:
    # a text with no more brackets than max_depth cannot nest deeper.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth(raw) > max_depth:
        raise JsonInputError(too_deep)
    return document


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
