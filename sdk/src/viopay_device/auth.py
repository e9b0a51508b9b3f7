"""Request authentication as ``httpx.Auth`` classes, one per auth level of PROTOCOL.md §2.

- :class:`ActivationHeaders` (§2.1): bootstrap, pairing-code, status.
- :class:`AttestationSignature` (§2.2): attest; the activation headers plus an HMAC signature
  under the identity secret.
- :class:`AttestationToken` (§2.3): keys, config, terminal-parameters, activate.
- :class:`ChargeSignature` (§2.4): the charge endpoints; an HMAC under the MAC key over the
  method, the path and raw query as sent, and the exact body bytes.

Each signing auth stamps a fresh ``X-Timestamp`` and ``X-Nonce`` per request it signs, so a
retried request is signed anew. None of them holds a key in its repr.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Generator
from datetime import UTC, datetime

import httpx

from viopay_device.protocol.signing import attest_string_to_sign, charge_string_to_sign, sign

__all__ = [
    "ActivationHeaders",
    "AttestationSignature",
    "AttestationToken",
    "ChargeSignature",
    "Clock",
    "NonceFactory",
    "default_clock",
    "default_nonce",
    "format_timestamp",
    "user_agent",
]

Clock = Callable[[], datetime]
NonceFactory = Callable[[], str]

_NONCE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
# semver.org 2.0: MAJOR.MINOR.PATCH[-pre-release][+build]
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def default_clock() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


def default_nonce() -> str:
    """24 base64url characters from 18 CSPRNG bytes."""
    return secrets.token_urlsafe(18)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339, UTC, ``Z``, whole seconds (``2025-12-13T14:25:30Z``)."""
    if moment.tzinfo is None:
        raise ValueError("the clock must return an aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def user_agent(app_version: str, os: str, model: str) -> str:
    """``Viopay-POS/{version} ({os}; {model})`` as §2.1 wants it."""
    if not _SEMVER.match(app_version):
        raise ValueError("app_version must be a semantic version (semver.org 2.0)")
    for part in (os, model):
        if not part or any(c in part for c in ";()"):
            raise ValueError("os and model must be non-empty and hold no ';', '(' or ')'")
    return f"Viopay-POS/{app_version} ({os}; {model})"


class _Stamp:
    """A timestamp and nonce per signed request."""

    def __init__(self, clock: Clock | None, nonce_factory: NonceFactory | None) -> None:
        self._clock = clock or default_clock
        self._nonce_factory = nonce_factory or default_nonce

    def next(self) -> tuple[str, str]:
        nonce = self._nonce_factory()
        if not _NONCE.match(nonce):
            raise ValueError("nonce_factory must return 8-128 characters of [A-Za-z0-9_-]")
        return format_timestamp(self._clock()), nonce


class ActivationHeaders(httpx.Auth):
    """§2.1: ``X-Device-Id``, ``User-Agent`` and ``X-Client-Type: pos``."""

    def __init__(self, device_id: str, user_agent: str) -> None:
        self.device_id = device_id
        self.user_agent = user_agent

    def apply(self, request: httpx.Request) -> None:
        request.headers["X-Device-Id"] = self.device_id
        request.headers["User-Agent"] = self.user_agent
        request.headers["X-Client-Type"] = "pos"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.apply(request)
        yield request

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device_id={self.device_id!r})"


class AttestationSignature(ActivationHeaders):
    """§2.2: the activation headers plus ``X-Key-Id``, ``X-Timestamp``, ``X-Nonce`` and
    ``X-Signature`` = ``v1=`` base64 HMAC-SHA256 of ``DEVICE_ID\\nKEY_ID\\nTIMESTAMP\\nNONCE``
    under the identity secret."""

    def __init__(
        self,
        device_id: str,
        user_agent: str,
        *,
        key_id: str,
        secret: bytes,
        clock: Clock | None = None,
        nonce_factory: NonceFactory | None = None,
    ) -> None:
        super().__init__(device_id, user_agent)
        self.key_id = key_id
        self._secret = secret
        self._stamp = _Stamp(clock, nonce_factory)

    def apply(self, request: httpx.Request) -> None:
        super().apply(request)
        timestamp, nonce = self._stamp.next()
        message = attest_string_to_sign(
            device_id=self.device_id, key_id=self.key_id, timestamp=timestamp, nonce=nonce
        )
        request.headers["X-Key-Id"] = self.key_id
        request.headers["X-Timestamp"] = timestamp
        request.headers["X-Nonce"] = nonce
        request.headers["X-Signature"] = sign(self._secret, message)

    def __repr__(self) -> str:
        return f"AttestationSignature(device_id={self.device_id!r}, key_id={self.key_id!r})"


class AttestationToken(ActivationHeaders):
    """§2.3: ``Authorization: Attestation att_...`` and ``X-Device-Id`` (the user agent and
    client type go along too; the server ignores them there)."""

    def __init__(self, device_id: str, user_agent: str, *, token: str) -> None:
        super().__init__(device_id, user_agent)
        self._token = token

    def apply(self, request: httpx.Request) -> None:
        super().apply(request)
        request.headers["Authorization"] = f"Attestation {self._token}"


class ChargeSignature(httpx.Auth):
    """§2.4: ``X-Terminal-Id``, ``X-Key-Id`` (the MAC key's id), ``X-Timestamp``, ``X-Nonce``,
    ``X-Signature``, ``X-Client-Type`` and ``User-Agent``.

    The signature covers ``METHOD\\nPATH\\nQUERY\\nBODY\\nTERMINAL_ID\\nTIMESTAMP\\nNONCE`` with
    PATH and QUERY taken from the request's raw target and BODY its exact content bytes.
    """

    requires_request_body = True

    def __init__(
        self,
        *,
        terminal_id: str,
        key_id: str,
        mac_key: bytes,
        user_agent: str,
        clock: Clock | None = None,
        nonce_factory: NonceFactory | None = None,
    ) -> None:
        self.terminal_id = terminal_id
        self.key_id = key_id
        self.user_agent = user_agent
        self._mac_key = mac_key
        self._stamp = _Stamp(clock, nonce_factory)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        timestamp, nonce = self._stamp.next()
        path, _, query = request.url.raw_path.partition(b"?")
        message = charge_string_to_sign(
            method=request.method.upper(),
            path=path.decode("ascii"),
            query=query.decode("ascii"),
            body=request.content,
            terminal_id=self.terminal_id,
            timestamp=timestamp,
            nonce=nonce,
        )
        request.headers["X-Terminal-Id"] = self.terminal_id
        request.headers["X-Key-Id"] = self.key_id
        request.headers["X-Timestamp"] = timestamp
        request.headers["X-Nonce"] = nonce
        request.headers["X-Signature"] = sign(self._mac_key, message)
        request.headers["X-Client-Type"] = "pos"
        request.headers["User-Agent"] = self.user_agent
        yield request

    def __repr__(self) -> str:
        return f"ChargeSignature(terminal_id={self.terminal_id!r}, key_id={self.key_id!r})"
