"""GET /healthz (no I/O) and GET /readyz (database and cache) — PROTOCOL §6."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from sqlalchemy import text
from starlette.responses import Response

from viopay.deps import RuntimeDep
from viopay.errors import ServiceUnavailable, problem_response
from viopay.middleware import request_id_of
from viopay.openapi import errors_for

router = APIRouter(tags=["operations"])
_OK = b'{"status":"ok"}'


@router.get("/healthz")
async def healthz() -> Response:
    return Response(_OK, media_type="application/json")


async def _database_ok(runtime: RuntimeDep) -> bool:
    try:
        async with asyncio.timeout(3), runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "down"
        return False


async def _cache_ok(runtime: RuntimeDep) -> bool:
    try:
        async with asyncio.timeout(3):
            await runtime.cache.ping()
        return True
    except Exception:  # noqa: BLE001
        return False


@router.get("/readyz", responses=errors_for(503))
async def readyz(request: Request, runtime: RuntimeDep) -> Response:
    database, cache = await asyncio.gather(_database_ok(runtime), _cache_ok(runtime))
    members = {"database": "ok" if database else "down", "cache": "ok" if cache else "down"}
    if database and cache:
        return Response(
            b'{"status":"ok","database":"ok","cache":"ok"}', media_type="application/json"
        )
    return problem_response(
        ServiceUnavailable("a backing service is down", **members), request_id_of(request.scope)
    )
