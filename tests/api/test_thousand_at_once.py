"""Every limit holds when a thousand requests arrive at once, spread over two server processes
sharing PostgreSQL + Redis (on the embedded default, one process).

A thousand requests are opened together (one connection each, no client-side queue): one
Idempotency-Key makes one charge; one signed request replayed a thousand times is accepted
once; a thousand partial refunds of one charge never refund more than it; a thousand signed
pairing-code requests of one device get exactly the hourly ten codes; a thousand status polls
get the thirty a minute; a thousand wrong claims of one user are five tries, a thousand wrong
portal sign-ins of one account ten; a key set with room for one charge makes one; a thousand
heartbeats of one terminal are each counted in its key set's tally exactly once; a thousand
refunds of one charge, half from its terminal and half from the merchant's backoffice, never
refund more than it; a thousand refunds and cancels of one charge do one or the other. Besides the
limit's own refusal, an answer may be 503 "the server is busy" (a database or cache connection
not free in time), which must have changed nothing; with both services up, none says a
service is unreachable, and no answer is a 500.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from sqlalchemy import func, select, update

from support import charge_kit as kit
from support.helpers import Admin, MakeMerchant, Server, signed_pos_headers
from viopay.devices.service import (
    CLAIM_LIMITS,
    PAIRING_ALPHABET,
    PAIRING_CODES_PER_HOUR,
    STATUS_POLLS_PER_MINUTE,
)
from viopay.keysets.models import KeySet
from viopay.payments.models import Charge, Refund
from viopay.runtime import Runtime

AT_ONCE = 1000
HEARTBEAT = "/pos/heartbeat"

Prepared = tuple[str, bytes | None, dict[str, str]]


async def send_at_once(prepared: list[Prepared], *, method: str = "POST") -> list[httpx.Response]:
    """Open every request together: each on its own connection, all sent before any answer."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        return list(
            await asyncio.gather(
                *(
                    http.request(method, url, content=body, headers=headers)
                    for url, body, headers in prepared
                )
            )
        )


def codes(responses: list[httpx.Response]) -> Counter[tuple[int, str | None]]:
    """(status, problem code) of each answer; no answer is a 5xx other than 503."""
    seen: Counter[tuple[int, str | None]] = Counter()
    for response in responses:
        code = None
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")
            code = response.json()["code"]
            if response.status_code == 503:  # a wait for a connection, never "unreachable"
                assert response.json()["detail"].startswith("the server is busy"), response.text
        seen[(response.status_code, code)] += 1
    print(
        f"\n{AT_ONCE} at once: " + ", ".join(f"{n} x {s} {c or ''}" for (s, c), n in seen.items())
    )
    assert not [key for key in seen if key[0] >= 500 and key[0] != 503], seen
    return seen


def busy(seen: Counter[tuple[int, str | None]]) -> int:
    return seen.get((503, "service_unavailable"), 0)


def spread(server: Server, server_b: Server, path: str, i: int) -> str:
    return (server if i % 2 else server_b).url + path


async def count(runtime: Runtime, query: Any) -> int:
    async with runtime.sessions() as db:
        return int(await db.scalar(query))


async def test_a_thousand_charges_with_one_key_make_one_charge(
    terminal: kit.PosTerminal, server: Server, server_b: Server, runtime: Runtime
) -> None:
    prepared: list[Prepared] = []
    for i in range(AT_ONCE):
        body = terminal.seal_body("POST", "/pos/charge", terminal.charge_plaintext(700))
        headers = terminal.headers("POST", "/pos/charge", body, idempotency_key="thousand")
        prepared.append((spread(server, server_b, "/pos/charge", i), body, headers))
    responses = await send_at_once(prepared)
    seen = codes(responses)
    assert seen[(201, None)] == 1, seen
    assert set(seen) <= {
        (201, None),
        (200, None),
        (409, "idempotency_in_progress"),
        (503, "service_unavailable"),
    }, seen
    answers = [
        kit.Answer(r, "POST", "/pos/charge", headers["X-Nonce"], terminal)
        for r, (_, _, headers) in zip(responses, prepared, strict=True)
        if r.status_code in (200, 201)
    ]
    assert all(a.replayed == (a.status == 200) for a in answers)
    assert len({orjson.dumps(a.json()) for a in answers}) == 1  # every replay is the one answer
    charges = select(func.count()).select_from(Charge)
    mine = charges.where(
        Charge.terminal_id == terminal.terminal_id, Charge.idempotency_key == "thousand"
    )
    assert await count(runtime, mine) == 1
    settled = terminal.charge(700, idempotency_key="thousand", url=server_b.url)
    assert (settled.status, settled.replayed) == (200, True)


