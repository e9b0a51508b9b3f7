"""Crash recovery (PROTOCOL §4.7), on both backends, against real ``viopay serve`` processes.

A server is SIGKILLed at each phase of a charge and of a refund: just after the intent is
committed (before the processor call), during the call (the sandbox slowed; killed before and
after the sandbox recorded it), and after the processor answered but before the outcome was
stored. A server is then started again (``VIOPAY_RECOVERY_DELAY_SECONDS=3``) and the terminal
retries with the same Idempotency-Key. Every time: exactly one outcome per key, no key answering
409 in progress once recovery ran, and the database agreeing with the sandbox's ledger for every
reference. A burst of charges killed mid-flight is then recovered by two ``viopay recover``
processes at once, which never handle the same intent twice.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from support import charge_kit as kit
from support.helpers import Backend, Server, present
from viopay.payments.models import (
    Charge,
    ChargeStatus,
    IdempotencyRecord,
    IdempotencyState,
    IntentState,
    PaymentIntent,
    Refund,
    SandboxLedgerEntry,
)
from viopay.runtime import Runtime

# A request spends at most half the recovery delay with the processor; the slowed sandbox
# records a call halfway through its latency.
RECOVERY = {"VIOPAY_RECOVERY_DELAY_SECONDS": "3"}
SLOW = {"VIOPAY_SANDBOX_LATENCY_MS": "1000"}
# "During the call, unheard": the kill must land before the sandbox writes its ledger. The
# victim's sandbox waits 4 s before it does (its own recovery delay is long enough that the
# request would wait for it), so a loaded machine still kills it in time; the server restarted
# after it recovers with the usual 3 s delay. (At 1 s, a busy CI machine once let the sandbox
# hear the call before the kill: right outcome, wrong phase for the test's expectation.)
SLOW_UNHEARD = {"VIOPAY_SANDBOX_LATENCY_MS": "8000", "VIOPAY_RECOVERY_DELAY_SECONDS": "20"}


def victim_settings(phase: str, crash: str | None) -> dict[str, str]:
    if crash:
        return {"VIOPAY_TEST_CRASH_AT": crash}
    return SLOW_UNHEARD if phase == "during_unheard" else SLOW


@pytest.fixture
def start(backend: Backend, tmp_path: Path) -> Iterator[Any]:
    """Start ``viopay serve`` on this backend's database with extra settings."""
    started: list[Server] = []

    def start_server(name: str, **env: str) -> Server:
        server = Server(Backend(backend.name, {**backend.env, **RECOVERY, **env}), tmp_path, name)
        started.append(server)
        return server

    yield start_server
    for server in started:
        server.stop()  # also closes the log of a server that was killed


def in_background(work: Any) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except httpx.HTTPError:
            pass  # the server died under the request: that is the point

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def send_until_killed(server: Server, work: Any) -> None:
    """Send a request the server SIGKILLs itself in the middle of (VIOPAY_TEST_CRASH_AT)."""
    with pytest.raises(httpx.HTTPError):
        work()
    server.process.wait(timeout=30)
    assert server.process.returncode == -9


async def wait_for(runtime: Any, query: Any, *, until: Any, timeout: float = 45) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        async with runtime.sessions() as db:
            value = await db.scalar(query)
        if until(value):
            return value
        assert time.monotonic() < deadline, f"gave up waiting; last value {value!r}"
        await asyncio.sleep(0.1)


def remembered_lookups(server: Server) -> float:
    """Keyed charges ``server`` authenticated on a remembered lookup (its /metrics)."""
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.name == "viopay_terminal_lookups_total" and sample.labels["source"] == (
                "remembered"
            ):
                return sample.value
    return 0.0


def pending_intents(terminal_id: str) -> Any:
    return (
        select(func.count())
        .select_from(PaymentIntent)
        .where(PaymentIntent.terminal_id == terminal_id, PaymentIntent.state == IntentState.pending)
    )


def latest_intent_reference(terminal_id: str, kind: str) -> Any:
    return (
        select(PaymentIntent.reference)
        .where(PaymentIntent.terminal_id == terminal_id, PaymentIntent.kind == kind)
        .order_by(PaymentIntent.created_at.desc())
        .limit(1)
    )


