"""The charge endpoints' flow (PROTOCOL §1, §4.5, §4.7): the one place that owns a request's
transactions.

A keyed charge, refund, cancel or reverse makes **two transactions** with the processor call
between them, never inside one:

1. :func:`_claim_and_record_intent` — authenticate (terminal, key, timestamp, signature,
   nonce), the key set's envelope limit, the Idempotency-Key (409 when spent or running), the
   body opened (415, 400), the key claimed, the endpoint's checks (404, 409, 400, 422) and the
   **intent**: what the processor is about to be asked, under a fresh reference. Committed
   before any processor call, so a server killed after it leaves an intent recovery finishes.
2. the processor call, outside any transaction (no connection held while it runs);
3. :func:`_store_outcome` — the charge, refund or new status, the key's stored result and the
   intent closed, in one transaction.

The key set's envelope tally is taken first in transaction 1, the answer's envelope included
(:func:`_count_up_front`; a charge or refund only if it fits under the limit), so the limit of
§3.10 admits a burst exactly and transaction 2 never touches the set.

A request answered without the processor (GET, an idempotent replay, a 4xx stored for its key,
a cancel of a canceled charge, reverse-by-key of a key that made no charge) makes only the
first. Errors that are not stored (401, 409 in progress, 5xx) roll the first back whole.

On PostgreSQL a charge's transactions are fewer statements (:mod:`viopay.payments.native`).
A keyed charge whose terminal lookup this process remembers makes each of them one
autocommitted statement: :func:`_claim_remembered` authenticates on the remembered row and
claims the key, records the intent and counts its envelopes only if that row still reads the
same and the key set has room, and :func:`viopay.payments.outcomes.store_live_charge` stores
the outcome. Otherwise the first is BEGIN, the terminal lookup, the envelopes counted, one
statement that claims the key and records the intent (:func:`_claim_charge_natively`),
COMMIT. ``tests/payments/test_charge_cost.py`` counts them on both backends,
``tests/payments/test_remembered_lookup.py`` holds the remembered row to what a fresh read
would decide.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from viopay.db import NativePool
from viopay.deps import validate
from viopay.errors import (
    PROBLEM_MEDIA_TYPE,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidRequest,
    InvalidState,
    ProcessorError,
    ProcessorTimeout,
    ViopayError,
    problem_body,
    problem_response,
)
from viopay.merchants.models import MerchantConfig
from viopay.metrics import PROCESSOR_CALLS, TERMINAL_LOOKUPS
from viopay.payments import (
    idempotency,
    intents,
    native,
    outcomes,
    refunds,
    reversals,
    service,
)
from viopay.payments.channel import (
    KeySetUsage,
    OpenedRequest,
    ReadNeeded,
    count_up_front,
    key_set_usage,
    meter,
    open_request,
    reader,
    seal_answer,
)
from viopay.payments.models import ChargeStatus, IntentKind, PaymentIntent
from viopay.payments.processors import (
    Authorization,
    Processor,
    ProcessorFailure,
    ProcessorTimedOut,
)
from viopay.payments.schemas import ReverseByKeyIn, charge_view, reversal_view
from viopay.payments.service import TerminalScope
from viopay.payments.terminal_auth import (
    LOOKUP_PG,
    AuthenticatedTerminal,
    SignedRequest,
    authenticate,
    authenticate_remembered,
    forget,
)
from viopay.runtime import Runtime

log = structlog.get_logger("viopay.payments")
_CRASH_AT = os.environ.get("VIOPAY_TEST_CRASH_AT") or None
REPLAYED = {"Idempotent-Replayed": "true"}
REVERSAL_ATTEMPTS = 3


@dataclass(frozen=True)
class Endpoint:
    name: str
    body: bool  # the request carries an MSK envelope
    limited: bool  # refused past the key set's envelope limit (charge, refund), counted within it
    card: bool = False  # the plaintext carries a TDK card envelope


CHARGE = Endpoint("charge", body=True, limited=True, card=True)
REFUND = Endpoint("refund", body=True, limited=True)
CANCEL = Endpoint("cancel", body=False, limited=False)
REVERSE = Endpoint("reverse", body=False, limited=False)
GET = Endpoint("get", body=False, limited=False)
REVERSE_BY_KEY = Endpoint("reverse_by_key", body=True, limited=False)


@dataclass
class Call:
    """One request on its way through the flow."""

    signed: SignedRequest
    runtime: Runtime
    processor: Processor
    now: datetime
    request_id: str
    auth: AuthenticatedTerminal | None = None
    opened: OpenedRequest | None = field(default=None, repr=False)
    usage: KeySetUsage | None = None
    draft: service.ChargeDraft | None = field(default=None, repr=False)  # a charge's, in memory
    nonce_spent: bool = False  # by :func:`_claim_remembered`, which then fell back

    @property
    def terminal(self) -> AuthenticatedTerminal:
        assert self.auth is not None
        return self.auth

    @property
    def scope(self) -> TerminalScope:
        a = self.terminal
        return TerminalScope(a.terminal_id, a.device_id, a.merchant_id, a.currency)

    @property
    def plaintext(self) -> dict[str, Any]:
        assert self.opened is not None
        return self.opened.plaintext


@dataclass(frozen=True)
class Answer:
    """An answer decided without the processor: ``plaintext`` sealed with ``status``, or a
    stored ``problem``; ``replayed`` for a stored result answered again."""

    status: int
    plaintext: dict[str, Any] | None = None
    problem: ViopayError | None = None
    stored_problem: dict[str, Any] | None = None
    replayed: bool = False


# What an endpoint decides inside the first transaction, once its key is claimed.
Decide = Callable[[AsyncSession, Call, int | None], Awaitable["Answer | PaymentIntent"]]


def is_stored(error: ViopayError) -> bool:
    """§4.5: 4xx results are stored, except 401s and a key still in progress."""
    return (
        400 <= error.status < 500
        and error.status != 401
        and not isinstance(error, IdempotencyInProgress)
    )


def problem_record(error: ViopayError) -> dict[str, Any]:
    return {
        "code": error.code,
        "status": error.status,
        "title": error.title,
        "detail": error.detail,
        **error.extra,
    }


# --- the flow -------------------------------------------------------------------------------


async def run(call: Call, endpoint: Endpoint, decide: Decide) -> Response:
    decided: Answer | PaymentIntent | None = None
    if endpoint is CHARGE and call.runtime.native is not None and call.signed.idempotency_key:
        decided = await _claim_remembered(call, call.runtime.native, call.signed.idempotency_key)
        if decided is None:
            _LOOKUP_READ.inc()
    if decided is None:
        async with call.runtime.sessions() as db, db.begin():
            decided = await _claim_and_record_intent(db, call, endpoint, decide)
    if isinstance(decided, Answer):
        return _respond(call, decided)
    return await _ask_processor_and_store(call, decided)


async def _claim_and_record_intent(
    db: AsyncSession, call: Call, endpoint: Endpoint, decide: Decide
) -> Answer | PaymentIntent:
    """Transaction 1 (see the module's docstring)."""
    runtime, now = call.runtime, call.now
    auth = call.auth = await authenticate(
        db, runtime=runtime, signed=call.signed, now=now, nonce_spent=call.nonce_spent
    )
    usage = call.usage = key_set_usage(
        auth, max_envelopes=runtime.settings.keyset_max_envelopes, now=now
    )
    if endpoint.limited and usage.exhausted:
        raise InvalidState("the key set is past its envelope limit or lifetime: rotate keys")
    key = auth.idempotency_key if auth.method == "POST" else None
    try:
        call.opened = await open_request(
            db,
            wrapper=runtime.wrapper,
            auth=auth,
            content_type=call.signed.content_type,
            with_body=endpoint.body,
            with_card=endpoint.card,
            now=now,
        )
        fingerprint = _fingerprint(call) if key is not None else ""
    except ViopayError:
        # §1: a spent or running key answers 409 before the body's own errors (415, 400).
        existing = (
            await idempotency.find(db, terminal_id=auth.terminal_id, key=key, now=now)
            if key
            else None
        )
        if existing is not None:
            idempotency.refuse_busy(existing)
        raise
    await _count_up_front(db, call, endpoint)
    if endpoint is CHARGE and native.on_postgres(db):
        intent = await _claim_charge_natively(db, call, key, fingerprint)
        if intent is not None:
            return intent
    record_id: int | None = None
    if key is not None:
        claimed = await idempotency.claim(
            db,
            terminal_id=auth.terminal_id,
            key=key,
            method=auth.method,
            path=auth.path,
            fingerprint=fingerprint,
            now=now,
        )
        if not isinstance(claimed, int):
            idempotency.refuse_busy(claimed)
            answer = _replay(claimed, fingerprint)
            await _tally(db, call, answered=answer.plaintext is not None)
            return answer
        record_id = claimed
    try:
        decided = await decide(db, call, record_id)
    except ViopayError as error:
        if record_id is None or not is_stored(error):
            raise
        await idempotency.finish(
            db, record_id=record_id, status_code=error.status, result=problem_record(error)
        )
        await _tally(db, call, answered=False)
        return Answer(error.status, problem=error)
    if isinstance(decided, Answer):
        if record_id is not None:
            assert decided.plaintext is not None
            await idempotency.finish(
                db, record_id=record_id, status_code=decided.status, result=decided.plaintext
            )
    return decided


async def _claim_remembered(
    call: Call, pool: NativePool, key: str
) -> Answer | PaymentIntent | None:
    """Transaction 1 of a keyed charge on PostgreSQL as one statement, with no lookup: the
    terminal authenticated on the row this process last read
    (:func:`viopay.payments.terminal_auth.authenticate_remembered`), then the key claimed and
    the intent recorded only if that row still reads the same
    (:func:`viopay.payments.native.claim_remembered`); a key that holds a result answers it.

    None, having written nothing but the nonce, whenever anything is off the common path (no
    row remembered, the row changed, any refusal, the envelope of another key set):
    :func:`_claim_and_record_intent` then decides afresh."""
    runtime, now, signed = call.runtime, call.now, call.signed
    found = await authenticate_remembered(runtime, signed, now=now)
    if found is None:
        return None
    call.nonce_spent = True
    auth, remembered = found
    call.auth = auth
    max_envelopes = runtime.settings.keyset_max_envelopes
    usage = call.usage = key_set_usage(auth, max_envelopes=max_envelopes, now=now)
    if usage.exhausted:
        return None
    try:
        try:
            fingerprint, draft = await _open_and_draft(call, None)
        except ReadNeeded:  # keys not cached yet, another set's envelope, a surcharge rule
            async with runtime.sessions() as db:
                fingerprint, draft = await _open_and_draft(call, db)
    except ViopayError:
        return None
    opened = call.opened
    assert opened is not None
    if opened.key_set_id != auth.key_set_id:
        return None
    intent = _charge_intent(call, draft)
    changes = remembered.changes(version=signed.version, now=now)
    claimed = await native.claim_remembered(
        pool,
        _CLAIM_REMEMBERED,
        lookup=remembered.record,
        intent=intent,
        max_envelopes=max_envelopes,
        key=key,
        method=auth.method,
        path=auth.path,
        fingerprint=fingerprint,
        expires_at=now + idempotency.RETENTION,
        envelopes=opened.envelopes_opened,
        seen_at=now if "last_seen_at" in changes else None,
        version=signed.version,
        touch=bool(changes),
    )
    if not claimed.fresh:
        _LOOKUP_CHANGED.inc()
        forget(signed)
        return None
    _LOOKUP_REMEMBERED.inc()
    remembered.written(changes)
    if claimed.record_id is not None:
        return intent
    if claimed.existing is None:
        return None  # the holder committed after this statement began: decided afresh
    state = native.key_state(claimed.existing)
    idempotency.refuse_busy(state)
    return _replay(state, fingerprint)


async def _open_and_draft(call: Call, db: AsyncSession | None) -> tuple[str, service.ChargeDraft]:
    """The charge's envelopes opened and its draft (§4.1 rules), reading with ``db`` only."""
    runtime = call.runtime
    call.opened = await open_request(
        db,
        wrapper=runtime.wrapper,
        auth=call.terminal,
        content_type=call.signed.content_type,
        with_body=True,
        with_card=True,
        now=call.now,
    )
    return _fingerprint(call), await _draft_charge(db, call)


_CLAIM_REMEMBERED = native.claim_remembered_sql(LOOKUP_PG)
_LOOKUP_REMEMBERED, _LOOKUP_READ, _LOOKUP_CHANGED = (
    TERMINAL_LOOKUPS.labels(source) for source in ("remembered", "read", "changed")
)


def _fingerprint(call: Call) -> str:
    auth, opened = call.terminal, call.opened
    assert opened is not None
    return idempotency.fingerprint(
        call.runtime.wrapper.derive(idempotency.FINGERPRINT_PURPOSE),
        method=auth.method,
        path=auth.path,
        plaintext=opened.plaintext,
        card=opened.card,
    )


async def _count_up_front(db: AsyncSession, call: Call, endpoint: Endpoint) -> None:
    """The key set's MSK tally, first in transaction 1: the request's envelopes and its
    answer's, counted before the key is claimed; for a charge or refund only if they fit under
    the limit (else 409, nothing changed: a burst near the limit is admitted exactly, §3.10).
    Transaction 2 never touches the set; an answer that is not sealed after all (a stored
    problem, a processor error or timeout) leaves its envelope counted, except in transaction
    1, where :func:`_tally` gives it back."""
    opened = call.opened
    assert opened is not None
    limit = call.runtime.settings.keyset_max_envelopes if endpoint.limited else None
    if not await count_up_front(
        db, key_set_id=opened.key_set_id, envelopes=opened.envelopes_opened + 1, limit=limit
    ):
        raise InvalidState("the key set is past its envelope limit or lifetime: rotate keys")


async def _tally(db: AsyncSession, call: Call, *, answered: bool) -> None:
    """An answer of transaction 1 not sealed after all: its envelope, counted up front, given
    back (the set's row is this transaction's since :func:`_count_up_front`)."""
    opened = call.opened
    assert opened is not None
    if not answered:
        await meter(db, key_set_id=opened.key_set_id, envelopes=-1)


def _replay(state: idempotency.KeyState, fingerprint: str) -> Answer:
    """Same key and fingerprint → the stored result (2xx as 200); another fingerprint → 422."""
    if state.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    assert state.status_code is not None and state.result is not None
    if state.status_code >= 400:
        return Answer(state.status_code, stored_problem=state.result, replayed=True)
    return Answer(200, plaintext=state.result, replayed=True)


def crash_point(intent: PaymentIntent, phase: str) -> None:
    """Fault injection for the crash tests (``VIOPAY_TEST_CRASH_AT=charge:intent``, …): the
    process SIGKILLs itself at that line, as a power cut would. Unset in production."""
    if _CRASH_AT is not None and _CRASH_AT == f"{intent.kind.value}:{phase}":
        os.kill(os.getpid(), signal.SIGKILL)


def processor_deadline(settings_delay_seconds: int) -> float:
    """How long a request may spend with the processor (its call and any reversal after a
    timeout): half the recovery delay, so recovery never asks about an intent whose request is
    still talking to the processor."""
    return settings_delay_seconds / 2


async def _ask_processor_and_store(call: Call, intent: PaymentIntent) -> Response:
    """The processor call (no transaction open, bounded by :func:`processor_deadline`), then
    transaction 2."""
    crash_point(intent, "intent")
    try:
        async with asyncio.timeout(
            processor_deadline(call.runtime.settings.recovery_delay_seconds)
        ):
            authorization, undone = await _ask(call, intent)
        crash_point(intent, "answered")
    except ProcessorFailure:
        async with call.runtime.sessions() as db, db.begin():
            await outcomes.abandon(db, intent, now=call.now, reason="processor_error")
        raise ProcessorError() from None
    except (ProcessorTimedOut, TimeoutError):
        # The outcome is unknown and could not be settled now: the intent stays pending and
        # recovery asks the processor later; the key answers 409 in progress until then.
        log.warning("processor outcome unknown; left to recovery", intent_id=intent.intent_id)
        raise ProcessorError("the processor did not answer; the outcome will be settled") from None
    try:
        stored = await _store_outcome(call, intent, authorization, undone=undone)
    except outcomes.KeySpent:
        # A reverse-by-key spent the key while the charge ran: reverse the approval, store it so.
        await reverse_authorization(call.processor, intent)
        stored = await _store_outcome(call, intent, authorization, undone=True)
    if stored is None:
        return await _answer_recovered(call, intent)
    if stored.timed_out:
        return problem_response(ProcessorTimeout(charge_id=stored.charge_id), call.request_id)
    return _respond(call, Answer(stored.status, plaintext=stored.plaintext))


async def _store_outcome(
    call: Call, intent: PaymentIntent, authorization: Authorization | None, *, undone: bool
) -> outcomes.Stored | None:
    """Transaction 2 (see the module's docstring)."""
    if intent.kind is IntentKind.charge:
        return await outcomes.store_live_charge(
            call.runtime.sessions,
            call.runtime.native,
            intent,
            authorization,
            undone=undone,
            now=call.now,
        )
    async with call.runtime.sessions() as db, db.begin():
        if intent.kind is IntentKind.refund:
            return await outcomes.store_refund(db, intent, now=call.now)
        return await outcomes.store_undo(db, intent, now=call.now)


@contextmanager
def _timed(operation: str) -> Iterator[None]:
    """The processor call's time and result in ``viopay_processor_call_seconds``."""
    started, result = time.perf_counter(), "ok"
    try:
        yield
    except ProcessorFailure:
        result = "error"
        raise
    except ProcessorTimedOut:
        result = "timeout"
        raise
    finally:
        PROCESSOR_CALLS.labels(operation, result).observe(time.perf_counter() - started)


async def _ask(call: Call, intent: PaymentIntent) -> tuple[Authorization | None, bool]:
    """Ask the processor what the intent says (timed per operation)."""
    if intent.kind is not IntentKind.charge:
        await act_on_charge(call.processor, intent)
        return None, False
    with _timed(intent.kind.value):
        return await _authorize(call, intent)


async def _authorize(call: Call, intent: PaymentIntent) -> tuple[Authorization | None, bool]:
    """A charge's answer (None after a timeout whose authorisation was then reversed);
    ProcessorTimedOut when even that failed."""
    assert call.draft is not None
    request = service.authorization_request(call.draft, reference=intent.reference, now=call.now)
    try:
        return await call.processor.authorize(request), False
    except ProcessorTimedOut:
        if not await reverse_authorization(call.processor, intent):
            raise
        return None, True


async def act_on_charge(processor: Processor, intent: PaymentIntent) -> None:
    """Ask the processor for a refund, cancel or reverse intent (timed per operation): the
    terminal's endpoints and the backoffice's (:mod:`viopay.payments.backoffice`) alike."""
    ref = intents.authorization_ref(intent)
    with _timed(intent.kind.value):
        if intent.kind is IntentKind.refund:
            assert intent.refund_id is not None and intent.amount is not None
            await processor.refund(
                ref, reference=intent.reference, refund_id=intent.refund_id, amount=intent.amount
            )
        elif intent.kind is IntentKind.cancel:
            await processor.void(ref, reference=intent.reference)
        else:
            await processor.reverse(ref, reference=intent.reference)


async def reverse_authorization(processor: Processor, intent: PaymentIntent) -> bool:
    """Reverse a charge intent's authorisation (whose answer never came, or whose key was
    spent), under the intent's reversal reference, with retries; True once the processor
    confirmed. The live request and recovery both call this."""
    ref, reference = intents.authorization_ref(intent), intent.reference + "-r"
    for attempt in range(1, REVERSAL_ATTEMPTS + 1):
        try:
            await processor.reverse(ref, reference=reference)
            return True
        except (ProcessorFailure, ProcessorTimedOut) as exc:
            log.warning(
                "reversal failed",
                intent_id=intent.intent_id,
                attempt=attempt,
                error=type(exc).__name__,
            )
    return False


async def _answer_recovered(call: Call, intent: PaymentIntent) -> Response:
    """Recovery stored this intent's outcome first (the processor took longer than the
    recovery delay): answer what it stored."""
    key = call.terminal.idempotency_key
    async with call.runtime.sessions() as db:
        state = (
            await idempotency.find(db, terminal_id=call.terminal.terminal_id, key=key, now=call.now)
            if key
            else None
        )
    if state is None or state.result is None or state.status_code is None:
        raise IdempotencyInProgress("the outcome was settled by recovery; ask again")
    return _respond(call, Answer(state.status_code, plaintext=state.result))


def _respond(call: Call, answer: Answer) -> Response:
    headers = REPLAYED if answer.replayed else None
    if answer.problem is not None:
        return problem_response(answer.problem, call.request_id)
    if answer.stored_problem is not None:
        return _stored_problem(answer.stored_problem, call.request_id)
    assert call.opened is not None and answer.plaintext is not None and call.usage is not None
    body = seal_answer(call.opened, call.terminal, answer.plaintext, rotate=call.usage.rotate)
    return Response(body, status_code=answer.status, media_type="application/json", headers=headers)


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


# --- what each endpoint decides in transaction 1 --------------------------------------------


async def _intent(
    db: AsyncSession,
    call: Call,
    record_id: int | None,
    kind: IntentKind,
    charge_id: str,
    *,
    refund_id: str | None = None,
    refund_amount: int | None = None,
    **request: Any,
) -> PaymentIntent:
    scope = call.scope
    return await intents.record(
        db,
        kind=kind,
        terminal_id=scope.terminal_id,
        device_id=scope.device_id,
        merchant_id=scope.merchant_id,
        charge_id=charge_id,
        now=call.now,
        request=request,
        idempotency_record_id=record_id,
        refund_id=refund_id,
        amount=refund_amount,
    )


NO_SURCHARGE: dict[str, Any] = {"enabled": False, "rate_bps": 0, "max_amount": 0}


async def _surcharge_rule(db: AsyncSession, merchant_id: str) -> dict[str, Any]:
    """Read only for a charge that asks for a surcharge (nothing read that is not needed)."""
    rule = await db.get(MerchantConfig, merchant_id)
    return dict(rule.surcharge) if rule is not None and rule.surcharge else NO_SURCHARGE


async def decide_charge(
    db: AsyncSession, call: Call, record_id: int | None
) -> Answer | PaymentIntent:
    """§4.1 body rules (400, 422), then the charge intent."""
    draft = await _draft_charge(db, call)
    return await _intent(
        db, call, record_id, IntentKind.charge, draft.charge_id, **service.draft_request(draft)
    )


async def _claim_charge_natively(
    db: AsyncSession, call: Call, key: str | None, fingerprint: str
) -> PaymentIntent | None:
    """PostgreSQL (:mod:`viopay.payments.native`): the charge's draft first (no I/O unless
    it asks for a surcharge), then the key's claim and the intent in one statement. None,
    having written nothing, when the draft is refused (the portable path then claims the key
    and stores the refusal) or the key is another request's (the portable path answers it)."""
    try:
        draft = await _draft_charge(db, call)
    except ViopayError:
        call.draft = None
        return None
    auth = call.terminal
    intent = _charge_intent(call, draft)
    claimed = await native.claim_and_record(
        db,
        intent,
        key=key,
        method=auth.method,
        path=auth.path,
        fingerprint=fingerprint,
        expires_at=call.now + idempotency.RETENTION,
    )
    return intent if claimed else None


def _charge_intent(call: Call, draft: service.ChargeDraft) -> PaymentIntent:
    scope = call.scope
    return intents.build(
        kind=IntentKind.charge,
        terminal_id=scope.terminal_id,
        device_id=scope.device_id,
        merchant_id=scope.merchant_id,
        charge_id=draft.charge_id,
        now=call.now,
        request=service.draft_request(draft),
        idempotency_record_id=None,
    )


async def _draft_charge(db: AsyncSession | None, call: Call) -> service.ChargeDraft:
    opened = call.opened
    assert opened is not None
    draft = call.draft = service.build_draft(
        scope=call.scope,
        plaintext=call.plaintext,
        card=opened.card,
        tpk=opened.tpk,
        surcharge_rule=await _surcharge_rule(reader(db), call.terminal.merchant_id)
        if call.plaintext.get("surcharge_amount")
        else NO_SURCHARGE,
        nonce=call.terminal.nonce,
        idempotency_key=call.terminal.idempotency_key,
    )
    return draft


def decide_refund(charge_id: str) -> Decide:
    async def decide(db: AsyncSession, call: Call, record_id: int | None) -> Answer | PaymentIntent:
        plan = await refunds.plan_refund(
            db, merchant_id=call.terminal.merchant_id, charge_id=charge_id, plaintext=call.plaintext
        )
        return await _intent(
            db,
            call,
            record_id,
            IntentKind.refund,
            plan.charge.charge_id,
            **_target(plan.charge),
            refund_id=service.new_refund_id(),
            refund_amount=plan.amount,
            reason=plan.reason,
            nonce=call.terminal.nonce,
            idempotency_key=call.terminal.idempotency_key,
        )

    return decide


def _target(charge: Any) -> dict[str, Any]:
    """What the processor needs of the charge an intent acts on."""
    return {
        "charge_amount": charge.amount,
        "currency": charge.currency,
        "processor_reference": charge.processor_reference,
    }


def decide_undo(charge_id: str, *, cancel: bool) -> Decide:
    target = ChargeStatus.canceled if cancel else ChargeStatus.reversed

    async def decide(db: AsyncSession, call: Call, record_id: int | None) -> Answer | PaymentIntent:
        plan = await reversals.plan_undo(
            db,
            merchant_id=call.terminal.merchant_id,
            charge_id=charge_id,
            target=target,
            now=call.now,
        )
        if not plan.act:
            return Answer(200, charge_view(plan.charge))
        kind = IntentKind.cancel if cancel else IntentKind.reverse
        return await _intent(
            db, call, record_id, kind, plan.charge.charge_id, **_target(plan.charge)
        )

    return decide


def decide_get(charge_id: str) -> Decide:
    async def decide(db: AsyncSession, call: Call, record_id: int | None) -> Answer | PaymentIntent:
        charge = await service.get_charge(
            db, merchant_id=call.terminal.merchant_id, charge_id=charge_id
        )
        return Answer(200, charge_view(charge))

    return decide


async def decide_reverse_by_key(
    db: AsyncSession, call: Call, record_id: int | None
) -> Answer | PaymentIntent:
    body = validate(ReverseByKeyIn, call.plaintext)
    if body.idempotency_key == call.terminal.idempotency_key:
        raise InvalidRequest(
            "the body has invalid members",
            errors=[
                {
                    "field": "idempotency_key",
                    "message": "must differ from this request's own Idempotency-Key",
                }
            ],
        )
    plan = await reversals.plan_reverse_by_key(
        db,
        scope=call.scope,
        key=body.idempotency_key,
        now=call.now,
        stale_after=timedelta(seconds=call.runtime.settings.recovery_delay_seconds),
    )
    if plan is None:
        return Answer(200, reversal_view())
    if not plan.act:
        return Answer(200, charge_view(plan.charge))
    return await _intent(
        db, call, record_id, IntentKind.reverse, plan.charge.charge_id, **_target(plan.charge)
    )
