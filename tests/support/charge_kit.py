"""Test kit for the charge endpoints (PROTOCOL §2.4, §4): an activated terminal and a raw
client that signs and seals exactly what a test asks for (the SDK covers the happy paths).

Every PAN, track and PIN block sent is registered in ``SEEN_SECRETS`` for the log scan, and so
is every raw key of the terminal's key sets.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    MakeMerchant,
    MerchantCtx,
    ProvisionedDevice,
    Server,
)
from viopay_device import (
    DeviceClient,
    IdentityKey,
    KeySet,
    MemoryKeyStore,
    PairingCode,
    StepReport,
    activate_device,
)
from viopay_device.protocol.envelope import (
    card_aad,
    open_envelope,
    parse_envelope,
    request_aad,
    response_aad,
    seal,
)
from viopay_device.protocol.pinblock import encipher_pin_block
from viopay_device.protocol.signing import charge_string_to_sign, sign

if TYPE_CHECKING:
    from viopay.runtime import Runtime

UA = "Viopay-POS/1.4.2 (Android 12; PAX-A920)"
CARD = {"pan": "4242424242424242", "expiry": "3012"}
PIN = "1234"
SEND_OPTIONS = frozenset(
    {"edit", "sign_body", "nonce", "timestamp", "terminal_id", "key_id", "mac", "query"}
)
for _pan in (
    "4242424242424242",
    "5555555555554444",
    "378282246310005",
    "4000000000000002",
    "4000000000009995",
    "4000000000000069",
    "4000000000000127",
    "4000000000000119",
    "4000000000000259",
    "6011111111111117",
):
    SEEN_SECRETS.add(_pan)


def stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def register_keys(key_set: KeySet) -> None:
    for key_type in key_set.key_ids:
        SEEN_SECRETS.add(key_set.key(key_type).hex())


@dataclass
class Answer:
    """A response and what is needed to open it."""

    response: httpx.Response
    method: str
    path: str
    nonce: str
    terminal: PosTerminal = field(repr=False)

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def code(self) -> str | None:
        if self.response.headers.get("content-type", "").startswith("application/problem+json"):
            return str(self.response.json()["code"])
        return None

    @property
    def replayed(self) -> bool:
        return bool(self.response.headers.get("idempotent-replayed") == "true")

    def problem(self) -> dict[str, Any]:
        assert self.response.headers["content-type"].startswith("application/problem+json"), (
            self.response.text
        )
        body: dict[str, Any] = self.response.json()
        return body

    def json(self) -> dict[str, Any]:
        """The opened answer envelope (asserts it is one)."""
        assert self.response.is_success, f"{self.status}: {self.response.text}"
        body = self.response.json()
        assert set(body) == {"v", "kid", "iv", "ct"}, body
        envelope = parse_envelope(body)
        key_set = self.terminal.key_set_of_kid(envelope.kid)
        aad = response_aad(
            method=self.method, path=self.path, subject=self.terminal.terminal_id, nonce=self.nonce
        )
        value: dict[str, Any] = orjson.loads(open_envelope(key_set.key("MSK"), envelope, aad))
        return value


@dataclass
class PosTerminal:
    server: Server
    device: ProvisionedDevice
    merchant: MerchantCtx
    client: DeviceClient
    terminal_id: str
    http: httpx.Client = field(repr=False)

    @property
    def keys(self) -> KeySet:
        current = self.client.key_store.current
        assert current is not None
        return current

    def key_set_of_kid(self, kid: str) -> KeySet:
        store = self.client.key_store
        for key_set in (store.current, store.previous, store.pending):
            if key_set is not None and key_set.msk_kid == kid:
                return key_set
        raise AssertionError("answer sealed under an unknown kid")

    # -- building requests ---------------------------------------------------------------

    def card(
        self,
        card: dict[str, Any] | None = None,
        *,
        key_set: KeySet | None = None,
        terminal_id: str | None = None,
    ) -> dict[str, Any]:
        card = card or CARD
        for name in ("pan", "track2"):
            if isinstance(card.get(name), str):
                SEEN_SECRETS.add(card[name])
        ks = key_set or self.keys
        return seal(
            ks.key("TDK"),
            ks.key_ids["TDK"],
            orjson.dumps(card),
            card_aad(terminal_id or self.terminal_id),
        )

    def pin_block(self, pan: str, pin: str = PIN, *, key_set: KeySet | None = None) -> str:
        block = encipher_pin_block(tpk=(key_set or self.keys).key("TPK"), pin=pin, pan=pan)
        SEEN_SECRETS.add(block)
        return block

    def charge_plaintext(
        self,
        amount: int = 1250,
        *,
        card: dict[str, Any] | None = None,
        pin: str | None = None,
        key_set: KeySet | None = None,
        **members: Any,
    ) -> dict[str, Any]:
        card = card or CARD
        plaintext: dict[str, Any] = {
            "amount": amount,
            "currency": "USD",
            "entry_mode": "chip",
            "card": self.card(card, key_set=key_set),
        }
        if pin is not None:
            plaintext["pin_block"] = self.pin_block(card["pan"], pin, key_set=key_set)
        plaintext.update(members)
        return plaintext

    def seal_body(
        self,
        method: str,
        path: str,
        plaintext: dict[str, Any],
        *,
        key_set: KeySet | None = None,
        subject: str | None = None,
    ) -> bytes:
        ks = key_set or self.keys
        aad = request_aad(method=method, path=path, subject=subject or self.terminal_id)
        return orjson.dumps(seal(ks.key("MSK"), ks.msk_kid, orjson.dumps(plaintext), aad))

    def headers(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        query: str = "",
        key_set: KeySet | None = None,
        nonce: str | None = None,
        timestamp: str | None = None,
        idempotency_key: str | None = None,
        terminal_id: str | None = None,
        key_id: str | None = None,
        mac: bytes | None = None,
    ) -> dict[str, str]:
        ks = key_set or self.keys
        nonce = nonce or new_nonce()
        timestamp = timestamp or stamp()
        terminal_id = terminal_id or self.terminal_id
        message = charge_string_to_sign(
            method=method,
            path=path,
            query=query,
            body=body,
            terminal_id=terminal_id,
            timestamp=timestamp,
            nonce=nonce,
        )
        headers = {
            "X-Terminal-Id": terminal_id,
            "X-Key-Id": key_id or ks.hmac_key_id,
            "X-Timestamp": timestamp,
            "X-Nonce": nonce,
            "X-Signature": sign(mac or ks.key("MAC"), message),
            "X-Client-Type": "pos",
            "User-Agent": UA,
        }
        if body:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def send(
        self,
        method: str,
        path: str,
        plaintext: dict[str, Any] | None = None,
        *,
        body: bytes | None = None,
        query: str = "",
        url: str | None = None,
        key_set: KeySet | None = None,
        idempotency_key: str | None = None,
        edit: dict[str, str | None] | None = None,
        sign_body: bytes | None = None,
        **header_options: Any,
    ) -> Answer:
        """Seal ``plaintext`` (or send ``body`` as is), sign, send. ``edit`` changes headers
        after signing (None removes one); ``sign_body`` signs other bytes than those sent."""
        if body is None:
            body = (
                b""
                if plaintext is None
                else self.seal_body(method, path, plaintext, key_set=key_set)
            )
        headers = self.headers(
            method,
            path,
            body if sign_body is None else sign_body,
            query=query,
            key_set=key_set,
            idempotency_key=idempotency_key,
            **header_options,
        )
        for name, value in (edit or {}).items():
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        target = f"{url or self.server.url}{path}" + (f"?{query}" if query else "")
        response = self.http.request(method, target, content=body or None, headers=headers)
        return Answer(response, method, path, headers.get("X-Nonce", ""), self)

    def charge(
        self,
        amount: int = 1250,
        *,
        idempotency_key: str | None = None,
        url: str | None = None,
        key_set: KeySet | None = None,
        **options: Any,
    ) -> Answer:
        """Options naming a header or how to send go to :meth:`send`; the rest are members."""
        sending = {name: options.pop(name) for name in list(options) if name in SEND_OPTIONS}
        return self.send(
            "POST",
            "/pos/charge",
            self.charge_plaintext(amount, key_set=key_set, **options),
            idempotency_key=idempotency_key,
            url=url,
            key_set=key_set,
            **sending,
        )

    def refund(
        self, charge_id: str, plaintext: dict[str, Any] | None = None, **options: Any
    ) -> Answer:
        return self.send(
            "POST",
            f"/pos/charge/{charge_id}/refund",
            plaintext if plaintext is not None else {},
            **options,
        )

    def cancel(self, charge_id: str, **options: Any) -> Answer:
        return self.send("POST", f"/pos/charge/{charge_id}/cancel", **options)

    def reverse(self, charge_id: str, **options: Any) -> Answer:
        return self.send("POST", f"/pos/charge/{charge_id}/reverse", **options)

    def get(self, charge_id: str, **options: Any) -> Answer:
        return self.send("GET", f"/pos/charge/{charge_id}", **options)

    def reverse_by_key(self, key: str, **options: Any) -> Answer:
        return self.send("POST", "/pos/charge/reverse", {"idempotency_key": key}, **options)

    def close(self) -> None:
        self.http.close()
        self.client.close()


# --- activation -------------------------------------------------------------------------------


async def rotate(terminal: PosTerminal, runtime: Runtime) -> KeySet:
    """A new active key set through the API (the old one becomes the previous set)."""
    terminal.client.rotate_keys()
    register_keys(terminal.keys)
    return terminal.keys


async def activated_terminal(
    server: Server,
    admin: Admin,
    make_merchant: MakeMerchant,
    runtime: Runtime,
    *,
    merchant: MerchantCtx | None = None,
) -> PosTerminal:
    """A device provisioned, claimed by ``merchant`` (a new one by default) and activated with
    the SDK's ``activate_device`` against ``server``."""
    device = admin.provision()
    store = MemoryKeyStore(IdentityKey(device.key_id, device.secret))
    client = DeviceClient(
        server.url, device_id=device.device_id, key_store=store, retry_backoff=0.05
    )
    merchant = merchant or make_merchant()

    def claim_when_shown(report: StepReport) -> None:
        if report.name == "pairing_code":
            assert isinstance(report.result, PairingCode)
            code = report.result.pairing_code
            SEEN_SECRETS.add(code)
            claimed = merchant.http.post("/pos/claim", json={"pairing_code": code})
            assert claimed.status_code == 200, claimed.text

    try:
        activation = activate_device(client, on_step=claim_when_shown, sleep=lambda _: None)
    except BaseException:
        client.close()
        raise
    pos = PosTerminal(
        server,
        device,
        merchant,
        client,
        activation.activation.terminal_id,
        httpx.Client(timeout=30),
    )
    register_keys(pos.keys)
    return pos