async def test_one_signed_request_sent_a_thousand_times_is_accepted_once(
    terminal: kit.PosTerminal, server: Server, server_b: Server, runtime: Runtime
) -> None:
    """The same bytes and headers (one nonce) to both processes: replay protection is the
    shared Redis, so exactly one is charged and every other copy is 401 nonce_reused."""
    body = terminal.seal_body("POST", "/pos/charge", terminal.charge_plaintext(800))
    headers = terminal.headers("POST", "/pos/charge", body, idempotency_key="one-nonce")
    prepared: list[Prepared] = [
        (spread(server, server_b, "/pos/charge", i), body, headers) for i in range(AT_ONCE)
    ]
    seen = codes(await send_at_once(prepared))
    assert seen[(201, None)] == 1, seen
    assert set(seen) <= {(201, None), (401, "nonce_reused"), (503, "service_unavailable")}, seen
    assert seen[(401, "nonce_reused")] == AT_ONCE - 1 - busy(seen)
    mine = (
        select(func.count())
        .select_from(Charge)
        .where(Charge.terminal_id == terminal.terminal_id, Charge.idempotency_key == "one-nonce")
    )
    assert await count(runtime, mine) == 1


async def test_a_thousand_partial_refunds_never_pass_the_amount(
    terminal: kit.PosTerminal, server: Server, server_b: Server, runtime: Runtime
) -> None:
    charge = terminal.charge(15_000).json()
    path = f"/pos/charge/{charge['id']}/refund"
    prepared: list[Prepared] = []
    for i in range(AT_ONCE):
        body = terminal.seal_body("POST", path, {"amount": 100})
        prepared.append(
            (spread(server, server_b, path, i), body, terminal.headers("POST", path, body))
        )
    seen = codes(await send_at_once(prepared))
    await refunded_exactly_the_charge(seen, terminal, charge["id"], runtime)


async def refunded_exactly_the_charge(
    seen: Counter[tuple[int, str | None]],
    terminal: kit.PosTerminal,
    charge_id: str,
    runtime: Runtime,
) -> None:
    """Refunds of 100 on a 15 000 charge: every one the amount allowed was made (unless the
    server was busy for some), none more, and the charge and its refund rows agree."""
    assert set(seen) <= {
        (201, None),
        (422, "refund_exceeds_charge"),
        # a refund decided once the 150th had been stored finds the charge refunded (§4.2)
        (409, "charge_not_refundable"),
        (503, "service_unavailable"),
    }, seen
    assert 150 - busy(seen) <= seen[(201, None)] <= 150, seen
    made = seen[(201, None)]
    now = terminal.get(charge_id).json()
    assert now["amount_refunded"] == 100 * made
    refunds = select(func.count()).select_from(Refund).where(Refund.charge_id == charge_id)
    assert await count(runtime, refunds) == made
    if made == 150:
        assert now["status"] == "refunded"


@pytest.mark.parametrize(
    ("method", "path", "ok", "limit"),
    [
        ("POST", "/pos/pairing-code", 201, PAIRING_CODES_PER_HOUR),
        ("GET", "/pos/status", 200, STATUS_POLLS_PER_MINUTE),
    ],
    ids=["pairing codes: the hourly ten", "status polls: the thirty a minute"],
)
async def test_a_thousand_signed_requests_of_one_device_get_its_limit(
    admin: Admin, server: Server, server_b: Server, method: str, path: str, ok: int, limit: int
) -> None:
    device = admin.provision()
    prepared: list[Prepared] = [
        (spread(server, server_b, path, i), None, signed_pos_headers(device))
        for i in range(AT_ONCE)
    ]
    seen = codes(await send_at_once(prepared, method=method))
    assert set(seen) <= {(ok, None), (429, "rate_limited"), (503, "service_unavailable")}, seen
    assert seen[(ok, None)] == limit, seen


async def test_a_thousand_wrong_claims_of_one_user_get_the_five_failures(
    make_merchant: MakeMerchant, server: Server, server_b: Server
) -> None:
    """Failed claims are limited per user (5 in 15 min, §3.4): of a thousand wrong codes sent
    at once by one merchant user to both processes, exactly five are tried (404), and a right
    code of theirs is still refused until the window passes (a guesser gains nothing)."""
    owner = make_merchant()
    auth = dict(owner.http.headers)
    prepared: list[Prepared] = []
    for i in range(AT_ONCE):
        code = "".join(PAIRING_ALPHABET[(i * 7 + k * 13) % len(PAIRING_ALPHABET)] for k in range(6))
        body = orjson.dumps({"pairing_code": code})
        headers = {**auth, "content-type": "application/json"}
        prepared.append((spread(server, server_b, "/pos/claim", i), body, headers))
    seen = codes(await send_at_once(prepared))
    assert set(seen) <= {
        (404, "pairing_code_invalid"),
        (429, "rate_limited"),
        (503, "service_unavailable"),
    }, seen
    per_user = next(limit for scope, limit, _ in CLAIM_LIMITS if scope == "user")
    assert seen[(404, "pairing_code_invalid")] == per_user, seen


