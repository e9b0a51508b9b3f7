"""A tiny fake of the Viopay server's POS endpoints for the device SDK's unit tests.

It checks what the SDK sends the way PROTOCOL.md says the server does (headers, signatures,
envelopes, AADs) with viopay.crypto, and answers the shapes of §3 and §4. It is not the
server: no persistence, rate limits or portal. ``hooks`` let a test tamper with answers.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from viopay_device import DeviceClient, IdentityKey, MemoryKeyStore
from viopay_device.protocol.envelope import (
    card_aad,
    chunk_aad,
    open_envelope,
    parse_envelope,
    request_aad,
    response_aad,
    seal,
)
from viopay_device.protocol.errors import CryptoError
from viopay_device.protocol.kcv import kcv_for
from viopay_device.protocol.keyblocks import KEY_TYPES, WRAPPED_BY, wrap_key
from viopay_device.protocol.pinblock import decipher_pin_block
from viopay_device.protocol.signing import (
    attest_string_to_sign,
    charge_string_to_sign,
    verify_signature,
)
from viopay_device.protocol.transport import derive_ktk, generate_x25519, x25519_shared

DEVICE_ID = "POS-8F3A2C91"
IDENTITY_KEY_ID = "device-id-key-2025-01"
IDENTITY_SECRET = bytes.fromhex("b516b0d9beeb111a709b1bb6dc21538db1f7ff13490a6cc7f52e1314961e53df")
TERMINAL_ID = "TID-004812"
BASE_URL = "https://pos.test"
CHUNK_SIZE = 32_768
UA = re.compile(r"^Viopay-POS/\d+\.\d+\.\d+ \([^;()]+; [^;()]+\)$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NONCE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")


def params_document() -> dict[str, Any]:
    """A document whose gzip stream spans several 32 KiB chunks (incompressible filler)."""
    filler = hashlib.shake_256(b"viopay terminal parameters").hexdigest(60_000)
    return {"version": "2025.1", "blob": filler, "tables": [{"id": i} for i in range(50)]}


class Problem(Exception):
    def __init__(self, status: int, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.status, self.code, self.extra = status, code, extra


@dataclass
class FakeServer:
    now: datetime = field(default_factory=lambda: datetime(2025, 12, 13, 14, 25, 30, tzinfo=UTC))
    status: str = "inactive"
    claim_after_polls: int = 2
    config_version: int = 3
    params: bytes = field(default_factory=lambda: gzip.compress(orjson.dumps(params_document())))
    rotate_keys: bool = False
    # hooks: tamper with what goes out
    keys_hook: Callable[[dict[str, Any]], None] | None = None
    chunk_hook: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None
    charge_hook: Callable[[dict[str, Any]], None] | None = None
    requests: list[httpx.Request] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    key_sets: dict[str, dict[str, tuple[str, bytes]]] = field(default_factory=dict)
    active: list[str] = field(default_factory=list)  # activated key sets, newest last
    nonces: set[tuple[str, str]] = field(default_factory=set)
    idempotency: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: int = 0

    def clock(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = (request.method, request.url.path)
        try:
            if request.url.path.startswith("/pos/charge"):
                return self._charge_endpoint(request)
            handler = {
                ("POST", "/pos/bootstrap"): self._bootstrap,
                ("POST", "/pos/pairing-code"): self._pairing_code,
                ("GET", "/pos/status"): self._status,
                ("POST", "/pos/attest"): self._attest,
                ("POST", "/pos/keys"): self._keys,
                ("POST", "/pos/config"): self._config,
                ("POST", "/pos/terminal-parameters"): self._terminal_parameters,
                ("POST", "/pos/activate"): self._activate,
            }.get(route)
            if handler is None:
                raise Problem(404, "not_found")
            return handler(request)
        except Problem as problem:
            body = {"code": problem.code, "status": problem.status, **problem.extra}
            headers = {"Content-Type": "application/problem+json", "X-Request-Id": "req_1"}
            return httpx.Response(problem.status, content=orjson.dumps(body), headers=headers)

    @staticmethod
    def _json(status: int, body: object, **headers: str) -> httpx.Response:
        return httpx.Response(status, content=orjson.dumps(body), headers=headers)

    # -- activation endpoints ------------------------------------------------------------------

    def _activation_headers(self, request: httpx.Request) -> None:
        h = request.headers
        if h.get("X-Device-Id") != DEVICE_ID or h.get("X-Client-Type") != "pos":
            raise Problem(400, "invalid_header")
        if not UA.match(h.get("User-Agent", "")):
            raise Problem(400, "invalid_header")

    def _bootstrap(self, request: httpx.Request) -> httpx.Response:
        self._activation_headers(request)
        body = {
            "server_time": "2025-12-13T14:25:30Z",
            "min_supported_version": "1.0.0",
            "latest_version": "1.4.2",
            "upgrade_required": False,
            "device_status": self.status,
            "poll_interval": 5,
        }
        return self._json(200, body)

    def _pairing_code(self, request: httpx.Request) -> httpx.Response:
        self._activation_headers(request)
        self._verify_identity_signature(request)
        self.polls = 0
        expires = (self.now + timedelta(seconds=300)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"pairing_code": "K7M2QX", "expires_at": expires, "expires_in": 300}
        return self._json(201, body | {"poll_interval": 5})

    def _status(self, request: httpx.Request) -> httpx.Response:
        self._activation_headers(request)
        self._verify_identity_signature(request)
        self.polls += 1
        if (
            self.status == "inactive"
            and self.claim_after_polls
            and (self.polls >= self.claim_after_polls)
        ):
            self.status = "claimed"
        claimed = self.status != "inactive"
        body = {
            "device_id": DEVICE_ID,
            "status": self.status,
            "pairing_code_expires_at": None if claimed else "2025-12-13T14:30:30Z",
            "merchant": {"id": "mer_1", "name": "Corner Coffee"} if claimed else None,
            "terminal_id": TERMINAL_ID if claimed else None,
            "poll_interval": 5,
        }
        return self._json(200, body)

    def _signed_common(self, request: httpx.Request) -> tuple[str, str, str]:
        h = request.headers
        timestamp, nonce, signature = h.get("X-Timestamp"), h.get("X-Nonce"), h.get("X-Signature")
        if not (timestamp and nonce and signature):
            raise Problem(400, "missing_header")
        if not TIMESTAMP.match(timestamp) or not NONCE.match(nonce):
            raise Problem(400, "invalid_header")
        return timestamp, nonce, signature

    def _spend_nonce(self, scope: str, nonce: str) -> None:
        if (scope, nonce) in self.nonces:
            raise Problem(401, "nonce_reused")
        self.nonces.add((scope, nonce))

    def _verify_identity_signature(self, request: httpx.Request) -> None:
        """§2.2 (attest; pairing-code and status, §2.1)."""
        timestamp, nonce, signature = self._signed_common(request)
        if request.headers.get("X-Key-Id") != IDENTITY_KEY_ID:
            raise Problem(401, "unknown_key")
        message = attest_string_to_sign(
            device_id=DEVICE_ID, key_id=IDENTITY_KEY_ID, timestamp=timestamp, nonce=nonce
        )
        try:
            verify_signature(IDENTITY_SECRET, message, signature)
        except CryptoError:
            raise Problem(401, "invalid_signature") from None
        self._spend_nonce(DEVICE_ID, nonce)

    def _attest(self, request: httpx.Request) -> httpx.Response:
        self._activation_headers(request)
        self._verify_identity_signature(request)
        token = "att_" + secrets.token_urlsafe(32)
        self.tokens.add(token)
        body = {
            "attestation_token": token,
            "token_type": "Attestation",
            "expires_in": 300,
            "expires_at": "2025-12-13T14:30:30Z",
            "device_status": self.status,
        }
        return self._json(200, body)

    # -- attestation-token endpoints -----------------------------------------------------------

    def _token(self, request: httpx.Request) -> dict[str, Any]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Attestation" or token not in self.tokens:
            raise Problem(401, "invalid_token")
        if request.headers.get("X-Device-Id") != DEVICE_ID:
            raise Problem(400, "invalid_header")
        if request.headers.get("Content-Type") != "application/json":
            raise Problem(415, "unsupported_media_type")
        body = orjson.loads(request.content)
        assert isinstance(body, dict)
        return body

    def _keys(self, request: httpx.Request) -> httpx.Response:
        body = self._token(request)
        device_public = base64.b64decode(body["transport_key"], validate=True)
        server_private, server_public = generate_x25519()
        key_set_id = f"ks_{len(self.key_sets) + 1}"
        ktk = derive_ktk(
            shared=x25519_shared(server_private, device_public),
            identity_secret=IDENTITY_SECRET,
            key_set_id=key_set_id,
            device_id=DEVICE_ID,
        )
        keys = {t: secrets.token_bytes(32) for t in KEY_TYPES}
        wrapping = {"KTK": ktk, **keys}
        self.key_sets[key_set_id] = {t: (f"{t.lower()}-{key_set_id}", k) for t, k in keys.items()}
        entries = [
            {
                "type": t,
                "key_id": f"{t.lower()}-{key_set_id}",
                "wrapped_by": WRAPPED_BY[t],
                "key_block": wrap_key(wrapping[WRAPPED_BY[t]], t, keys[t]),
                "kcv": kcv_for(t, keys[t]),
            }
            for t in KEY_TYPES
        ]
        doc = {
            "key_set_id": key_set_id,
            "server_transport_key": base64.b64encode(server_public).decode(),
            "created_at": "2025-12-13T14:25:30Z",
            "expires_at": "2025-12-13T14:40:30Z",
            "keys": entries,
        }
        if self.keys_hook:
            self.keys_hook(doc)
        return self._json(200, doc)

    def msk(self, key_set_id: str) -> tuple[str, bytes]:
        return self.key_sets[key_set_id]["MSK"]

    def _set_of_kid(self, kid: str) -> str:
        for key_set_id, keys in self.key_sets.items():
            if keys["MSK"][0] == kid:
                return key_set_id
        raise Problem(400, "decryption_failed")

    def _sealed(
        self, key_set_id: str, plaintext: object, aad: bytes, **extra: Any
    ) -> dict[str, Any]:
        kid, key = self.msk(key_set_id)
        return seal(key, kid, orjson.dumps(plaintext), aad) | extra

    def config_document(self, key_set_id: str) -> dict[str, Any]:
        return {
            "config_version": self.config_version,
            "terminal": {"terminal_id": TERMINAL_ID, "device_id": DEVICE_ID, "currency": "USD"},
            "security": {"hmac_key_id": self.key_sets[key_set_id]["MAC"][0]},
        }

    def _config(self, request: httpx.Request) -> httpx.Response:
        body = self._token(request)
        key_set_id = body.get("key_set_id") or list(self.key_sets)[-1]
        etag = f'"cfg-{self.config_version}-{key_set_id}"'
        if request.headers.get("If-None-Match") == etag:
            return httpx.Response(304, headers={"ETag": etag})
        aad = response_aad(method="POST", path="/pos/config", subject=DEVICE_ID, nonce="")
        sealed = self._sealed(key_set_id, self.config_document(key_set_id), aad)
        return self._json(200, sealed, ETag=etag)

    def _terminal_parameters(self, request: httpx.Request) -> httpx.Response:
        body = self._token(request)
        key_set_id = body.get("key_set_id") or list(self.key_sets)[-1]
        sha = hashlib.sha256(self.params).hexdigest()
        if request.headers.get("If-None-Match") == f'"{sha}"':
            return httpx.Response(304)
        chunks = [self.params[i : i + CHUNK_SIZE] for i in range(0, len(self.params), CHUNK_SIZE)]
        index = body["chunk"]
        if not 0 <= index < len(chunks):
            raise Problem(400, "invalid_request")
        meta = {"index": index, "count": len(chunks), "size": len(self.params), "sha256": sha}
        base = response_aad(
            method="POST", path="/pos/terminal-parameters", subject=DEVICE_ID, nonce=""
        )
        aad = chunk_aad(base, index=index, count=len(chunks), sha256_hex=sha)
        kid, key = self.msk(key_set_id)
        answer = seal(key, kid, chunks[index], aad) | {"chunk": meta}
        if self.chunk_hook:
            answer = self.chunk_hook(index, answer)
        return self._json(200, answer, ETag=f'"{sha}"')

    def _open_request(self, request: httpx.Request, subject: str) -> tuple[str, dict[str, Any]]:
        envelope = parse_envelope(orjson.loads(request.content))
        key_set_id = self._set_of_kid(envelope.kid)
        aad = request_aad(method=request.method, path=request.url.path, subject=subject)
        try:
            plaintext = open_envelope(self.msk(key_set_id)[1], envelope, aad)
        except CryptoError:
            raise Problem(400, "decryption_failed") from None
        return key_set_id, orjson.loads(plaintext)

    def _activate(self, request: httpx.Request) -> httpx.Response:
        self._token(request)
        key_set_id, body = self._open_request(request, DEVICE_ID)
        keys = self.key_sets[key_set_id]
        if body["key_set_id"] != key_set_id or not isinstance(body["config_version"], int):
            raise Problem(400, "invalid_request")
        if body["kcv"] != {t: kcv_for(t, keys[t][1]) for t in KEY_TYPES}:
            raise Problem(422, "key_check_failed")
        if key_set_id not in self.active:
            self.active.append(key_set_id)
        self.status = "activated"
        answer = {
            "status": "activated",
            "device_id": DEVICE_ID,
            "terminal_id": TERMINAL_ID,
            "merchant_id": "mer_1",
            "key_set_id": key_set_id,
            "hmac_key_id": keys["MAC"][0],
            "activated_at": "2025-12-13T14:26:00Z",
        }
        aad = response_aad(method="POST", path="/pos/activate", subject=DEVICE_ID, nonce="")
        return self._json(200, self._sealed(key_set_id, answer, aad))

    # -- charge endpoints ----------------------------------------------------------------------

    def _charge_auth(self, request: httpx.Request) -> tuple[str, str]:
        """Verify the §2.4 headers; return the key set of X-Key-Id and the nonce."""
        h = request.headers
        if h.get("X-Terminal-Id") != TERMINAL_ID:
            raise Problem(401, "unknown_terminal")
        if h.get("X-Client-Type") != "pos" or not UA.match(h.get("User-Agent", "")):
            raise Problem(400, "invalid_header")
        timestamp, nonce, signature = self._signed_common(request)
        usable = self.active[-2:]  # the active set and the one before it (grace)
        key_set_id = next(
            (k for k in usable if self.key_sets[k]["MAC"][0] == h.get("X-Key-Id")), None
        )
        if key_set_id is None:
            raise Problem(401, "unknown_key")
        path, _, query = request.url.raw_path.partition(b"?")
        message = charge_string_to_sign(
            method=request.method,
            path=path.decode(),
            query=query.decode(),
            body=request.content,
            terminal_id=TERMINAL_ID,
            timestamp=timestamp,
            nonce=nonce,
        )
        try:
            verify_signature(self.key_sets[key_set_id]["MAC"][1], message, signature)
        except CryptoError:
            raise Problem(401, "invalid_signature") from None
        self._spend_nonce(TERMINAL_ID, nonce)
        return key_set_id, nonce

    def _charge_endpoint(self, request: httpx.Request) -> httpx.Response:
        key_set_id, nonce = self._charge_auth(request)
        body: dict[str, Any] = {}
        if request.content:
            key_set_id, body = self._open_request(request, TERMINAL_ID)
        idem = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        fingerprint = request.url.path.encode() + orjson.dumps(
            self._fingerprinted(body, key_set_id)
        )
        replayed = False
        if idem and idem in self.idempotency:
            stored_fingerprint, answer = self.idempotency[idem]
            if stored_fingerprint != fingerprint:
                raise Problem(422, "idempotency_key_reused")
            replayed = True
        else:
            answer = self._charge_action(request, body, key_set_id, idem)
            if idem:
                self.idempotency[idem] = (fingerprint, answer)
        if self.rotate_keys:
            answer = answer | {"rotate_keys": True}
        aad = response_aad(
            method=request.method, path=request.url.path, subject=TERMINAL_ID, nonce=nonce
        )
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        status = 200 if replayed or request.url.path != "/pos/charge" else 201
        return self._json(status, self._sealed(key_set_id, answer, aad), **headers)

    def _fingerprinted(self, body: dict[str, Any], key_set_id: str) -> dict[str, Any]:
        out = {k: v for k, v in body.items() if k != "pin_block"}
        if "card" in out:
            out["card"] = self._open_card(out["card"], key_set_id)
        return out

    def _open_card(self, card: dict[str, Any], key_set_id: str) -> dict[str, Any]:
        kid, key = self.key_sets[key_set_id]["TDK"]
        envelope = parse_envelope(card)
        if envelope.kid != kid:
            raise Problem(400, "decryption_failed")
        result = orjson.loads(open_envelope(key, envelope, card_aad(TERMINAL_ID)))
        assert isinstance(result, dict)
        return result

    def _charge_action(
        self, request: httpx.Request, body: dict[str, Any], key_set_id: str, idem: str | None
    ) -> dict[str, Any]:
        path = request.url.path
        if path == "/pos/charge":
            return self._create_charge(body, key_set_id, idem)
        if path == "/pos/charge/reverse":
            for charge in self.charges.values():
                if charge["_idem"] == body["idempotency_key"]:
                    charge["status"] = "reversed"
                    return self.public(charge)
            return {"object": "reversal", "charge": None}
        parts = path.split("/")  # ["", "pos", "charge", id, action?]
        found = self.charges.get(parts[3])
        if found is None:
            raise Problem(404, "not_found")
        charge = found
        action = parts[4] if len(parts) > 4 else None
        if action in ("cancel", "reverse"):
            charge["status"] = {"cancel": "canceled", "reverse": "reversed"}[action]
        elif action == "refund":
            amount = body.get("amount", charge["amount"] - charge["amount_refunded"])
            charge["amount_refunded"] += amount
            charge["status"] = "refunded"
            return {
                "id": "re_1",
                "object": "refund",
                "charge_id": charge["id"],
                "amount": amount,
                "reason": body.get("reason"),
                "status": "succeeded",
                "created_at": "2025-12-13T14:27:00Z",
                "charge": self.public(charge),
            }
        return self.public(charge)

    def _create_charge(
        self, body: dict[str, Any], key_set_id: str, idem: str | None
    ) -> dict[str, Any]:
        card = self._open_card(body["card"], key_set_id)
        pan = card["pan"]
        if not pan.startswith("4"):
            raise Problem(422, "invalid_card", detail="card number is invalid")
        response_code = "00"
        if "pin_block" in body:
            try:
                tpk = self.key_sets[key_set_id]["TPK"][1]
                decipher_pin_block(tpk=tpk, pin_block=body["pin_block"], pan=pan)
            except CryptoError:
                response_code = "55"
        charge = {
            "id": f"ch_{len(self.charges) + 1}",
            "object": "charge",
            "status": "approved" if response_code == "00" else "declined",
            "amount": body["amount"],
            "currency": body["currency"],
            "amount_refunded": 0,
            "tip_amount": body.get("tip_amount", 0),
            "tax_amount": body.get("tax_amount", 0),
            "surcharge_amount": body.get("surcharge_amount", 0),
            "reference": body.get("reference"),
            "entry_mode": body["entry_mode"],
            "card": {"brand": "visa", "bin": pan[:6], "last4": pan[-4:], "expiry": card["expiry"]},
            "authorization_code": "A1B2C3" if response_code == "00" else None,
            "response_code": response_code,
            "decline_reason": None if response_code == "00" else "incorrect_pin",
            "emv_response": None,
            "terminal_id": TERMINAL_ID,
            "merchant_id": "mer_1",
            "created_at": "2025-12-13T14:26:30Z",
            "_idem": idem,
            "_request": body,
        }
        if self.charge_hook:
            self.charge_hook(charge)
        self.charges[charge["id"]] = charge
        return self.public(charge)

    @staticmethod
    def public(charge: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in charge.items() if not k.startswith("_")}


def make_client(server: FakeServer, **kwargs: Any) -> DeviceClient:
    """A client wired to ``server`` (its clock, its sleep) with the test identity key."""
    options: dict[str, Any] = {
        "device_id": DEVICE_ID,
        "key_store": MemoryKeyStore(IdentityKey(IDENTITY_KEY_ID, IDENTITY_SECRET)),
        "transport": server.transport(),
        "clock": server.clock,
        "sleep": server.sleep,
    }
    options.update(kwargs)
    return DeviceClient(BASE_URL, **options)


def activate(client: DeviceClient, server: FakeServer) -> None:
    """Bring the client to an activated key set the quick way (no pairing)."""
    server.status = "claimed"
    client.attest()
    key_set = client.download_keys()
    client.fetch_config(key_set_id=key_set.key_set_id)
    client.activate()