async def kill_during_the_call(
    runtime: Any, victim: Server, terminal_id: str, kind: str, *, heard: bool
) -> None:
    """With the sandbox slowed: SIGKILL once the intent is recorded and, with ``heard``, once
    the sandbox has recorded the call in its ledger too (its answer never comes back)."""
    reference = await wait_for(
        runtime, latest_intent_reference(terminal_id, kind), until=lambda r: r is not None
    )
    in_ledger = (
        select(func.count())
        .select_from(SandboxLedgerEntry)
        .where(SandboxLedgerEntry.reference == reference)
    )
    if heard:
        await wait_for(runtime, in_ledger, until=lambda n: n == 1)
    victim.process.kill()
    victim.process.wait(timeout=30)
    if not heard:
        async with runtime.sessions() as db:
            assert await db.scalar(in_ledger) == 0, "the sandbox heard the call before the kill"


async def assert_recovered(runtime: Any, terminal_id: str) -> None:
    """No intent pending, no key in progress, and the database agrees with the ledger."""
    await wait_for(runtime, pending_intents(terminal_id), until=lambda n: n == 0)
    async with runtime.sessions() as db:
        running = await db.scalar(
            select(func.count())
            .select_from(IdempotencyRecord)
            .where(
                IdempotencyRecord.terminal_id == terminal_id,
                IdempotencyRecord.state == IdempotencyState.in_progress,
            )
        )
        assert running == 0
        await assert_ledger_agrees(db, terminal_id)


async def assert_ledger_agrees(db: Any, terminal_id: str) -> None:
    """§4.7: for every reference the processor knows (of this terminal's intents), the
    database holds the same outcome."""
    ours = set(
        (
            await db.scalars(
                select(PaymentIntent.reference).where(PaymentIntent.terminal_id == terminal_id)
            )
        ).all()
    )
    ledger = [
        e for e in (await db.scalars(select(SandboxLedgerEntry))).all() if e.reference in ours
    ]
    charges = {
        c.processor_reference: c
        for c in (await db.scalars(select(Charge).where(Charge.terminal_id == terminal_id))).all()
    }
    refunds = {
        r.processor_reference
        for r in (await db.scalars(select(Refund).where(Refund.terminal_id == terminal_id))).all()
    }
    for entry in ledger:
        if entry.operation == "authorize":
            charge = charges.get(entry.reference)
            assert charge is not None, (
                f"the processor holds {entry.reference}, the database no charge"
            )
            if not entry.approved:
                assert charge.status is ChargeStatus.declined
            elif entry.undone_by is not None:
                assert charge.status in (ChargeStatus.reversed, ChargeStatus.canceled), charge
            else:
                assert charge.status in (
                    ChargeStatus.approved,
                    ChargeStatus.partially_refunded,
                    ChargeStatus.refunded,
                ), charge
        elif entry.operation == "refund":
            assert entry.reference in refunds, (
                f"refund {entry.reference} done at the processor only"
            )
    assert len([e for e in ledger if e.operation == "authorize"]) == len(charges)


async def charges_with_key(runtime: Any, terminal_id: str, key: str) -> int:
    async with runtime.sessions() as db:
        return int(
            await db.scalar(
                select(func.count())
                .select_from(Charge)
                .where(Charge.terminal_id == terminal_id, Charge.idempotency_key == key)
            )
        )


# --- a charge killed at each phase -------------------------------------------------------------

CHARGE_PHASES = ["before_processor", "during_unheard", "during_heard", "after_processor"]


@pytest.mark.parametrize("phase", CHARGE_PHASES)
async def test_a_charge_killed_at_each_phase_completes_once(
    terminal: kit.PosTerminal, runtime: Runtime, start: Callable[..., Server], phase: Any
) -> None:
    """The victim's first request: its terminal lookup is read afresh."""
    await kill_a_charge_and_retry(terminal, runtime, start, phase, remembered=False)


@pytest.mark.parametrize("phase", CHARGE_PHASES)
async def test_a_charge_on_a_remembered_lookup_killed_at_each_phase_completes_once(
    terminal: kit.PosTerminal,
    runtime: Runtime,
    start: Callable[..., Server],
    backend: Backend,
    phase: Any,
) -> None:
    """The victim authenticated the terminal before (a GET): on PostgreSQL the killed charge's
    first transaction is the one statement on the remembered lookup (issue 10)."""
    await kill_a_charge_and_retry(
        terminal, runtime, start, phase, remembered=backend.name == "postgres"
    )


