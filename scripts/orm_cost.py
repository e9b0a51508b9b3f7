"""What a PostgreSQL round trip costs in this process's CPU through SQLAlchemy's async session
against asyncpg alone: the figure behind the activation target of issue 10 (docs/benchmarks.md).

An activation is 43 statements in 8 transactions through SQLAlchemy sessions (and 4 chunk reads);
the charge's two are asyncpg's own. This script runs the same primary-key read of a device,
one and three to a transaction, both ways, on a scratch database (made and dropped here), on
uvloop as the server, in alternating rounds so drift hits both alike; it prints the CPU of a
transaction, what one more statement adds and what the transaction itself costs.

    .venv/bin/python scripts/orm_cost.py [--rounds 8] [--per-round 500]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import uvloop
from sqlalchemy import bindparam, select

from viopay import db, models  # noqa: F401 - every table mapped, for the foreign keys
from viopay.devices.models import Device
from viopay.runtime import prepare_database
from viopay.settings import Settings
from viopay_tools.bench import fleet, stack

Work = Callable[[], Awaitable[object]]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    settings: Settings, device_id: str, rounds: int, per_round: int
) -> dict[str, float]:
    engine = db.create_engine(settings)
    sessions = db.session_factory(engine)
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    by_key = select(Device).where(Device.device_id == bindparam("d"))
    sql = "SELECT * FROM devices WHERE device_id = $1"

    def session_work(statements: int) -> Work:
        async def work() -> None:
            async with sessions() as session, session.begin():
                for _ in range(statements):
                    (await session.execute(by_key, {"d": device_id})).scalar_one()

        return work

    def asyncpg_work(statements: int) -> Work:
        async def work() -> None:
            async with pool.acquire() as conn, conn.transaction():
                for _ in range(statements):
                    await conn.fetchrow(sql, device_id)

        return work

    variants = {
        "session, 1 statement": session_work(1),
        "session, 3 statements": session_work(3),
        "asyncpg, 1 statement": asyncpg_work(1),
        "asyncpg, 3 statements": asyncpg_work(3),
    }
    spent = dict.fromkeys(variants, 0.0)
    try:
        for work in variants.values():  # warm: statements prepared, connections open
            for _ in range(50):
                await work()
        for round_ in range(rounds):
            order = list(variants.items())
            for name, work in order if round_ % 2 == 0 else reversed(order):
                started = cpu_seconds()
                for _ in range(per_round):
                    await work()
                spent[name] += cpu_seconds() - started
    finally:
        await pool.close()
        await engine.dispose()
    return {name: seconds * 1e6 / (rounds * per_round) for name, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=500)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, stack.backend("postgres", Path(work)) as be:
        settings = be.settings()
        prepare_database(settings, create=True)
        device_id = fleet.provision(settings, 1).devices[0][0]
        us = uvloop.run(measure(settings, device_id, options.rounds, options.per_round))
    print("µs of CPU per transaction (this process, uvloop):")
    for name, value in us.items():
        print(f"  {name:24} {value:7.0f}")
    for way in ("session", "asyncpg"):
        one, three = us[f"{way}, 1 statement"], us[f"{way}, 3 statements"]
        each = (three - one) / 2
        print(
            f"{way:8}: one more statement {each:5.0f} µs, the transaction itself {one - each:5.0f} µs"
        )
    ratio = us["session, 3 statements"] / us["asyncpg, 3 statements"]
    print(f"session / asyncpg, 3 statements: {ratio:.2f}")


if __name__ == "__main__":
    main()
