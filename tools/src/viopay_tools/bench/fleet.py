"""The simulated terminals: provisioned in-process (the operator's side), activated over HTTP with
the device SDK (bootstrap → pairing code → claim → attest → keys → config → terminal parameters
→ activate), and the charge requests they send, built beforehand byte for byte."""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from viopay.settings import Settings
from viopay_device.protocol.envelope import card_aad, request_aad, seal
from viopay_device.protocol.signing import charge_string_to_sign, sign
from viopay_tools.bench.loadgen import build_request

UA = "Viopay-POS/1.4.2 (Android 12; PAX-A920)"
CHARGE_PATH = "/pos/charge"
HEARTBEAT_PATH = "/pos/heartbeat"
# What a terminal reports every minute (PROTOCOL §8).
HEALTH = {
    "battery_pct": 80,
    "charging": False,
    "network": "wifi",
    "signal_dbm": -60,
    "printer": "ok",
}
CARD = {"pan": "4242424242424242", "expiry": "3012"}
#: Devices activated on a fresh server before the measured ones (its first requests compile
#: statements and fill caches), as the charge phases have their warm-up.
ACTIVATION_WARMUP = 3

#: The server-side steps of one activation, in order, as the access log names their paths.
ACTIVATION_STEPS: tuple[tuple[str, str], ...] = (
    ("bootstrap", "/pos/bootstrap"),
    ("pairing code", "/pos/pairing-code"),
    ("status", "/pos/status"),
    ("claim (merchant)", "/pos/claim"),
    ("attest", "/pos/attest"),
    ("keys", "/pos/keys"),
    ("config", "/pos/config"),
    ("terminal parameters", "/pos/terminal-parameters"),
    ("activate", "/pos/activate"),
)


@dataclass(frozen=True)
class Provisioned:
    merchant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    devices: list[tuple[str, str, str]] = field(repr=False)  # (device_id, key_id, secret hex)


@dataclass(frozen=True)
class Terminal:
    """An activated terminal: what it needs to sign and seal charges."""

    terminal_id: str
    hmac_key_id: str
    mac_key: bytes = field(repr=False)
    msk_kid: str = ""
    msk: bytes = field(default=b"", repr=False)
    tdk_kid: str = ""
    tdk: bytes = field(default=b"", repr=False)


def provision(settings: Settings, count: int) -> Provisioned:
    """A merchant, an owner API client and ``count`` devices, in one transaction (as
    ``viopay merchant create``, ``client create`` and ``device provision`` would)."""
    from viopay.audit import Actor
    from viopay.auth.clients import create_client
    from viopay.devices.service import provision_device
    from viopay.ids import utcnow
    from viopay.merchants.models import Role
    from viopay.merchants.service import create_merchant
    from viopay.runtime import run_unit_of_work

    async def work(db: Any, runtime: Any) -> Provisioned:
        now, actor = utcnow(), Actor.operator("bench")
        merchant = await create_merchant(
            db,
            name="Bench Coffee",
            currency="USD",
            country="US",
            timezone="America/New_York",
            actor=actor,
            now=now,
        )
        client = await create_client(
            db,
            wrapper=runtime.wrapper,
            merchant_id=merchant.merchant_id,
            role=Role.owner,
            admin=False,
            actor=actor,
            now=now,
        )
        devices = []
        for _ in range(count):
            made = await provision_device(
                db,
                wrapper=runtime.wrapper,
                device_id=f"POS-{secrets.token_hex(4).upper()}",
                key_id=None,
                actor=actor,
                now=now,
            )
            devices.append((made.device_id, made.key_id, made.identity_secret))
        return Provisioned(merchant.merchant_id, client.client_id, client.client_secret, devices)

    return run_unit_of_work(settings, work)


@dataclass
class Activation:
    terminals: list[Terminal]
    wall_s: float
    client_ms: dict[str, float]  # mean client-side ms per device, by SDK step


def activate(
    url: str,
    made: Provisioned,
    *,
    threads: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> Activation:
    """Activate every provisioned device through the SDK; the merchant claims each code as
    soon as the device shows it."""
    from viopay_device import (
        DeviceClient,
        IdentityKey,
        MemoryKeyStore,
        PairingCode,
        StepReport,
        activate_device,
    )

    web = httpx.Client(base_url=url, timeout=30)
    token = (
        web.post(
            "/client/session",
            json={"client_id": made.client_id, "client_secret": made.client_secret},
        )
        .raise_for_status()
        .json()["access_token"]
    )
    web.headers["Authorization"] = f"Bearer {token}"
    web.post("/session/initiate", json={"merchant_id": made.merchant_id}).raise_for_status()
    client_ms: dict[str, float] = defaultdict(float)

    def one(device: tuple[str, str, str]) -> Terminal:
        device_id, key_id, secret_hex = device
        store = MemoryKeyStore(IdentityKey(key_id, bytes.fromhex(secret_hex)))
        with (
            DeviceClient(url, device_id=device_id, key_store=store, timeout=30) as client,
            httpx.Client(base_url=url, timeout=30, headers=web.headers) as merchant,
        ):

            def on_step(report: StepReport) -> None:
                client_ms[report.name] += report.elapsed * 1000
                if report.name == "pairing_code":
                    assert isinstance(report.result, PairingCode)
                    merchant.post(
                        "/pos/claim", json={"pairing_code": report.result.pairing_code}
                    ).raise_for_status()

            result = activate_device(client, on_step=on_step, sleep=lambda _: None)
            keys = store.current
            assert keys is not None
            return Terminal(
                terminal_id=result.activation.terminal_id,
                hmac_key_id=keys.hmac_key_id,
                mac_key=keys.key("MAC"),
                msk_kid=keys.msk_kid,
                msk=keys.key("MSK"),
                tdk_kid=keys.key_ids["TDK"],
                tdk=keys.key("TDK"),
            )

    started = time.perf_counter()
    terminals: list[Terminal] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for terminal in pool.map(one, made.devices):
                terminals.append(terminal)
                if on_progress is not None:
                    on_progress(len(terminals))
    finally:
        web.close()
    wall = time.perf_counter() - started
    n = max(1, len(terminals))
    return Activation(terminals, wall, {k: round(v / n, 2) for k, v in client_ms.items()})


def activation_server_time(lines: list[dict[str, Any]], devices: int) -> dict[str, Any]:
    """Server time per device and per step, from the access log lines of the activation."""
    by_path: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, int] = defaultdict(int)
    for line in lines:
        by_path[str(line.get("path"))].append(float(line.get("ms", 0.0)))
        statuses[str(line.get("status"))] += 1
    steps = []
    total = 0.0
    for name, path in ACTIVATION_STEPS:
        values = by_path.get(path, [])
        per_device = sum(values) / devices if devices else 0.0
        total += per_device
        steps.append(
            {
                "step": name,
                "path": path,
                "calls_per_device": round(len(values) / devices, 2) if devices else 0,
                "mean_ms_per_call": round(sum(values) / len(values), 2) if values else None,
                "ms_per_device": round(per_device, 2),
            }
        )
    return {
        "devices": devices,
        "server_ms_per_device": round(total, 2),
        "steps": steps,
        "statuses": dict(statuses),
    }


