"""PROTOCOL §8 against real servers on both backends: the heartbeat (signed, sealed, bounded,
counted but never refused for the envelope limit), health on the device object, the online
filter, device.online/device.offline events delivered as webhooks, and the SDK's schedule."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, insert, select, update

from support import charge_kit as kit
from support.helpers import (
    SEEN_SECRETS,
    MerchantCtx,
    expect_json,
    present,
    problem,
)
from support.webhook_receiver import Receiver, running_receiver
from viopay.fleet import service
from viopay.fleet.models import TimerLease
from viopay.fleet.schemas import HeartbeatIn
from viopay.fleet.service import take_lease
from viopay.ids import utcnow
from viopay.keysets.models import KeySet
from viopay.merchants.models import MerchantConfig
from viopay.parameters.models import DEFAULT_KEY, TerminalParameters
from viopay.parameters.service import builtin_parameters, pack
from viopay.runtime import Runtime
from viopay_device import HeartbeatSchedule

HEARTBEAT = "/pos/heartbeat"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def device_view(pos: kit.PosTerminal) -> dict[str, Any]:
    return expect_json(pos.merchant.http.get(f"/merchant/devices/{pos.device.device_id}"), 200)


def beat(pos: kit.PosTerminal, **report: Any) -> dict[str, Any]:
    return pos.send("POST", HEARTBEAT, report).json()


def event_types(merchant: MerchantCtx, device_id: str) -> list[str]:
    events = expect_json(merchant.http.get("/merchant/events", params={"limit": 100}), 200)["data"]
    return [e["type"] for e in events if e["subject"]["id"] == device_id]


def listed(merchant: MerchantCtx, online: str) -> set[str]:
    page = expect_json(merchant.http.get("/merchant/devices", params={"online": online}), 200)
    return {d["device_id"] for d in page["data"]}


@pytest.mark.backend
async def test_heartbeat_answers_and_records_health(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    before = device_view(terminal)["health"]
    assert before == {
        "online": False,
        "last_heartbeat_at": None,
        "battery_pct": None,
        "charging": None,
        "network": None,
        "signal_dbm": None,
        "printer": None,
    }
    async with runtime.sessions() as db:
        count = present(
            await db.scalar(
                select(KeySet.envelope_count).where(KeySet.hmac_key_id == terminal.keys.hmac_key_id)
            )
        )

    answer = beat(
        terminal,
        battery_pct=81,
        charging=True,
        network="wifi",
        signal_dbm=-61,
        printer="paper_low",
        pending_offline=0,
        uptime_s=3600,
        firmware="ignored",
    )
    config = expect_json(terminal.merchant.http.get("/merchant/config"), 200)
    assert answer["config_version"] == config["config_version"]
    assert len(answer["parameters_sha256"]) == 64 and answer["next_heartbeat_s"] == 2
    assert answer["server_time"].endswith("Z") and "rotate_keys" not in answer
    health = device_view(terminal)["health"]
    assert health["online"] is True and health["last_heartbeat_at"] is not None
    assert (health["battery_pct"], health["charging"], health["network"]) == (81, True, "wifi")
    assert (health["signal_dbm"], health["printer"]) == (-61, "paper_low")
    assert event_types(terminal.merchant, terminal.device.device_id).count("device.online") == 1

    beat(terminal, battery_pct=40)  # an omitted member keeps its last value
    health = device_view(terminal)["health"]
    assert (health["battery_pct"], health["charging"], health["printer"]) == (40, True, "paper_low")
    assert event_types(terminal.merchant, terminal.device.device_id).count("device.online") == 1
    async with runtime.sessions() as db:
        after = await db.scalar(
            select(KeySet.envelope_count).where(KeySet.hmac_key_id == terminal.keys.hmac_key_id)
        )
    assert after == count + 4  # two envelopes each way


@pytest.mark.backend
async def test_heartbeat_names_the_parameters_the_terminal_should_hold(
    terminal: kit.PosTerminal, admin: Any, runtime: Runtime
) -> None:
    async with runtime.sessions() as db:
        default = await db.get(TerminalParameters, DEFAULT_KEY)
    # The operator default (another test may set one: the built-in document), else built-in.
    fallback = default.sha256 if default is not None else builtin_parameters().sha256
    assert beat(terminal)["parameters_sha256"] == fallback
    own = {"hosts": [{"address": f"{secrets.token_hex(4)}.example", "port": 443}]}
    stored = admin.http.put(f"/admin/terminals/{terminal.terminal_id}/parameters", json=own)
    assert stored.status_code == 200, stored.text
    assert beat(terminal)["parameters_sha256"] == pack(own).sha256 == stored.json()["sha256"]


@pytest.mark.backend
async def test_heartbeat_makes_a_missing_config_with_the_defaults(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    merchant_id = terminal.merchant.merchant_id
    beat(terminal)
    async with runtime.sessions() as db, db.begin():
        await db.execute(delete(MerchantConfig).where(MerchantConfig.merchant_id == merchant_id))
    assert beat(terminal, battery_pct=12)["config_version"] == 1
    async with runtime.sessions() as db:
        made = await db.get(MerchantConfig, merchant_id)
    assert made is not None and made.config_version == 1
    assert device_view(terminal)["health"]["battery_pct"] == 12


@pytest.mark.backend
async def test_heartbeat_of_an_online_terminal_is_two_statements(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    """A fleet beats every minute: once online, the report is one UPDATE and the answer one
    SELECT, which reads the parameters' digests, never their ~100 KiB streams."""
    beat(terminal, battery_pct=30)  # online
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    engine = runtime.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        async with runtime.sessions() as db, db.begin():
            answer = await service.record_heartbeat(
                db,
                device_id=terminal.device.device_id,
                terminal_id=terminal.terminal_id,
                merchant_id=terminal.merchant.merchant_id,
                report=HeartbeatIn(battery_pct=31, printer="ok"),
                interval_seconds=60,
                now=utcnow(),
            )
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) == 2, statements
    assert statements[0].lstrip().upper().startswith("UPDATE DEVICES")
    assert "gzip" not in " ".join(statements).lower()
    assert answer["config_version"] >= 1 and len(answer["parameters_sha256"]) == 64
    health = device_view(terminal)["health"]
    assert (health["battery_pct"], health["printer"], health["online"]) == (31, "ok", True)


