import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viopay_device.protocol.errors import KeyBlockError
from viopay_device.protocol.keyblocks import HEADERS, KEY_TYPES, WRAPPED_BY, unwrap_key, wrap_key

KBPK = bytes(range(32))

EXPECTED_HEADERS = {  # §3.6 table: usage, algorithm, mode, version, exportability
    "TMK": "K0AB00N",
    "KEK": "K0AB00N",
    "MSK": "D0AB00N",
    "TPK": "P0AE00N",
    "TDK": "D0AE00N",
    "MAC": "M7HC00N",
}


def test_tables_agree() -> None:
    assert KEY_TYPES == ("TMK", "KEK", "MSK", "TPK", "TDK", "MAC")
    assert set(WRAPPED_BY) == set(HEADERS) == set(KEY_TYPES)
    assert WRAPPED_BY["TMK"] == "KTK" and WRAPPED_BY["KEK"] == "TMK"
    assert all(WRAPPED_BY[t] == "KEK" for t in ("MSK", "TPK", "TDK", "MAC"))


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_round_trip_and_header(key_type: str) -> None:
    key = os.urandom(32)
    block = wrap_key(KBPK, key_type, key)
    assert block[0] == "D"
    assert block[5:12] == EXPECTED_HEADERS[key_type]
    assert block[12:16] == "0000"  # no optional blocks, reserved 00
    assert int(block[1:5]) == len(block) == 144
    assert unwrap_key(KBPK, block, expected_type=key_type) == key
    assert unwrap_key(KBPK, block) == key
    assert wrap_key(KBPK, key_type, key) != block  # random padding


@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("expected_type", KEY_TYPES)
def test_header_check(key_type: str, expected_type: str) -> None:
    block = wrap_key(KBPK, key_type, os.urandom(32))
    if EXPECTED_HEADERS[key_type] == EXPECTED_HEADERS[expected_type]:
        unwrap_key(KBPK, block, expected_type=expected_type)  # TMK and KEK share a header
    else:
        with pytest.raises(KeyBlockError):
            unwrap_key(KBPK, block, expected_type=expected_type)


def test_msk_refused_as_tpk() -> None:
    block = wrap_key(KBPK, "MSK", os.urandom(32))
    with pytest.raises(KeyBlockError):
        unwrap_key(KBPK, block, expected_type="TPK")


def test_header_edit_breaks_the_mac() -> None:
    block = wrap_key(KBPK, "MSK", os.urandom(32))
    relabelled = block[:5] + "P0AE" + block[9:]
    with pytest.raises(KeyBlockError):
        unwrap_key(KBPK, relabelled)


def test_wrong_kbpk() -> None:
    block = wrap_key(KBPK, "TPK", os.urandom(32))
    with pytest.raises(KeyBlockError):
        unwrap_key(os.urandom(32), block)


MAC_BLOCK = wrap_key(KBPK, "MAC", bytes(32))


@given(position=st.integers(min_value=0, max_value=143), data=st.data())
def test_any_character_change_is_refused(position: int, data: st.DataObject) -> None:
    block = MAC_BLOCK
    # Hex digits decode case-insensitively, so "a" for "A" is the same block, not a change.
    alphabet = "0123456789ABCDEFabcdefXYZ "
    choices = [c for c in alphabet if c.upper() != block[position].upper()]
    replacement = data.draw(st.sampled_from(choices))
    tampered = block[:position] + replacement + block[position + 1 :]
    with pytest.raises(KeyBlockError):
        unwrap_key(KBPK, tampered, expected_type="MAC")


@given(st.text(max_size=200))
def test_garbage_only_raises_key_block_error(text: str) -> None:
    with pytest.raises(KeyBlockError):
        unwrap_key(KBPK, text)


@pytest.mark.parametrize(
    "transform",
    [
        lambda b: b[:-2],
        lambda b: b + "00",
        lambda b: "",
        lambda b: "B" + b[1:],
        lambda b: b.lower(),
        lambda b: b[:16],
    ],
)
def test_truncated_or_mangled_blocks(transform: object) -> None:
    assert callable(transform)
    block = wrap_key(KBPK, "TDK", os.urandom(32))
    with pytest.raises(KeyBlockError):
        unwrap_key(KBPK, transform(block))


def test_error_messages_hold_no_key_material() -> None:
    key = bytes.fromhex("11" * 32)
    block = wrap_key(KBPK, "TDK", key)
    broken = block[:20] + "ZZ" + block[22:]
    with pytest.raises(KeyBlockError) as exc:
        unwrap_key(KBPK, broken)
    assert block[16:40] not in str(exc.value) and exc.value.__cause__ is None


@pytest.mark.parametrize(
    ("kbpk", "key_type", "key"),
    [
        (KBPK, "KTK", bytes(32)),
        (KBPK, "MSK", bytes(16)),
        (KBPK, "MAC", bytes(33)),
        (bytes(8), "MSK", bytes(32)),
    ],
)
def test_wrap_refuses_bad_input(kbpk: bytes, key_type: str, key: bytes) -> None:
    with pytest.raises(KeyBlockError):
        wrap_key(kbpk, key_type, key)


def test_unknown_expected_type() -> None:
    block = wrap_key(KBPK, "MSK", bytes(32))
    with pytest.raises(KeyBlockError):
        unwrap_key(KBPK, block, expected_type="KTK")
