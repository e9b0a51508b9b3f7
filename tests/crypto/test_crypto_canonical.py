import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viopay.crypto.canonical import canonical_json

SAFE_INT = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
ASCII_KEY = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10)

# Float-free JSON values, as our payloads are (PROTOCOL §0).
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | SAFE_INT | TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ASCII_KEY, children, max_size=4)
    ),
    max_leaves=20,
)


def test_known_answers() -> None:
    value = {"b": [1, True, None], "a": {"d": "é\n\u0001", "c": -5}, "": "x"}
    assert (
        canonical_json(value)
        == '{"":"x","a":{"c":-5,"d":"é\\n\\u0001"},"b":[1,true,null]}'.encode()
    )
    assert canonical_json({}) == b"{}"
    assert canonical_json("\u2028</script>") == '"\u2028</script>"'.encode()


def test_keys_sort_by_utf16_code_units() -> None:
    # U+FF61 sorts after U+1F600 in code points' UTF-16 (D83D...) form: JCS §3.2.3.
    assert canonical_json({"\uff61": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\uff61":1}'.encode()


def test_floats_follow_jcs() -> None:
    assert canonical_json([1.0, 0.5, 1e21, -0.0]) == b"[1,0.5,1e+21,0]"


@given(JSON_VALUES)
def test_matches_sorted_compact_json(value: Any) -> None:
    # For float-free values with ASCII keys, JCS is json.dumps sorted and compact.
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == expected.encode()


@given(JSON_VALUES)
def test_idempotent_through_parsing(value: Any) -> None:
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once


@pytest.mark.parametrize(
    "value",
    [2**53, -(2**53), float("nan"), float("inf"), {1: "a"}, b"bytes", {"\ud800": 1}, object()],
)
def test_outside_domain(value: object) -> None:
    with pytest.raises(ValueError) as exc:
        canonical_json({"secret-pan-4242": value})
    assert "4242" not in str(exc.value)
    assert exc.value.__cause__ is None