async def test_a_thousand_charges_on_a_key_set_at_its_limit(
    terminal: kit.PosTerminal, server: Server, server_b: Server, runtime: Runtime
) -> None:
    """The key set with room for one charge under its envelope limit (§3.10): of a thousand
    charges at once (each its own key), exactly one is charged and the rest refused 409
    invalid_state; the tally ends at the limit, and the next charge is refused too. (When the
    tally grew with each outcome, 88 to all 1 000 were charged: each was admitted on a tally no
    outcome had reached yet.)"""
    limit = runtime.settings.keyset_max_envelopes
    key_set_id = terminal.keys.key_set_id
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(KeySet).where(KeySet.key_set_id == key_set_id).values(envelope_count=limit - 2)
        )
    prepared: list[Prepared] = []
    for i in range(AT_ONCE):
        body = terminal.seal_body("POST", "/pos/charge", terminal.charge_plaintext(600))
        headers = terminal.headers("POST", "/pos/charge", body, idempotency_key=f"limit-{i}")
        prepared.append((spread(server, server_b, "/pos/charge", i), body, headers))
    seen = codes(await send_at_once(prepared))
    assert set(seen) <= {(201, None), (409, "invalid_state"), (503, "service_unavailable")}, seen
    assert seen[(201, None)] == 1 or (seen[(201, None)] == 0 and busy(seen)), seen
    async with runtime.sessions() as db:
        key_set = await db.get(KeySet, key_set_id)
        assert key_set is not None
        assert key_set.envelope_count == limit - 2 + 2 * seen[(201, None)]
    refused = terminal.charge(600, idempotency_key="after-the-burst")
    assert (refused.status, refused.code) == (409, "invalid_state")


