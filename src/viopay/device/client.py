"""DeviceClient: the POS side of PROTOCOL.md, synchronous, on ``httpx.Client``.

A client is not thread-safe: a terminal drives one flow at a time.
"""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import httpx
import orjson

from viopay.crypto.envelope import (
    card_aad,
    chunk_aad,
    open_envelope,
    parse_envelope,
    request_aad,
    response_aad,
    seal,
)
from viopay.crypto.errors import CryptoError, PinBlockError
from viopay.crypto.pinblock import encipher_pin_block
from viopay.crypto.transport import generate_x25519
from viopay.device._json import loads_object
from viopay.device._keyset import open_key_set
from viopay.device._params import ChunkAssembler
from viopay.device.auth import (
    ActivationHeaders,
    AttestationSignature,
    AttestationToken,
    ChargeSignature,
    Clock,
    NonceFactory,
    default_clock,
    user_agent,
)
from viopay.device.errors import (
    NetworkError,
    NotActivated,
    OutcomeUnknown,
    PairingCodeExpired,
    ProtocolError,
    RateLimited,
    ResponseIntegrityError,
    ViopayError,
    error_from_response,
)
from viopay.device.keystore import KeySet, KeyStore
from viopay.device.models import (
    Activation,
    Attestation,
    Bootstrap,
    Charge,
    Config,
    DeviceStatus,
    PairingCode,
    Refund,
    Reversal,
    TerminalParameters,
)

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

DEFAULT_APP_VERSION = "1.4.2"
DEFAULT_OS = "Android 12"
DEFAULT_MODEL = "PAX-A920"
#: Seconds to open a connection.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds to wait for an answer; a charge waits on the processor, so this is generous.
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_TIMEOUT = httpx.Timeout(DEFAULT_READ_TIMEOUT, connect=DEFAULT_CONNECT_TIMEOUT)
#: Retries of a charge-family call after a network failure (so up to 1 + this many attempts).
DEFAULT_MAX_RETRIES = 3
#: Seconds before the first retry; doubled for each further one.
DEFAULT_RETRY_BACKOFF = 0.5
#: Re-attest when the attestation token has less than this left.
TOKEN_REFRESH_MARGIN = timedelta(seconds=15)

_DEVICE_ID = re.compile(r"^POS-[0-9A-F]{8}$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,255}$")
_CHARGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_PIN = re.compile(r"^[0-9]{4,12}$")
_CARD_MEMBERS = ("pan", "expiry", "track2", "cardholder_name")
_ENVELOPE_MEMBERS = ("v", "kid", "iv", "ct")

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


