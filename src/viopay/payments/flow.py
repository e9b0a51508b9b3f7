"""What a charge endpoint does once its request is authenticated (PROTOCOL §1, §4.5):

the key set's envelope limit (409, never stored) → a spent or running Idempotency-Key (409) →
the body parsed and decrypted (415, 400) → a reused key with another fingerprint (422) or the
stored result → the endpoint's own work (404, 409, 400, 422, the processor) → the answer,
sealed for this request.

Transactions, in order and never nested (the embedded SQLite has one connection):
a read to look up the key and open the envelopes; the claim of the key, committed on its own
so the database's unique constraint decides between concurrent requests on any server; the
processor call for a new charge, outside any transaction; and one transaction for the work, the
stored result and the envelope tally.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from viopay.auth.terminal import AuthenticatedTerminal
from viopay.errors import (
    PROBLEM_MEDIA_TYPE,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidState,
    ProcessorError,
    ViopayError,
    problem_body,
    problem_response,
)
from viopay.payments import idempotency
from viopay.payments.channel import (
    KeySetUsage,
    OpenedRequest,
    key_set_usage,
    meter,
    open_request,
    seal_answer,
)
from viopay.payments.processors import Processor, ProcessorFailure, ProcessorTimedOut
from viopay.payments.service import TerminalScope
from viopay.runtime import Runtime

log = structlog.get_logger("viopay.payments")
REPLAYED = {"Idempotent-Replayed": "true"}


@dataclass(frozen=True)
class Endpoint:
    name: str
    body: bool  # the request carries an MSK envelope
    limited: bool  # refused past the key set's envelope limit (charge, refund)
    card: bool = False  # the plaintext carries a TDK card envelope


CHARGE = Endpoint("charge", body=True, limited=True, card=True)
REFUND = Endpoint("refund", body=True, limited=True)
CANCEL = Endpoint("cancel", body=False, limited=False)
REVERSE = Endpoint("reverse", body=False, limited=False)
GET = Endpoint("get", body=False, limited=False)
REVERSE_BY_KEY = Endpoint("reverse_by_key", body=True, limited=False)


@dataclass(frozen=True)
class Outcome:
    """The endpoint's answer: ``plaintext`` sealed with ``status``; or, with ``problem``, that
    problem (the processor timeout), the plaintext then being what a retry answers (200)."""

    status: int
    plaintext: dict[str, Any]
    charge_id: str | None = None
    problem: ViopayError | None = None

    @property
    def stored_status(self) -> int:
        return 200 if self.problem is not None else self.status


@dataclass
class Call:
    """One authenticated request on its way through the flow."""

    auth: AuthenticatedTerminal
    runtime: Runtime
    processor: Processor
    now: datetime
    request_id: str
    content_type: str | None
    opened: OpenedRequest | None = field(default=None, repr=False)

    @property
    def scope(self) -> TerminalScope:
        a = self.auth
        return TerminalScope(a.terminal_id, a.device_id, a.merchant_id, a.currency)

    @property
    def plaintext(self) -> dict[str, Any]:
        assert self.opened is not None
        return self.opened.plaintext


class Action:
    """An endpoint's work: ``prepare`` runs outside any transaction (the processor call of a
    new charge), ``commit`` inside the final one; ``abort`` undoes what ``prepare`` did at the
    processor when the commit fails."""

    async def prepare(self, call: Call) -> None:
        return None

    async def commit(self, db: AsyncSession, call: Call) -> Outcome:
        raise NotImplementedError

    async def abort(self, call: Call) -> None:
        return None


class Commit(Action):
    """An action that is all commit."""

    def __init__(self, work: Callable[[AsyncSession, Call], Awaitable[Outcome]]) -> None:
        self._work = work

    async def commit(self, db: AsyncSession, call: Call) -> Outcome:
        return await self._work(db, call)


def _stored(error: ViopayError) -> bool:
    """§4.5: 4xx results are stored, except 401s and a key still in progress."""
    return (
        400 <= error.status < 500
        and error.status != 401
        and not isinstance(error, IdempotencyInProgress)
    )


def _problem_record(error: ViopayError) -> dict[str, Any]:
    return {
        "code": error.code,
        "status": error.status,
        "title": error.title,
        "detail": error.detail,
        **error.extra,
    }


async def run(call: Call, endpoint: Endpoint, action: Action) -> Response:
    auth, runtime, now = call.auth, call.runtime, call.now
    usage = key_set_usage(auth, max_envelopes=runtime.settings.keyset_max_envelopes, now=now)
    if endpoint.limited and usage.exhausted:
        raise InvalidState("the key set is past its envelope limit or lifetime: rotate keys")
    key = auth.idempotency_key if auth.method == "POST" else None
    async with runtime.sessions() as db:
        existing = (
            await idempotency.find(db, terminal_id=auth.terminal_id, key=key, now=now)
            if key
            else None
        )
        if existing is not None:
            idempotency.refuse_busy(existing)
        call.opened = await open_request(
            db,
            wrapper=runtime.wrapper,
            auth=auth,
            content_type=call.content_type,
            with_body=endpoint.body,
            with_card=endpoint.card,
            now=now,
        )
    if key is None:
        return await _work(call, action, usage, record_id=None)
    opened = call.opened
    fingerprint = idempotency.fingerprint(
        runtime.wrapper.derive(idempotency.FINGERPRINT_PURPOSE),
        method=auth.method,
        path=auth.path,
        plaintext=opened.plaintext,
        card=opened.card,
    )
    if existing is None:
        claimed = await idempotency.claim(
            runtime.sessions,
            terminal_id=auth.terminal_id,
            key=key,
            method=auth.method,
            path=auth.path,
            fingerprint=fingerprint,
            now=now,
        )
        if isinstance(claimed, int):
            return await _work(call, action, usage, record_id=claimed)
        idempotency.refuse_busy(claimed)
        existing = claimed
    return await _replay(call, existing, fingerprint, usage)


async def _work(
    call: Call, action: Action, usage: KeySetUsage, *, record_id: int | None
) -> Response:
    runtime, opened = call.runtime, call.opened
    assert opened is not None
    try:
        await action.prepare(call)
    except Exception as exc:
        raise await _failed(call, exc, record_id) from None
    try:
        async with runtime.sessions() as db, db.begin():
            outcome = await action.commit(db, call)
            if record_id is not None and not await idempotency.finish(
                db,
                record_id=record_id,
                status_code=outcome.stored_status,
                result=outcome.plaintext,
                charge_id=outcome.charge_id,
            ):
                raise InvalidState("the Idempotency-Key was spent by a reverse-by-key")
            answered = 0 if outcome.problem is not None else 1
            await meter(
                db, key_set_id=opened.key_set_id, envelopes=opened.envelopes_opened + answered
            )
    except Exception as exc:
        await action.abort(call)
        raise await _failed(call, exc, record_id) from None
    if outcome.problem is not None:
        return problem_response(outcome.problem, call.request_id)
    body = seal_answer(opened, call.auth, outcome.plaintext, rotate=usage.rotate)
    return Response(body, status_code=outcome.status, media_type="application/json")


async def _failed(call: Call, exc: Exception, record_id: int | None) -> Exception:
    """Store or release the key after a failure; returns what to raise."""
    error: Exception = exc
    if isinstance(exc, ProcessorFailure | ProcessorTimedOut):
        error = ProcessorError()
    stored = isinstance(error, ViopayError) and _stored(error)
    try:
        async with call.runtime.sessions() as db, db.begin():
            if record_id is not None and stored:
                assert isinstance(error, ViopayError)
                await idempotency.finish(
                    db, record_id=record_id, status_code=error.status, result=_problem_record(error)
                )
            if call.opened is not None:
                await meter(
                    db, key_set_id=call.opened.key_set_id, envelopes=call.opened.envelopes_opened
                )
        if record_id is not None and not stored:
            await idempotency.release(call.runtime.sessions, record_id=record_id)
    except Exception as cleanup:  # the original error is what the client must hear about
        log.warning(
            "idempotency cleanup failed", error=type(cleanup).__name__, request_id=call.request_id
        )
    return error


async def _replay(
    call: Call, state: idempotency.KeyState, fingerprint: str, usage: KeySetUsage
) -> Response:
    """Same key and fingerprint → the stored result, sealed anew (2xx as 200)."""
    if state.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    opened = call.opened
    assert opened is not None and state.status_code is not None and state.result is not None
    if state.status_code >= 400:
        async with call.runtime.sessions() as db, db.begin():
            await meter(db, key_set_id=opened.key_set_id, envelopes=opened.envelopes_opened)
        return _stored_problem(state.result, call.request_id)
    async with call.runtime.sessions() as db, db.begin():
        await meter(db, key_set_id=opened.key_set_id, envelopes=opened.envelopes_opened + 1)
    body = seal_answer(opened, call.auth, state.result, rotate=usage.rotate)
    return Response(body, status_code=200, media_type="application/json", headers=REPLAYED)


def _stored_problem(result: dict[str, Any], request_id: str) -> Response:
    extra = {k: v for k, v in result.items() if k not in ("code", "status", "title", "detail")}
    body = problem_body(
        code=str(result["code"]),
        status=int(result["status"]),
        title=str(result["title"]),
        detail=str(result["detail"]),
        request_id=request_id,
        extra=extra,
    )
    return Response(
        orjson.dumps(body),
        status_code=int(result["status"]),
        media_type=PROBLEM_MEDIA_TYPE,
        headers=REPLAYED,
    )
