"""The published schema of the config document (§3.8). ``POST /pos/config`` lives with the
other attestation-token endpoints in :mod:`viopay.activation.router`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from viopay.configuration.schemas import config_document_schema
from viopay.openapi import errors_for

config_schema_router = APIRouter(prefix="/pos", tags=["pos activation"])


@config_schema_router.get("/config/schema", responses=errors_for(503))
async def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the config document of ``POST /pos/config``."""
    return config_document_schema()
