"""Crash recovery (PROTOCOL §4.7): finishing intents whose request died.

An intent still ``pending`` ``VIOPAY_RECOVERY_DELAY_SECONDS`` after it was recorded belongs to a
request that died (a processor call is bounded far below the delay). Recovery leases it (a
conditional UPDATE: one process at a time), asks the processor what happened under its
reference, and stores that through the same ``outcomes`` functions the live request uses:

- charge: approved → stored ``approved`` (the terminal's retry with the same key answers it),
  or, when a reverse-by-key spent the key meanwhile, reversed at the processor and stored
  ``reversed``; an approval the processor holds as reversed → ``reversed``; declined →
  ``declined``; never received → abandoned and the key released (a retry charges afresh);
- refund, cancel, reverse: done at the processor → stored; never received → abandoned and the
  key released.

It runs in every server process (:class:`RecoveryWorker`, every few seconds) and as
``viopay recover`` (one pass over everything due, then exit).
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from viopay.ids import new_id, utcnow
from viopay.metrics import ORIGIN, RECOVERED, RECOVERY_BACKLOG
from viopay.payments import intents, outcomes
from viopay.payments.flow import reverse_authorization
from viopay.payments.models import IntentKind, PaymentIntent
from viopay.payments.processors import (
    Authorization,
    Processor,
    ProcessorFailure,
    ProcessorTimedOut,
)
from viopay.runtime import Runtime

log = structlog.get_logger("viopay.recovery")
BATCH = 100


@dataclass
class RecoveryReport:
    """What one pass did, per outcome (``approved``, ``declined``, ``reversed``, ``refund``,
    ``cancel``, ``reverse``, ``abandoned``), and intents left for a later pass."""

    counts: dict[str, int] = field(default_factory=dict)
    deferred: int = 0

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def owner_id() -> str:
    """Who holds a lease: host, process and a random tag."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{new_id('', 6)}"


async def recover_due(
    runtime: Runtime, processor: Processor, *, owner: str, now: datetime | None = None
) -> RecoveryReport:
    """One pass: every intent due now, in batches."""
    report = RecoveryReport()
    delay = timedelta(seconds=runtime.settings.recovery_delay_seconds)
    seen: set[str] = set()
    while True:
        moment = now or utcnow()
        async with runtime.sessions() as db:
            due = [
                i
                for i in await intents.due(db, now=moment, delay=delay, limit=BATCH)
                if i not in seen
            ]
        if not due:
            return report
        for intent_id in due:
            seen.add(intent_id)
            outcome = await recover_one(runtime, processor, intent_id, owner=owner, now=moment)
            if outcome is None:
                report.deferred += 1
            else:
                report.add(outcome)


async def recover_one(
    runtime: Runtime, processor: Processor, intent_id: str, *, owner: str, now: datetime
) -> str | None:
    """Lease, ask, store. None when another process holds it or the processor could not say."""
    async with runtime.sessions() as db, db.begin():
        if not await intents.take(db, intent_id, owner=owner, now=now):
            return None
    async with runtime.sessions() as db:
        intent = await db.get(PaymentIntent, intent_id)
    assert intent is not None
    try:
        record = await processor.lookup(intent.reference)
    except (ProcessorFailure, ProcessorTimedOut) as exc:
        log.warning(
            "recovery: processor lookup failed", intent_id=intent_id, error=type(exc).__name__
        )
        return None
    if record is None:
        async with runtime.sessions() as db, db.begin():
            await outcomes.abandon(db, intent, now=now, reason="never_received", lease_owner=owner)
        log.info("recovered", intent_id=intent_id, kind=intent.kind.value, outcome="abandoned")
        RECOVERED.labels("abandoned").inc()
        return "abandoned"
    if intent.kind is IntentKind.charge:
        outcome = await _recover_charge(
            runtime, processor, intent, record.authorization, record.undone, owner=owner, now=now
        )
    else:
        async with runtime.sessions() as db, db.begin():
            store = (
                outcomes.store_refund if intent.kind is IntentKind.refund else outcomes.store_undo
            )
            stored = await store(db, intent, now=now, recovered=True, lease_owner=owner)
        outcome = intent.kind.value if stored is not None else None
    log.info("recovered", intent_id=intent_id, kind=intent.kind.value, outcome=outcome)
    if outcome is not None:
        RECOVERED.labels(outcome).inc()
    return outcome


async def _recover_charge(
    runtime: Runtime,
    processor: Processor,
    intent: PaymentIntent,
    authorization: Authorization | None,
    undone: bool,
    *,
    owner: str,
    now: datetime,
) -> str | None:
    for _ in range(2):
        try:
            async with runtime.sessions() as db, db.begin():
                stored = await outcomes.store_charge(
                    db,
                    intent,
                    authorization,
                    undone=undone,
                    now=now,
                    recovered=True,
                    lease_owner=owner,
                )
        except outcomes.KeySpent:
            if not await reverse_authorization(processor, intent):
                return None
            undone = True
            continue
        if stored is None:
            return None
        return str(stored.plaintext["status"])
    return None


class RecoveryWorker:
    """Runs :func:`recover_due` every ``interval`` seconds in a server process."""

    def __init__(self, runtime: Runtime, processor: Processor, *, interval: float) -> None:
        self._runtime, self._processor, self._interval = runtime, processor, interval
        self._owner = owner_id()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="viopay-recovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _measure_backlog(self) -> None:
        """What is still due after the pass: intents another process holds, or that failed."""
        delay = timedelta(seconds=self._runtime.settings.recovery_delay_seconds)
        async with self._runtime.sessions() as db:
            RECOVERY_BACKLOG.set(await intents.count_due(db, now=utcnow(), delay=delay))

    async def _loop(self) -> None:
        ORIGIN.set("background")
        while True:
            try:
                report = await recover_due(self._runtime, self._processor, owner=self._owner)
                if report.total:
                    log.info("recovery pass", **report.counts, deferred=report.deferred)
                await self._measure_backlog()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be down: fail closed, try again later
                log.warning("recovery pass failed", error=type(exc).__name__)
            await asyncio.sleep(self._interval)


def interval_for(delay_seconds: int) -> float:
    """How often a server looks for due intents: a quarter of the delay, 1-15 s."""
    return min(15.0, max(1.0, delay_seconds / 4))
