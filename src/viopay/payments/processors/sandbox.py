"""The sandbox processor (PROTOCOL §4.6), the default: answers decided by the card number."""

from __future__ import annotations

import secrets
import string

from viopay.crypto.errors import PinBlockError
from viopay.crypto.pinblock import decipher_pin_block
from viopay.payments.cards import is_expired
from viopay.payments.processors.base import (
    Authorization,
    AuthorizationRequest,
    ChargeRef,
    ProcessorFailure,
    ProcessorTimedOut,
)

APPROVED = "00"
# PAN → (response code, decline reason); approvals and the special rows are handled apart.
DECLINES: dict[str, tuple[str, str]] = {
    "4000000000000002": ("05", "card_declined"),
    "4000000000009995": ("51", "insufficient_funds"),
    "4000000000000069": ("54", "expired_card"),
    "4000000000000127": ("55", "incorrect_pin"),
}
PROCESSOR_ERROR_PAN = "4000000000000119"
TIMEOUT_PAN = "4000000000000259"
EXPIRED = ("54", "expired_card")
INCORRECT_PIN = ("55", "incorrect_pin")
_AUTH_CODE_ALPHABET = string.ascii_uppercase + string.digits


def authorization_code() -> str:
    """6 upper-case letters and digits."""
    return "".join(secrets.choice(_AUTH_CODE_ALPHABET) for _ in range(6))


def emv_response(response_code: str, auth_code: str | None) -> str:
    """TLV: 8A (authorisation response code) and, on approval, 89 (authorisation code)."""
    tlv = "8A02" + response_code.encode("ascii").hex().upper()
    if auth_code is not None:
        tlv += "8906" + auth_code.encode("ascii").hex().upper()
    return tlv


class SandboxProcessor:
    """Order (§4.6): expired card → 54; PAN ...0127 → 55; a PIN block that does not decipher
    under the TPK → 55; then the table; any other valid card is approved."""

    def __repr__(self) -> str:
        return "SandboxProcessor()"

    async def authorize(self, request: AuthorizationRequest) -> Authorization:
        decline = self._decline(request)
        if decline is None and request.card.pan == PROCESSOR_ERROR_PAN:
            raise ProcessorFailure("sandbox processor error")
        if decline is None and request.card.pan == TIMEOUT_PAN:
            raise ProcessorTimedOut("sandbox processor timeout")
        reference = "sbx_" + secrets.token_hex(8)
        if decline is not None:
            code, reason = decline
            return Authorization(
                approved=False,
                response_code=code,
                decline_reason=reason,
                emv_response=emv_response(code, None) if request.emv is not None else None,
                processor_reference=reference,
            )
        auth_code = authorization_code()
        return Authorization(
            approved=True,
            response_code=APPROVED,
            authorization_code=auth_code,
            emv_response=emv_response(APPROVED, auth_code) if request.emv is not None else None,
            processor_reference=reference,
        )

    def _decline(self, request: AuthorizationRequest) -> tuple[str, str] | None:
        card = request.card
        if is_expired(card.expiry, now=request.now):
            return EXPIRED
        if card.pan == "4000000000000127":
            return INCORRECT_PIN
        if request.pin is not None and not _pin_deciphers(
            request.pin.block, request.pin.tpk, card.pan
        ):
            return INCORRECT_PIN
        return DECLINES.get(card.pan)

    async def refund(self, charge: ChargeRef, *, refund_id: str, amount: int) -> str | None:
        return "sbx_" + secrets.token_hex(8)

    async def void(self, charge: ChargeRef) -> None:
        return None

    async def reverse(self, charge: ChargeRef) -> None:
        return None


def _pin_deciphers(block: str, tpk: bytes, pan: str) -> bool:
    try:
        decipher_pin_block(tpk=tpk, pin_block=block, pan=pan)
    except PinBlockError:
        return False
    return True
