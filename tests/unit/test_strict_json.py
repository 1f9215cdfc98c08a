"""The strict JSON reader's own shortcuts: the depth found on the text and the numbers
left to Python's parser must give the answers the slow, careful way gives."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import records, strict_json
from tests.samples import TS_US, all_records

# Strings full of what a text-level scan could trip over: brackets, quotes, backslashes.
tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\/:,ab é\u2028\n'), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | tricky_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4)
    ),
    max_leaves=20,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@st.composite
def nested_values(draw: st.DrawFn) -> Any:
    """A value wrapped in arrays and objects (with tricky keys) to a depth near the limit."""
    value = draw(values)
    for _ in range(draw(st.integers(strict_json.MAX_DEPTH - 8, strict_json.MAX_DEPTH + 2))):
        if draw(st.booleans()):
            value = [draw(tricky_text), value]
        else:
            value = {draw(tricky_text): value, "]": "[[[["}
    return value


@settings(max_examples=150, deadline=None)
@given(value=nested_values(), ensure_ascii=st.booleans())
def test_depth_is_counted_on_structure_never_on_brackets_in_strings(
    value: Any, ensure_ascii: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    if _depth(value) > strict_json.MAX_DEPTH:
        with pytest.raises(strict_json.JsonInputError, match="nested too deeply"):
            strict_json.loads(text)
        with pytest.raises(strict_json.JsonInputError, match="nested too deeply"):
            strict_json.loads(text.encode())
    else:
        assert strict_json.loads(text) == value
        assert strict_json.loads(text.encode()) == value


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        ('["\\\\",' + "[" * 32 + "]" * 33, True),  # an escaped backslash, then a quote
        ('["\\"' + "[" * 40 + '",' + "[" * 31 + "]" * 32, False),  # an escaped quote
        ('["' + "]" * 40 + '",' + "[" * 32 + "]" * 33, True),  # closers in a string
        ('[["' + "[" * 40 + '"]]', False),  # openers in a string
        ('["",' + "[" * 31 + "]" * 32, False),
        ('["",' + "[" * 32 + "]" * 33, True),
    ],
)
def test_depth_around_escapes_and_strings_holding_brackets(text: str, deep: bool) -> None:
    if deep:
        with pytest.raises(strict_json.JsonInputError, match="nested too deeply"):
            strict_json.loads(text)
    else:
        assert _depth(strict_json.loads(text)) <= strict_json.MAX_DEPTH


def _number_text(mantissa: str, fraction: str, exponent: str) -> str:
    return mantissa + (f".{fraction}" if fraction else "") + (f"e{exponent}" if exponent else "")


numbers = st.one_of(
    st.integers(-(10**25), 10**25).map(str),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**18 - 1, 10**18]).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.builds(
        _number_text,
        st.integers(-(10**20), 10**20).map(str),
        st.integers(0, 10**20).map(str) | st.just(""),
        st.integers(-400, 400).map(str) | st.integers(0, 400).map("+{}".format) | st.just(""),
    ),
)


@settings(max_examples=300, deadline=None)
@given(number=numbers, string=st.sampled_from(["", "e000", "0" * 19, "x"]))
def test_numbers_are_refused_outside_int64_and_the_float_range(number: str, string: str) -> None:
    # The string beside the number decides nothing but which parser reads it.
    text = f'[{number}, "{string}"]'
    expected: int | float = int(number) if number.lstrip("-").isdigit() else float(number)
    in_range = (
        strict_json.INT_MIN <= expected <= strict_json.INT_MAX
        if isinstance(expected, int)
        else math.isfinite(expected)
    )
    if in_range:
        decoded = strict_json.loads(text)[0]
        assert type(decoded) is type(expected)
        assert decoded == expected
    else:
        with pytest.raises(strict_json.JsonInputError, match="outside"):
            strict_json.loads(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("999999999999999999", 10**18 - 1),  # 18 digits: read by Python's parser alone
        ("-999999999999999999", -(10**18) + 1),
        ("9223372036854775807", 2**63 - 1),
        ("9.99e99", 9.99e99),
        ("999999999999999999.9e99", 999999999999999999.9e99),
        ("1e308", 1e308),
        ("-1e-400", -0.0),
    ],
)
def test_numbers_just_inside_the_ranges(text: str, expected: float) -> None:
    assert strict_json.loads(text) == expected


def realistic_record() -> bytes:
    """A 36 KB prosody record (185 hops: what a processor sends after a short backlog)."""
    sample = next(r for r in all_records() if isinstance(r, records.ProsodyHops))
    hop = sample.hops[0]
    hops = [hop.model_copy(update={"ts_us": TS_US + n * 10_000}) for n in range(185)]
    return records.encode(sample.model_copy(update={"hops": hops})).value


def test_a_realistic_record_decodes_as_json_loads_does() -> None:
    # Its cost against json.loads is measured outside the tests (the note): a
    # timed assertion would fail on a busy machine, not on a bug.
    value = realistic_record()
    assert 35_000 < len(value) < 37_000
    assert strict_json.loads(value) == json.loads(value)
