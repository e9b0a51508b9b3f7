"""The fleet timer: every ``VIOPAY_FLEET_CHECK_SECONDS`` (at most 30), in whichever server
process holds the ``fleet`` lease, terminals whose heartbeats stopped are marked offline."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from viopay.fleet.service import mark_offline, take_lease
from viopay.ids import utcnow
from viopay.metrics import ORIGIN
from viopay.runtime import Runtime

log = structlog.get_logger("viopay.fleet")
LEASE_NAME = "fleet"


class FleetTimer:
    def __init__(self, runtime: Runtime, *, owner: str) -> None:
        self._runtime, self._owner = runtime, owner
        self._period = runtime.settings.fleet_check_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="viopay-fleet")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def check(self) -> list[str]:
        """One check, if this process holds (or takes) the lease; the devices marked offline."""
        now = utcnow()
        async with self._runtime.sessions() as db, db.begin():
            ttl = timedelta(seconds=3 * self._period)
            if not await take_lease(db, name=LEASE_NAME, owner=self._owner, ttl=ttl, now=now):
                return []
            return await mark_offline(
                db, interval_seconds=self._runtime.settings.heartbeat_interval_seconds, now=now
            )

    async def _loop(self) -> None:
        ORIGIN.set("background")  # counted apart from requests in /metrics
        while True:
            try:
                offline = await self.check()
                if offline:
                    log.info("terminals offline", count=len(offline))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be down: try again next period
                log.warning("fleet check failed", error=type(exc).__name__)
            await asyncio.sleep(self._period)
