"""Request-level dependencies shared by every router: the runtime, the unit of work, bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.bodies import parse_json
from viopay.cache import Cache
from viopay.errors import InvalidRequest, UnsupportedMediaType
from viopay.ids import utcnow
from viopay.runtime import Runtime

M = TypeVar("M", bound=BaseModel)


# The dependencies below are ``async def`` although they never wait: FastAPI runs a plain
# ``def`` dependency in its thread pool, a round trip through a worker thread per request.


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


async def unit_of_work(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed before the response is sent."""
    async with runtime_of(request).sessions() as session, session.begin():
        yield session


async def get_cache(request: Request) -> Cache:
    return runtime_of(request).cache


async def get_now() -> datetime:
    return utcnow()


# An id in a path (PROTOCOL §1): one that cannot exist (over 128 characters) is 404 not_found,
# which the validation handler answers for every error in the path (viopay.app).
PathId = Annotated[str, Path(min_length=1, max_length=128)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
DbSession = Annotated[AsyncSession, Depends(unit_of_work, scope="function")]
CacheDep = Annotated[Cache, Depends(get_cache)]
Now = Annotated[datetime, Depends(get_now)]


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaType()


async def read_json(request: Request, model: type[M], *, optional: bool = False) -> M:
    """Parse the body into ``model`` after authentication has run (PROTOCOL §1 order).

    ``optional``: an empty body (with or without a content type) is read as ``{}``.
    """
    if optional and not (await request.body()).strip():
        return model.model_validate({})
    return validate(model, await read_raw_json(request))


async def read_raw_json(request: Request) -> Any:
    """The body as parsed JSON (415 without the JSON content type, 400 when malformed)."""
    require_json(request)
    return parse_json(await request.body())


def validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest("the body has invalid members", errors=field_errors(exc)) from None


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def body_schema(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for endpoints that parse their body by hand."""
    return {
        "requestBody": {
            "required": required,
            "content": {
                "application/json": {
                    "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    }