@pytest.mark.backend
async def test_bad_heartbeats_change_nothing(terminal: kit.PosTerminal) -> None:
    beat(terminal, battery_pct=55)
    for report in (
        {"battery_pct": 101},
        {"battery_pct": -1},
        {"battery_pct": 50.5},
        {"battery_pct": "50"},
        {"charging": "yes"},
        {"network": "carrier-pigeon"},
        {"signal_dbm": 1},
        {"signal_dbm": -151},
        {"printer": "on fire"},
        {"pending_offline": 1_000_001},
        {"uptime_s": 10**9 + 1},
        {"uptime_s": True},
    ):
        answer = terminal.send("POST", HEARTBEAT, report)
        assert answer.status == 400 and answer.code == "invalid_request", report
    assert terminal.send("POST", HEARTBEAT, body=b'{"v":1}').code == "invalid_request"
    bad_signature = terminal.send("POST", HEARTBEAT, {"battery_pct": 1}, sign_body=b"{}")
    assert bad_signature.status == 401
    assert device_view(terminal)["health"]["battery_pct"] == 55


@pytest.mark.backend
async def test_heartbeat_past_the_envelope_limit_learns_rotate_keys(
    terminal: kit.PosTerminal, runtime: Runtime
) -> None:
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(KeySet)
            .where(KeySet.hmac_key_id == terminal.keys.hmac_key_id)
            .values(envelope_count=2**24)
        )
    assert terminal.charge().code == "invalid_state"
    answer = beat(terminal, battery_pct=10)
    assert answer["rotate_keys"] is True


@pytest.mark.backend
async def test_offline_and_online_events_reach_webhooks(
    terminal: kit.PosTerminal, receiver: Receiver
) -> None:
    merchant, device_id = terminal.merchant, terminal.device.device_id
    created = expect_json(
        merchant.http.post(
            "/merchant/webhook-endpoints",
            json={"url": receiver.url, "event_types": ["device.online", "device.offline"]},
        ),
        201,
    )
    SEEN_SECRETS.add(created["secret"])
    problem(
        merchant.http.get("/merchant/devices", params={"online": "yes"}), 400, "invalid_request"
    )
    assert device_id in listed(merchant, "false") and device_id not in listed(merchant, "true")

    def types() -> list[str]:
        import orjson

        return [
            orjson.loads(r.body)["type"]
            for r in list(receiver.received)
            if orjson.loads(r.body)["subject"]["id"] == device_id
        ]

    beat(terminal, battery_pct=90)
    receiver.wait(lambda: types() == ["device.online"])
    assert device_id in listed(merchant, "true") and device_id not in listed(merchant, "false")
    # No more heartbeats: offline once the last is 3 × 2 s old (the timer checks every 0.5 s).
    receiver.wait(lambda: types() == ["device.online", "device.offline"])
    assert device_id in listed(merchant, "false")
    assert device_view(terminal)["health"]["online"] is False
    beat(terminal)
    receiver.wait(lambda: types() == ["device.online", "device.offline", "device.online"])
    assert event_types(merchant, device_id)[:3] == [
        "device.online",
        "device.offline",
        "device.online",
    ]


@pytest.mark.backend
async def test_sdk_schedule_refetches_what_changed(terminal: kit.PosTerminal) -> None:
    refreshed: list[tuple[bool, bool]] = []
    schedule = HeartbeatSchedule(
        terminal.client,
        report=lambda: {"battery_pct": 77, "printer": "ok"},
        on_refresh=lambda config, params: refreshed.append((config, params)),
    )
    schedule.beat()  # the first may fetch the parameters (cached per key set at activation)
    refreshed.clear()
    first = schedule.beat()
    assert schedule.interval == 2.0 and refreshed == []
    assert device_view(terminal)["health"]["battery_pct"] == 77

    tax = {"enabled": True, "rate_bps": 825, "inclusive": False}
    expect_json(terminal.merchant.http.put("/merchant/config", json={"tax": tax}), 200)
    second = schedule.beat()
    assert second.config_version == first.config_version + 1
    assert refreshed == [(True, False)]
    assert terminal.client.config is not None
    assert terminal.client.config.config_version == second.config_version


@pytest.mark.backend
async def test_timer_lease_one_holder_at_a_time(runtime: Runtime) -> None:
    name = f"test-{secrets.token_hex(4)}"
    now, ttl = utcnow(), timedelta(seconds=30)
    async with runtime.sessions() as db, db.begin():
        await db.execute(insert(TimerLease).values(name=name, owner=None, until=None))
    for owner, at, expected in (
        ("a", now, True),
        ("b", now + timedelta(seconds=10), False),
        ("a", now + timedelta(seconds=10), True),  # the holder renews
        ("b", now + timedelta(seconds=39), False),
        ("b", now + timedelta(seconds=41), True),  # a's lease ended
    ):
        async with runtime.sessions() as db, db.begin():
            assert await take_lease(db, name=name, owner=owner, ttl=ttl, now=at) is expected
