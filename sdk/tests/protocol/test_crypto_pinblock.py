import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viopay_device.protocol.errors import PinBlockError
from viopay_device.protocol.pinblock import decipher_pin_block, encipher_pin_block

TPK = bytes(range(32))
PAN = "4242424242424242"


@given(
    pin=st.text(alphabet="0123456789", min_size=4, max_size=12),
    pan=st.text(alphabet="0123456789", min_size=12, max_size=19),
)
def test_round_trip(pin: str, pan: str) -> None:
    block = encipher_pin_block(tpk=TPK, pin=pin, pan=pan)
    assert len(block) == 32 and block == block.upper()
    int(block, 16)
    assert decipher_pin_block(tpk=TPK, pin_block=block, pan=pan) == pin
    assert decipher_pin_block(tpk=TPK, pin_block=block.lower(), pan=pan) == pin


def test_random_fill() -> None:
    assert encipher_pin_block(tpk=TPK, pin="1234", pan=PAN) != encipher_pin_block(
        tpk=TPK, pin="1234", pan=PAN
    )


def test_wrong_key_or_pan_fails() -> None:
    block = encipher_pin_block(tpk=TPK, pin="1234", pan=PAN)
    # A wrong key or PAN gives a random-looking field, refused with overwhelming probability.
    with pytest.raises(PinBlockError):
        decipher_pin_block(tpk=os.urandom(32), pin_block=block, pan=PAN)
    with pytest.raises(PinBlockError):
        decipher_pin_block(tpk=TPK, pin_block=block, pan="5555555555554444")


@pytest.mark.parametrize("pin_block", ["", "00" * 15, "00" * 17, "G" * 32, " " + "0" * 31, 5])
def test_bad_pin_block_text(pin_block: object) -> None:
    with pytest.raises(PinBlockError):
        decipher_pin_block(tpk=TPK, pin_block=pin_block, pan=PAN)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pin", "pan", "tpk"),
    [
        ("123", PAN, TPK),
        ("1234567890123", PAN, TPK),
        ("12a4", PAN, TPK),
        ("1234", "", TPK),
        ("1234", "4" * 20, TPK),
        ("1234", PAN, bytes(7)),
    ],
)
def test_encipher_refuses_bad_input(pin: str, pan: str, tpk: bytes) -> None:
    with pytest.raises(PinBlockError) as exc:
        encipher_pin_block(tpk=tpk, pin=pin, pan=pan)
    assert pin not in str(exc.value) and exc.value.__cause__ is None


def test_decipher_error_holds_no_pin() -> None:
    block = encipher_pin_block(tpk=TPK, pin="987654", pan=PAN)
    with pytest.raises(PinBlockError) as exc:
        decipher_pin_block(tpk=TPK, pin_block=block, pan="4000000000000002")
    assert "987654" not in str(exc.value) and exc.value.__cause__ is None
