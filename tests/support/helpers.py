"""Shared test helpers (``from support.helpers import ...``; fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

if TYPE_CHECKING:
    from viopay_device import DeviceClient

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("VIOPAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("VIOPAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
UA = "Viopay-POS/1.4.2 (Android 12; PAX-A920)"
# Every secret a test sees is registered here, every server log there; the log scan (support/log_scan.py)
# looks for each secret in each log at the end of the run, across all xdist workers.
SEEN_SECRETS: set[str] = set()
SERVER_LOGS: list[Path] = []
PORT_ATTEMPTS = 3
T = TypeVar("T")


def present(value: T | None) -> T:
    """``value``, asserted not None: a row, a key set, a match the test knows is there."""
    assert value is not None
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One ``viopay serve`` process, started the way users start it."""

    def __init__(
        self, backend: Backend, log_dir: Path, name: str, *, own_public_url: bool = False
    ) -> None:
        """``own_public_url``: VIOPAY_PUBLIC_URL is the server's own URL (browser redirects back
        to it work), else the placeholder http://viopay.test."""
        self.log_path = log_dir / f"{name}.log"
        SERVER_LOGS.append(self.log_path)
        self._log = self.log_path.open("wb")
        # The free port is released before the server binds it, so another process of the run
        # (an xdist worker, a client socket) can take it in between: then start again elsewhere.
        for _ in range(PORT_ATTEMPTS):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.process = subprocess.Popen(
                [sys.executable, "-m", "viopay", "serve", "--port", str(self.port)],
                env={
                    **os.environ,
                    **backend.env,
                    "VIOPAY_PUBLIC_URL": self.url if own_public_url else "http://viopay.test",
                },
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=log_dir,
            )
            if self._wait_ready():
                return
        raise RuntimeError(f"no free port after {PORT_ATTEMPTS} attempts: {self._tail()}")

    def _tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def _wait_ready(self) -> bool:
        """True once this process serves; False if its port was taken (the log is kept)."""
        bound = f"Uvicorn running on {self.url} ".encode()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if b"address already in use" in self.log_path.read_bytes()[-3000:]:
                    return False
                self._log.close()
                raise RuntimeError(f"server exited: {self._tail()}")
            try:
                # A 200 may come from another process on the port: ours says it bound it.
                answered = httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
                if answered and bound in self.log_path.read_bytes():
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready: {self._tail()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def expect_json(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    body: dict[str, Any] = response.json()
    return body


def client_token(url: str, client_id: str, client_secret: str) -> str:
    body = expect_json(
        httpx.post(
            f"{url}/client/session", json={"client_id": client_id, "client_secret": client_secret}
        ),
        200,
    )
    token: str = body["access_token"]
    SEEN_SECRETS.add(token)
    return token


@dataclass
class ProvisionedDevice:
    device_id: str
    key_id: str
    identity_secret: str

    @property
    def secret(self) -> bytes:
        return bytes.fromhex(self.identity_secret)


@dataclass
class MerchantCtx:
    merchant_id: str
    merchant: dict[str, Any]
    role: str
    token: str
    http: httpx.Client
    subject: str


def pos_headers(device_id: str, *, ua: str = UA) -> dict[str, str]:
    return {"X-Device-Id": device_id, "User-Agent": ua, "X-Client-Type": "pos"}


def stamp_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def signed_pos_headers(
    device: ProvisionedDevice,
    *,
    key_id: str | None = None,
    secret: bytes | None = None,
    timestamp: str | None = None,
    nonce: str | None = None,
    ua: str = UA,
) -> dict[str, str]:
    """The activation headers plus the §2.2 signature (attest; pairing-code and status)."""
    from viopay_device.protocol.signing import attest_string_to_sign, sign

    key_id = key_id or device.key_id
    timestamp = timestamp or stamp_now()
    nonce = nonce or secrets.token_urlsafe(12)
    message = attest_string_to_sign(
        device_id=device.device_id, key_id=key_id, timestamp=timestamp, nonce=nonce
    )
    return pos_headers(device.device_id, ua=ua) | {
        "X-Key-Id": key_id,
        "X-Timestamp": timestamp,
        "X-Nonce": nonce,
        "X-Signature": sign(secret or device.secret, message),
    }


def counter_by_label(url: str, name: str, label: str) -> dict[str, float]:
    """A server's Prometheus counter ``name`` (its ``_total`` sample), by the value of ``label``."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == f"{name}_total":
                found[sample.labels[label]] = sample.value
    return found


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert a problem+json error of PROTOCOL §1 and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["type"] == f"urn:viopay:error:{code}"
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def sdk_client(url: str, device: ProvisionedDevice, **options: Any) -> DeviceClient:
    """The device SDK for a provisioned device (identity key in a memory key store)."""
    from viopay_device import DeviceClient, IdentityKey, MemoryKeyStore

    store = MemoryKeyStore(identity=IdentityKey(key_id=device.key_id, secret=device.secret))
    return DeviceClient(url, device_id=device.device_id, key_store=store, **options)


def claim_with(client: DeviceClient, merchant: MerchantCtx, *, label: str | None = None) -> str:
    """Put the SDK device in pairing mode and claim it as ``merchant``; returns the terminal id."""
    code = client.request_pairing_code().pairing_code
    body = expect_json(
        merchant.http.post("/pos/claim", json={"pairing_code": code, "label": label}), 200
    )
    terminal_id: str = body["terminal_id"]
    return terminal_id


def _service_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Backend:
    name: str
    env: dict[str, str]
    cleanup: list[Any] = field(default_factory=list)

    def cli(self, *args: str) -> dict[str, Any]:
        """Run ``viopay ARGS --json`` on this backend's configuration and parse its one document."""
        import orjson

        done = subprocess.run(
            [sys.executable, "-m", "viopay", *args, "--json"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"viopay {' '.join(args)} failed: {done.stderr}"
        document: dict[str, Any] = orjson.loads(done.stdout)
        return document


def _pg_admin(statement: str) -> None:
    """Run one statement as the PostgreSQL admin, in a thread of its own: a session fixture may
    be set up while another fixture's event loop runs (Playwright's sync API keeps one)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, go()).result()


def create_pg_database(name: str) -> None:
    _pg_admin(f'CREATE DATABASE "{name}"')


def drop_pg_database(name: str) -> None:
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_env(db_name: str, redis_prefix: str) -> dict[str, str]:
    """A server's settings for PostgreSQL database ``db_name`` (made by the caller) and Redis
    under ``redis_prefix``, with a master key of its own."""
    return {
        "VIOPAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{db_name}",
        "VIOPAY_REDIS_URL": REDIS_URL,
        "VIOPAY_REDIS_PREFIX": redis_prefix,
        "VIOPAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        # PostgreSQL's 100 connections are shared by both xdist workers' servers (each
        # process keeps up to twice its pool after a burst: SQLAlchemy's and asyncpg's, plus
        # 4 for bookkeeping) and the benchmark's own servers: at the default 10 a CI run
        # once ran out ("too many clients"). 5 still queues a thousand requests at once.
        "VIOPAY_DB_POOL_SIZE": "5",
    }


def flush_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def require_services() -> None:
    missing = [
        name
        for name, port in (("PostgreSQL", 5432), ("Redis", 6379))
        if not _service_up("127.0.0.1", port)
    ]
    if missing:
        message = f"{' and '.join(missing)} not reachable on 127.0.0.1"
        if IN_CI:
            pytest.fail(f"{message}: CI needs both (.ci/run starts them)")
        pytest.skip(message)


class Admin:
    """An operator: an admin API client of this backend."""

    def __init__(self, server: Server, client: dict[str, Any]) -> None:
        self.server = server
        self.credentials = client
        self.http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {self.token()}"}, timeout=30
        )

    def token(self) -> str:
        return client_token(
            self.server.url, self.credentials["client_id"], self.credentials["client_secret"]
        )

    def provision(
        self, device_id: str | None = None, key_id: str | None = None
    ) -> ProvisionedDevice:
        device_id = device_id or f"POS-{secrets.token_hex(4).upper()}"
        body = {"device_id": device_id} | ({"key_id": key_id} if key_id else {})
        created = expect_json(self.http.post("/admin/devices", json=body), 201)
        SEEN_SECRETS.add(created["identity_secret"])
        return ProvisionedDevice(
            created["device_id"], created["key_id"], created["identity_secret"]
        )

    def merchant(self, **fields: Any) -> dict[str, Any]:
        return expect_json(
            self.http.post("/admin/merchants", json={"name": "Corner Coffee"} | fields), 201
        )

    def client(self, **fields: Any) -> dict[str, Any]:
        created = expect_json(self.http.post("/admin/clients", json=fields), 201)
        SEEN_SECRETS.add(created["client_secret"])
        return created

    def add_member(self, merchant_id: str, subject: str, role: str) -> None:
        expect_json(
            self.http.post(
                f"/admin/merchants/{merchant_id}/members", json={"subject": subject, "role": role}
            ),
            201,
        )


def open_merchant(admin: Admin, url: str, role: str = "owner", **fields: Any) -> MerchantCtx:
    """A new merchant (``fields``), an API client of it with ``role``, signed in at ``url``
    with a session on that merchant; the caller closes ``.http``."""
    merchant = admin.merchant(**fields)
    client = admin.client(merchant_id=merchant["merchant_id"], role=role)
    token = client_token(url, client["client_id"], client["client_secret"])
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    expect_json(http.post("/session/initiate", json={"merchant_id": merchant["merchant_id"]}), 201)
    return MerchantCtx(merchant["merchant_id"], merchant, role, token, http, client["client_id"])


# What the ``make_merchant`` fixture gives: make(role="owner", *, url=None, **fields) -> MerchantCtx.
MakeMerchant = Callable[..., MerchantCtx]
