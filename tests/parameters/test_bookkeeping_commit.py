"""``viopay.db.bookkeeping_only``: a transaction that writes only bookkeeping (the envelope tally
and ``last_seen`` of a terminal-parameters chunk or a config download) commits without waiting
for PostgreSQL's WAL flush, and only that transaction: the next one on the same pooled
connection waits again."""

from __future__ import annotations

import secrets

from sqlalchemy import text

from support.helpers import Backend
from viopay.db import bookkeeping_only
from viopay.runtime import Runtime


async def _setting(runtime: Runtime, *, relaxed: bool) -> str:
    async with runtime.sessions() as db, db.begin():
        if relaxed:
            await bookkeeping_only(db)
        return str(await db.scalar(text("SHOW synchronous_commit")))


async def test_only_the_marked_transaction_skips_the_flush_wait(
    backend: Backend, runtime: Runtime
) -> None:
    if backend.name != "postgres":
        async with runtime.sessions() as db, db.begin():
            await bookkeeping_only(db)  # SQLite: nothing to relax, and no statement sent
            assert await db.scalar(text("SELECT 1")) == 1  # (SET LOCAL would have failed)
        return
    assert await _setting(runtime, relaxed=True) == "off"
    # SET LOCAL ends with its transaction: the pooled connection is back to durable commits.
    for _ in range(3):
        assert await _setting(runtime, relaxed=False) == "on"


async def test_a_relaxed_transaction_still_commits_its_writes(
    backend: Backend, runtime: Runtime
) -> None:
    table = f"bookkeeping_probe_{secrets.token_hex(4)}"
    async with runtime.sessions() as db, db.begin():
        await db.execute(text(f"CREATE TABLE IF NOT EXISTS {table} (n INTEGER)"))
    try:
        async with runtime.sessions() as db, db.begin():
            await bookkeeping_only(db)
            await db.execute(text(f"INSERT INTO {table} (n) VALUES (7)"))
        async with runtime.sessions() as db:
            assert await db.scalar(text(f"SELECT count(*) FROM {table} WHERE n = 7")) == 1
    finally:
        async with runtime.sessions() as db, db.begin():
            await db.execute(text(f"DROP TABLE {table}"))
