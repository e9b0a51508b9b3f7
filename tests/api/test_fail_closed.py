"""Rule 3: with PostgreSQL or Redis unreachable the server answers 503 and accepts nothing.

A server process talks to PostgreSQL and Redis through TCP forwarders the test cuts. The fast
paths of a terminal the process already knows (the remembered lookup: a charge's claim and a
heartbeat in one statement on asyncpg's own pool) fail closed as the rest does.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.helpers import (
    SEEN_SECRETS,
    ProvisionedDevice,
    Server,
    counter_by_label,
    pos_headers,
    problem,
    sdk_client,
    signed_pos_headers,
)
from support.tcp_proxy import TcpProxy
from viopay_device import (
    DeviceClient,
    PairingCode,
    ServiceUnavailable,
    StepReport,
    activate_device,
)

CARD = {"pan": "4242424242424242", "expiry": "3012"}


@dataclass
class Proxied:
    server: Server
    pg: TcpProxy
    redis: TcpProxy
    backend: Any

    def provision(self) -> str:
        created = self.backend.cli("device", "provision", f"POS-{secrets.token_hex(4).upper()}")
        SEEN_SECRETS.add(created["identity_secret"])
        self.identity = created
        device_id: str = created["device_id"]
        return device_id


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Proxied]:
    """Its own PostgreSQL database and Redis prefix (only PostgreSQL + Redis can go down)."""
    from support.helpers import (
        Backend,
        create_pg_database,
        drop_pg_database,
        flush_redis_prefix,
        require_services,
    )

    require_services()
    tag = secrets.token_hex(4)
    create_pg_database(f"viopay_test_{tag}")
    pg, redis = TcpProxy("127.0.0.1", 5432), TcpProxy("127.0.0.1", 6379)
    env = {
        "VIOPAY_DATA_DIR": str(tmp_path),
        "VIOPAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pg.port}/viopay_test_{tag}",
        "VIOPAY_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "VIOPAY_REDIS_PREFIX": f"viopay_test_{tag}:",
        "VIOPAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    backend = Backend("postgres-proxied", env)
    srv = Server(backend, tmp_path, "proxied")
    yield Proxied(srv, pg, redis, backend)
    srv.stop()
    pg.close()
    redis.close()
    flush_redis_prefix(env["VIOPAY_REDIS_PREFIX"])
    drop_pg_database(f"viopay_test_{tag}")


def test_redis_down_fails_closed(proxied: Proxied) -> None:
    srv, redis = proxied.server, proxied.redis
    device_id = proxied.provision()
    device = ProvisionedDevice(
        device_id, proxied.identity["key_id"], proxied.identity["identity_secret"]
    )
    http = httpx.Client(base_url=srv.url, timeout=30)
    assert http.post("/pos/bootstrap", headers=pos_headers(device_id)).status_code == 200
    redis.down()
    ready = http.get("/readyz")
    body = problem(ready, 503, "service_unavailable")
    assert body["database"] == "ok" and body["cache"] == "down" and "retry-after" in ready.headers
    # Pairing codes need their rate limit, attestation its nonce store: both refuse.
    problem(
        http.post("/pos/pairing-code", headers=signed_pos_headers(device)),
        503,
        "service_unavailable",
    )
    problem(http.get("/pos/status", headers=signed_pos_headers(device)), 503, "service_unavailable")
    # A correctly signed attest cannot spend its nonce: 503, not an answer without replay protection.
    from support.attest_kit import attest

    problem(attest(http, device), 503, "service_unavailable")
    redis.up()
    problem(
        attest(http, device), 409, "invalid_state"
    )  # inactive: the nonce step passed, status refused
    assert http.get("/readyz").status_code == 200
    code = http.post("/pos/pairing-code", headers=signed_pos_headers(device))
    assert code.status_code == 201
    SEEN_SECRETS.add(code.json()["pairing_code"])
    http.close()


def test_database_down_fails_closed(proxied: Proxied) -> None:
    srv, pg = proxied.server, proxied.pg
    device_id = proxied.provision()
    http = httpx.Client(base_url=srv.url, timeout=30)
    assert http.post("/pos/bootstrap", headers=pos_headers(device_id)).status_code == 200
    pg.down()
    body = problem(http.get("/readyz"), 503, "service_unavailable")
    assert body["database"] == "down" and body["cache"] == "ok"
    for _ in range(3):  # pooled connections die, then new ones are refused: 503 every time
        problem(
            http.post("/pos/bootstrap", headers=pos_headers(device_id)), 503, "service_unavailable"
        )
    assert http.get("/healthz").status_code == 200  # the process itself is up
    pg.up()
    for _ in range(5):
        if http.post("/pos/bootstrap", headers=pos_headers(device_id)).status_code == 200:
            break
    assert http.post("/pos/bootstrap", headers=pos_headers(device_id)).status_code == 200
    assert http.get("/readyz").status_code == 200
    http.close()


@contextmanager
def activated_terminal(proxied: Proxied) -> Iterator[tuple[DeviceClient, httpx.Client]]:
    """A terminal activated through the SDK (no retries) and its merchant's API client."""
    srv = proxied.server
    merchant = proxied.backend.cli("merchant", "create", "--name", "Fail Closed Cafe")
    owner = proxied.backend.cli(
        "client", "create", "--merchant", merchant["merchant_id"], "--role", "owner"
    )
    SEEN_SECRETS.add(owner["client_secret"])
    device_id = proxied.provision()
    device = ProvisionedDevice(
        device_id, proxied.identity["key_id"], proxied.identity["identity_secret"]
    )
    web = httpx.Client(base_url=srv.url, timeout=30)
    token = web.post(
        "/client/session",
        json={"client_id": owner["client_id"], "client_secret": owner["client_secret"]},
    ).json()["access_token"]
    SEEN_SECRETS.add(token)
    web.headers["Authorization"] = f"Bearer {token}"
    assert (
        web.post("/session/initiate", json={"merchant_id": merchant["merchant_id"]}).status_code
        == 201
    )
    with sdk_client(srv.url, device, max_retries=0) as pos:

        def claim(step: StepReport) -> None:
            if step.name == "pairing_code":
                assert isinstance(step.result, PairingCode)
                assert (
                    web.post(
                        "/pos/claim", json={"pairing_code": step.result.pairing_code}
                    ).status_code
                    == 200
                )

        activate_device(pos, on_step=claim, sleep=lambda _: None)
        try:
            yield pos, web
        finally:
            web.close()


