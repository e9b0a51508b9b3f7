"""A keyed charge on PostgreSQL authenticates on the terminal lookup its process remembered, and
claims its key only if that row still reads the same, in one statement (issue 10: the payment
core). What must hold, with the change made through another server process: a disable, a
release or a key set's end acts on the very next charge; the envelope limit and the 90 %
rotation hint hold on the row as it is now; a replay answers the stored result and counts its
envelopes; a refusal writes nothing. On the embedded default nothing is remembered and the same
answers come from a fresh read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from support import charge_kit as kit
from support.helpers import Admin, Backend, Server, counter_by_label, present
from viopay.devices.models import Device
from viopay.ids import utcnow
from viopay.keysets.models import KeySet, KeySetStatus
from viopay.payments.models import IdempotencyRecord
from viopay.runtime import Runtime


@pytest.fixture(scope="module")
def other(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second server process: the terminal charges here, the admin works through the first."""
    server = Server(backend, tmp_path_factory.mktemp(f"remembering-{backend.name}"), "remembering")
    yield server
    server.stop()


def lookups(url: str) -> dict[str, float]:
    return counter_by_label(url, "viopay_terminal_lookups", "source")


async def envelope_count(runtime: Runtime, key_set_id: str) -> int:
    async with runtime.sessions() as db:
        return present(await db.get(KeySet, key_set_id)).envelope_count


async def set_key_set(runtime: Runtime, key_set_id: str, **values: object) -> None:
    async with runtime.sessions() as db, db.begin():
        await db.execute(update(KeySet).where(KeySet.key_set_id == key_set_id).values(**values))


async def records(runtime: Runtime, key: str) -> int:
    async with runtime.sessions() as db:
        return present(
            await db.scalar(
                select(func.count())
                .select_from(IdempotencyRecord)
                .where(IdempotencyRecord.idempotency_key == key)
            )
        )


def test_the_second_charge_of_a_process_skips_the_lookup(
    terminal: kit.PosTerminal, other: Server, backend: Backend
) -> None:
    assert terminal.charge(500, idempotency_key="rl-1", url=other.url).status == 201
    before = lookups(other.url)
    assert terminal.charge(600, idempotency_key="rl-2", url=other.url).status == 201
    after = lookups(other.url)
    spent = {k: after.get(k, 0) - before.get(k, 0) for k in ("remembered", "read", "changed")}
    if backend.name == "postgres":
        assert spent == {"remembered": 1, "read": 0, "changed": 0}
    else:
        assert spent == {"remembered": 0, "read": 0, "changed": 0}


async def test_a_disable_made_elsewhere_acts_on_the_next_charge_and_nothing_is_written(
    terminal: kit.PosTerminal, other: Server, admin: Admin, runtime: Runtime
) -> None:
    assert terminal.charge(500, idempotency_key="dis-1", url=other.url).status == 201
    device = terminal.device.device_id
    assert admin.http.post(f"/admin/devices/{device}/disable").status_code == 200
    refused = terminal.charge(500, idempotency_key="dis-2", url=other.url)
    assert (refused.status, refused.code) == (403, "device_disabled")
    assert await records(runtime, "dis-2") == 0
    assert admin.http.post(f"/admin/devices/{device}/enable").status_code == 200
    again = terminal.charge(500, idempotency_key="dis-2", url=other.url)
    assert again.status == 201 and not again.replayed


async def test_a_key_set_that_stopped_serving_is_401_on_the_next_charge(
    terminal: kit.PosTerminal, other: Server, runtime: Runtime
) -> None:
    assert terminal.charge(500, idempotency_key="ks-1", url=other.url).status == 201
    await set_key_set(runtime, terminal.keys.key_set_id, status=KeySetStatus.retired)
    refused = terminal.charge(500, idempotency_key="ks-2", url=other.url)
    assert (refused.status, refused.code) == (401, "unknown_key")
    assert await records(runtime, "ks-2") == 0
    await set_key_set(runtime, terminal.keys.key_set_id, status=KeySetStatus.active)
    assert terminal.charge(500, idempotency_key="ks-2", url=other.url).status == 201


def test_a_release_made_elsewhere_makes_the_terminal_unknown_on_the_next_charge(
    terminal: kit.PosTerminal, other: Server, admin: Admin
) -> None:
    assert terminal.charge(500, idempotency_key="rel-1", url=other.url).status == 201
    device = terminal.device.device_id
    assert admin.http.post(f"/admin/devices/{device}/release").status_code == 200
    refused = terminal.charge(500, idempotency_key="rel-2", url=other.url)
    assert (refused.status, refused.code) == (401, "unknown_terminal")


