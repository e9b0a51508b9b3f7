"""The transactional outbox: every merchant event gets its deliveries in the same transaction.

Every event is written through :func:`viopay.audit.record_event` (``session.add``). A listener
on the session's flush finds the events just inserted and, in the same transaction, inserts
one ``pending`` delivery per enabled endpoint of their merchant that subscribes to the type.
So a state change, its event and its deliveries commit or roll back together; a server killed
at any instant loses none of them, and the workers (:mod:`viopay.webhooks.worker`) find them
after a restart.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import bindparam, event, insert, select
from sqlalchemy.orm import Session

from viopay.audit import AuditEvent
from viopay.ids import new_id
from viopay.webhooks.models import DeliveryStatus, EndpointStatus, WebhookDelivery, WebhookEndpoint

_PENDING_KEY = "viopay.webhooks.pending"
_wakers: set[asyncio.Event] = set()


def subscribes(event_types: list[str] | None, type_: str) -> bool:
    return event_types is None or type_ in event_types


# Built once (issue 10): every flush that writes an event runs it.
_ENDPOINTS = select(
    WebhookEndpoint.endpoint_id, WebhookEndpoint.merchant_id, WebhookEndpoint.event_types
).where(
    WebhookEndpoint.merchant_id.in_(bindparam("merchants", expanding=True)),
    WebhookEndpoint.status == EndpointStatus.enabled,
)
_INSERT_DELIVERIES = insert(WebhookDelivery)


def _fan_out(session: Session, _flush_context: Any) -> None:
    events = [o for o in session.new if isinstance(o, AuditEvent) and o.merchant_id]
    if not events:
        return
    merchants = {e.merchant_id for e in events}
    connection = session.connection()
    endpoints = connection.execute(_ENDPOINTS, {"merchants": list(merchants)}).all()
    rows = [
        {
            "delivery_id": new_id("whd_"),
            "endpoint_id": endpoint_id,
            "merchant_id": e.merchant_id,
            "event_id": e.event_id,
            "event_type": e.type,
            "status": DeliveryStatus.pending,
            "attempts": 0,
            "schedule_step": 0,
            "next_attempt_at": e.created_at,
            "created_at": e.created_at,
        }
        for e in events
        for endpoint_id, merchant_id, event_types in endpoints
        if merchant_id == e.merchant_id and subscribes(event_types, e.type)
    ]
    if rows:
        connection.execute(_INSERT_DELIVERIES, rows)
        session.info[_PENDING_KEY] = True


#: The deliveries of the events of a CTE named ``events`` (``event_id``, ``type``,
#: ``merchant_id``, ``created_at``): one ``pending`` delivery per enabled endpoint of the event's
#: merchant that subscribes to its type, as :func:`_fan_out` makes them, for a statement that
#: writes its events itself (``deliveries AS (...)``; :mod:`viopay.devices.quick`).
DELIVERIES_OF_EVENTS = """
    INSERT INTO webhook_deliveries (delivery_id, endpoint_id, merchant_id, event_id, event_type,
        status, attempts, schedule_step, next_attempt_at, created_at)
    SELECT 'whd_' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 20), w.endpoint_id,
        w.merchant_id, e.event_id, e.type, 'pending', 0, 0, e.created_at, e.created_at
    FROM events AS e JOIN webhook_endpoints AS w
        ON w.merchant_id = e.merchant_id AND w.status = 'enabled'
    WHERE w.event_types IS NULL OR json_typeof(w.event_types) = 'null'
        OR w.event_types::jsonb ? e.type
    RETURNING 1
"""


def wake() -> None:
    """Deliveries were committed by a statement of their own (the charge's outcome on
    PostgreSQL, :mod:`viopay.payments.native`): wake this process's workers, as a commit of
    :func:`_fan_out`'s does."""
    for waker in _wakers:
        waker.set()


def _after_commit(session: Session) -> None:
    if session.info.pop(_PENDING_KEY, False):
        wake()


def _after_rollback(session: Session, _previous: Any) -> None:
    session.info.pop(_PENDING_KEY, None)


def install() -> None:
    """Listen on every ORM session of this process (idempotent)."""
    if not event.contains(Session, "after_flush", _fan_out):
        event.listen(Session, "after_flush", _fan_out)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", _after_rollback)


def add_waker(waker: asyncio.Event) -> None:
    """``waker`` is set whenever this process commits new deliveries (the worker wakes early)."""
    _wakers.add(waker)


def remove_waker(waker: asyncio.Event) -> None:
    _wakers.discard(waker)
