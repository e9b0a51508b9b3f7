"""A heartbeat on PostgreSQL as one statement, on the terminal lookup its process remembered.

Every terminal beats every minute, busy or idle (PROTOCOL §8), so a fleet's steady traffic is
mostly heartbeats. The portable path (:func:`viopay.fleet.service.record_heartbeat` in a
session) reads the terminal lookup, writes the report and the key set's tally and reads what
the terminal should hold, each a round trip through SQLAlchemy. Here, as for a keyed charge
(:mod:`viopay.payments.native`), the terminal authenticates on the row this process last read
(:func:`viopay.payments.terminal_auth.authenticate_remembered`) and one autocommitted
statement, only if that row still reads the same (every column that decides authentication,
and the tally on the same side of its limit and of 90 %, which decide ``rotate_keys``):

- writes the report to a device already **online**, with ``last_heartbeat_at`` and the
  device's ``last_seen_at``/``app_version`` when due, and adds the request's and the answer's
  envelopes to the set's tally (the device's row first, then the set's: the order of every
  transaction that takes both);
- reads the merchant's config version and the parameters' digests.

It writes nothing when the row changed, the device is not online (coming online makes an
event: the portable path) or the merchant's config is not made yet; the caller then
authenticates afresh on the portable path, its nonce already spent. The rows written are the
portable path's (``tests/fleet/test_heartbeat.py`` compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.dialects import postgresql

from viopay.db import NativePool
from viopay.devices.models import Device
from viopay.fleet.schemas import HeartbeatIn
from viopay.metrics import count_transaction
from viopay.parameters.models import DEFAULT_KEY
from viopay.payments.native import REMEMBERED_PARAMS, Compiled, remembered_values, unchanged

# The report's members (PROTOCOL §8) and the PostgreSQL types of their device columns.
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]
HEALTH = {
    name: Device.__table__.c[name].type.compile(dialect=_PG) for name in HeartbeatIn.model_fields
}
_NAMES = (
    *REMEMBERED_PARAMS,
    "device_id",
    "merchant_id",
    "default_key",
    "now",
    "counted",
    "touch",
    "seen_at",
    "version",
    *(f"given_{name}" for name in HEALTH),
    *HEALTH,
)
_P = {name: f"${i}" for i, name in enumerate(_NAMES, start=1)}
_REPORT = ",\n        ".join(
    f"{name} = CASE WHEN {_P['given_' + name]}::boolean THEN {_P[name]}::{kind} ELSE {name} END"
    for name, kind in HEALTH.items()
)
BEAT_REMEMBERED = """
WITH l AS ({lookup}),
ok AS (
    SELECT FROM l
    WHERE {unchanged}
        AND EXISTS (SELECT FROM merchant_configs WHERE merchant_id = {merchant_id})
), beat AS (
    UPDATE devices SET {report},
        last_heartbeat_at = {now}::timestamptz,
        last_seen_at = CASE WHEN {touch}::boolean
            THEN coalesce({seen_at}::timestamptz, last_seen_at) ELSE last_seen_at END,
        app_version = CASE WHEN {touch}::boolean THEN {version}::varchar ELSE app_version END
    WHERE device_id = {device_id} AND online AND EXISTS (SELECT FROM ok)
    RETURNING 1
), tallied AS (
    -- after the device's row (beat, read here first): the order of every transaction that
    -- takes both (authentication's touch, a heartbeat, an activation), so none deadlocks
    UPDATE key_sets SET envelope_count = envelope_count + {counted}::integer
    WHERE key_set_id = {was_key_set_id} AND EXISTS (SELECT FROM beat)
    RETURNING 1
)
SELECT EXISTS (SELECT FROM beat) AS beaten, (SELECT count(*) FROM tallied) AS tallied,
    (SELECT config_version FROM merchant_configs WHERE merchant_id = {merchant_id})
        AS config_version,
    (SELECT sha256 FROM terminal_parameters WHERE terminal_id = {terminal_id}) AS own_sha256,
    (SELECT sha256 FROM terminal_parameters WHERE terminal_id = {default_key}) AS default_sha256
"""


def beat_remembered_sql(lookup: Compiled) -> str:
    """:data:`BEAT_REMEMBERED` around ``lookup`` (the terminal lookup, whose parameters are
    ``key_id`` and ``terminal_id``, in that order)."""
    assert lookup.names == ("key_id", "terminal_id"), lookup.names
    return BEAT_REMEMBERED.format(lookup=lookup.sql, unchanged=unchanged(_P), report=_REPORT, **_P)


@dataclass(frozen=True)
class Beaten:
    """What the terminal should hold (PROTOCOL §8's answer): the config version, and the
    digests of its own parameters document and of the operator's default (None: none)."""

    config_version: int
    own_sha256: str | None
    default_sha256: str | None


async def beat_remembered(
    pool: NativePool,
    sql: str,
    *,
    lookup: asyncpg.Record,
    max_envelopes: int,
    terminal_id: str,
    merchant_id: str,
    device_id: str,
    report: dict[str, object],
    envelopes: int,
    now: datetime,
    seen_at: datetime | None,
    version: str,
    touch: bool,
) -> Beaten | None:
    """One autocommitted statement (see the module's docstring): ``report`` (the members the
    terminal sent) written, ``envelopes`` counted, and what the terminal should hold; None,
    nothing written, when it wrote nothing."""
    params: dict[str, Any] = remembered_values(lookup, max_envelopes)
    params.update(
        key_id=lookup["key_id"],
        terminal_id=terminal_id,
        device_id=device_id,
        merchant_id=merchant_id,
        default_key=DEFAULT_KEY,
        now=now,
        counted=envelopes,
        touch=touch,
        seen_at=seen_at,
        version=version,
    )
    for name in HEALTH:
        params[f"given_{name}"] = name in report
        params[name] = report.get(name)
    async with pool.connection() as conn:
        count_transaction()
        row = await conn.fetchrow(sql, *[params[name] for name in _NAMES])
    assert row is not None
    if not row["beaten"]:
        return None
    assert row["tallied"] == 1 and row["config_version"] is not None
    return Beaten(row["config_version"], row["own_sha256"], row["default_sha256"])
