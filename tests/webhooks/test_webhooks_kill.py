"""At least once through a crash (PROTOCOL §7): a real ``viopay serve`` is SIGKILLed while its
deliveries are pending or in flight; started again, it delivers every event.

Each backend gets a database of its own here, so no other server process can deliver in the
killed one's place.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.helpers import (
    REDIS_URL,
    SEEN_SECRETS,
    Backend,
    Server,
    client_token,
    create_pg_database,
    drop_pg_database,
    expect_json,
    flush_redis_prefix,
)
from support.webhook_receiver import Receiver, running_receiver


@pytest.fixture
def fresh(backend: Backend, tmp_path: Path) -> Iterator[Backend]:
    env = backend.env | {"VIOPAY_DATA_DIR": str(tmp_path / "data")}
    db_name = f"viopay_test_kill_{secrets.token_hex(4)}"
    if backend.name == "postgres":
        create_pg_database(db_name)
        env |= {
            "VIOPAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{db_name}",
            "VIOPAY_REDIS_URL": REDIS_URL,
            "VIOPAY_REDIS_PREFIX": f"{db_name}:",
        }
    yield Backend(backend.name, env)
    if backend.name == "postgres":
        flush_redis_prefix(env["VIOPAY_REDIS_PREFIX"])
        drop_pg_database(db_name)


def owner_http(env: Backend, url: str) -> httpx.Client:
    operator = env.cli("client", "create", "--admin")
    SEEN_SECRETS.add(operator["client_secret"])
    token = client_token(url, operator["client_id"], operator["client_secret"])
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    merchant = expect_json(admin.post("/admin/merchants", json={"name": "Night owl"}), 201)
    client = expect_json(
        admin.post(
            "/admin/clients", json={"merchant_id": merchant["merchant_id"], "role": "owner"}
        ),
        201,
    )
    admin.close()
    SEEN_SECRETS.add(client["client_secret"])
    token = client_token(url, client["client_id"], client["client_secret"])
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    expect_json(http.post("/session/initiate", json={"merchant_id": merchant["merchant_id"]}), 201)
    return http


@pytest.mark.backend
def test_killed_server_delivers_every_event_after_restart(fresh: Backend, tmp_path: Path) -> None:
    with running_receiver() as receiver:
        receiver.answer = lambda _id, _before: 503  # the merchant's server is down
        first = Server(fresh, tmp_path, "first")
        try:
            events = make_events(fresh, first, receiver)
            # Some deliveries attempted and failed, some in flight (the receiver hangs), some
            # not yet tried: now kill.
            receiver.wait(lambda: len(receiver.received) >= 3)
            receiver.delay = 5
            first.process.kill()
            assert first.process.wait(timeout=30) == -9
        finally:
            first.stop()
        assert not set(events) <= receiver.succeeded_ids()

        receiver.answer, receiver.delay = (lambda _id, _before: 200), 0
        second = Server(fresh, tmp_path, "second")
        try:
            # In-flight deliveries wait for their lease (30 s) to end, then go again.
            receiver.wait(lambda: set(events) <= receiver.succeeded_ids(), timeout=120)
        finally:
            second.stop()


def make_events(env: Backend, server: Server, receiver: Receiver) -> list[str]:
    http = owner_http(env, server.url)
    try:
        created = expect_json(
            http.post(
                "/merchant/webhook-endpoints",
                json={"url": receiver.url, "event_types": ["merchant_config.updated"]},
            ),
            201,
        )
        SEEN_SECRETS.add(created["secret"])
        for n in range(12):
            tax = {"enabled": True, "rate_bps": n, "inclusive": False}
            expect_json(http.put("/merchant/config", json={"tax": tax}), 200)
        listed = expect_json(http.get("/merchant/events", params={"limit": 100}), 200)["data"]
    finally:
        http.close()
    events = [e["id"] for e in listed if e["type"] == "merchant_config.updated"]
    assert len(events) == 12
    return events
