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


# Any JSON value, floats, big integers and non-ASCII keys included: whichever writer serves it,
# the bytes are rfc8785's.
ANY_KEY = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(ASCII_KEY, children, max_size=4)
        | st.dictionaries(ANY_KEY, children, max_size=3)
    ),
    max_leaves=20,
)


@given(ANY_JSON)
def test_the_fast_writer_and_rfc8785_agree_byte_for_byte(value: Any) -> None:
    import rfc8785

    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(ValueError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


def test_every_ascii_character_is_escaped_as_jcs_escapes_it() -> None:
    import rfc8785

    text = "".join(chr(code) for code in range(128))
    assert canonical_json({"k": text, "\x00": 1}) == rfc8785.dumps({"k": text, "\x00": 1})


def test_a_charge_plaintext_is_written_without_rfc8785(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path (a charge's fingerprint, a config's ETag) takes the fast writer."""
    import rfc8785

    def refuse(_value: object) -> bytes:
        raise AssertionError("rfc8785 was called")

    monkeypatch.setattr(rfc8785, "dumps", refuse)
    plaintext = {
        "amount": 1250,
        "currency": "USD",
        "tip_amount": 0,
        "entry_mode": "chip",
        "card": {"pan": "4242424242424242", "expiry": "3012"},
        "reference": "Table 12 — café",
        "metadata": {"lines": [1, 2, None, True]},
    }
    assert canonical_json(plaintext).startswith(b'{"amount":1250,"card":{"expiry":"3012"')
    with pytest.raises(AssertionError):
        canonical_json({"amount": 1.5})  # a float: the library's