async def kill_a_charge_and_retry(
    terminal: kit.PosTerminal,
    runtime: Runtime,
    start: Callable[..., Server],
    phase: str,
    *,
    remembered: bool,
) -> None:
    key = f"crash-{phase}"
    crash = {"before_processor": "charge:intent", "after_processor": "charge:answered"}.get(phase)
    victim = start("victim", **victim_settings(phase, crash))
    if remembered:
        # Authenticates the terminal (the lookup is remembered), then 404: no such charge.
        assert terminal.get("ch_none", url=victim.url).code == "not_found"
    if crash:
        send_until_killed(
            victim, lambda: terminal.charge(1500, idempotency_key=key, url=victim.url)
        )
    else:
        in_background(lambda: terminal.charge(1500, idempotency_key=key, url=victim.url))
        if remembered:
            await wait_for(
                runtime,
                latest_intent_reference(terminal.terminal_id, "charge"),
                until=lambda r: r is not None,
            )
            assert remembered_lookups(victim) == 1  # the charge took the remembered path
        await kill_during_the_call(
            runtime, victim, terminal.terminal_id, "charge", heard=phase == "during_heard"
        )
    restarted = start("restarted")
    await assert_recovered(runtime, terminal.terminal_id)
    retry = terminal.charge(1500, idempotency_key=key, url=restarted.url)
    heard = phase in ("during_heard", "after_processor")
    # Heard by the processor: recovery stored its approval, the retry answers it (a replay).
    # Never heard: recovery released the key, the retry charges afresh.
    assert (retry.status, retry.replayed) == ((200, True) if heard else (201, False))
    assert retry.json()["status"] == "approved"
    assert await charges_with_key(runtime, terminal.terminal_id, key) == 1
    again = terminal.charge(1500, idempotency_key=key, url=restarted.url)
    assert (again.status, again.json()["id"]) == (200, retry.json()["id"])
    await assert_recovered(runtime, terminal.terminal_id)


REFUND_PHASES = ["before_processor", "during_unheard", "during_heard", "after_processor"]


@pytest.mark.parametrize("phase", REFUND_PHASES)
async def test_a_refund_killed_at_each_phase_completes_once(
    terminal: kit.PosTerminal, runtime: Runtime, start: Callable[..., Server], phase: Any
) -> None:
    charge = terminal.charge(2000).json()
    key = f"refund-crash-{phase}"
    crash = {"before_processor": "refund:intent", "after_processor": "refund:answered"}.get(phase)
    victim = start("victim", **victim_settings(phase, crash))

    def refund() -> kit.Answer:
        return terminal.refund(charge["id"], {"amount": 700}, idempotency_key=key, url=victim.url)  # noqa: E731

    if crash:
        send_until_killed(victim, refund)
    else:
        in_background(refund)
        await kill_during_the_call(
            runtime, victim, terminal.terminal_id, "refund", heard=phase == "during_heard"
        )
    restarted = start("restarted")
    await assert_recovered(runtime, terminal.terminal_id)
    retry = terminal.refund(charge["id"], {"amount": 700}, idempotency_key=key, url=restarted.url)
    heard = phase in ("during_heard", "after_processor")
    assert (retry.status, retry.replayed) == ((200, True) if heard else (201, False))
    assert retry.json()["charge"]["amount_refunded"] == 700
    async with runtime.sessions() as db:
        made = (await db.scalars(select(Refund).where(Refund.charge_id == charge["id"]))).all()
    assert [r.amount for r in made] == [700]
    assert terminal.get(charge["id"], url=restarted.url).json()["status"] == "partially_refunded"
    await assert_recovered(runtime, terminal.terminal_id)