async def test_the_limit_and_the_rotation_hint_hold_on_the_tally_as_it_is_now(
    terminal: kit.PosTerminal, other: Server, runtime: Runtime
) -> None:
    key_set, limit = terminal.keys.key_set_id, runtime.settings.keyset_max_envelopes
    first = terminal.charge(500, idempotency_key="lim-1", url=other.url)
    assert first.status == 201 and "rotate_keys" not in first.json()
    await set_key_set(runtime, key_set, envelope_count=limit)
    refused = terminal.charge(500, idempotency_key="lim-2", url=other.url)
    assert (refused.status, refused.code) == (409, "invalid_state")
    assert await records(runtime, "lim-2") == 0
    await set_key_set(runtime, key_set, envelope_count=limit * 9 // 10 + 1)
    hinted = terminal.charge(500, idempotency_key="lim-2", url=other.url)
    assert hinted.status == 201 and hinted.json()["rotate_keys"] is True
    assert await envelope_count(runtime, key_set) == limit * 9 // 10 + 1 + 2


async def test_a_replay_answers_the_stored_charge_and_counts_its_envelopes(
    terminal: kit.PosTerminal, other: Server, runtime: Runtime
) -> None:
    key_set = terminal.keys.key_set_id
    made = terminal.charge(700, idempotency_key="rep-1", url=other.url)
    assert made.status == 201
    count = await envelope_count(runtime, key_set)
    replay = terminal.charge(700, idempotency_key="rep-1", url=other.url)
    assert replay.status == 200 and replay.replayed
    assert replay.json()["id"] == made.json()["id"]
    assert await envelope_count(runtime, key_set) == count + 2  # the request's and the answer's
    reused = terminal.charge(800, idempotency_key="rep-1", url=other.url)
    assert (reused.status, reused.code) == (422, "idempotency_key_reused")
    assert await envelope_count(runtime, key_set) == count + 2
    declined = terminal.charge(
        700,
        idempotency_key="rep-2",
        url=other.url,
        card={"pan": "4000000000000002", "expiry": "3012"},
    )
    assert declined.status == 201 and declined.json()["status"] == "declined"
    assert (
        terminal.charge(
            700,
            idempotency_key="rep-2",
            url=other.url,
            card={"pan": "4000000000000002", "expiry": "3012"},
        ).json()["id"]
        == declined.json()["id"]
    )


def test_a_reused_nonce_after_a_disable_made_elsewhere_is_403_then_401(
    terminal: kit.PosTerminal, other: Server, admin: Admin
) -> None:
    """The remembered row still says enabled and the nonce is spent: the §1 order (device
    before nonce) is decided on a fresh read."""
    nonce = kit.new_nonce()
    assert terminal.charge(500, idempotency_key="non-1", nonce=nonce, url=other.url).status == 201
    device = terminal.device.device_id
    assert admin.http.post(f"/admin/devices/{device}/disable").status_code == 200
    disabled = terminal.charge(500, idempotency_key="non-2", nonce=nonce, url=other.url)
    assert (disabled.status, disabled.code) == (403, "device_disabled")
    assert admin.http.post(f"/admin/devices/{device}/enable").status_code == 200
    assert terminal.charge(500, idempotency_key="non-3", url=other.url).status == 201
    again = terminal.charge(500, idempotency_key="non-2", nonce=nonce, url=other.url)
    assert (again.status, again.code) == (401, "nonce_reused")


@pytest.fixture
def fresh_process(backend: Backend, tmp_path: Path) -> Iterator[Server]:
    """A server process that remembers nothing yet."""
    server = Server(backend, tmp_path, "fresh")
    yield server
    server.stop()


async def last_seen(runtime: Runtime, device_id: str) -> datetime:
    async with runtime.sessions() as db:
        seen = present(await db.get(Device, device_id)).last_seen_at
    assert seen is not None
    return seen if seen.tzinfo else seen.replace(tzinfo=UTC)


async def test_a_refused_request_leaves_the_last_seen_write_to_the_next(
    terminal: kit.PosTerminal, fresh_process: Server, backend: Backend, runtime: Runtime
) -> None:
    """A process's first charge of a terminal reads the lookup afresh and remembers it, with
    the device's ``last_seen_at`` write that was due; when the request is then refused with
    nothing stored (a body that is no envelope) that write rolls back with it, so the next
    charge, on the remembered row, makes it."""
    device_id = terminal.device.device_id
    long_ago = utcnow().replace(microsecond=0) - timedelta(minutes=10)
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(Device).where(Device.device_id == device_id).values(last_seen_at=long_ago)
        )
    refused = terminal.send(
        "POST", "/pos/charge", body=b"{}", idempotency_key="seen-1", url=fresh_process.url
    )
    assert (refused.status, refused.code) == (400, "invalid_request")
    assert await last_seen(runtime, device_id) == long_ago  # rolled back with the request
    before = lookups(fresh_process.url)
    assert terminal.charge(500, idempotency_key="seen-2", url=fresh_process.url).status == 201
    if backend.name == "postgres":
        assert lookups(fresh_process.url)["remembered"] - before.get("remembered", 0) == 1
    assert await last_seen(runtime, device_id) > long_ago + timedelta(minutes=9)
