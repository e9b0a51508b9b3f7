"""The processor interface: what the charge endpoints need from an acquirer connector.

The API layer talks only to :class:`Processor`; the sandbox (§4.6) and real connectors plug in
behind it (``VIOPAY_PROCESSOR``). Requests carry the card and PIN block in the clear only as
far as the connector; their reprs hide them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from viopay.payments.cards import CardData


class ProcessorFailure(Exception):
    """The processor answered with an error, or could not be reached before sending: no
    authorisation exists (502 processor_error, no charge)."""


class ProcessorTimedOut(Exception):
    """The processor did not answer: whether it authorised is unknown, so the charge must be
    reversed (504 processor_timeout)."""


@dataclass(frozen=True)
class EncipheredPin:
    """An ISO 9564 format 4 PIN block (hex) and the TPK it is enciphered under."""

    block: str = field(repr=False)
    tpk: bytes = field(repr=False)


@dataclass(frozen=True)
class AuthorizationRequest:
    reference: str  # ours, recorded before the call; the processor keeps it (§4.7)
    charge_id: str
    terminal_id: str
    merchant_id: str
    amount: int
    currency: str
    entry_mode: str
    card: CardData
    pin: EncipheredPin | None
    emv: str | None
    order_reference: str | None  # the merchant's `reference` of the charge, if any
    now: datetime


@dataclass(frozen=True)
class Authorization:
    approved: bool
    response_code: str
    authorization_code: str | None = None
    decline_reason: str | None = None
    emv_response: str | None = None
    processor_reference: str | None = None


@dataclass(frozen=True)
class ChargeRef:
    """What a processor needs to refund, void or reverse a charge it authorised."""

    charge_id: str
    terminal_id: str
    amount: int
    currency: str
    processor_reference: str | None


@dataclass(frozen=True)
class ProcessorRecord:
    """What the processor holds under a reference (§4.7): the answer to "what happened?".

    ``authorization`` is set for an authorisation (approved or declined); ``undone`` when that
    authorisation was later voided or reversed. A refund, void or reverse that exists was done.
    """

    reference: str
    operation: str  # authorize, refund, void, reverse
    authorization: Authorization | None = None
    undone: bool = False


@runtime_checkable
class Processor(Protocol):
    """An acquirer connector. Every call carries a ``reference`` that the server recorded
    before making it; a call repeated with the same reference must not act twice, and
    :meth:`lookup` answers what the processor holds under a reference (None: never received).
    """

    async def authorize(self, request: AuthorizationRequest) -> Authorization:
        """Approve or decline; ProcessorFailure or ProcessorTimedOut when there is no answer."""
        ...

    async def refund(
        self, charge: ChargeRef, *, reference: str, refund_id: str, amount: int
    ) -> None:
        """Refund ``amount`` of an approved charge."""
        ...

    async def void(self, charge: ChargeRef, *, reference: str) -> None:
        """Cancel an approved charge before settlement (merchant-initiated)."""
        ...

    async def reverse(self, charge: ChargeRef, *, reference: str) -> None:
        """Undo an authorisation whose outcome the terminal (or the server) never learned.

        Must succeed for a charge the processor never saw (a timeout's reversal)."""
        ...

    async def lookup(self, reference: str) -> ProcessorRecord | None:
        """What happened under ``reference``; None when the call never arrived."""
        ...