class DeviceClient:
    """A POS terminal's client for the Viopay server.

    ``key_store`` holds the identity key and the delivered key sets. ``transport`` replaces
    httpx's network transport (tests pass an ``httpx.MockTransport``). ``clock`` returns the
    aware current time and ``nonce_factory`` a fresh nonce; ``sleep`` waits between retries
    and polls. With ``auto_rotate`` the client rotates its keys as soon as a charge-family
    answer asks it to (``"rotate_keys": true``), after that answer has been fully processed.
    """

    def __init__(
        self,
        base_url: str,
        *,
        device_id: str,
        key_store: KeyStore,
        app_version: str = DEFAULT_APP_VERSION,
        os: str = DEFAULT_OS,
        model: str = DEFAULT_MODEL,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
        nonce_factory: NonceFactory | None = None,
        terminal_id: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
        auto_rotate: bool = True,
    ) -> None:
        if not _DEVICE_ID.match(device_id):
            raise ValueError("device_id must match POS- and 8 upper-case hex digits")
        self._device_id = device_id
        self._keys = key_store
        self._app_version = app_version
        self._user_agent = user_agent(app_version, os, model)
        self._http = httpx.Client(base_url=base_url, transport=transport, timeout=timeout)
        self._prefix = self._http.base_url.raw_path.decode("ascii").rstrip("/")
        self._clock = clock or default_clock
        self._nonce_factory = nonce_factory
        self._terminal_id = terminal_id
        self._max_retries = max_retries
        self._retry_backoff = retry_backoff
        self._sleep = sleep
        self._auto_rotate = auto_rotate
        self._token: str | None = None
        self._token_expires_at: datetime | None = None
        self._pairing_deadline: datetime | None = None
        self._config: Config | None = None
        self._config_cache: dict[str | None, Config] = {}
        self._params_cache: dict[str | None, TerminalParameters] = {}
        self._needs_rotation = False
        self.last_rotation_error: ViopayError | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DeviceClient(base_url={str(self._http.base_url)!r}, device_id={self._device_id!r}, "
            f"terminal_id={self._terminal_id!r})"
        )

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def key_store(self) -> KeyStore:
        return self._keys

    @property
    def terminal_id(self) -> str | None:
        """The terminal id, once known (from config, status or activation)."""
        return self._terminal_id

    @property
    def config(self) -> Config | None:
        """The config document last fetched."""
        return self._config

    @property
    def needs_rotation(self) -> bool:
        """True once the server asked for a key rotation that has not happened yet."""
        return self._needs_rotation

    # -- plumbing ----------------------------------------------------------------------------

    def _path(self, endpoint: str) -> str:
        """The path as sent (base_url's path, if any, then the endpoint)."""
        return self._prefix + endpoint

    def _send(
        self,
        method: str,
        endpoint: str,
        *,
        auth: httpx.Auth,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return self._request(method, endpoint, auth=auth, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise NetworkError(f"{method} {endpoint}: {type(exc).__name__}") from exc

    def _request(
        self,
        method: str,
        endpoint: str,
        *,
        auth: httpx.Auth,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if content:
            all_headers["Content-Type"] = "application/json"
        return self._http.request(
            method, endpoint, content=content or None, headers=all_headers, auth=auth
        )

    @staticmethod
    def _success(response: httpx.Response, what: str) -> dict[str, Any]:
        if not response.is_success:
            raise error_from_response(response)
        return loads_object(response.content, what)

    def _key_set_for(self, kid: str) -> KeySet:
        for key_set in (self._keys.pending, self._keys.current, self._keys.previous):
            if key_set is not None and key_set.msk_kid == kid:
                return key_set
        raise ResponseIntegrityError("response sealed under an unknown kid")

    def _open(self, obj: Mapping[str, Any], aad: bytes) -> tuple[bytes, KeySet]:
        """Open the response envelope in ``obj`` under the MSK its kid names."""
        try:
            envelope = parse_envelope({k: obj[k] for k in _ENVELOPE_MEMBERS if k in obj})
        except CryptoError:
            raise ResponseIntegrityError("malformed response envelope") from None
        key_set = self._key_set_for(envelope.kid)
        try:
            return open_envelope(key_set.key("MSK"), envelope, aad), key_set
        except CryptoError:
            raise ResponseIntegrityError("response envelope failed to authenticate") from None

    def _seal(self, key_set: KeySet, plaintext: Mapping[str, Any], aad: bytes) -> bytes:
        sealed = seal(key_set.key("MSK"), key_set.msk_kid, orjson.dumps(plaintext), aad)
        return orjson.dumps(sealed)

    # -- activation headers (§2.1, §2.2) ----------------------------------------------------

    def _activation_auth(self) -> ActivationHeaders:
        return ActivationHeaders(self._device_id, self._user_agent)

    def bootstrap(self) -> Bootstrap:
        """§3.1: connectivity, server time, version policy and the device's status."""
        response = self._send("POST", "/pos/bootstrap", auth=self._activation_auth())
        return Bootstrap.from_json(self._success(response, "bootstrap"))

    def request_pairing_code(self) -> PairingCode:
        """§3.2: a new pairing code (the previous one dies)."""
        response = self._send("POST", "/pos/pairing-code", auth=self._activation_auth())
        code = PairingCode.from_json(self._success(response, "pairing code"))
        # The deadline is kept on the device clock, from expires_in, so clock skew can't move it.
        self._pairing_deadline = self._clock() + timedelta(seconds=code.expires_in)
        return code

    def status(self) -> DeviceStatus:
        """§3.3: the device's lifecycle status (and its terminal id once claimed)."""
        response = self._send("GET", "/pos/status", auth=self._activation_auth())
        status = DeviceStatus.from_json(self._success(response, "status"))
        if status.terminal_id is not None:
            self._terminal_id = status.terminal_id
        return status

    def wait_until_claimed(
        self,
        *,
        on_poll: Callable[[DeviceStatus], None] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> DeviceStatus:
        """Poll :meth:`status` at the server's ``poll_interval`` until a merchant claims the
        device; raise PairingCodeExpired once the code is dead. Rate limits and network
        failures are waited out (the code's deadline still applies)."""
        sleep = sleep or self._sleep
        interval = 5.0
        while True:
            try:
                status = self.status()
            except (RateLimited, NetworkError) as exc:
                self._raise_if_pairing_expired(None)
                retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
                sleep(retry_after or interval)
                continue
            if on_poll is not None:
                on_poll(status)
            if status.claimed:
                return status
            self._raise_if_pairing_expired(status)
            interval = float(max(1, status.poll_interval))
            sleep(interval)

    def _raise_if_pairing_expired(self, status: DeviceStatus | None) -> None:
        no_live_code = status is not None and status.pairing_code_expires_at is None
        deadline = self._pairing_deadline
        if no_live_code or (deadline is not None and self._clock() >= deadline):
            raise PairingCodeExpired("the pairing code expired before the device was claimed")

    def attest(self) -> Attestation:
        """§3.5: prove the identity key; keep the attestation token for the token endpoints."""
        identity = self._keys.identity
        auth = AttestationSignature(
            self._device_id,
            self._user_agent,
            key_id=identity.key_id,
            secret=identity.secret,
            clock=self._clock,
            nonce_factory=self._nonce_factory,
        )
        response = self._send("POST", "/pos/attest", auth=auth)
        attestation = Attestation.from_json(self._success(response, "attestation"))
        if attestation.token_type != "Attestation":
            raise ProtocolError("attestation: token_type must be Attestation")
        self._token = attestation.token
        self._token_expires_at = self._clock() + timedelta(seconds=attestation.expires_in)
        return attestation

    # -- attestation-token endpoints (§2.3) -------------------------------------------------

    def _token_valid(self) -> bool:
        expires = self._token_expires_at
        return (
            self._token is not None
            and expires is not None
            and (self._clock() < expires - TOKEN_REFRESH_MARGIN)
        )

    def _token_call(
        self,
        endpoint: str,
        body: bytes | Callable[[], bytes],
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST with the attestation token, attesting first when it is missing or about to
        expire, and once more if the server answers 401 invalid_token. A callable ``body`` is
        called for each attempt (to seal afresh)."""
        fresh = not self._token_valid()
        if fresh:
            self.attest()
        while True:
            assert self._token is not None
            auth = AttestationToken(self._device_id, self._user_agent, token=self._token)
            content = body() if callable(body) else body
            response = self._send("POST", endpoint, auth=auth, content=content, headers=headers)
            if fresh or response.status_code != 401 or _problem_code(response) != "invalid_token":
                return response
            self.attest()
            fresh = True

    def _open_token_answer(
        self, response: httpx.Response, endpoint: str, what: str
    ) -> tuple[dict[str, Any], KeySet]:
        obj = self._success(response, what)
        aad = response_aad(
            method="POST", path=self._path(endpoint), subject=self._device_id, nonce=""
        )
        plaintext, key_set = self._open(obj, aad)
        return loads_object(plaintext, what), key_set

    def download_keys(self) -> KeySet:
        """§3.6: a new key set, unwrapped and KCV-checked, saved as the key store's pending set.

        Raises KeyCheckMismatch when a block does not unwrap as its type or a KCV differs."""
        private_key, public_key = generate_x25519()
        body = orjson.dumps({"transport_key": base64.b64encode(public_key).decode("ascii")})
        response = self._token_call("/pos/keys", body)
        key_set = open_key_set(
            self._success(response, "keys"),
            private_key=private_key,
            identity_secret=self._keys.identity.secret,
            device_id=self._device_id,
        )
        self._keys.save_pending(key_set)
        return key_set

    def fetch_config(self, *, key_set_id: str | None = None) -> Config:
        """§3.8: the config document (the cached one when the server answers 304)."""
        cached = self._config_cache.get(key_set_id)
        headers = {"If-None-Match": cached.etag} if cached and cached.etag else None
        body = orjson.dumps({} if key_set_id is None else {"key_set_id": key_set_id})
        response = self._token_call("/pos/config", body, headers)
        if response.status_code == 304:
            if cached is None:
                raise ProtocolError("config: 304 without a cached document")
            config = cached
        else:
            doc, key_set = self._open_token_answer(response, "/pos/config", "config")
            config = Config.from_json(doc, etag=response.headers.get("etag"))
            if config.hmac_key_id != key_set.hmac_key_id:
                raise ProtocolError("config: hmac_key_id is not that of the sealing key set")
            self._config_cache[key_set_id] = config
        self._config = config
        self._terminal_id = config.terminal_id
        return config

    def fetch_terminal_parameters(self, *, key_set_id: str | None = None) -> TerminalParameters:
        """§3.9: every chunk, each opened with its chunk AAD, reassembled, verified against the
        announced size and SHA-256, gunzipped and parsed. A 304 answers the cached document."""
        endpoint = "/pos/terminal-parameters"
        cached = self._params_cache.get(key_set_id)
        assembler = ChunkAssembler()
        while not assembler.complete:
            index = assembler.next_index
            payload: dict[str, Any] = {"chunk": index}
            if key_set_id is not None:
                payload["key_set_id"] = key_set_id
            body = orjson.dumps(payload)
            headers = {"If-None-Match": f'"{cached.sha256}"'} if cached and index == 0 else None
            response = self._token_call(endpoint, body, headers)
            if response.status_code == 304 and cached is not None and index == 0:
                return cached
            obj = self._success(response, "terminal parameters")
            meta = assembler.check_meta(obj.get("chunk"))
            base = response_aad(
                method="POST", path=self._path(endpoint), subject=self._device_id, nonce=""
            )
            aad = chunk_aad(base, index=meta.index, count=meta.count, sha256_hex=meta.sha256)
            assembler.add(self._open(obj, aad)[0])
        params = assembler.finish()
        self._params_cache[key_set_id] = params
        return params

    def activate(self) -> Activation:
        """§3.10: activate the pending key set (its KCVs, the config version and the app
        version, sealed under its MSK). On success it becomes the current set and the old
        current set the previous one."""
        pending = self._keys.pending
        if pending is None:
            raise NotActivated("no pending key set: download keys first")
        config = self._config or self.fetch_config(key_set_id=pending.key_set_id)
        endpoint = "/pos/activate"
        plaintext = {
            "key_set_id": pending.key_set_id,
            "kcv": dict(pending.kcvs),
            "config_version": config.config_version,
            "app_version": self._app_version,
        }
        aad = request_aad(method="POST", path=self._path(endpoint), subject=self._device_id)
        response = self._token_call(endpoint, lambda: self._seal(pending, plaintext, aad))
        doc, _ = self._open_token_answer(response, endpoint, "activation")
        activation = Activation.from_json(doc)
        if (activation.key_set_id, activation.hmac_key_id, activation.device_id) != (
            pending.key_set_id,
            pending.hmac_key_id,
            self._device_id,
        ):
            raise ProtocolError("activation: the answer names another key set or device")
        self._keys.promote_pending(pending.key_set_id)
        self._terminal_id = activation.terminal_id
        self._needs_rotation = False
        return activation

    def rotate_keys(self) -> Activation:
        """Attest, download a new key set, fetch its config and activate it (§3.10)."""
        self.attest()
        key_set = self.download_keys()
        self.fetch_config(key_set_id=key_set.key_set_id)
        activation = self.activate()
        self.last_rotation_error = None
        return activation

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
            if idempotency_key and _problem_code(response) == "idempotency_in_progress":
                cause = error_from_response(response)
                continue
            return self._open_charge_answer(response, method, path, terminal_id)
        raise _Unanswered(cause)

    def _open_charge_answer(
        self, response: httpx.Response, method: str, path: str, terminal_id: str
    ) -> _Answer:
        obj = self._success(response, "charge answer")
        nonce = response.request.headers["X-Nonce"]
        aad = response_aad(method=method, path=path, subject=terminal_id, nonce=nonce)
        try:
            plaintext, _ = self._open(obj, aad)
        except ResponseIntegrityError as exc:
            raise _Unanswered(exc) from None
        answer = loads_object(plaintext, "charge answer")
        replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        return _Answer(plaintext=answer, replayed=replayed)

    def _after_answer(self, answer: _Answer) -> None:
        if answer.plaintext.get("rotate_keys") is True:
            self._needs_rotation = True
        if self._needs_rotation and self._auto_rotate:
            try:
                self.rotate_keys()
            except ViopayError as exc:
                self.last_rotation_error = exc
                logger.warning("key rotation failed: %s", type(exc).__name__)

    @staticmethod
    def _unknown(operation: str, key: str) -> OutcomeUnknown:
        return OutcomeUnknown(operation, key)

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
                    orjson.dumps(card_plain),
                    card_aad(terminal_id),
                ),
            }
            optional = {"reference": reference, "emv": emv, "metadata": metadata}
            body.update({k: v for k, v in optional.items() if v is not None})
            if pin is not None:
                body["pin_block"] = _pin_block(key_set, pin, card_plain["pan"])
            return body

        try:
            answer = self._charge_call("POST", "/pos/charge", plaintext, key)
        except _Unanswered as exc:
            raise self._reverse_unknown(key, exc) from exc.cause
        charge = Charge.from_json(answer.plaintext, replayed=answer.replayed)
        self._after_answer(answer)
        return charge

    def _reverse_unknown(self, key: str, exc: _Unanswered) -> OutcomeUnknown:
        reversal: Reversal | None = None
        reversal_error: ViopayError | None = None
        try:
            reversal = self.reverse_by_key(key)
        except ViopayError as error:
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
        """§4.2: refund ``amount`` (all that is left when None)."""
        key = _idempotency_key(idempotency_key)
        payload = {k: v for k, v in (("amount", amount), ("reason", reason)) if v is not None}
        endpoint = f"/pos/charge/{_charge_id(charge_id)}/refund"
        try:
            answer = self._charge_call("POST", endpoint, lambda _ks, _tid: payload, key)
        except _Unanswered as exc:
            raise self._unknown("refund", key) from exc.cause
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
        key = _idempotency_key(idempotency_key)
        endpoint = f"/pos/charge/{_charge_id(charge_id)}/{action}"
        try:
            answer = self._charge_call("POST", endpoint, None, key)
        except _Unanswered as exc:
            raise self._unknown(action, key) from exc.cause
        charge = Charge.from_json(answer.plaintext, replayed=answer.replayed)
        self._after_answer(answer)
        return charge

    def get_charge(self, charge_id: str) -> Charge:
        """§4.4: the charge as it stands now (the authoritative state)."""
        endpoint = f"/pos/charge/{_charge_id(charge_id)}"
        try:
            answer = self._charge_call("GET", endpoint, None, None)
        except _Unanswered as exc:
            if isinstance(exc.cause, ViopayError):
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
            raise self._unknown("reverse_by_key", key) from exc.cause
        reversal = Reversal.from_json(answer.plaintext)
        self._after_answer(answer)
        return reversal


def _problem_code(response: httpx.Response) -> str | None:
    if response.is_success or not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


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