@pytest.mark.parametrize("kind", ["cancel", "reverse"])
@pytest.mark.parametrize("phase", ["intent", "answered"])
async def test_a_terminals_cancel_or_reverse_killed_is_finished_once(
    terminal: kit.PosTerminal,
    runtime: Runtime,
    start: Callable[..., Server],
    kind: str,
    phase: str,
) -> None:
    """The other money paths of a terminal (§4.3, §4.4): killed before the processor call or
    after its answer, recovery finishes the undo once; the retry with the same key answers it
    (a replay when the processor had done it), and the charge is undone exactly once."""
    charge = terminal.charge(1800).json()
    key = f"{kind}-crash-{phase}"
    victim = start("victim", VIOPAY_TEST_CRASH_AT=f"{kind}:{phase}")

    def undo(url: str) -> kit.Answer:
        send = terminal.cancel if kind == "cancel" else terminal.reverse
        return send(charge["id"], idempotency_key=key, url=url)

    send_until_killed(victim, lambda: undo(victim.url))
    restarted = start("restarted")
    await assert_recovered(runtime, terminal.terminal_id)
    retry = undo(restarted.url)
    assert (retry.status, retry.replayed) == (200, phase == "answered"), retry.response.text
    undone = "canceled" if kind == "cancel" else "reversed"
    assert retry.json()["status"] == undone
    assert terminal.get(charge["id"], url=restarted.url).json()["status"] == undone
    again = undo(restarted.url)
    assert (again.status, again.replayed) == (200, True)
    await assert_recovered(runtime, terminal.terminal_id)
    async with runtime.sessions() as db:
        reference = await db.scalar(
            select(Charge.processor_reference).where(Charge.charge_id == charge["id"])
        )
        undos = (
            await db.scalars(
                select(SandboxLedgerEntry.operation).where(SandboxLedgerEntry.target == reference)
            )
        ).all()
    assert undos == ["void" if kind == "cancel" else "reverse"]  # the processor undid it once


async def test_a_key_is_in_progress_only_until_recovery(
    terminal: kit.PosTerminal, runtime: Runtime, start: Callable[..., Server]
) -> None:
    victim = start("victim", VIOPAY_TEST_CRASH_AT="charge:answered")
    send_until_killed(victim, lambda: terminal.charge(900, idempotency_key="stuck", url=victim.url))
    # Straight after the kill the key is still running (the intent is not yet due) ...
    assert terminal.charge(900, idempotency_key="stuck").code == "idempotency_in_progress"
    # ... and once recovery ran it answers the outcome, never 409 again.
    start("restarted")
    await assert_recovered(runtime, terminal.terminal_id)
    assert terminal.charge(900, idempotency_key="stuck").status == 200


async def test_an_approval_whose_key_was_spent_by_reverse_is_reversed(
    terminal: kit.PosTerminal, runtime: Runtime, start: Callable[..., Server]
) -> None:
    victim = start("victim", VIOPAY_TEST_CRASH_AT="charge:answered")
    send_until_killed(victim, lambda: terminal.charge(800, idempotency_key="spent", url=victim.url))
    # The key's request is presumed dead once its claim is older than the recovery delay (the
    # session's server keeps the default 60 s, so it recovers nothing during this test).
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(IdempotencyRecord)
            .where(
                IdempotencyRecord.terminal_id == terminal.terminal_id,
                IdempotencyRecord.idempotency_key == "spent",
            )
            .values(created_at=datetime.now(UTC) - timedelta(minutes=10))
        )
    spent = terminal.reverse_by_key("spent")
    assert spent.json() == {"object": "reversal", "charge": None}
    start("recovering")
    await assert_recovered(runtime, terminal.terminal_id)
    async with runtime.sessions() as db:
        charge = present(
            await db.scalar(
                select(Charge).where(
                    Charge.idempotency_key == "spent", Charge.terminal_id == terminal.terminal_id
                )
            )
        )
        reference = charge.processor_reference
        held = present(await db.get(SandboxLedgerEntry, reference))
    assert charge.status is ChargeStatus.reversed and held.approved and held.undone_by is not None
    assert terminal.charge(800, idempotency_key="spent").code == "invalid_state"


# --- a burst killed mid-flight, recovered by two processes at once -----------------------------


