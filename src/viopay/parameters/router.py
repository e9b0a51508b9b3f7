"""The operator's terminal parameters upload (§6). ``POST /pos/terminal-parameters`` lives with
the other attestation-token endpoints in :mod:`viopay.activation.router`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from viopay.audit import Actor
from viopay.auth.deps import AdminPrincipal
from viopay.bodies import parse_json
from viopay.deps import DbSession, Now, PathId, require_json
from viopay.errors import InvalidRequest
from viopay.openapi import errors_for
from viopay.parameters import service as parameters

parameters_admin_router = APIRouter(prefix="/admin", tags=["admin"])  # mounted in viopay.api


class ParametersOut(BaseModel):
    terminal_id: str | None
    size: int
    sha256: str


_ANY_OBJECT = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "description": "the terminal_parameters document"}
            }
        },
    }
}


@parameters_admin_router.put(
    "/terminals/{terminal_id}/parameters",
    response_model=ParametersOut,
    openapi_extra=_ANY_OBJECT,
    responses=errors_for(400, 401, 403, 404, 413, 415, 503),
)
async def put_parameters(
    terminal_id: PathId, request: Request, principal: AdminPrincipal, db: DbSession, now: Now
) -> ParametersOut:
    """Store a terminal's own terminal_parameters document (up to 8 MiB of JSON)."""
    await parameters.get_terminal(db, terminal_id)  # 404 before the body (§1)
    document = await _json_object(request)
    blob = await parameters.set_parameters(
        db,
        terminal_id=terminal_id,
        document=document,
        actor=Actor.operator(principal.subject),
        now=now,
    )
    return ParametersOut(terminal_id=terminal_id, size=blob.size, sha256=blob.sha256)


async def _json_object(request: Request) -> dict[str, Any]:
    require_json(request)
    document: Any = parse_json(await request.body())
    if not isinstance(document, dict):
        raise InvalidRequest("the terminal parameters document must be a JSON object")
    return document
