"""Charge services with an injected clock (PROTOCOL §4.2-§4.4): the 24 h window, reverse-by-key,
audit events, and the timeout's reversal. Charges are made through a real server; the services
then run in-process on the same database (``runtime``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

import charge_kit as kit
from viopay.errors import ChargeNotCancelable, NotFound
from viopay.merchants.models import AuditEvent
from viopay.payments import reversals, service
from viopay.payments.models import Charge, ChargeStatus
from viopay.payments.processors import ProcessorFailure, SandboxProcessor
from viopay.payments.service import TerminalScope


@pytest.fixture
async def terminal(server, admin, make_merchant, runtime):
    pos = await kit.activated_terminal(server, admin, make_merchant, runtime)
    yield pos
    pos.close()


def scope_of(terminal) -> TerminalScope:
    return TerminalScope(
        terminal.terminal_id, terminal.device.device_id, terminal.merchant.merchant_id, "USD"
    )


async def created_at(runtime, charge_id):
    async with runtime.sessions() as db:
        return (await db.get(Charge, charge_id)).created_at


@pytest.mark.parametrize("undo", [reversals.cancel_charge, reversals.reverse_charge])
async def test_cancel_and_reverse_close_after_24_hours(terminal, runtime, undo):
    charge = terminal.charge(500).json()
    created = await created_at(runtime, charge["id"])
    async with runtime.sessions() as db, db.begin():
        with pytest.raises(ChargeNotCancelable) as caught:
            await undo(
                db,
                processor=SandboxProcessor(),
                scope=scope_of(terminal),
                charge_id=charge["id"],
                now=created + timedelta(hours=24),
            )
    assert "24 h" in caught.value.detail
    async with runtime.sessions() as db, db.begin():
        done = await undo(
            db,
            processor=SandboxProcessor(),
            scope=scope_of(terminal),
            charge_id=charge["id"],
            now=created + timedelta(hours=23, minutes=59),
        )
        assert done.status in (ChargeStatus.canceled, ChargeStatus.reversed)
    assert terminal.get(charge["id"]).json()["status"] == done.status.value


async def test_reverse_by_key_after_24_hours_answers_the_charge_unchanged(terminal, runtime):
    charge = terminal.charge(500, idempotency_key="old-one").json()
    created = await created_at(runtime, charge["id"])
    async with (
        runtime.sessions() as db,
        db.begin(),
    ):  # the key's record is gone; found by the charge
        late = await reversals.reverse_by_key(
            db,
            processor=SandboxProcessor(),
            scope=scope_of(terminal),
            key="old-one",
            now=created + timedelta(hours=25),
        )
        assert (
            late is not None
            and late.charge_id == charge["id"]
            and late.status is ChargeStatus.approved
        )
    async with runtime.sessions() as db, db.begin():
        found = await reversals.reverse_by_key(
            db,
            processor=SandboxProcessor(),
            scope=scope_of(terminal),
            key="old-one",
            now=created + timedelta(hours=1),
        )
        assert found is not None and found.status is ChargeStatus.reversed


async def test_cancel_of_another_merchants_charge_is_not_found(terminal, runtime):
    charge = terminal.charge(500).json()
    stranger = TerminalScope("TID-000000", "POS-00000000", "mer_other", "USD")
    async with runtime.sessions() as db, db.begin():
        with pytest.raises(NotFound):
            await reversals.cancel_charge(
                db,
                processor=SandboxProcessor(),
                scope=stranger,
                charge_id=charge["id"],
                now=await created_at(runtime, charge["id"]),
            )


async def test_every_state_change_is_an_audit_event(terminal, runtime):
    first = terminal.charge(1000).json()
    terminal.refund(first["id"], {"amount": 100})
    second = terminal.charge(1000).json()
    terminal.cancel(second["id"])
    third = terminal.charge(1000).json()
    terminal.reverse(third["id"])
    timeout = terminal.charge(1000, card={"pan": "4000000000000259", "expiry": "3012"}).problem()[
        "charge_id"
    ]
    async with runtime.sessions() as db:
        rows = (
            await db.scalars(
                select(AuditEvent)
                .where(AuditEvent.merchant_id == terminal.merchant.merchant_id)
                .order_by(AuditEvent.created_at)
            )
        ).all()
    events = [(e.type, e.subject_id) for e in rows if e.subject_type in ("charge", "refund")]
    refund_id = next(e.subject_id for e in rows if e.type == "refund.created")
    assert ("charge.created", first["id"]) in events and ("charge.refunded", first["id"]) in events
    assert ("refund.created", refund_id) in events
    assert ("charge.canceled", second["id"]) in events and (
        "charge.reversed",
        third["id"],
    ) in events
    assert ("charge.created", timeout) in events and ("charge.reversed", timeout) in events
    actors = {(e.actor_type, e.actor_id) for e in rows if e.subject_type in ("charge", "refund")}
    assert actors == {("device", terminal.device.device_id)}
    listed = terminal.merchant.http.get("/merchant/events", params={"limit": 100})
    if listed.status_code == 200:  # the merchant API shows them too
        assert {"charge.created", "refund.created"} <= {e["type"] for e in listed.json()["data"]}


class FlakyReversals(SandboxProcessor):
    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def reverse(self, charge):
        self.calls += 1
        if self.calls <= self.failures:
            raise ProcessorFailure("down")


async def test_a_timeout_is_reversed_with_retries(terminal):
    draft = service.build_draft(
        scope=scope_of(terminal),
        plaintext={"amount": 500, "currency": "USD", "entry_mode": "chip"},
        card={"pan": "4000000000000259", "expiry": "3012"},
        tpk=None,
        surcharge_rule={"enabled": False},
        nonce=kit.new_nonce(),
        idempotency_key=None,
    )
    flaky = FlakyReversals(failures=2)
    assert await service.authorize(flaky, draft, now=datetime.now(UTC)) is None
    assert flaky.calls == 3
    down = FlakyReversals(failures=99)
    assert (
        await service.authorize(down, draft, now=datetime.now(UTC)) is None
    )  # stored reversed; logged
    assert down.calls == service.REVERSAL_ATTEMPTS