async def test_a_thousand_wrong_portal_sign_ins_get_the_ten_failures(
    server: Server, server_b: Server
) -> None:
    """Ten failed sign-ins per account per 15 minutes (the portal's limit): a thousand wrong
    secrets for one API client at once, to both processes, are ten tries (401); the rest 429."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        page = http.get("/portal/signin")
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found is not None
        cookies = "; ".join(f"{name}={value}" for name, value in http.cookies.items())
    form = urlencode(
        {
            "csrf_token": found.group(1),
            "mode": "client",
            "client_id": f"cli_{secrets.token_hex(8)}",
            "client_secret": "vsk_wrong",
        }
    ).encode()
    headers = {"content-type": "application/x-www-form-urlencoded", "cookie": cookies}
    prepared: list[Prepared] = [
        (spread(server, server_b, "/portal/signin", i), form, headers) for i in range(AT_ONCE)
    ]
    seen = Counter(r.status_code for r in await send_at_once(prepared))
    print(f"\n{AT_ONCE} wrong sign-ins at once: {dict(seen)}")
    assert set(seen) <= {401, 429, 503}, seen
    assert seen[401] == 10, seen


async def test_a_thousand_heartbeats_at_once_are_each_counted_once(
    terminal: kit.PosTerminal, server: Server, server_b: Server, runtime: Runtime
) -> None:
    """A terminal that both processes already know (on PostgreSQL its heartbeats take the
    remembered one-statement path, the first of each process the portable one): a thousand
    heartbeats at once are all answered, and the key set's tally (§3.10) grows by exactly the
    two envelopes of each answered one: none lost to a concurrent write, none counted twice."""
    for url in (server.url, server_b.url):
        for battery in (90, 89):  # online, then remembered
            assert terminal.send("POST", HEARTBEAT, {"battery_pct": battery}, url=url).status == 200
    key_set_id = terminal.keys.key_set_id
    tally = select(KeySet.envelope_count).where(KeySet.key_set_id == key_set_id)
    before = await count(runtime, tally)
    prepared: list[Prepared] = []
    for i in range(AT_ONCE):
        body = terminal.seal_body("POST", HEARTBEAT, {"battery_pct": i % 100})
        headers = terminal.headers("POST", HEARTBEAT, body)
        prepared.append((spread(server, server_b, HEARTBEAT, i), body, headers))
    seen = codes(await send_at_once(prepared))
    assert set(seen) <= {(200, None), (503, "service_unavailable")}, seen
    assert seen[(200, None)] > 0, seen
    assert await count(runtime, tally) == before + 2 * seen[(200, None)]


async def test_a_thousand_refunds_from_terminal_and_backoffice_never_pass_the_amount(
    terminal: kit.PosTerminal, server: Server, server_b: Server, runtime: Runtime
) -> None:
    """Half of them from the terminal (signed and sealed), half from the merchant's backoffice
    (its session), all at once over two processes: the two ways in take the same lock, so
    together they refund exactly the charge, never more."""
    charge = terminal.charge(15_000).json()
    pos_path = f"/pos/charge/{charge['id']}/refund"
    web_path = f"/merchant/charges/{charge['id']}/refunds"
    web_headers = {
        "Authorization": terminal.merchant.http.headers["Authorization"],
        "Content-Type": "application/json",
    }
    prepared: list[Prepared] = []
    for i in range(AT_ONCE):
        if i % 2:
            body = terminal.seal_body("POST", pos_path, {"amount": 100})
            headers = terminal.headers("POST", pos_path, body)
            prepared.append((spread(server, server_b, pos_path, i // 2), body, headers))
        else:
            body = orjson.dumps({"amount": 100})
            prepared.append((spread(server, server_b, web_path, i // 2), body, web_headers))
    responses = await send_at_once(prepared)
    await refunded_exactly_the_charge(codes(responses), terminal, charge["id"], runtime)
    by_way = Counter(
        "terminal" if "/pos/" in str(r.request.url) else "backoffice"
        for r in responses
        if r.status_code == 201
    )
    print(f"refunds made: {dict(by_way)}")  # which way wins more is the scheduler's


@pytest.mark.parametrize("refunded_before", [False, True], ids=["fresh", "refunded once"])
async def test_a_thousand_refunds_and_cancels_of_one_charge_at_once_do_one_or_the_other(
    terminal: kit.PosTerminal,
    server: Server,
    server_b: Server,
    runtime: Runtime,
    refunded_before: bool,
) -> None:
    """Half refunds from the terminal, half cancels from the backoffice, of one charge, all at
    once over two processes: the charge ends canceled with nothing refunded, or refunded with
    every cancel refused (§4.3: a charge with a refund cannot be canceled) — never both. (On a
    fresh charge the cancel has won in every run; one refund made before the burst makes the
    other outcome the only one.)"""
    charge = terminal.charge(15_000).json()
    if refunded_before:
        assert terminal.refund(charge["id"], {"amount": 100}).status == 201
    pos_path = f"/pos/charge/{charge['id']}/refund"
    cancel_path = f"/merchant/charges/{charge['id']}/cancel"
    web_headers = {"Authorization": terminal.merchant.http.headers["Authorization"]}
    prepared: list[Prepared] = []
    for i in range(AT_ONCE):
        if i % 2 == 0:
            body = terminal.seal_body("POST", pos_path, {"amount": 100})
            headers = terminal.headers("POST", pos_path, body)
            prepared.append((spread(server, server_b, pos_path, i // 2), body, headers))
        else:
            prepared.append((spread(server, server_b, cancel_path, i // 2), None, web_headers))
    responses = await send_at_once(prepared)
    seen = codes(responses)
    refunds = Counter(
        (r.status_code, r.json().get("code") if r.status_code >= 400 else None)
        for r in responses
        if "/pos/" in str(r.request.url)
    )
    cancels = Counter(
        (r.status_code, r.json().get("code") if r.status_code >= 400 else None)
        for r in responses
        if "/merchant/" in str(r.request.url)
    )
    print(f"refunds: {dict(refunds)}; cancels: {dict(cancels)}")
    busy_ = (503, "service_unavailable")
    assert set(refunds) <= {
        (201, None),
        (422, "refund_exceeds_charge"),
        (409, "charge_not_refundable"),
        busy_,
    }, refunds
    assert set(cancels) <= {
        (200, None),  # the cancel, or a replay of it (one charge's cancels share one key)
        (409, "idempotency_in_progress"),  # that cancel still running
        (409, "charge_not_cancelable"),  # a refund came first
        busy_,
    }, cancels
    assert sum(seen.values()) == AT_ONCE
    now = terminal.get(charge["id"]).json()
    made = select(func.count()).select_from(Refund).where(Refund.charge_id == charge["id"])
    if now["status"] == "canceled":
        assert refunds[(201, None)] == 0 and now["amount_refunded"] == 0, (refunds, now)
        assert await count(runtime, made) == 0
    else:
        assert cancels[(200, None)] == 0, cancels
        assert now["amount_refunded"] == 100 * (refunds[(201, None)] + refunded_before) > 0
        assert await count(runtime, made) == refunds[(201, None)] + refunded_before
    if refunded_before:
        assert now["status"] != "canceled"
