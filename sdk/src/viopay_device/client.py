"""DeviceClient: the POS side of PROTOCOL.md, synchronous, on ``httpx.Client``.

The activation calls live in ``_activation_api.py`` and the plumbing in ``_base.py``; this
module adds the charge endpoints (§2.4, §4). A client is not thread-safe: a terminal drives
one flow at a time.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from viopay_device._activation_api import ActivationAPI
from viopay_device._base import (
    DEFAULT_APP_VERSION,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_OS,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_TIMEOUT,
    TOKEN_REFRESH_MARGIN,
    problem_code,
)
from viopay_device._json import dumps, loads_object
from viopay_device.auth import ChargeSignature
from viopay_device.errors import (
    DeviceError,
    NetworkError,
    NotActivated,
    OutcomeUnknown,
    ProtocolError,
    error_from_response,
)
from viopay_device.keystore import KeySet
from viopay_device.models import Charge, Heartbeat, Refund, Reversal
from viopay_device.protocol.envelope import card_aad, request_aad, response_aad, seal
from viopay_device.protocol.errors import PinBlockError
from viopay_device.protocol.pinblock import encipher_pin_block

__all__ = [
    "DEFAULT_APP_VERSION",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MODEL",
    "DEFAULT_OS",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RETRY_BACKOFF",
    "DEFAULT_TIMEOUT",
    "TOKEN_REFRESH_MARGIN",
    "DeviceClient",
]

logger = logging.getLogger(__name__)

#: Statuses that, answering a retry, say nothing of the earlier attempt: PROTOCOL.md §4.5
#: stores neither 401s nor 5xx other than the processor's.
_INCONCLUSIVE_ON_RETRY = frozenset({401, 500, 503})
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,255}$")
_CHARGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_PIN = re.compile(r"^[0-9]{4,12}$")
_CARD_MEMBERS = ("pan", "expiry", "track2", "cardholder_name")

PlaintextFactory = Callable[[KeySet, str], dict[str, Any]]


class _Unanswered(Exception):
    """Internal: a charge-family call got no trustworthy answer; ``cause`` says why."""

    def __init__(self, cause: Exception | None) -> None:
        super().__init__("no trustworthy answer")
        self.cause = cause


@dataclass(frozen=True)
class _Answer:
    plaintext: dict[str, Any]
    replayed: bool


class DeviceClient(ActivationAPI):
    """A POS terminal's client for the Viopay server.

    ``DeviceClient(base_url, *, device_id, key_store, app_version, os, model, transport,
    timeout, clock, nonce_factory, terminal_id, max_retries, retry_backoff, sleep,
    auto_rotate)``: ``key_store`` holds the identity key and the delivered key sets;
    ``transport`` replaces httpx's network transport (tests pass an ``httpx.MockTransport``);
    ``clock`` returns the aware current time and ``nonce_factory`` a fresh nonce; ``sleep``
    waits between retries and polls; ``terminal_id`` is learnt from config, status or
    activation when not given.

    Activation calls (:meth:`bootstrap` ... :meth:`activate`) are sent once; the token calls
    attest when the token is missing or about to expire, and once more on 401 invalid_token.

    Charge-family calls carry an Idempotency-Key (a new UUID4 unless given) and are retried,
    sealed and signed afresh under the same key, after a network failure, after 409
    idempotency_in_progress, and after an unstored error (401, 500, 503) that answers a retry.
    Whatever still has no trustworthy answer raises OutcomeUnknown; for :meth:`charge` the SDK
    first reverses whatever the key created (:meth:`reverse_by_key`).

    With ``auto_rotate`` the client rotates its keys (:meth:`rotate_keys`) when a charge-family
    answer first carries ``"rotate_keys": true``, once that answer is fully processed; a
    failed rotation never hides the answer (see ``last_rotation_error``) and is tried again
    before the next charge or refund. :attr:`needs_rotation` tells whether one is due.
    """

    # -- charge endpoints (§2.4, §4) ---------------------------------------------------------

    def _charge_context(self) -> tuple[KeySet, str]:
        key_set = self._keys.current
        if key_set is None:
            raise NotActivated("no activated key set")
        terminal_id = self._terminal_id or self.status().terminal_id
        if terminal_id is None:
            raise NotActivated("the device has no terminal id")
        return key_set, terminal_id

    def _backoff(self, retry: int) -> float:
        return float(self._retry_backoff * 2 ** (retry - 1))

    def _charge_call(
        self,
        method: str,
        endpoint: str,
        plaintext: PlaintextFactory | None,
        idempotency_key: str | None,
    ) -> _Answer:
        """Send a signed (and, with a body, sealed) request, retrying network failures and
        ``idempotency_in_progress`` with the same Idempotency-Key; each attempt is sealed and
        signed afresh. Raises _Unanswered when no trustworthy answer came."""
        key_set, terminal_id = self._charge_context()
        path = self._path(endpoint)
        auth = ChargeSignature(
            terminal_id=terminal_id,
            key_id=key_set.hmac_key_id,
            mac_key=key_set.key("MAC"),
            user_agent=self._user_agent,
            clock=self._clock,
            nonce_factory=self._nonce_factory,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        aad = request_aad(method=method, path=path, subject=terminal_id)
        cause: Exception | None = None
        for attempt in range(self._max_retries + 1):
            if attempt:
                self._sleep(self._backoff(attempt))
            content = None
            if plaintext is not None:
                content = self._seal(key_set, plaintext(key_set, terminal_id), aad)
            try:
                response = self._request(
                    method, endpoint, auth=auth, content=content, headers=headers
                )
            except httpx.TransportError as exc:
                cause = exc
                logger.info("%s %s: %s, retrying", method, endpoint, type(exc).__name__)
                continue
            if _inconclusive(response, retrying=cause is not None, keyed=bool(idempotency_key)):
                cause = error_from_response(response)
                continue
            return self._open_charge_answer(response, method, path, terminal_id)
        raise _Unanswered(cause)

    def _open_charge_answer(
        self, response: httpx.Response, method: str, path: str, terminal_id: str
    ) -> _Answer:
        if not response.is_success:
            raise error_from_response(response)
        nonce = response.request.headers["X-Nonce"]
        aad = response_aad(method=method, path=path, subject=terminal_id, nonce=nonce)
        try:
            plaintext, _ = self._open(loads_object(response.content, "charge answer"), aad)
            answer = loads_object(plaintext, "charge answer")
        except ProtocolError as exc:  # an answer that can't be trusted or read tells nothing
            raise _Unanswered(exc) from None
        replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        return _Answer(plaintext=answer, replayed=replayed)

    def _after_answer(self, answer: _Answer) -> None:
        """A newly raised ``rotate_keys`` rotates at once (with ``auto_rotate``); a rotation
        that failed is tried again before the next charge or refund."""
        if answer.plaintext.get("rotate_keys") is True and not self._needs_rotation:
            self._needs_rotation = True
            self._rotate_if_due()

    def _rotate_if_due(self) -> None:
        if not (self._needs_rotation and self._auto_rotate):
            return
        try:
            self.rotate_keys()
        except DeviceError as exc:
            self.last_rotation_error = exc
            logger.warning("key rotation failed: %s", type(exc).__name__)

    def charge(
        self,
        *,
        amount: int,
        currency: str,
        entry_mode: str,
        card: Mapping[str, str],
        pin: str | None = None,
        tip_amount: int = 0,
        tax_amount: int = 0,
        surcharge_amount: int = 0,
        reference: str | None = None,
        emv: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Charge:
        """§4.1: charge a card. ``card`` holds ``pan``, ``expiry`` (YYMM) and optionally
        ``track2`` and ``cardholder_name``; it travels in its own TDK envelope. ``pin`` is
        enciphered under the TPK as an ISO 9564 format 4 block.

        A declined charge is returned (``status`` ``declined``), not raised. When no answer can
        be trusted after the retries, the SDK reverses whatever the Idempotency-Key created and
        raises OutcomeUnknown carrying that reversal."""
        key = _idempotency_key(idempotency_key)
        card_plain = _card_plaintext(card)
        if pin is not None and not _PIN.match(pin):
            raise ValueError("pin must be 4 to 12 digits")
        extra = dict(metadata) if metadata is not None else None
        self._rotate_if_due()

        def plaintext(key_set: KeySet, terminal_id: str) -> dict[str, Any]:
            body: dict[str, Any] = {
                "amount": amount,
                "currency": currency,
                "tip_amount": tip_amount,
                "tax_amount": tax_amount,
                "surcharge_amount": surcharge_amount,
                "entry_mode": entry_mode,
                "card": seal(
                    key_set.key("TDK"),
                    key_set.key_ids["TDK"],
                    dumps(card_plain),
                    card_aad(terminal_id),
                ),
            }
            optional = {"reference": reference, "emv": emv, "metadata": extra}
            body.update({k: v for k, v in optional.items() if v is not None})
            if pin is not None:
                body["pin_block"] = _pin_block(key_set, pin, card_plain["pan"])
            return body

        try:
            answer = self._charge_call("POST", "/pos/charge", plaintext, key)
        except _Unanswered as exc:
            raise self._reverse_unknown(key) from exc.cause
        charge = Charge.from_json(answer.plaintext, replayed=answer.replayed)
        self._after_answer(answer)
        return charge

    def _reverse_unknown(self, key: str) -> OutcomeUnknown:
        """Reverse whatever ``key`` created, for the OutcomeUnknown that reports it."""
        reversal: Reversal | None = None
        reversal_error: DeviceError | None = None
        try:
            reversal = self.reverse_by_key(key)
        except DeviceError as error:
            reversal_error = error
        return OutcomeUnknown("charge", key, reversal=reversal, reversal_error=reversal_error)

    def refund(
        self,
        charge_id: str,
        *,
        amount: int | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Refund:
        """§4.2: refund ``amount`` (all that is left when None). OutcomeUnknown when no
        trustworthy answer came: repeat with its ``idempotency_key``."""
        key = _idempotency_key(idempotency_key)
        payload = {k: v for k, v in (("amount", amount), ("reason", reason)) if v is not None}
        self._rotate_if_due()
        endpoint = f"/pos/charge/{_charge_id(charge_id)}/refund"
        try:
            answer = self._charge_call("POST", endpoint, lambda _ks, _tid: payload, key)
        except _Unanswered as exc:
            raise OutcomeUnknown("refund", key) from exc.cause
        refund = Refund.from_json(answer.plaintext, replayed=answer.replayed)
        self._after_answer(answer)
        return refund

    def cancel(self, charge_id: str, *, idempotency_key: str | None = None) -> Charge:
        """§4.3: cancel an approved charge (no refund, within 24 h)."""
        return self._bodyless("cancel", charge_id, idempotency_key)

    def reverse(self, charge_id: str, *, idempotency_key: str | None = None) -> Charge:
        """§4.3: reverse a charge whose outcome the terminal never learned."""
        return self._bodyless("reverse", charge_id, idempotency_key)

    def _bodyless(self, action: str, charge_id: str, idempotency_key: str | None) -> Charge:
        """POST /pos/charge/{id}/{action} without a body; OutcomeUnknown as for refund."""
        key = _idempotency_key(idempotency_key)
        endpoint = f"/pos/charge/{_charge_id(charge_id)}/{action}"
        try:
            answer = self._charge_call("POST", endpoint, None, key)
        except _Unanswered as exc:
            raise OutcomeUnknown(action, key) from exc.cause
        charge = Charge.from_json(answer.plaintext, replayed=answer.replayed)
        self._after_answer(answer)
        return charge

    def get_charge(self, charge_id: str) -> Charge:
        """§4.4: the charge as it stands now (the authoritative state)."""
        endpoint = f"/pos/charge/{_charge_id(charge_id)}"
        try:
            answer = self._charge_call("GET", endpoint, None, None)
        except _Unanswered as exc:
            if isinstance(exc.cause, DeviceError):
                raise exc.cause from None
            raise NetworkError(f"GET {endpoint}: no answer") from exc.cause
        charge = Charge.from_json(answer.plaintext)
        self._after_answer(answer)
        return charge

    def reverse_by_key(self, idempotency_key: str) -> Reversal:
        """§4.4: reverse the charge this terminal created with ``idempotency_key``; when there
        is none yet, the key is spent so a late charge with it is refused. The call itself
        carries a new Idempotency-Key of its own (it is repeatable anyway)."""
        target = _idempotency_key(idempotency_key)
        key = _idempotency_key(None)
        payload = {"idempotency_key": target}
        try:
            answer = self._charge_call(
                "POST", "/pos/charge/reverse", lambda _ks, _tid: payload, key
            )
        except _Unanswered as exc:
            raise OutcomeUnknown("reverse_by_key", key) from exc.cause
        reversal = Reversal.from_json(answer.plaintext)
        self._after_answer(answer)
        return reversal

    # -- heartbeat (§8) ------------------------------------------------------------------------

    def heartbeat(self, **report: Any) -> Heartbeat:
        """§8: report health (``battery_pct``, ``charging``, ``network``, ``signal_dbm``,
        ``printer``, ``pending_offline``, ``uptime_s``; None members are left out, so the
        server keeps their last value). See :class:`viopay_device.HeartbeatSchedule`."""
        payload = {name: value for name, value in report.items() if value is not None}
        try:
            answer = self._charge_call("POST", "/pos/heartbeat", lambda _ks, _tid: payload, None)
        except _Unanswered as exc:
            if isinstance(exc.cause, DeviceError):
                raise exc.cause from None
            raise NetworkError("POST /pos/heartbeat: no answer") from exc.cause
        beat = Heartbeat.from_json(answer.plaintext)
        self._after_answer(answer)
        return beat

    def refresh_changed(self, beat: Heartbeat) -> tuple[bool, bool]:
        """Fetch the config and the terminal parameters again where ``beat`` says the server
        holds another version than this client (attesting first if needed); whether each was
        fetched."""
        held_config = self._config.config_version if self._config is not None else None
        held_params = self._params_cache.get(None)
        config = held_config != beat.config_version
        if config:
            self.fetch_config()
        params = held_params is None or held_params.sha256 != beat.parameters_sha256
        if params:
            self.fetch_terminal_parameters()
        return config, params


def _inconclusive(response: httpx.Response, *, retrying: bool, keyed: bool) -> bool:
    """True when ``response`` leaves the outcome as unknown as before, so the call is retried:
    an Idempotency-Key still in progress, or an unstored error answering a retry."""
    if keyed and problem_code(response) == "idempotency_in_progress":
        return True
    return retrying and response.status_code in _INCONCLUSIVE_ON_RETRY


def _idempotency_key(key: str | None) -> str:
    if key is None:
        return str(uuid.uuid4())
    if not _PRINTABLE.match(key):
        raise ValueError("idempotency_key must be 1-255 printable ASCII characters, no spaces")
    return key


def _charge_id(charge_id: str) -> str:
    if not _CHARGE_ID.match(charge_id):
        raise ValueError("charge_id must be 1-128 characters of [A-Za-z0-9_-]")
    return charge_id


def _card_plaintext(card: Mapping[str, str]) -> dict[str, str]:
    """The card envelope's plaintext; messages never echo a value."""
    unknown = set(card) - set(_CARD_MEMBERS)
    if unknown:
        raise ValueError(f"card has unknown members: {', '.join(sorted(unknown))}")
    for name in ("pan", "expiry"):
        if not isinstance(card.get(name), str) or not card[name]:
            raise ValueError(f"card.{name} is required")
    if not card["pan"].isdigit():
        raise ValueError("card.pan must be digits")
    return {k: card[k] for k in _CARD_MEMBERS if card.get(k) is not None}


def _pin_block(key_set: KeySet, pin: str, pan: str) -> str:
    try:
        return encipher_pin_block(tpk=key_set.key("TPK"), pin=pin, pan=pan)
    except PinBlockError:
        raise ValueError("the PIN could not be enciphered") from None
