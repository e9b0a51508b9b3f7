"""Delivery workers (PROTOCOL §7): every server process attempts due deliveries in parallel.

A pass claims due deliveries in one short transaction (``SELECT … FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so two processes never pick the same row; the embedded default has one process)
and stamps a lease on them; the HTTP attempt then runs outside any transaction, and its
outcome is stored only while the lease is still ours. A process killed mid-attempt leaves a
lease that ends after :data:`LEASE`, and the delivery is attempted again (at least once).

One shared ``httpx.AsyncClient`` (connection limits, no redirects) serves every attempt;
at most ``VIOPAY_WEBHOOK_CONCURRENCY`` run at once, each bounded by :data:`TIMEOUT`, all on
the event loop's spare time: a slow or dead receiver holds a task, never a request.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import structlog
from sqlalchemy import ColumnElement, and_, func, or_, select, update

from viopay.audit import AuditEvent
from viopay.crypto.webhooks import webhook_signature
from viopay.ids import utcnow
from viopay.metrics import ORIGIN, WEBHOOK_BACKLOG, WEBHOOK_OLDEST_DUE
from viopay.runtime import Runtime
from viopay.webhooks import outbox
from viopay.webhooks.models import (
    DeliveryStatus,
    EndpointStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from viopay.webhooks.schemas import event_body
from viopay.webhooks.service import disable_endpoint, signing_secrets
from viopay.webhooks.urls import Resolver, Target, UnsafeTarget, check_target, system_resolver

log = structlog.get_logger("viopay.webhooks")

TIMEOUT = 10.0
LEASE = timedelta(seconds=3 * TIMEOUT)
DISABLE_AFTER = timedelta(days=3)
JITTER = 0.1
USER_AGENT = "Viopay-Webhooks/1"
BACKLOG_EVERY = 15.0  # seconds between two measures of the backlog by one process


@dataclass(frozen=True)
class Claim:
    delivery_id: str
    manual: bool


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def next_delay(schedule: tuple[int, ...], step: int, *, rng: random.Random) -> float | None:
    """Seconds until the retry after scheduled attempt ``step`` (1-based), ±10 %; None: no more."""
    if step > len(schedule):
        return None
    return schedule[step - 1] * rng.uniform(1 - JITTER, 1 + JITTER)


def build_client(concurrency: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(TIMEOUT),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
    )


def _scheduled(now: datetime) -> ColumnElement[bool]:
    """A delivery whose scheduled attempt is due at ``now`` (with its endpoint joined)."""
    return and_(
        WebhookDelivery.status == DeliveryStatus.pending,
        WebhookDelivery.next_attempt_at <= now,
        WebhookEndpoint.status == EndpointStatus.enabled,
    )


async def claim_due(runtime: Runtime, *, owner: str, limit: int, now: datetime) -> list[Claim]:
    """Take up to ``limit`` due deliveries under a lease (one short transaction)."""
    d, e = WebhookDelivery, WebhookEndpoint
    scheduled = _scheduled(now)
    async with runtime.sessions() as db, db.begin():
        rows = (
            await db.execute(
                select(d.delivery_id, scheduled)
                .join(e, e.endpoint_id == d.endpoint_id)
                .where(
                    e.status != EndpointStatus.deleted,
                    or_(scheduled, d.manual_at <= now),
                    or_(d.lease_until.is_(None), d.lease_until < now),
                )
                .order_by(d.next_attempt_at)
                .limit(limit)
                .with_for_update(of=d, skip_locked=True)
            )
        ).all()
        if not rows:
            return []
        await db.execute(
            update(d)
            .where(d.delivery_id.in_([r[0] for r in rows]))
            .values(lease_owner=owner, lease_until=now + LEASE)
        )
    return [Claim(r[0], manual=not r[1]) for r in rows]


async def post(
    client: httpx.AsyncClient, target: Target, *, headers: dict[str, str], body: bytes
) -> Outcome:
    """One POST to the checked address (the name kept for Host and TLS), never following."""
    url = httpx.URL(target.url)
    extensions: dict[str, str] = {}
    if target.address is not None:
        host = f"[{target.address}]" if ":" in target.address else target.address
        headers = headers | {"Host": url.netloc.decode("ascii")}
        extensions["sni_hostname"] = target.host
        url = url.copy_with(host=host.strip("[]"))
    try:
        async with asyncio.timeout(TIMEOUT):
            async with client.stream(
                "POST", url, headers=headers, content=body, extensions=extensions
            ) as response:
                return Outcome(response.status_code, None)
    except (TimeoutError, httpx.TimeoutException):
        return Outcome(None, "timeout")
    except httpx.HTTPError:
        return Outcome(None, "connection_error")


@dataclass(frozen=True)
class Backlog:
    due: int
    oldest_due_seconds: float


async def measure_backlog(runtime: Runtime, *, now: datetime) -> Backlog:
    """Deliveries due at ``now`` (pending, time come, endpoint enabled) and how long the oldest
    has waited; sets the two gauges of ``/metrics`` (an operator alerts on a backlog that does
    not drain: a receiver down, or too few workers)."""
    d, e = WebhookDelivery, WebhookEndpoint
    async with runtime.sessions() as db:
        due, oldest = (
            await db.execute(
                select(func.count(), func.min(d.next_attempt_at))
                .select_from(d)
                .join(e, e.endpoint_id == d.endpoint_id)
                .where(_scheduled(now))
            )
        ).one()
    backlog = Backlog(
        due=int(due), oldest_due_seconds=(now - oldest).total_seconds() if oldest else 0.0
    )
    WEBHOOK_BACKLOG.set(backlog.due)
    WEBHOOK_OLDEST_DUE.set(backlog.oldest_due_seconds)
    return backlog


class DeliveryWorker:
    """Claims and attempts due deliveries in one server process until stopped."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        owner: str,
        resolve: Resolver = system_resolver,
        rng: random.Random | None = None,
    ) -> None:
        self._runtime = runtime
        self._owner = owner
        self._resolve = resolve
        self._rng = rng or random.Random()  # noqa: S311 (retry jitter, not a secret)
        settings = runtime.settings
        self._concurrency = settings.webhook_concurrency
        self._poll = settings.webhook_poll_seconds
        self._client = build_client(self._concurrency)
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        outbox.add_waker(self._wake)
        self._task = asyncio.create_task(self._loop(), name="viopay-webhooks")

    async def stop(self) -> None:
        outbox.remove_waker(self._wake)
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    async def _loop(self) -> None:
        ORIGIN.set("background")  # counted apart from requests in /metrics
        measured = -BACKLOG_EVERY
        while True:
            claimed = 0
            try:
                if time.monotonic() - measured >= BACKLOG_EVERY:
                    measured = time.monotonic()
                    await measure_backlog(self._runtime, now=utcnow())
                free = self._concurrency - len(self._running)
                if free > 0:
                    claims = await claim_due(
                        self._runtime, owner=self._owner, limit=free, now=utcnow()
                    )
                    claimed = len(claims)
                    for claim in claims:
                        task = asyncio.create_task(self._attempt(claim))
                        self._running.add(task)
                        task.add_done_callback(self._done)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be down: try again later
                log.warning("webhook claim failed", error=type(exc).__name__)
            if claimed and len(self._running) < self._concurrency:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
            except TimeoutError:
                pass
            self._wake.clear()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is None:
            self._wake.set()

    async def _attempt(self, claim: Claim) -> None:
        try:
            await attempt(
                self._runtime,
                self._client,
                claim,
                owner=self._owner,
                resolve=self._resolve,
                rng=self._rng,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the lease ends and the delivery is attempted again
            log.warning(
                "webhook attempt failed", delivery_id=claim.delivery_id, error=type(exc).__name__
            )


async def attempt(
    runtime: Runtime,
    client: httpx.AsyncClient,
    claim: Claim,
    *,
    owner: str,
    resolve: Resolver,
    rng: random.Random,
) -> None:
    """One attempt of a claimed delivery, and its outcome stored while the lease is ours."""
    async with runtime.sessions() as db:
        delivery = await db.get(WebhookDelivery, claim.delivery_id)
        assert delivery is not None
        endpoint = await db.get(WebhookEndpoint, delivery.endpoint_id)
        event = await db.get(AuditEvent, delivery.event_id)
        assert endpoint is not None and event is not None
    body = event_body(event)
    stamp = int(time.time())
    signatures = " ".join(
        webhook_signature(s, webhook_id=event.event_id, timestamp=stamp, body=body)
        for s in signing_secrets(runtime.wrapper, endpoint, now=utcnow())
    )
    headers = {
        "webhook-id": event.event_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signatures,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    try:
        target = await check_target(
            endpoint.url,
            allow_insecure=runtime.settings.webhook_allow_insecure,
            resolve=resolve,
        )
    except UnsafeTarget:
        outcome = Outcome(None, "connection_error")
    else:
        outcome = await post(client, target, headers=headers, body=body)
    await record_outcome(runtime, claim, outcome, owner=owner, rng=rng, now=utcnow())
    log.info(
        "webhook attempt",
        delivery_id=claim.delivery_id,
        event_id=event.event_id,
        endpoint_id=endpoint.endpoint_id,
        status_code=outcome.status_code,
        error=outcome.error,
        manual=claim.manual,
    )


async def record_outcome(
    runtime: Runtime,
    claim: Claim,
    outcome: Outcome,
    *,
    owner: str,
    rng: random.Random,
    now: datetime,
) -> bool:
    """Store an attempt's outcome; False when our lease was lost (another took it over)."""
    schedule = runtime.settings.webhook_retry_delays
    async with runtime.sessions() as db, db.begin():
        delivery = (
            await db.scalars(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.delivery_id == claim.delivery_id,
                    WebhookDelivery.lease_owner == owner,
                )
                .with_for_update()
            )
        ).one_or_none()
        if delivery is None:
            return False
        endpoint = await db.get(WebhookEndpoint, delivery.endpoint_id, with_for_update=True)
        assert endpoint is not None
        delivery.attempts += 1
        delivery.last_status_code, delivery.last_error = outcome.status_code, outcome.error
        delivery.lease_owner = delivery.lease_until = None
        delivery.manual_at = None
        if outcome.ok:
            delivery.status, delivery.next_attempt_at = DeliveryStatus.succeeded, None
            endpoint.failing_since = None
            return True
        if not claim.manual and delivery.status is DeliveryStatus.pending:
            delivery.schedule_step += 1
            delay = next_delay(schedule, delivery.schedule_step, rng=rng)
            if delay is None:
                delivery.status, delivery.next_attempt_at = DeliveryStatus.failed, None
            else:
                delivery.next_attempt_at = now + timedelta(seconds=delay)
        if endpoint.failing_since is None:
            endpoint.failing_since = now
        elif (
            endpoint.status is EndpointStatus.enabled
            and now - endpoint.failing_since >= DISABLE_AFTER
        ):
            await disable_endpoint(db, endpoint, now=now)
    return True
