"""ISO 9564 format 4 PIN blocks under the AES TPK (§4.1), made and opened by psec."""

import re

from psec import pinblock

from viopay_device.protocol.errors import PinBlockError

PIN_BLOCK_RE = re.compile(r"[0-9A-Fa-f]{32}")


def encipher_pin_block(*, tpk: bytes, pin: str, pan: str) -> str:
    """Return the enciphered PIN block as 32 upper-case hex digits."""
    try:
        block = pinblock.encipher_pinblock_iso_4(tpk, pin, pan)
    except ValueError:  # psec messages may echo the PIN: never pass them on
        raise PinBlockError("PIN block could not be made") from None
    return block.hex().upper()


def decipher_pin_block(*, tpk: bytes, pin_block: str, pan: str) -> str:
    """Return the PIN of a format 4 block bound to ``pan``; PinBlockError on any failure."""
    if not isinstance(pin_block, str) or not PIN_BLOCK_RE.fullmatch(pin_block):
        raise PinBlockError("PIN block must be 32 hex digits")
    try:
        return pinblock.decipher_pinblock_iso_4(tpk, bytes.fromhex(pin_block), pan)
    except ValueError:
        raise PinBlockError("PIN block does not decipher") from None
