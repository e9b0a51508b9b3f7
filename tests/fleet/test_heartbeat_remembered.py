"""A heartbeat on PostgreSQL beats in one statement on the terminal lookup its process
remembered (viopay.fleet.native), and writes exactly what the portable path writes. What must
hold, with the change made through another server process: a disable acts on the very next
heartbeat and nothing is written; the rotation hint follows the tally as it is now, and a
terminal past the limit still beats. On the embedded default nothing is remembered and the
same answers come from a fresh read."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import REGISTRY
from sqlalchemy import select

from support import charge_kit as kit
from support.helpers import UA, Admin, Backend, Server, counter_by_label, present
from viopay.app import create_app
from viopay.audit import Actor
from viopay.devices.models import Device
from viopay.fleet import native
from viopay.fleet.schemas import HeartbeatIn
from viopay.ids import utcnow
from viopay.keysets import service as keysets
from viopay.keysets.models import KeySet
from viopay.parameters.defaults import builtin_document
from viopay.parameters.service import pack, set_parameters
from viopay.runtime import Runtime

HEARTBEAT = "/pos/heartbeat"
HEALTH = ("battery_pct", "charging", "network", "signal_dbm", "printer", "pending_offline")
REPORT = {"battery_pct": 64, "network": "cellular", "signal_dbm": -97, "uptime_s": 120}


def lookups(url: str) -> dict[str, float]:
    return counter_by_label(url, "viopay_heartbeat_lookups", "source")


def spent(url: str, before: dict[str, float]) -> dict[str, float]:
    after = lookups(url)
    return {k: after.get(k, 0) - before.get(k, 0) for k in ("remembered", "read", "changed")}


async def device_row(runtime: Runtime, device_id: str) -> dict[str, Any]:
    async with runtime.sessions() as db:
        device = present(await db.get(Device, device_id))
        return {c.key: getattr(device, c.key) for c in Device.__table__.columns}


async def tally(runtime: Runtime, key_set_id: str) -> int:
    async with runtime.sessions() as db:
        return present(
            await db.scalar(select(KeySet.envelope_count).where(KeySet.key_set_id == key_set_id))
        )


async def set_tally(runtime: Runtime, key_set_id: str, count: int) -> None:
    async with runtime.sessions() as db, db.begin():
        present(await db.get(KeySet, key_set_id)).envelope_count = count


async def test_a_remembered_heartbeat_writes_what_a_fresh_one_writes(
    terminal: kit.PosTerminal, server: Server, server_b: Server, runtime: Runtime, backend: Backend
) -> None:
    device_id, key_set = terminal.device.device_id, terminal.keys.key_set_id
    first = terminal.send("POST", HEARTBEAT, {"printer": "ok", "charging": True}, url=server_b.url)
    assert first.status == 200  # read afresh (it comes online); the row is remembered
    count, before = await tally(runtime, key_set), lookups(server_b.url)
    on_first = await device_row(runtime, device_id)

    remembered = terminal.send("POST", HEARTBEAT, REPORT, url=server_b.url)
    assert remembered.status == 200 and "rotate_keys" not in remembered.json()
    on_remembered = await device_row(runtime, device_id)
    if backend.name == "postgres":
        assert spent(server_b.url, before) == {"remembered": 1, "read": 0, "changed": 0}
    else:
        assert spent(server_b.url, before) == {"remembered": 0, "read": 0, "changed": 0}
    assert await tally(runtime, key_set) == count + 2  # the request's envelope and the answer's

    # The same report through the other process, which has not read this terminal: afresh.
    fresh = terminal.send("POST", HEARTBEAT, REPORT, url=server.url)
    assert fresh.status == 200 and fresh.json().keys() == remembered.json().keys()
    for member in ("config_version", "parameters_sha256", "next_heartbeat_s"):
        assert fresh.json()[member] == remembered.json()[member], member
    on_fresh = await device_row(runtime, device_id)
    assert await tally(runtime, key_set) == count + 4
    moments = {"last_heartbeat_at", "last_seen_at"}
    assert {k: v for k, v in on_fresh.items() if k not in moments} == {
        k: v for k, v in on_remembered.items() if k not in moments
    }
    assert on_first["last_heartbeat_at"] < on_remembered["last_heartbeat_at"]
    assert on_remembered["last_heartbeat_at"] <= on_fresh["last_heartbeat_at"]
    assert (on_fresh["battery_pct"], on_fresh["network"], on_fresh["signal_dbm"]) == (
        64,
        "cellular",
        -97,
    )
    assert (on_fresh["printer"], on_fresh["charging"], on_fresh["uptime_s"]) == ("ok", True, 120)
    assert on_fresh["online"] is True


async def test_a_disable_made_elsewhere_acts_on_the_next_heartbeat_and_nothing_is_written(
    terminal: kit.PosTerminal, server_b: Server, admin: Admin, runtime: Runtime
) -> None:
    device_id, key_set = terminal.device.device_id, terminal.keys.key_set_id
    assert terminal.send("POST", HEARTBEAT, {"battery_pct": 50}, url=server_b.url).status == 200
    assert terminal.send("POST", HEARTBEAT, {"battery_pct": 51}, url=server_b.url).status == 200
    row, count = await device_row(runtime, device_id), await tally(runtime, key_set)
    assert admin.http.post(f"/admin/devices/{device_id}/disable").status_code == 200
    refused = terminal.send("POST", HEARTBEAT, {"battery_pct": 9}, url=server_b.url)
    assert (refused.status, refused.code) == (403, "device_disabled")
    after = await device_row(runtime, device_id)
    assert after["battery_pct"] == 51 and after["last_heartbeat_at"] == row["last_heartbeat_at"]
    assert await tally(runtime, key_set) == count
    assert admin.http.post(f"/admin/devices/{device_id}/enable").status_code == 200
    assert terminal.send("POST", HEARTBEAT, {"battery_pct": 9}, url=server_b.url).status == 200
    assert (await device_row(runtime, device_id))["battery_pct"] == 9


async def test_the_rotation_hint_follows_the_tally_as_it_is_now(
    terminal: kit.PosTerminal, server_b: Server, runtime: Runtime
) -> None:
    key_set, limit = terminal.keys.key_set_id, runtime.settings.keyset_max_envelopes
    assert terminal.send("POST", HEARTBEAT, {}, url=server_b.url).status == 200
    plain = terminal.send("POST", HEARTBEAT, {}, url=server_b.url)
    assert plain.status == 200 and "rotate_keys" not in plain.json()
    await set_tally(runtime, key_set, limit * 9 // 10 + 1)
    hinted = terminal.send("POST", HEARTBEAT, {}, url=server_b.url)
    assert hinted.status == 200 and hinted.json()["rotate_keys"] is True
    assert await tally(runtime, key_set) == limit * 9 // 10 + 3
    await set_tally(runtime, key_set, limit)  # past the limit: a heartbeat is never refused
    past = terminal.send("POST", HEARTBEAT, {"battery_pct": 3}, url=server_b.url)
    assert past.status == 200 and past.json()["rotate_keys"] is True
    assert await tally(runtime, key_set) == limit + 2


def test_the_fast_path_knows_every_member_of_a_report() -> None:
    assert list(native.HEALTH) == list(HeartbeatIn.model_fields)


async def test_a_new_app_version_is_written_by_a_remembered_heartbeat(
    terminal: kit.PosTerminal, server_b: Server, runtime: Runtime, backend: Backend
) -> None:
    device_id = terminal.device.device_id
    assert terminal.send("POST", HEARTBEAT, {}, url=server_b.url).status == 200
    before = lookups(server_b.url)
    newer = UA.replace("1.4.2", "1.4.3")
    assert newer != UA
    changed = terminal.send("POST", HEARTBEAT, {}, url=server_b.url, edit={"User-Agent": newer})
    assert changed.status == 200
    assert (await device_row(runtime, device_id))["app_version"] == "1.4.3"
    remembered = 1 if backend.name == "postgres" else 0
    assert spent(server_b.url, before) == {"remembered": remembered, "read": 0, "changed": 0}


async def test_the_terminals_own_parameters_win_over_the_operator_default_on_both_paths(
    terminal: kit.PosTerminal, server: Server, server_b: Server, admin: Admin, runtime: Runtime
) -> None:
    # The operator default as the built-in document: the same bytes every other terminal of the
    # shared test database gets without one.
    async with runtime.sessions() as db, db.begin():
        await set_parameters(
            db, terminal_id=None, document=builtin_document(), actor=Actor.operator(), now=utcnow()
        )
    own = {"acquirer": {"name": f"own of {terminal.terminal_id}"}}
    path = f"/admin/terminals/{terminal.terminal_id}/parameters"
    assert admin.http.put(path, json=own).status_code == 200
    assert terminal.send("POST", HEARTBEAT, {}, url=server_b.url).status == 200
    for url in (server_b.url, server.url):  # remembered (PostgreSQL), then afresh
        answer = terminal.send("POST", HEARTBEAT, {}, url=url)
        assert answer.json()["parameters_sha256"] == pack(own).sha256, url


async def test_a_remembered_heartbeat_reads_keys_this_process_no_longer_holds(
    terminal: kit.PosTerminal, runtime: Runtime, backend: Backend
) -> None:
    """Past VIOPAY_TERMINAL_CACHE_SIZE a set's keys leave the process before its lookup row
    may: the heartbeat then reads them and still beats in one statement (in process, to evict)."""

    def remembered() -> float:
        labels = {"source": "remembered"}
        return REGISTRY.get_sample_value("viopay_heartbeat_lookups_total", labels) or 0.0

    app = create_app(runtime.settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://viopay.test") as http,
    ):

        async def beat(battery: int) -> int:
            body = terminal.seal_body("POST", HEARTBEAT, {"battery_pct": battery})
            headers = terminal.headers("POST", HEARTBEAT, body)
            return (await http.post(HEARTBEAT, content=body, headers=headers)).status_code

        assert await beat(20) == 200  # afresh: the lookup row and the keys now held
        assert await beat(21) == 200
        before = remembered()
        keysets._SETS.clear()  # the set's keys evicted, as past the cache's size
        assert await beat(22) == 200
        assert remembered() == before + (1 if backend.name == "postgres" else 0)
    assert (await device_row(runtime, terminal.device.device_id))["battery_pct"] == 22