def recover_cli(backend: Backend) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "viopay", "recover", "--json"],
        env={**os.environ, **backend.env, **RECOVERY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_burst_killed_mid_flight_is_recovered_once_by_two_processes(
    terminal: kit.PosTerminal, runtime: Runtime, start: Callable[..., Server], backend: Backend
) -> None:
    victim = start("victim", **SLOW)
    keys = [f"burst-{i}" for i in range(20)]
    threads = [
        in_background(lambda k=k: terminal.charge(1000, idempotency_key=k, url=victim.url))
        for k in keys
    ]
    # Kill once every charge has its intent and some (not all) reached the sandbox's ledger.
    await wait_for(runtime, pending_intents(terminal.terminal_id), until=lambda n: n == len(keys))
    victim.process.kill()
    victim.process.wait(timeout=30)
    for thread in threads:
        thread.join(timeout=30)
    async with runtime.sessions() as db:
        pending = await db.scalar(pending_intents(terminal.terminal_id))
    assert pending == len(keys)
    await asyncio.sleep(3.2)  # past the recovery delay
    first, second = recover_cli(backend), recover_cli(backend)
    reports = [orjson.loads(p.communicate(timeout=120)[0]) for p in (first, second)]
    assert all(p.returncode == 0 for p in (first, second))
    # Each intent handled by exactly one of the two processes.
    assert sum(r["recovered"] for r in reports) == len(keys), reports
    await assert_recovered(runtime, terminal.terminal_id)
    for key in keys:
        retry = terminal.charge(1000, idempotency_key=key)
        assert retry.status in (200, 201) and retry.json()["status"] == "approved", key
        assert await charges_with_key(runtime, terminal.terminal_id, key) == 1, key
    await assert_recovered(runtime, terminal.terminal_id)


async def test_a_processor_slower_than_the_deadline_never_races_recovery(
    terminal: kit.PosTerminal, runtime: Runtime, start: Callable[..., Server]
) -> None:
    """A request gives up on the processor at half the recovery delay (here 1 s of a 2 s
    sandbox): it answers 502, its intent waits for recovery, which then finds nothing at the
    processor and releases the key; the retry charges afresh. Recovery never decided while
    the request was still talking to the processor."""
    slow = start("slow", VIOPAY_RECOVERY_DELAY_SECONDS="2", VIOPAY_SANDBOX_LATENCY_MS="2000")
    first = terminal.charge(600, idempotency_key="too-slow", url=slow.url)
    assert (first.status, first.code) == (502, "processor_error")
    await assert_recovered(runtime, terminal.terminal_id)
    async with runtime.sessions() as db:
        intent = present(
            await db.scalar(
                select(PaymentIntent).where(PaymentIntent.terminal_id == terminal.terminal_id)
            )
        )
    assert intent.state is IntentState.abandoned and intent.outcome == {"reason": "never_received"}
    retry = terminal.charge(600, idempotency_key="too-slow")
    assert retry.status == 201 and retry.json()["status"] == "approved"
    assert await charges_with_key(runtime, terminal.terminal_id, "too-slow") == 1


@pytest.mark.parametrize("crash", ["refund:intent", "refund:answered", "cancel:answered"])
async def test_a_backoffice_refund_or_cancel_killed_is_finished_once(
    terminal: kit.PosTerminal, runtime: Any, start: Any, crash: str
) -> None:
    """PROTOCOL §6: a merchant's refund or cancel runs in the same phases as a terminal's; killed
    before or after the processor call, recovery finishes it once, with the merchant's key."""
    charge = terminal.charge(2000).json()
    merchant = terminal.merchant
    kind = crash.split(":")[0]
    path = f"/merchant/charges/{charge['id']}/" + ("refunds" if kind == "refund" else "cancel")
    key = f"backoffice-{crash}"
    headers = {"Authorization": f"Bearer {merchant.token}", "Idempotency-Key": key}

    def post(url: str) -> httpx.Response:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            session = http.post("/session/initiate", json={"merchant_id": merchant.merchant_id})
            assert session.status_code == 201
            return http.post(path, json={"amount": 700} if kind == "refund" else None)

    victim = start("victim", VIOPAY_TEST_CRASH_AT=crash)
    send_until_killed(victim, lambda: post(victim.url))
    restarted = start("restarted")
    await assert_recovered(runtime, terminal.terminal_id)
    retry = post(restarted.url)
    heard = crash.endswith(":answered")
    expected = (200, "true") if heard else (201 if kind == "refund" else 200, None)
    assert (retry.status_code, retry.headers.get("Idempotent-Replayed")) == expected, retry.text
    detail = merchant.http.get(f"/merchant/charges/{charge['id']}").json()
    if kind == "refund":
        assert [r["amount"] for r in detail["refunds"]] == [700]
        assert detail["status"] == "partially_refunded"
    else:
        assert detail["status"] == "canceled"
    async with runtime.sessions() as db:
        record = await db.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.merchant_id == merchant.merchant_id,
                IdempotencyRecord.idempotency_key == key,
            )
        )
        assert record is not None and record.state is IdempotencyState.done
    events = merchant.http.get("/merchant/events", params={"limit": 100}).json()["data"]
    (event,) = [
        e for e in events if e["type"] == f"charge.{'refunded' if kind == 'refund' else 'canceled'}"
    ]
    assert event["actor"] == {"type": "client", "id": merchant.subject}  # also when recovered
