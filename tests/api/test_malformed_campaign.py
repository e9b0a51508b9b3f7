"""A malformed-input campaign (issue 11): ten thousand generated bad requests over every POS
endpoint, on both backends. Every answer is a 4xx problem+json, and the database is the same,
table by table and row by row, before and after.

The requests go to an in-process app (httpx's ASGI transport) on the backend's database and
cache, for speed; the generator is seeded, so a failure names the request that caused it and
reproduces. Every request is bad in at least one way that keeps it from acting (a header
missing or malformed, a signature that cannot verify, a token that does not exist, a body that
cannot be read), and most are bad in several at once.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import ColumnElement, Table, select

from support import charge_kit as kit
from support.helpers import UA, Admin, Backend, MakeMerchant, ProvisionedDevice, Server
from viopay.runtime import Runtime

REQUESTS = 10_000
SEED = 20261202

# --- ingredients -------------------------------------------------------------------------------

JUNK_STRINGS = [
    "",
    " ",
    "\u0000",
    "a\u0000b",
    "%00",
    "x" * 300,
    "x" * 5000,
    "\u202e\u0301",
    "😀" * 40,
    "'; DROP TABLE charges; --",
    "../../etc/passwd",
    "null",
    "0",
    "-1",
    "1e309",
    "\ud83d",  # a lone surrogate (as JSON text)
    "\t\r",
]
JUNK_JSON: list[bytes] = [
    b"",
    b"{",
    b"[]",
    b"null",
    b"1",
    b'"x"',
    b"{}",
    b'{"a":' * 40 + b"1" + b"}" * 40,
    b"[" * 2000 + b"]" * 2000,
    b'{"v":1,"kid":"\\u0000","iv":"","ct":""}',
    b'{"v":1,"kid":"ks_x","iv":"AAAA","ct":"AAAA"}',
    b'{"v":2,"kid":"ks_x","iv":"AAAAAAAAAAAAAAAA","ct":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}',
    b'{"pairing_code":"\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000"}',
    b'{"pairing_code":"AB3"}',
    b'{"pairing_code":["ABCDEF"]}',
    b'{"pairing_code":"ABCDEF","label":"' + b"x" * 100 + b'"}',
    b'{"transport_key":"' + b"A" * 44 + b'"}',
    b'{"transport_key":null}',
    b'{"chunk":-1}',
    b'{"chunk":1e400}',
    b'{"key_set_id":"\\u0000"}',
    b'{"amount":99999999999999999999999}',
    b"\xff\xfe\x00",
    b'{"a":"\\ud800"}',
]
DEVICE_IDS = ["POS-0000000", "pos-00000000", "POS-0000000G", "POS-00000000\u0000", "", "X" * 200]
USER_AGENTS = [
    "Mozilla/5.0",
    "Viopay-POS/1.4 (Android 12; PAX-A920)",
    "Viopay-POS/1.0.0-" + "a" * 70 + " (Android 12; PAX-A920)",
    "Viopay-POS/1.4.2 (Android 12 PAX-A920)",
]
SIGNATURE_VALUES = {
    "X-Key-Id": ["", " ", "k" * 200, "ключ"],
    "X-Timestamp": [
        "yesterday",
        "2025-13-40T99:99:99Z",
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ],
    "X-Nonce": ["short", "n" * 200, "has space!", ""],
    "X-Signature": ["v1=", "v2=" + "A" * 43 + "=", "v1=" + "A" * 43 + "=", "v1=" + "!" * 44],
}


@dataclass
class Target:
    """A device, a terminal, a charge and a merchant the requests aim at (real, so that the
    bad requests get as far as they can)."""

    device: ProvisionedDevice
    terminal_id: str
    hmac_key_id: str
    charge_id: str
    bearer: str
    signature_key: str = field(default="")


@dataclass(frozen=True)
class BadRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _signature_headers(rng: random.Random, key_id: str) -> dict[str, str]:
    """Signature headers that never verify: a random MAC, or a malformed value somewhere."""
    headers = {
        "X-Key-Id": key_id,
        "X-Timestamp": kit.stamp(),
        "X-Nonce": kit.new_nonce(),
        "X-Signature": "v1=" + base64.b64encode(rng.randbytes(32)).decode(),
    }
    for name in rng.sample(sorted(SIGNATURE_VALUES), rng.randint(0, 2)):
        headers[name] = rng.choice(SIGNATURE_VALUES[name])
    return headers


def _activation_headers(rng: random.Random, target: Target, *, must_break: bool) -> dict[str, str]:
    headers = {"X-Device-Id": target.device.device_id, "User-Agent": UA, "X-Client-Type": "pos"}
    breaks = rng.randint(1 if must_break else 0, 3)
    for _ in range(breaks):
        name = rng.choice(["X-Device-Id", "User-Agent", "X-Client-Type"])
        choice = rng.random()
        if choice < 0.3:
            headers.pop(name, None)
        elif name == "X-Device-Id":
            headers[name] = rng.choice(DEVICE_IDS)
        elif name == "User-Agent":
            headers[name] = rng.choice(USER_AGENTS)
        else:
            headers[name] = rng.choice(["web", "POS", ""])
    return headers


def _body(rng: random.Random) -> bytes:
    if rng.random() < 0.6:
        return rng.choice(JUNK_JSON)
    value = rng.choice(JUNK_STRINGS)
    key = rng.choice(["pairing_code", "transport_key", "kid", "label", "amount", "x", "\u0000"])
    return json.dumps({key: value}).encode()


def _content_type(rng: random.Random) -> dict[str, str]:
    return {
        "Content-Type": rng.choice(
            ["application/json"] * 6 + ["text/plain", "application/json; charset=latin-1", ""]
        )
    }


def _path_id(rng: random.Random, real: str) -> str:
    return rng.choice(
        [real, real + "x", "ch_" + "x" * 200, "%00", "ch_%00", "%2e%2e", "a%20b", "x" * 129]
    )


ENDPOINTS: list[tuple[str, str]] = [
    ("POST", "/pos/bootstrap"),
    ("POST", "/pos/pairing-code"),
    ("GET", "/pos/status"),
    ("POST", "/pos/attest"),
    ("POST", "/pos/claim"),
    ("POST", "/pos/keys"),
    ("POST", "/pos/config"),
    ("POST", "/pos/terminal-parameters"),
    ("POST", "/pos/activate"),
    ("GET", "/pos/config/schema"),
    ("POST", "/pos/charge"),
    ("POST", "/pos/charge/reverse"),
    ("POST", "/pos/charge/{id}/refund"),
    ("POST", "/pos/charge/{id}/cancel"),
    ("POST", "/pos/charge/{id}/reverse"),
    ("GET", "/pos/charge/{id}"),
]


def generate(rng: random.Random, target: Target) -> BadRequest:
    method, template = rng.choice(ENDPOINTS)
    path = template.replace("{id}", _path_id(rng, target.charge_id))
    headers: dict[str, str] = {}
    body = _body(rng) if rng.random() < 0.8 else b""
    if template == "/pos/bootstrap":
        headers = _activation_headers(rng, target, must_break=True)
    elif template in ("/pos/pairing-code", "/pos/status", "/pos/attest"):
        headers = _activation_headers(rng, target, must_break=False)
        headers |= _signature_headers(rng, target.device.key_id)
    elif template == "/pos/claim":
        if rng.random() < 0.5:  # a real merchant's token with a body that cannot be a code
            headers = {"Authorization": f"Bearer {target.bearer}"}
            body = rng.choice([b for b in JUNK_JSON if b"ABCDEF" not in b])
        else:
            headers = {"Authorization": rng.choice(["Bearer x.y.z", "Basic abc", "Bearer", ""])}
    elif template == "/pos/config/schema":
        method = rng.choice(["POST", "PUT", "DELETE", "PATCH"])  # it only takes GET
    elif template in ("/pos/keys", "/pos/config", "/pos/terminal-parameters", "/pos/activate"):
        token = rng.choice(["att_" + "A" * 43, "att_short", "Bearer x", "", "att_\u00e9" * 3])
        headers = {"Authorization": f"Attestation {token}", "X-Device-Id": target.device.device_id}
        if rng.random() < 0.2:
            headers["X-Device-Id"] = rng.choice(DEVICE_IDS)
    else:  # charge endpoints: a signature that never verifies
        headers = {
            "X-Terminal-Id": rng.choice([target.terminal_id] * 4 + ["TID-000000", "", "t" * 200]),
            "User-Agent": rng.choice([UA] * 4 + USER_AGENTS),
            "X-Client-Type": "pos",
            **_signature_headers(rng, target.hmac_key_id),
        }
        if rng.random() < 0.5:
            headers["Idempotency-Key"] = rng.choice(["k", "k" * 300, "has space", "\u00e9", "x"])
        if rng.random() < 0.2:
            headers.pop(rng.choice(sorted(headers)))
    if body:
        headers |= _content_type(rng)
    headers = {k: v for k, v in headers.items() if _sendable(v)}
    return BadRequest(method, path, headers, body)


def _sendable(value: str) -> bool:
    """HTTP header values travel as bytes; httpx sends ASCII only, and no client can put a
    NUL or line break into one (the server's HTTP layer refuses them)."""
    return value.isascii() and not any(c in value for c in "\x00\r\n")


# --- the database, table by table ------------------------------------------------------------


# The background workers' own rows, which change with the clock whatever the requests do: the
# fleet timer's lease, and the webhook worker's attempts at the setup's events. A request that
# made an event would show in audit_events (and its deliveries are born with it), which is
# compared.
BACKGROUND_TABLES = {"timer_leases", "webhook_deliveries"}
# And the fleet timer's offline marks (§8): the terminals of tests run before this one go
# offline while it runs (their `online` flag, a device.offline event by the system); a request
# cannot make either, and everything else of those rows is compared.
TIMER_COLUMNS = {"devices": {"online"}}


def _by_the_timer(table: Table) -> ColumnElement[bool] | None:
    if table.name != "audit_events":
        return None
    return ~((table.c.type == "device.offline") & (table.c.actor_type == "system"))


async def snapshot(runtime: Runtime) -> dict[str, list[str]]:
    """Every row of every table but the background workers', as text, sorted."""
    from viopay.models import metadata

    tables: dict[str, list[str]] = {}
    async with runtime.sessions() as session:
        for table in metadata.sorted_tables:
            if table.name in BACKGROUND_TABLES:
                continue
            skip = TIMER_COLUMNS.get(table.name, set())
            query = select(*(c for c in table.columns if c.name not in skip))
            where = _by_the_timer(table)
            rows = (await session.execute(query if where is None else query.where(where))).all()
            tables[table.name] = sorted(repr(tuple(row)) for row in rows)
    return tables


# --- the campaign ------------------------------------------------------------------------------


@pytest.fixture
async def target(
    server: Server, admin: Admin, make_merchant: MakeMerchant, runtime: Runtime
) -> AsyncIterator[Target]:
    pos = await kit.activated_terminal(server, admin, make_merchant, runtime)
    charge = pos.charge(1250).json()
    device = admin.provision()  # an inactive device: the pairing endpoints' usual caller
    yield Target(device, pos.terminal_id, pos.keys.hmac_key_id, charge["id"], pos.merchant.token)
    pos.close()


def _in_process_app(runtime: Runtime) -> Any:
    from viopay.app import create_app

    return create_app(runtime.settings)


# app.py's default ORJSONResponse warns in-process (the servers run with default filters).
@pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")
async def test_ten_thousand_bad_requests_answer_4xx_and_change_nothing(
    runtime: Runtime, target: Target, backend: Backend
) -> None:
    rng = random.Random(SEED)
    app = _in_process_app(runtime)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    statuses: Counter[int] = Counter()
    paths: Counter[str] = Counter()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://viopay.test") as client,
    ):
        before = await snapshot(runtime)
        for index in range(REQUESTS):
            bad = generate(rng, target)
            answer = await client.request(
                bad.method, bad.path, headers=bad.headers, content=bad.body or None
            )
            detail = (
                f"request {index} (seed {SEED}): {bad} → {answer.status_code} {answer.text[:300]}"
            )
            assert 400 <= answer.status_code < 500, detail
            assert answer.headers["content-type"] == "application/problem+json", detail
            statuses[answer.status_code] += 1
            paths[bad.path.split("/")[2] if bad.path.count("/") > 1 else bad.path] += 1
        after = await snapshot(runtime)
    assert sum(statuses.values()) == REQUESTS
    changed = {
        name: (
            sorted(set(before[name]) - set(after[name]))[:3],
            sorted(set(after[name]) - set(before[name]))[:3],
        )
        for name in before
        if before[name] != after[name]
    }
    assert not changed, f"tables changed by bad requests (rows gone, rows new): {changed}"
    print(
        f"\nmalformed-input campaign ({backend.name}): {REQUESTS} bad requests over "
        f"{len(ENDPOINTS)} POS endpoints, all 4xx {dict(sorted(statuses.items()))}; "
        f"{len(before)} tables unchanged"
    )


def test_the_generator_covers_every_pos_endpoint() -> None:
    rng = random.Random(SEED)
    target = Target(ProvisionedDevice("POS-00000001", "k", "00" * 32), "TID-1", "m", "ch_1", "t")
    seen = {_template(generate(rng, target)) for _ in range(2000)}
    assert seen == {path for _, path in ENDPOINTS}


def _template(bad: BadRequest) -> str:
    parts = bad.path.split("/")
    if len(parts) > 3 and parts[2] == "charge" and parts[3] != "reverse":
        parts[3] = "{id}"
    return "/".join(parts)