# --- charge requests ------------------------------------------------------------------------------


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ChargeFactory:
    """Builds signed, sealed charge requests, round-robin over the terminals; each with a fresh
    nonce and a unique Idempotency-Key (all the keys sent are kept, for the duplicate check)."""

    terminals: list[Terminal]
    host: str
    run_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    made: int = 0
    keys: set[tuple[str, str]] = field(default_factory=set)

    def build(self, count: int) -> list[bytes]:
        timestamp = stamp()  # one per batch: the batch is sent within the 300 s window
        out = []
        for _ in range(count):
            terminal = self.terminals[self.made % len(self.terminals)]
            self.made += 1
            out.append(self._one(terminal, timestamp, f"bench-{self.run_tag}-{self.made}"))
        return out

    def _one(self, t: Terminal, timestamp: str, key: str) -> bytes:
        card = seal(t.tdk, t.tdk_kid, orjson.dumps(CARD), card_aad(t.terminal_id))
        plaintext = {
            "amount": 1250,
            "currency": "USD",
            "tip_amount": 0,
            "tax_amount": 0,
            "surcharge_amount": 0,
            "entry_mode": "chip",
            "card": card,
            "reference": key[-64:],
        }
        self.keys.add((t.terminal_id, key))
        return signed_request(t, self.host, CHARGE_PATH, plaintext, timestamp, key=key)


def signed_request(
    t: Terminal,
    host: str,
    path: str,
    plaintext: dict[str, Any],
    timestamp: str,
    *,
    key: str | None = None,
) -> bytes:
    """A POST of ``plaintext`` sealed under the terminal's MSK with the §2.4 headers (and
    ``key`` as its Idempotency-Key), as raw HTTP/1.1 bytes for the load generator."""
    aad = request_aad(method="POST", path=path, subject=t.terminal_id)
    body = orjson.dumps(seal(t.msk, t.msk_kid, orjson.dumps(plaintext), aad))
    nonce = secrets.token_urlsafe(18)
    message = charge_string_to_sign(
        method="POST",
        path=path,
        query="",
        body=body,
        terminal_id=t.terminal_id,
        timestamp=timestamp,
        nonce=nonce,
    )
    headers = {
        "X-Terminal-Id": t.terminal_id,
        "X-Key-Id": t.hmac_key_id,
        "X-Timestamp": timestamp,
        "X-Nonce": nonce,
        "X-Signature": sign(t.mac_key, message),
        "X-Client-Type": "pos",
        "User-Agent": UA,
        "Content-Type": "application/json",
    }
    if key is not None:
        headers["Idempotency-Key"] = key
    return build_request("POST", path, host=host, headers=headers, body=body)


@dataclass
class HeartbeatFactory:
    """Builds signed, sealed heartbeats (PROTOCOL §8), round-robin over the terminals."""

    terminals: list[Terminal]
    host: str
    made: int = 0

    def build(self, count: int) -> list[bytes]:
        timestamp = stamp()
        out = []
        for _ in range(count):
            terminal = self.terminals[self.made % len(self.terminals)]
            self.made += 1
            out.append(signed_request(terminal, self.host, HEARTBEAT_PATH, HEALTH, timestamp))
        return out


def count_charges(settings: Settings) -> dict[str, int]:
    """Charges stored, and distinct (terminal, Idempotency-Key) pairs among them."""
    from sqlalchemy import text

    from viopay.runtime import run_unit_of_work

    async def work(db: Any, _runtime: Any) -> dict[str, int]:
        total = int(await db.scalar(text("SELECT count(*) FROM charges")) or 0)
        distinct = int(
            await db.scalar(
                text(
                    "SELECT count(*) FROM (SELECT DISTINCT terminal_id, idempotency_key FROM charges) AS k"
                )
            )
            or 0
        )
        keyless = int(
            await db.scalar(text("SELECT count(*) FROM charges WHERE idempotency_key IS NULL")) or 0
        )
        return {"charges": total, "distinct_keys": distinct, "without_key": keyless}

    return run_unit_of_work(settings, work)
