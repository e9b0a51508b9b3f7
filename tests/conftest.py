"""Test infrastructure: every API test runs against real server processes on both backends.

- ``embedded``: ``viopay serve`` on a fresh SQLite file with the in-process cache;
- ``postgres``: ``viopay serve`` on a fresh PostgreSQL database and its own Redis key prefix,
  plus a second server process (``server_b``) sharing them.

With ``CI=true`` a missing PostgreSQL or Redis fails the run instead of skipping.

Under pytest-xdist (``scripts/test.sh`` runs two workers) every worker has its own servers,
databases, Redis prefixes and ports. The tests of one backend go to one worker as a group, so each
worker starts a backend's servers once; other tests go by module, so module fixtures (a browser,
an SSO server) start once. The log scan (support/log_scan.py) runs in the controller after all
workers.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from support.helpers import (
    SEEN_SECRETS,
    SERVER_LOGS,
    Admin,
    Backend,
    MakeMerchant,
    MerchantCtx,
    Server,
    create_pg_database,
    drop_pg_database,
    flush_redis_prefix,
    open_merchant,
    postgres_env,
    require_services,
)
from support.log_scan import LogScan

if TYPE_CHECKING:
    from support.charge_kit import PosTerminal
    from viopay.runtime import Runtime

# Webhooks to the tests' own http://127.0.0.1 receivers, retried within seconds; heartbeats
# every 2 s, so a terminal is offline 6 s after its last one (PROTOCOL §7, §8).
WEBHOOK_TEST_ENV = {
    "VIOPAY_WEBHOOK_ALLOW_INSECURE": "true",
    "VIOPAY_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1",
    "VIOPAY_WEBHOOK_POLL_SECONDS": "0.2",
    "VIOPAY_HEARTBEAT_INTERVAL_SECONDS": "2",
    "VIOPAY_FLEET_CHECK_SECONDS": "0.5",
}


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LogScan(config, SEEN_SECRETS, SERVER_LOGS), "viopay-log-scan")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """xdist groups (``--dist loadgroup``): one per backend, else one per module."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec else None
        group = f"backend-{backend}" if backend else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", params=["embedded", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    tag = secrets.token_hex(4)
    data_dir = tmp_path_factory.mktemp(f"viopay-{request.param}")
    env = {"VIOPAY_DATA_DIR": str(data_dir), "VIOPAY_LOG_LEVEL": "debug", "VIOPAY_LOG_JSON": "true"}
    env |= WEBHOOK_TEST_ENV
    if request.param == "postgres":
        require_services()
        db_name = f"viopay_test_{tag}"
        create_pg_database(db_name)
        env |= postgres_env(db_name, f"viopay_test_{tag}:")
    backend = Backend(request.param, env)
    yield backend
    if request.param == "postgres":
        flush_redis_prefix(env["VIOPAY_REDIS_PREFIX"])
        drop_pg_database(db_name)


@pytest.fixture(scope="session")
def server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(backend, tmp_path_factory.mktemp(f"server-{backend.name}"), "a")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server_b(
    backend: Backend, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A second process sharing PostgreSQL + Redis; on the embedded default, the same process."""
    if backend.name != "postgres":
        yield server
        return
    srv = Server(backend, tmp_path_factory.mktemp(f"server-{backend.name}-b"), "b")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def admin(backend: Backend, server: Server) -> Iterator[Admin]:
    client = backend.cli("client", "create", "--admin")
    SEEN_SECRETS.add(client["client_secret"])
    operator = Admin(server, client)
    yield operator
    operator.http.close()


@pytest.fixture(scope="session")
def member_client(backend: Backend, admin: Admin) -> dict[str, Any]:
    """One API client made by the CLI; tests add it to fresh merchants with the role they need."""
    merchant = admin.merchant(name="Seed merchant")
    client = backend.cli(
        "client", "create", "--merchant", merchant["merchant_id"], "--role", "owner"
    )
    SEEN_SECRETS.add(client["client_secret"])
    return client


@pytest.fixture
def make_merchant(
    admin: Admin, member_client: dict[str, Any], server: Server
) -> Iterator[MakeMerchant]:
    opened: list[httpx.Client] = []

    def make(role: str = "owner", *, url: str | None = None, **fields: Any) -> MerchantCtx:
        ctx = open_merchant(admin, url or server.url, role, **fields)
        opened.append(ctx.http)
        return ctx

    yield make
    for http in opened:
        http.close()


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
async def runtime(backend: Backend, server: Server) -> AsyncIterator[Runtime]:
    """An in-process runtime on the same database, cache and master key as the servers.

    For service-level tests that need a controlled clock (expiry, windows).
    """
    from viopay.runtime import build_runtime
    from viopay.settings import Settings

    mp = pytest.MonkeyPatch()
    for key, value in backend.env.items():
        mp.setenv(key, value)
    rt = build_runtime(Settings())
    mp.undo()
    yield rt
    await rt.close()


@pytest.fixture
async def terminal(
    server: Server, admin: Admin, make_merchant: MakeMerchant, runtime: Runtime
) -> AsyncIterator[PosTerminal]:
    """A terminal activated on ``server`` by the device SDK, for the charge tests (its own
    merchant)."""
    from support.charge_kit import activated_terminal

    pos = await activated_terminal(server, admin, make_merchant, runtime)
    yield pos
    pos.close()
