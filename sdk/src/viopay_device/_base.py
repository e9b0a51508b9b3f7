"""The plumbing under DeviceClient: the httpx client, settings, sending, sealing, opening."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import httpx

from viopay_device._json import dumps, loads_object
from viopay_device.auth import Clock, NonceFactory, default_clock, user_agent
from viopay_device.errors import (
    DeviceError,
    NetworkError,
    ResponseIntegrityError,
    error_from_response,
)
from viopay_device.keystore import KeySet, KeyStore
from viopay_device.models import Config, TerminalParameters
from viopay_device.protocol.envelope import open_envelope, parse_envelope, seal
from viopay_device.protocol.errors import CryptoError

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
_ENVELOPE_MEMBERS = ("v", "kid", "iv", "ct")


class BaseClient:
    """Settings, the httpx client and the request/envelope plumbing; see DeviceClient."""

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
        self.last_rotation_error: DeviceError | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
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
            f"{type(self).__name__}(base_url={str(self._http.base_url)!r}, "
            f"device_id={self._device_id!r}, terminal_id={self._terminal_id!r})"
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
        sealed = seal(key_set.key("MSK"), key_set.msk_kid, dumps(plaintext), aad)
        return dumps(sealed)


def problem_code(response: httpx.Response) -> str | None:
    if response.is_success or not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None
