"""PostgreSQL's one-statement charge outcome (``payments/native.py``) against the portable path
(``outcomes.store_charge``): one charge request stored both ways writes the same rows, column
by column — the charge, the intent closed, the key's stored result, the audit events and their
webhook deliveries (the outbox's subscription rules) — and neither touches the key set's
envelope tally (counted with the claim); once the intent is no longer pending the statement
writes nothing.

Everything is committed (the native statement runs alone on asyncpg's own pool) and dated a
day ahead, so the servers' webhook workers and recovery never take the deliveries or intents
as due: every column read is the one the path wrote. PostgreSQL only: on SQLite there is one
path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import pytest
from sqlalchemy import JSON, Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from support import charge_kit as kit
from support.helpers import (
    SEEN_SECRETS,
    Admin,
    MakeMerchant,
    MerchantCtx,
    Server,
    expect_json,
    present,
)
from support.webhook_receiver import Receiver, running_receiver
from viopay.audit import AuditEvent
from viopay.ids import new_id
from viopay.keysets.models import KeySet, KeySetStatus
from viopay.payments import idempotency, intents, native, outcomes, terminal_auth
from viopay.payments.models import (
    Charge,
    ChargeStatus,
    IdempotencyRecord,
    IdempotencyState,
    IntentKind,
    IntentState,
    PaymentIntent,
)
from viopay.payments.processors import Authorization
from viopay.runtime import Runtime
from viopay.webhooks import outbox
from viopay.webhooks.models import EndpointStatus, WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

CHARGES = cast(Table, Charge.__table__)
INTENTS = cast(Table, PaymentIntent.__table__)
RECORDS = cast(Table, IdempotencyRecord.__table__)
EVENTS = cast(Table, AuditEvent.__table__)
DELIVERIES = cast(Table, WebhookDelivery.__table__)
ENDPOINTS = cast(Table, WebhookEndpoint.__table__)
KEY_SETS = cast(Table, KeySet.__table__)

DELIVERY_ID = re.compile(r"whd_[0-9a-z]{20}")
EVENT_ID = re.compile(r"evt_[0-9a-z]{20}")
METHOD, PATH = "POST", "/pos/charge"
FINGERPRINT = hashlib.sha256(b"one request, stored twice").hexdigest()


# --- the merchant: a terminal and webhook endpoints ------------------------------------------


@dataclass(frozen=True)
class Shop:
    terminal: kit.PosTerminal
    key_set_id: str
    every: str  # subscribes to every event
    reversals: str  # charge.reversed only
    # endpoints that must get nothing: a type the charge never emits, deleted, disabled, and
    # another merchant's endpoint that subscribes to everything
    silent: frozenset[str]


def create_endpoint(merchant: MerchantCtx, url: str, **fields: Any) -> str:
    created = expect_json(
        merchant.http.post("/merchant/webhook-endpoints", json={"url": url} | fields), 201
    )
    SEEN_SECRETS.add(created["secret"])
    return str(created["id"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@pytest.fixture
async def shop(
    server: Server,
    admin: Admin,
    make_merchant: MakeMerchant,
    runtime: Runtime,
    receiver: Receiver,
) -> AsyncIterator[Shop]:
    outbox.install()  # the portable path's deliveries come from the outbox's flush listener
    pos = await kit.activated_terminal(server, admin, make_merchant, runtime)
    merchant = pos.merchant
    every = create_endpoint(merchant, receiver.url)
    reversals = create_endpoint(merchant, receiver.url, event_types=["charge.reversed"])
    unsent = create_endpoint(merchant, receiver.url, event_types=["merchant_config.updated"])
    deleted = create_endpoint(merchant, receiver.url)
    gone = merchant.http.delete(f"/merchant/webhook-endpoints/{deleted}")
    assert gone.status_code == 204, gone.text
    disabled = create_endpoint(merchant, receiver.url)
    foreign = create_endpoint(make_merchant(), receiver.url)
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(ENDPOINTS)
            .where(ENDPOINTS.c.endpoint_id == disabled)
            .values(status=EndpointStatus.disabled)
        )
        key_set_id = present(
            await db.scalar(
                select(KEY_SETS.c.key_set_id).where(
                    KEY_SETS.c.terminal_id == pos.terminal_id,
                    KEY_SETS.c.status == KeySetStatus.active,
                )
            )
        )
    yield Shop(pos, key_set_id, every, reversals, frozenset({unsent, deleted, disabled, foreign}))
    pos.close()


# --- one charge request, as the flow's first transaction records it ---------------------------


@dataclass(frozen=True)
class Request:
    nonce: str
    key: str | None


def request_body(request: Request) -> dict[str, Any]:
    """What ``service.draft_request`` keeps of a charge: the same content for both paths, but
    for the nonce and the Idempotency-Key (unique per terminal)."""
    return {
        "amount": 1250,
        "tip_amount": 100,
        "tax_amount": 75,
        "surcharge_amount": 25,
        "currency": "USD",
        "reference": "order-4711",
        "entry_mode": "contactless",
        "card": {"brand": "visa", "bin": "424242", "last4": "4242", "expiry": "3012"},
        "nonce": request.nonce,
        "idempotency_key": request.key,
    }


def build_intent(shop: Shop, request: Request, now: datetime) -> PaymentIntent:
    pos = shop.terminal
    return intents.build(
        kind=IntentKind.charge,
        terminal_id=pos.terminal_id,
        device_id=pos.device.device_id,
        merchant_id=pos.merchant.merchant_id,
        charge_id=new_id("ch_"),
        now=now,
        request=request_body(request),
        idempotency_record_id=None,
    )


async def record_portably(
    db: AsyncSession, shop: Shop, request: Request, now: datetime
) -> PaymentIntent:
    """``idempotency.claim`` + ``intents.record`` (the flow's portable first transaction)."""
    record_id: int | None = None
    if request.key is not None:
        claimed = await idempotency.claim(
            db,
            terminal_id=shop.terminal.terminal_id,
            key=request.key,
            method=METHOD,
            path=PATH,
            fingerprint=FINGERPRINT,
            now=now,
        )
        assert isinstance(claimed, int)
        record_id = claimed
    intent = build_intent(shop, request, now)
    intent.idempotency_record_id = record_id
    await intents.insert_row(db, intent)
    return intent


async def record_natively(
    db: AsyncSession, shop: Shop, request: Request, now: datetime
) -> PaymentIntent:
    """``native.claim_and_record`` (``flow._claim_charge_natively``)."""
    intent = build_intent(shop, request, now)
    assert await native.claim_and_record(
        db,
        intent,
        key=request.key,
        method=METHOD,
        path=PATH,
        fingerprint=FINGERPRINT,
        expires_at=now + idempotency.RETENTION,
    )
    assert (intent.idempotency_record_id is None) is (request.key is None)
    return intent


def new_request(keyed: bool) -> Request:
    return Request(kit.new_nonce(), f"key-{kit.new_nonce()}" if keyed else None)


# --- reading back what a path wrote -----------------------------------------------------------


async def envelope_count(db: AsyncSession, shop: Shop) -> int:
    return int(
        present(
            await db.scalar(
                select(KEY_SETS.c.envelope_count).where(KEY_SETS.c.key_set_id == shop.key_set_id)
            )
        )
    )


async def table_rows(db: AsyncSession, table: Table, *where: Any) -> list[dict[str, Any]]:
    """Rows read with Core (never the session's identity map): the columns as stored."""
    found = await db.execute(select(table).where(*where))
    return [dict(row) for row in found.mappings()]


def without(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in names}


async def json_kinds(db: AsyncSession, table: Table, *where: Any) -> list[dict[str, str | None]]:
    """``json_typeof`` of each JSON column: SQL NULL (None) and JSON ``null`` read alike as
    Python None, and are not the same row."""
    columns = [c for c in table.columns if isinstance(c.type, JSON)]
    found = await db.execute(
        select(*(func.json_typeof(c).label(c.key) for c in columns)).where(*where)
    )
    return sorted((dict(row) for row in found.mappings()), key=repr)


def exact(value: Any) -> bytes:
    """The values as read, in their order and types (1250 is not 1250.0 nor True 1, keys keep
    their order), which ``==`` on dicts does not see. The JSON columns' stored text is not
    compared: SQLAlchemy writes it with json.dumps's spaces, native.py compact with orjson —
    the same JSON value, which is all any reader (SQLAlchemy, ``->``, ``::jsonb``) sees."""
    return orjson.dumps(value)


@dataclass(frozen=True)
class Written:
    """What one path wrote for one intent, with that request's own ids checked and left out,
    so two paths' are equal exactly when they wrote the same rows."""

    charge: list[dict[str, Any]]
    intent: dict[str, Any]
    record: dict[str, Any] | None
    events: dict[str, dict[str, Any]]  # by type (a charge's event types are distinct)
    deliveries: list[dict[str, Any]]  # sorted by (event type, endpoint)
    json_kinds: list[list[dict[str, str | None]]]  # of the intent, record and event rows


async def written(db: AsyncSession, intent: PaymentIntent, request: Request) -> Written:
    charge_id = intent.charge_id
    charges = []
    for row in await table_rows(db, CHARGES, CHARGES.c.charge_id == charge_id):
        assert row["processor_reference"] == intent.reference
        assert row["request_nonce"] == request.nonce
        assert row["idempotency_key"] == request.key
        own = ("charge_id", "processor_reference", "request_nonce", "idempotency_key")
        charges.append(without(row, *own))

    [intent_row] = await table_rows(db, INTENTS, INTENTS.c.intent_id == intent.intent_id)
    assert intent_row["reference"] == intent.reference and intent_row["charge_id"] == charge_id
    assert intent_row["idempotency_record_id"] == intent.idempotency_record_id
    assert intent_row["request"] == request_body(request)
    intent_row = without(intent_row, "intent_id", "reference", "charge_id", "idempotency_record_id")
    intent_row["request"] = without(intent_row["request"], "nonce", "idempotency_key")

    record: dict[str, Any] | None = None
    if intent.idempotency_record_id is not None:
        [record] = await table_rows(db, RECORDS, RECORDS.c.id == intent.idempotency_record_id)
        assert record["idempotency_key"] == request.key
        record = without(record, "id", "idempotency_key")
        if record["charge_id"] == charge_id:
            record["charge_id"] = "<this charge>"
        if isinstance(record["result"], dict) and record["result"].get("id") == charge_id:
            record["result"] = record["result"] | {"id": "<this charge>"}

    events: dict[str, dict[str, Any]] = {}
    event_types: dict[str, str] = {}
    for row in await table_rows(db, EVENTS, EVENTS.c.subject_id == charge_id):
        assert EVENT_ID.fullmatch(row["event_id"]), row["event_id"]
        assert row["type"] not in events
        event_types[row["event_id"]] = row["type"]
        events[row["type"]] = without(row, "event_id", "subject_id")

    deliveries = []
    for row in await table_rows(
        db, DELIVERIES, DELIVERIES.c.event_id.in_(list(event_types) or [""])
    ):
        assert DELIVERY_ID.fullmatch(row["delivery_id"]), row["delivery_id"]
        assert row["event_type"] == event_types[row["event_id"]]
        deliveries.append(without(row, "delivery_id", "event_id"))
    deliveries.sort(key=lambda d: (d["event_type"], d["endpoint_id"]))
    kinds = [
        await json_kinds(db, INTENTS, INTENTS.c.intent_id == intent.intent_id),
        await json_kinds(db, RECORDS, RECORDS.c.id == intent.idempotency_record_id),
        await json_kinds(db, EVENTS, EVENTS.c.subject_id == charge_id),
    ]
    return Written(charges, intent_row, record, events, deliveries, kinds)


# --- the same outcome, both ways --------------------------------------------------------------

APPROVED = Authorization(
    approved=True,
    response_code="00",
    authorization_code="A1B2C3",
    emv_response="8A023030910A0102030405060708090A",
    processor_reference="proc-approved",
)
DECLINED = Authorization(
    approved=False,
    response_code="51",
    decline_reason="insufficient_funds",
    emv_response="8A023531",
    processor_reference="proc-declined",
)


@dataclass(frozen=True)
class Case:
    authorization: Authorization | None
    undone: bool
    keyed: bool
    status: ChargeStatus
    stored_status: int


CASES = {
    "approved": Case(APPROVED, False, True, ChargeStatus.approved, 201),
    "declined": Case(DECLINED, False, True, ChargeStatus.declined, 201),
    "timed-out": Case(None, False, True, ChargeStatus.reversed, 200),
    "approved-undone": Case(APPROVED, True, True, ChargeStatus.reversed, 200),
    "approved-unkeyed": Case(APPROVED, False, False, ChargeStatus.approved, 201),
}


def _tomorrow() -> datetime:
    """The writes are committed (the native statement runs on a connection of its own), so
    they are dated a day ahead: no webhook worker or recovery of the running servers takes
    their deliveries or intents as due while the test reads them."""
    return datetime.now(UTC) + timedelta(days=1)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_native_outcome_writes_the_portable_rows(
    shop: Shop, runtime: Runtime, case: Case
) -> None:
    now = _tomorrow()
    stored_at = now + timedelta(seconds=2, microseconds=123_457)
    portable_request, native_request = new_request(case.keyed), new_request(case.keyed)
    async with runtime.sessions() as db, db.begin():
        portable = await record_portably(db, shop, portable_request, now)
        natively = await record_natively(db, shop, native_request, now)
    async with runtime.sessions() as db:
        claimed = await written(db, portable, portable_request)
        assert claimed == await written(db, natively, native_request), "claims differ"
        assert exact(claimed) == exact(await written(db, natively, native_request))
        before = await envelope_count(db, shop)
    async with runtime.sessions() as db, db.begin():
        stored = present(
            await outcomes.store_charge(
                db, portable, case.authorization, undone=case.undone, now=stored_at
            )
        )
    async with runtime.sessions() as db:
        between = await envelope_count(db, shop)
    assert runtime.native is not None
    tallied = present(
        await outcomes.store_live_charge(
            runtime.sessions,
            runtime.native,
            natively,
            case.authorization,
            undone=case.undone,
            now=stored_at,
        )
    )
    async with runtime.sessions() as db:
        after = await envelope_count(db, shop)
        by_portable = await written(db, portable, portable_request)
        by_native = await written(db, natively, native_request)

    # What each path answered.
    assert (tallied.status, tallied.timed_out) == (stored.status, stored.timed_out)
    assert tallied.status == case.stored_status and tallied.charge_id == natively.charge_id
    assert tallied.plaintext == stored.plaintext | {"id": natively.charge_id}

    # The key set's tally: untouched by an outcome (counted with the claim, flow._count_up_front).
    assert after == between == before

    # The rows, column by column.
    assert by_native.charge == by_portable.charge
    assert by_native.intent == by_portable.intent
    assert by_native.record == by_portable.record
    assert by_native.events == by_portable.events
    assert by_native.deliveries == by_portable.deliveries
    assert by_native.json_kinds == by_portable.json_kinds
    assert by_native == by_portable
    assert exact(by_native) == exact(by_portable)

    # And they are the rows meant (equal and empty would say nothing).
    [charge] = by_native.charge
    assert charge["status"] is case.status
    assert charge["created_at"] == charge["updated_at"] == stored_at
    assert (charge["amount"], charge["tip_amount"], charge["tax_amount"]) == (1250, 100, 75)
    assert (charge["surcharge_amount"], charge["amount_refunded"]) == (25, 0)
    authorization = case.authorization
    assert charge["emv_response"] == (authorization.emv_response if authorization else None)
    assert by_native.intent["state"] is IntentState.done
    assert by_native.intent["outcome"] == {
        "status": case.status.value,
        "response_code": charge["response_code"],
    }
    assert by_native.intent["created_at"] == now and by_native.intent["finished_at"] == stored_at
    if case.keyed:
        record = present(by_native.record)
        assert record["state"] is IdempotencyState.done
        assert record["status_code"] == case.stored_status
        assert record["charge_id"] == "<this charge>"
        assert record["result"]["id"] == "<this charge>"
        assert record["result"]["status"] == case.status.value
    else:
        assert by_native.record is None
    reversed_ = case.status is ChargeStatus.reversed
    assert set(by_native.events) == {"charge.created"} | (
        {"charge.reversed"} if reversed_ else set()
    )
    for event in by_native.events.values():
        assert (event["actor_type"], event["actor_id"]) == (
            "device",
            shop.terminal.device.device_id,
        )
        assert event["subject_type"] == "charge"
        assert event["merchant_id"] == shop.terminal.merchant.merchant_id
        assert event["created_at"] == stored_at
        assert event["data"]["terminal_id"] == shop.terminal.terminal_id
    assert by_native.events["charge.created"]["data"]["status"] == case.status.value

    expected = [("charge.created", shop.every)]
    if reversed_:
        expected += [("charge.reversed", e) for e in sorted((shop.every, shop.reversals))]
    assert [(d["event_type"], d["endpoint_id"]) for d in by_native.deliveries] == expected
    assert not {d["endpoint_id"] for d in by_native.deliveries} & shop.silent
    for delivery in by_native.deliveries:
        assert delivery["merchant_id"] == shop.terminal.merchant.merchant_id
        assert (delivery["status"].value, delivery["attempts"], delivery["schedule_step"]) == (
            "pending",
            0,
            0,
        )
        assert delivery["next_attempt_at"] == delivery["created_at"] == stored_at


@pytest.mark.parametrize(
    "case", [CASES["approved"], CASES["timed-out"]], ids=["approved", "timed-out"]
)
async def test_native_outcome_of_a_closed_intent_writes_nothing(
    shop: Shop, runtime: Runtime, case: Case
) -> None:
    now = _tomorrow()
    closed_at, stored_at = now + timedelta(seconds=1), now + timedelta(seconds=2)
    request = new_request(keyed=True)
    merchant_id = shop.terminal.merchant.merchant_id
    async with runtime.sessions() as db, db.begin():
        intent = await record_natively(db, shop, request, now)
        assert await intents.close(
            db,
            intent.intent_id,
            state=IntentState.abandoned,
            outcome={"reason": "processor_error"},
            now=closed_at,
        )
    async with runtime.sessions() as db:
        before = await written(db, intent, request)
        count = await envelope_count(db, shop)
        merchant_events = await table_rows(db, EVENTS, EVENTS.c.merchant_id == merchant_id)
        merchant_deliveries = await table_rows(
            db, DELIVERIES, DELIVERIES.c.merchant_id == merchant_id
        )
    assert runtime.native is not None
    stored = await outcomes.store_live_charge(
        runtime.sessions,
        runtime.native,
        intent,
        case.authorization,
        undone=case.undone,
        now=stored_at,
    )
    async with runtime.sessions() as db:
        after = await written(db, intent, request)
        count_after = await envelope_count(db, shop)
        events_after = await table_rows(db, EVENTS, EVENTS.c.merchant_id == merchant_id)
        deliveries_after = await table_rows(db, DELIVERIES, DELIVERIES.c.merchant_id == merchant_id)
    async with runtime.sessions() as db, db.begin():
        # the portable path agrees: nothing to store either
        assert (
            await outcomes.store_charge(
                db, intent, case.authorization, undone=case.undone, now=stored_at
            )
            is None
        )

    assert stored is None
    assert after == before and after.charge == [] and after.events == {}
    assert after.deliveries == []
    assert events_after == merchant_events and deliveries_after == merchant_deliveries
    assert count_after == count
    assert after.intent["state"] is IntentState.abandoned
    assert after.intent["outcome"] == {"reason": "processor_error"}
    assert after.intent["finished_at"] == closed_at
    record = present(after.record)
    assert record["state"] is IdempotencyState.in_progress
    assert (record["status_code"], record["result"], record["charge_id"]) == (None, None, None)


async def test_the_remembered_claim_writes_the_portable_rows(shop: Shop, runtime: Runtime) -> None:
    """``native.claim_remembered`` (``flow._claim_remembered``) claims and records as the
    portable path does, and writes nothing once the lookup row it was given has changed."""
    now = _tomorrow()
    pos = shop.terminal
    portable_request, remembered_request = new_request(True), new_request(True)
    params = {"terminal_id": pos.terminal_id, "key_id": pos.keys.hmac_key_id}
    async with runtime.sessions() as db, db.begin():
        portable = await record_portably(db, shop, portable_request, now)
        lookup = present(await native.fetch_record(db, terminal_auth.LOOKUP_PG, params))
    assert runtime.native is not None
    sql = native.claim_remembered_sql(terminal_auth.LOOKUP_PG)

    async def claim(request: Request, lookup: Any) -> tuple[PaymentIntent, native.RememberedClaim]:
        assert runtime.native is not None and request.key is not None
        intent = build_intent(shop, request, now)
        return intent, await native.claim_remembered(
            runtime.native,
            sql,
            lookup=lookup,
            intent=intent,
            max_envelopes=runtime.settings.keyset_max_envelopes,
            key=request.key,
            method=METHOD,
            path=PATH,
            fingerprint=FINGERPRINT,
            expires_at=now + idempotency.RETENTION,
            envelopes=1,
            seen_at=None,
            version=lookup["app_version"],
            touch=False,
        )

    async with runtime.sessions() as db:
        tally = await envelope_count(db, shop)
    remembered, claimed = await claim(remembered_request, lookup)
    assert claimed.fresh and claimed.record_id == remembered.idempotency_record_id is not None
    async with runtime.sessions() as db:  # the request's envelope and the answer's, counted
        assert await envelope_count(db, shop) == tally + 2
    async with runtime.sessions() as db:
        by_portable = await written(db, portable, portable_request)
        by_remembered = await written(db, remembered, remembered_request)
    assert by_remembered == by_portable and exact(by_remembered) == exact(by_portable)
    assert by_remembered.intent["state"] is IntentState.pending

    again, held = await claim(remembered_request, lookup)  # the same key: its record answers
    assert held.fresh and held.record_id is None and held.existing is not None
    assert native.key_state(held.existing).state is IdempotencyState.in_progress
    async with runtime.sessions() as db:
        assert not await table_rows(db, INTENTS, INTENTS.c.intent_id == again.intent_id)
        assert await envelope_count(db, shop) == tally + 2  # a key in progress counts nothing

    # No room for the request's envelope and the answer's: nothing claimed, nothing counted
    # (the flow then refuses afresh, 409); the lookup itself still reads the same.
    limit = runtime.settings.keyset_max_envelopes
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(KEY_SETS)
            .where(KEY_SETS.c.key_set_id == shop.key_set_id)
            .values(envelope_count=limit - 1)
        )
    full_lookup = dict(lookup) | {"envelope_count": limit - 1}
    refused, full = await claim(new_request(True), full_lookup)
    assert full.fresh and full.record_id is None and full.existing is None
    async with runtime.sessions() as db:
        assert not await table_rows(db, INTENTS, INTENTS.c.intent_id == refused.intent_id)
        assert await envelope_count(db, shop) == limit - 1
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(KEY_SETS)
            .where(KEY_SETS.c.key_set_id == shop.key_set_id)
            .values(envelope_count=tally + 2)
        )

    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(KEY_SETS)
            .where(KEY_SETS.c.key_set_id == shop.key_set_id)
            .values(rotate_requested_at=now)
        )
    changed, stale = await claim(new_request(True), lookup)
    assert not stale.fresh and stale.record_id is None and stale.existing is None
    async with runtime.sessions() as db:
        assert not await table_rows(db, INTENTS, INTENTS.c.intent_id == changed.intent_id)