def until_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "not ready 30 s after the service came back"
        time.sleep(0.2)


def charge(pos: DeviceClient, amount: int = 1250) -> Any:
    return pos.charge(amount=amount, currency="USD", entry_mode="chip", card=CARD)


def test_no_charge_without_replay_protection(proxied: Proxied) -> None:
    """Redis down: a correctly signed charge is refused (503) and no charge exists afterwards."""
    with activated_terminal(proxied) as (pos, web):
        proxied.redis.down()
        with pytest.raises(ServiceUnavailable):
            charge(pos)
        proxied.redis.up()
        assert web.get("/merchant/charges").json()["data"] == []
        approved = charge(pos)
        assert approved.status == "approved"
        assert [c["id"] for c in web.get("/merchant/charges").json()["data"]] == [approved.id]


def test_the_remembered_paths_fail_closed(proxied: Proxied) -> None:
    """A terminal this process already knows (a keyed charge and a heartbeat each answered on the
    remembered lookup, in one statement): with PostgreSQL down, then Redis down, its next charge
    and heartbeat are 503 and nothing is stored; once both are back, both work again."""
    with activated_terminal(proxied) as (pos, web):
        first = charge(pos, 500)
        pos.heartbeat(battery_pct=80)  # online: the next one is the fast path's
        second = charge(pos, 600)  # remembered
        pos.heartbeat(battery_pct=79)
        url = proxied.server.url
        assert counter_by_label(url, "viopay_terminal_lookups", "source")["remembered"] == 1
        assert counter_by_label(url, "viopay_heartbeat_lookups", "source")["remembered"] == 1
        for cut in (proxied.pg, proxied.redis):
            cut.down()
            for _ in range(3):  # pooled connections die first, then new ones are refused
                with pytest.raises(ServiceUnavailable):
                    charge(pos, 700)
                with pytest.raises(ServiceUnavailable):
                    pos.heartbeat(battery_pct=50)
            cut.up()
            until_ready(url)
        stored = [c["id"] for c in web.get("/merchant/charges").json()["data"]]
        assert sorted(stored) == sorted([first.id, second.id])
        device = web.get(f"/merchant/devices/{pos.device_id}").json()
        assert device["health"]["battery_pct"] == 79
        assert charge(pos, 800).status == "approved"
        assert pos.heartbeat(battery_pct=78).next_heartbeat_s > 0
