"""Rule 3: with PostgreSQL or Redis unreachable the server answers 503 and accepts nothing.

A server process talks to PostgreSQL and Redis through TCP forwarders the test cuts.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.helpers import (
    SEEN_SECRETS,
    ProvisionedDevice,
    Server,
    pos_headers,
    problem,
    signed_pos_headers,
)
from support.tcp_proxy import TcpProxy
from viopay_device import PairingCode, StepReport


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


def test_no_charge_without_replay_protection(proxied: Proxied) -> None:
    """Redis down: a correctly signed charge is refused (503) and no charge exists afterwards."""
    from support.helpers import ProvisionedDevice, sdk_client
    from viopay_device import ServiceUnavailable, activate_device

    srv, redis = proxied.server, proxied.redis
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
        redis.down()
        with pytest.raises(ServiceUnavailable):
            pos.charge(
                amount=1250,
                currency="USD",
                entry_mode="chip",
                card={"pan": "4242424242424242", "expiry": "3012"},
            )
        redis.up()
        assert web.get("/merchant/charges").json()["data"] == []
        approved = pos.charge(
            amount=1250,
            currency="USD",
            entry_mode="chip",
            card={"pan": "4242424242424242", "expiry": "3012"},
        )
        assert approved.status == "approved"
    assert [c["id"] for c in web.get("/merchant/charges").json()["data"]] == [approved.id]
    web.close()
