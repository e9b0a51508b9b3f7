"""Charge services with an injected clock (PROTOCOL §4.2-§4.4): the 24 h window, reverse-by-key,
audit events, and the timeout's reversal. Charges are made through a real server; the services
then run in-process on the same database (``runtime``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from support import charge_kit as kit
from support.helpers import present
from viopay.audit import AuditEvent
from viopay.errors import ChargeNotCancelable, NotFound
from viopay.payments import flow, reversals
from viopay.payments.models import Charge, ChargeStatus, IntentKind, PaymentIntent
from viopay.payments.processors import ProcessorFailure, SandboxProcessor
from viopay.payments.service import TerminalScope
from viopay.runtime import Runtime


def scope_of(terminal: kit.PosTerminal) -> TerminalScope:
    return TerminalScope(
        terminal.terminal_id, terminal.device.device_id, terminal.merchant.merchant_id, "USD"
    )


async def created_at(runtime: Runtime, charge_id: str) -> datetime:
    async with runtime.sessions() as db:
        return present(await db.get(Charge, charge_id)).created_at


@pytest.mark.parametrize("target", [ChargeStatus.canceled, ChargeStatus.reversed])
async def test_cancel_and_reverse_close_after_24_hours(
    terminal: kit.PosTerminal, runtime: Runtime, target: Any
) -> None:
    charge = terminal.charge(500).json()
    created = await created_at(runtime, charge["id"])
    async with runtime.sessions() as db, db.begin():
        with pytest.raises(ChargeNotCancelable) as caught:
            await reversals.plan_undo(
                db,
                merchant_id=scope_of(terminal).merchant_id,
                charge_id=charge["id"],
                target=target,
                now=created + timedelta(hours=24),
            )
    assert "24 h" in caught.value.detail
    async with runtime.sessions() as db, db.begin():
        plan = await reversals.plan_undo(
            db,
            merchant_id=scope_of(terminal).merchant_id,
            charge_id=charge["id"],
            target=target,
            now=created + timedelta(hours=23, minutes=59),
        )
        assert plan.act and plan.charge.status is ChargeStatus.approved


async def test_reverse_by_key_after_24_hours_answers_the_charge_unchanged(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    charge = terminal.charge(500, idempotency_key="old-one").json()
    created = await created_at(runtime, charge["id"])
    async with (
        runtime.sessions() as db,
        db.begin(),
    ):  # the key's record is gone; found by the charge
        late = await reversals.plan_reverse_by_key(
            db,
            scope=scope_of(terminal),
            key="old-one",
            now=created + timedelta(hours=25),
            stale_after=timedelta(seconds=60),
        )
        assert late is not None and late.charge.charge_id == charge["id"] and not late.act
    async with runtime.sessions() as db, db.begin():
        found = await reversals.plan_reverse_by_key(
            db,
            scope=scope_of(terminal),
            key="old-one",
            now=created + timedelta(hours=1),
            stale_after=timedelta(seconds=60),
        )
        assert found is not None and found.act and found.charge.charge_id == charge["id"]


async def test_cancel_of_another_merchants_charge_is_not_found(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    charge = terminal.charge(500).json()
    async with runtime.sessions() as db, db.begin():
        with pytest.raises(NotFound):
            await reversals.plan_undo(
                db,
                merchant_id="mer_other",
                charge_id=charge["id"],
                target=ChargeStatus.canceled,
                now=await created_at(runtime, charge["id"]),
            )


async def test_every_state_change_is_an_audit_event(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
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
        super().__init__()
        self.failures, self.calls = failures, 0

    async def reverse(self, charge: Any, *, reference: str) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise ProcessorFailure("down")


def _charge_intent() -> PaymentIntent:
    return PaymentIntent(
        intent_id="pi_1",
        kind=IntentKind.charge,
        reference="vpr_1",
        terminal_id="TID-1",
        device_id="POS-1",
        merchant_id="mer_1",
        charge_id="ch_1",
        request={"amount": 500, "currency": "USD"},
    )


async def test_a_timeout_is_reversed_with_retries() -> None:
    flaky = FlakyReversals(failures=2)
    assert await flow.reverse_authorization(flaky, _charge_intent()) is True
    assert flaky.calls == 3
    down = FlakyReversals(failures=99)
    # Not confirmed: the intent stays pending and recovery settles it with the processor.
    assert await flow.reverse_authorization(down, _charge_intent()) is False
    assert down.calls == flow.REVERSAL_ATTEMPTS
