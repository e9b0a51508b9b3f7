"""Pure ASGI middleware: request ids, the body size limit, and one access log line."""

from __future__ import annotations

import re
import time
import uuid

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from viopay.errors import (
    PROBLEM_MEDIA_TYPE,
    InternalError,
    InvalidRequest,
    PayloadTooLarge,
    ViopayError,
    problem_body,
)
from viopay.metrics import count_problem, observe_request

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
BODY_LIMIT = 64 * 1024
LARGE_BODY_LIMIT = 8 * 1024 * 1024
_LARGE_BODY_PATH = re.compile(r"^/admin/terminals/[^/]+/parameters$")
log = structlog.get_logger("viopay.access")
_REPLAYED_HEADER = b"idempotent-replayed"


class _TooLarge(Exception):
    pass


def request_id_of(scope: Scope) -> str:
    rid: str = scope.get("state", {}).get("request_id", "")
    return rid


class RequestContextMiddleware:
    """Assigns ``X-Request-Id``, enforces the body limit (413 before anything else), logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _client_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        limit = LARGE_BODY_LIMIT if _LARGE_BODY_PATH.match(scope["path"]) else BODY_LIMIT
        started = time.perf_counter()
        status = 500
        response_started = replayed = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, replayed
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = message.get("headers", [])
                replayed = status == 200 and (_REPLAYED_HEADER, b"true") in headers
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        try:
            if _declared_length(scope) > limit:
                raise _TooLarge
            if _holds_nul(scope):
                await _send_problem(
                    send_with_id, rid, InvalidRequest("the path or query holds a U+0000")
                )
                return
            await self.app(scope, limited_receive, send_with_id)
        except _TooLarge:
            if response_started:
                raise
            await _send_problem(send_with_id, rid, PayloadTooLarge())
        except Exception as exc:
            # A bug. Log its type only: messages and tracebacks can carry request data.
            log.error("unhandled error", error=type(exc).__name__, request_id=rid)
            if not response_started:
                await _send_problem(send_with_id, rid, InternalError())
        finally:
            elapsed = time.perf_counter() - started
            observe_request(
                scope["method"], _route_template(scope), status, elapsed, replayed=replayed
            )
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round(elapsed * 1000, 2),
                request_id=rid,
            )


def _route_template(scope: Scope) -> str:
    """The matched route's template (FastAPI sets ``scope["route"]``); a path that matched no
    route is one series, whatever it was."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else "unmatched"


class HeadAsGetMiddleware:
    """``HEAD`` works wherever ``GET`` does (PROTOCOL §1): served as GET, the body dropped (the
    headers, ``Content-Length`` included, are the GET's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.match(text) else None
    return None


def _holds_nul(scope: Scope) -> bool:
    """A U+0000 in the path or the query (PROTOCOL §1: 400, before anything reads them)."""
    query = bytes(scope.get("query_string", b"")).lower()
    return "\x00" in scope["path"] or b"%00" in query or b"\x00" in query


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def _send_problem(send: Send, rid: str, error: ViopayError) -> None:
    """The one problem+json mapping (:func:`viopay.errors.problem_body`), sent raw: this runs
    outside the app, where no exception handler does."""
    count_problem(error.code)
    body = orjson.dumps(
        problem_body(
            code=error.code,
            status=error.status,
            title=error.title,
            detail=error.detail,
            request_id=rid,
        )
    )
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
