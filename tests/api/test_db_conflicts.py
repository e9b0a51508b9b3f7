"""A transaction PostgreSQL rolls back to end a conflict (SQLSTATE class 40: a deadlock, a
serialization failure) answers 503 with Retry-After, never 500: nothing of it was applied and
the same request again is safe (a payment whose intent committed first is finished by recovery,
§4.7). The conflicts here are real ones, made on the test database: two transactions taking two
locks in opposite orders, through SQLAlchemy's sessions and through asyncpg itself (the charge's
own statements, ``viopay.payments.native``); the app's handlers answer the errors they raised.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request

from viopay.app import create_app
from viopay.db import NativePool
from viopay.errors import ServerBusy, ServiceUnavailable
from viopay.runtime import Runtime

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

LOCKS = (7_101, 7_102)  # transaction-scoped advisory locks: no table of ours is touched


async def deadlock(take: Callable[[int, int], Awaitable[None]]) -> BaseException:
    """Run ``take(a, b)`` and ``take(b, a)`` at once; the one PostgreSQL chose as the victim
    raises, and that error is returned."""
    first, second = LOCKS
    outcomes = await asyncio.gather(
        take(first, second), take(second, first), return_exceptions=True
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1, outcomes
    return errors[0]


def request() -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/pos/charge",
        "headers": [],
        "state": {"request_id": "conflict-test"},
    }
    return Request(scope)


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def answered(error: BaseException, runtime: Runtime) -> tuple[int, dict[str, Any]]:
    """The app's own handler's answer to ``error`` (as its exception middleware picks it); a
    503 is counted as the server busy, not as a store that did not answer."""
    app = create_app(runtime.settings)
    busy, down = counted("viopay_server_busy_total"), counted("viopay_store_unavailable_total")
    kind = DBAPIError if isinstance(error, DBAPIError) else asyncpg.PostgresError
    response = app.exception_handlers[kind](request(), error)
    if inspect.isawaitable(response):
        response = await response
    body = orjson.loads(response.body)
    if response.status_code == 503:
        assert response.headers["retry-after"] == "5"
        assert counted("viopay_server_busy_total") == busy + 1
        assert counted("viopay_store_unavailable_total") == down
    return response.status_code, body


async def test_a_deadlock_in_a_session_answers_503(runtime: Runtime) -> None:
    async def take(a: int, b: int) -> None:
        async with runtime.sessions() as db, db.begin():
            await db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": a})
            await asyncio.sleep(0.3)  # both hold their first lock before asking for the second
            await db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": b})

    error = await deadlock(take)
    assert isinstance(error, DBAPIError) and getattr(error.orig, "sqlstate", None) == "40P01"
    status, body = await answered(error, runtime)
    assert (status, body["code"]) == (503, "service_unavailable")
    assert body["detail"].startswith("the server is busy")


async def test_a_deadlock_on_asyncpg_answers_503(runtime: Runtime) -> None:
    url = runtime.settings.database_url
    assert url is not None

    async def take(a: int, b: int) -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", a)
                await asyncio.sleep(0.3)
                await conn.execute("SELECT pg_advisory_xact_lock($1)", b)
        finally:
            await conn.close()

    error = await deadlock(take)
    assert isinstance(error, asyncpg.exceptions.DeadlockDetectedError)
    status, body = await answered(error, runtime)
    assert (status, body["code"]) == (503, "service_unavailable")
    assert body["detail"].startswith("the server is busy")


async def test_other_database_errors_are_still_500(runtime: Runtime) -> None:
    """Only the rolled-back class is a retry: a broken statement is a bug, answered 500."""
    async with runtime.sessions() as db:
        with pytest.raises(DBAPIError) as caught:
            await db.execute(text("SELECT no_such_column FROM merchants"))
    status, body = await answered(caught.value, runtime)
    assert (status, body["code"]) == (500, "internal_error")


async def test_a_full_native_pool_is_busy_an_unreachable_database_is_not(
    runtime: Runtime,
) -> None:
    """asyncpg's own pool (the charge's statements): a wait for a connection that times out
    while every connection is in use is 503 "busy"; one that times out connecting is the
    database unreachable (plain 503), never the other way round."""
    pool = NativePool(runtime.engine.url, size=2, acquire_timeout=0.3)
    try:
        async with pool.connection() as first, pool.connection() as second:
            assert await first.fetchval("SELECT 1") == await second.fetchval("SELECT 1") == 1
            with pytest.raises(ServerBusy, match="no database connection came free"):
                async with pool.connection():
                    pass
        async with pool.connection() as again:  # released: the pool serves again
            assert await again.fetchval("SELECT 2") == 2
    finally:
        await pool.close()

    # No database on the port: unreachable, not busy.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = NativePool(runtime.engine.url.set(port=port), size=1)
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            async with nowhere.connection():
                pass
        assert not isinstance(caught.value, ServerBusy)
    finally:
        await nowhere.close()
