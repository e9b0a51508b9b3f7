"""The worker's rules with a controlled clock, on both backends' databases: the schedule with
its jitter, one attempt at a time (the lease), an outcome stored only under our lease, a
rollback taking the deliveries with the event, and an endpoint disabled after 3 days.

Times are set in 2100 so the servers' own workers (same database) never find these due."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from viopay.audit import SYSTEM, Actor, AuditEvent, record_event
from viopay.merchants.service import create_merchant
from viopay.metrics import WEBHOOK_BACKLOG
from viopay.runtime import Runtime
from viopay.webhooks import outbox
from viopay.webhooks.models import DeliveryStatus, EndpointStatus, WebhookDelivery, WebhookEndpoint
from viopay.webhooks.service import create_endpoint
from viopay.webhooks.worker import (
    Outcome,
    claim_due,
    measure_backlog,
    next_delay,
    record_outcome,
)

T0 = datetime(2100, 1, 1, tzinfo=UTC)
OPERATOR = Actor.operator("test")


def test_schedule_with_jitter() -> None:
    rng = random.Random(7)
    schedule = (5, 300, 1800)
    for step, base in enumerate(schedule, start=1):
        delays = [next_delay(schedule, step, rng=rng) for _ in range(200)]
        assert all(d is not None and base * 0.9 <= d <= base * 1.1 for d in delays)
        assert len({round(d or 0, 6) for d in delays}) > 1  # jittered, not fixed
    assert next_delay(schedule, 4, rng=rng) is None


async def _endpoint(runtime: Runtime) -> tuple[str, str]:
    outbox.install()
    async with runtime.sessions() as db, db.begin():
        merchant = await create_merchant(
            db,
            name="Clock shop",
            currency="USD",
            country="US",
            timezone="UTC",
            actor=OPERATOR,
            now=T0,
        )
        endpoint, _secret = await create_endpoint(
            db,
            wrapper=runtime.wrapper,
            merchant_id=merchant.merchant_id,
            url="http://127.0.0.1:9/never",
            event_types=["device.renamed"],
            description=None,
            actor=OPERATOR,
            now=T0,
        )
    return merchant.merchant_id, endpoint.endpoint_id


def _event(db: Any, merchant_id: str, now: datetime) -> AuditEvent:
    return record_event(
        db,
        type="device.renamed",
        actor=SYSTEM,
        subject_type="device",
        subject_id="POS-00000000",
        merchant_id=merchant_id,
        now=now,
    )


@pytest.mark.backend
async def test_outbox_commits_and_rolls_back_with_the_event(runtime: Runtime) -> None:
    merchant_id, endpoint_id = await _endpoint(runtime)
    count = (
        select(func.count())
        .select_from(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
    )
    async with runtime.sessions() as db:
        async with db.begin():
            _event(db, merchant_id, T0)
            await db.flush()
            assert await db.scalar(count) == 1
            await db.rollback()
    async with runtime.sessions() as db:
        assert await db.scalar(count) == 0
    async with runtime.sessions() as db, db.begin():
        event = _event(db, merchant_id, T0)
    async with runtime.sessions() as db:
        (delivery,) = (
            await db.scalars(
                select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
            )
        ).all()
    assert delivery.event_id == event.event_id and delivery.status is DeliveryStatus.pending
    assert delivery.next_attempt_at == T0


@pytest.mark.backend
async def test_lease_schedule_and_three_day_disable(runtime: Runtime) -> None:
    merchant_id, endpoint_id = await _endpoint(runtime)
    async with runtime.sessions() as db, db.begin():
        event = _event(db, merchant_id, T0)
    rng = random.Random(1)

    def mine(claims: list[Any]) -> list[Any]:
        return [c for c in claims if c.delivery_id in ids]

    async with runtime.sessions() as db:
        ids = set(
            (
                await db.scalars(
                    select(WebhookDelivery.delivery_id).where(
                        WebhookDelivery.event_id == event.event_id
                    )
                )
            ).all()
        )
    (claim,) = mine(await claim_due(runtime, owner="a", limit=100, now=T0))
    assert not claim.manual
    # Leased: nobody else (another process, or this one) attempts it meanwhile.
    assert mine(await claim_due(runtime, owner="b", limit=100, now=T0 + timedelta(seconds=5))) == []
    # An outcome under a lease we do not hold is not stored.
    assert not await record_outcome(runtime, claim, Outcome(500, None), owner="b", rng=rng, now=T0)
    assert await record_outcome(runtime, claim, Outcome(500, None), owner="a", rng=rng, now=T0)
    async with runtime.sessions() as db:
        delivery = await db.get(WebhookDelivery, claim.delivery_id)
        endpoint = await db.get(WebhookEndpoint, endpoint_id)
    assert delivery is not None and endpoint is not None
    assert (
        delivery.attempts == 1 and delivery.schedule_step == 1 and delivery.last_status_code == 500
    )
    assert delivery.next_attempt_at is not None
    assert T0 + timedelta(seconds=0.9) <= delivery.next_attempt_at <= T0 + timedelta(seconds=1.1)
    assert endpoint.failing_since == T0 and endpoint.status is EndpointStatus.enabled

    # A process that died holding a lease: the delivery is taken again once the lease ends.
    later = T0 + timedelta(seconds=2)
    (claim,) = mine(await claim_due(runtime, owner="dead", limit=100, now=later))
    assert (
        mine(await claim_due(runtime, owner="c", limit=100, now=later + timedelta(seconds=10)))
        == []
    )
    (claim,) = mine(
        await claim_due(runtime, owner="c", limit=100, now=later + timedelta(seconds=31))
    )

    # Three days of failures disable the endpoint (event webhook_endpoint.disabled, actor system).
    end = T0 + timedelta(days=3, seconds=1)
    assert await record_outcome(
        runtime, claim, Outcome(None, "timeout"), owner="c", rng=rng, now=end
    )
    async with runtime.sessions() as db:
        endpoint = await db.get(WebhookEndpoint, endpoint_id)
        disabled = (
            await db.scalars(
                select(AuditEvent).where(
                    AuditEvent.subject_id == endpoint_id,
                    AuditEvent.type == "webhook_endpoint.disabled",
                )
            )
        ).one()
    assert endpoint is not None and endpoint.status is EndpointStatus.disabled
    assert disabled.actor_type == "system"
    # A disabled endpoint's pending deliveries wait.
    assert mine(await claim_due(runtime, owner="c", limit=100, now=end + timedelta(days=1))) == []


@pytest.mark.backend
async def test_the_backlog_counts_due_deliveries_and_the_oldest_wait(runtime: Runtime) -> None:
    """``viopay_webhook_backlog`` and ``viopay_webhook_oldest_due_seconds``: deliveries due at a
    moment (pending, their time come, endpoint enabled) and how long the oldest has waited.

    Measured as of 2000, with deliveries of 1990 leased until 2200 in the transaction that makes
    them, so the servers' own workers (real time, same database) never attempt them and no other
    test's delivery is due then."""
    now = datetime(2000, 1, 1, tzinfo=UTC)
    long_ago = datetime(1990, 1, 1, tzinfo=UTC)
    before = await measure_backlog(runtime, now=now)
    merchant_id, endpoint_id = await _endpoint(runtime)
    async with runtime.sessions() as db, db.begin():
        _event(db, merchant_id, long_ago)
        _event(db, merchant_id, long_ago + timedelta(days=1))
        _event(db, merchant_id, now + timedelta(seconds=1))  # not due yet
        await db.flush()
        await db.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .values(lease_owner="test", lease_until=datetime(2200, 1, 1, tzinfo=UTC))
        )
    after = await measure_backlog(runtime, now=now)
    assert after.due == before.due + 2
    assert after.oldest_due_seconds == (now - long_ago).total_seconds()
    assert WEBHOOK_BACKLOG._value.get() == after.due  # what /metrics shows
    async with runtime.sessions() as db, db.begin():
        endpoint = await db.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        endpoint.status = EndpointStatus.disabled  # a disabled endpoint's deliveries wait
    assert await measure_backlog(runtime, now=now) == before
