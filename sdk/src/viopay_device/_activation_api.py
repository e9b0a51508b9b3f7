"""The activation side of DeviceClient: PROTOCOL.md §3.1-§3.10."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import httpx

from viopay_device._base import TOKEN_REFRESH_MARGIN, BaseClient, problem_code
from viopay_device._json import dumps, loads_object
from viopay_device._keyset import open_key_set
from viopay_device._params import ChunkAssembler
from viopay_device.auth import ActivationHeaders, AttestationSignature, AttestationToken
from viopay_device.errors import (
    NetworkError,
    NotActivated,
    PairingCodeExpired,
    ProtocolError,
    RateLimited,
)
from viopay_device.keystore import KeySet
from viopay_device.models import (
    Activation,
    Attestation,
    Bootstrap,
    Config,
    DeviceStatus,
    PairingCode,
    TerminalParameters,
)
from viopay_device.protocol.envelope import chunk_aad, request_aad, response_aad
from viopay_device.protocol.transport import generate_x25519


class ActivationAPI(BaseClient):
    """Bootstrap, pairing, status, attest, keys, config, terminal parameters, activate."""

    # -- activation headers (§2.1, §2.2) ----------------------------------------------------

    def _activation_auth(self) -> ActivationHeaders:
        return ActivationHeaders(self._device_id, self._user_agent)

    def _signed_auth(self) -> AttestationSignature:
        """The activation headers plus the §2.2 signature under the identity key (attest,
        pairing-code and status, §2.1)."""
        identity = self._keys.identity
        return AttestationSignature(
            self._device_id,
            self._user_agent,
            key_id=identity.key_id,
            secret=identity.secret,
            clock=self._clock,
            nonce_factory=self._nonce_factory,
        )

    def bootstrap(self) -> Bootstrap:
        """§3.1: connectivity, server time, version policy and the device's status."""
        response = self._send("POST", "/pos/bootstrap", auth=self._activation_auth())
        return Bootstrap.from_json(self._success(response, "bootstrap"))

    def request_pairing_code(self) -> PairingCode:
        """§3.2: a new pairing code (the previous one dies)."""
        response = self._send("POST", "/pos/pairing-code", auth=self._signed_auth())
        code = PairingCode.from_json(self._success(response, "pairing code"))
        # The deadline is kept on the device clock, from expires_in, so clock skew can't move it.
        self._pairing_deadline = self._clock() + timedelta(seconds=code.expires_in)
        return code

    def status(self) -> DeviceStatus:
        """§3.3: the device's lifecycle status (and its terminal id once claimed)."""
        response = self._send("GET", "/pos/status", auth=self._signed_auth())
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
        response = self._send("POST", "/pos/attest", auth=self._signed_auth())
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
            if fresh or response.status_code != 401 or problem_code(response) != "invalid_token":
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
        body = dumps({"transport_key": base64.b64encode(public_key).decode("ascii")})
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
        body = dumps({} if key_set_id is None else {"key_set_id": key_set_id})
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
            body = dumps(payload)
            headers = {"If-None-Match": f'"{cached.sha256}"'} if cached and index == 0 else None
            response = self._token_call(endpoint, body, headers)
            if response.status_code == 304:
                if cached is None or index != 0:
                    raise ProtocolError("terminal parameters: 304 without a cached document")
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
