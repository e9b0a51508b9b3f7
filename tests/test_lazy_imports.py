"""A server imports at start-up everything its requests need: a module first imported while a
request is served is imported on the event loop, and every request in flight waits for it (a
41.9 ms stall on the first request with a generator dependency, which loaded anyio's asyncio
backend, seen by ``VIOPAY_LOOP_STALL_MS`` in a benchmark run; docs/benchmarks.md).

A real ``viopay serve`` on each backend records, through an audit hook loaded with
``sitecustomize``, every module its main thread imports; after start-up a day's requests (an
activation, payments of every kind, the merchant's reads and export, a portal page, the API's
documents and metrics, refusals, a webhook delivery) must import none."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    Backend,
    MerchantCtx,
    Server,
    create_pg_database,
    drop_pg_database,
    expect_json,
    flush_redis_prefix,
    open_merchant,
    postgres_env,
    require_services,
    sdk_client,
)
from support.webhook_receiver import running_receiver
from viopay.runtime import Runtime
from viopay_device import activate_device

CARD = {"pan": "4111111111111111", "expiry": "3012"}

# Loaded by the server's interpreter at start (PYTHONPATH): one JSON line per import of its main
# thread (the frames are walked by hand: traceback's source lookup would itself import and open).
SITECUSTOMIZE = """
import json, os, sys, threading, time

_out = open(os.environ["IMPORT_LOG_PATH"], "a", buffering=1)

def _frames():
    frame, found = sys._getframe(1).f_back, []
    while frame is not None and len(found) < 8:
        name = frame.f_code.co_filename
        if "importlib" not in name:
            found.append(f"{name.rsplit('site-packages/', 1)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return found

def _hook(event, args):
    if event == "import" and threading.current_thread() is threading.main_thread():
        line = {"pid": os.getpid(), "t": time.time(), "module": args[0], "stack": _frames()}
        _out.write(json.dumps(line) + "\\n")

sys.addaudithook(_hook)
"""


@pytest.fixture(params=["embedded", "postgres"])
def watched(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Server, Backend, Path]]:
    """A server of its own with the import hook (the embedded default is one process per data
    folder, so each backend gets a fresh one)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    imports = tmp_path / "imports.jsonl"
    env = {
        "VIOPAY_DATA_DIR": str(tmp_path),
        "VIOPAY_LOG_JSON": "true",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "IMPORT_LOG_PATH": str(imports),
        "VIOPAY_WEBHOOK_ALLOW_INSECURE": "true",
        "VIOPAY_WEBHOOK_POLL_SECONDS": "0.2",
    }
    tag = secrets.token_hex(4)
    if request.param == "postgres":
        require_services()
        create_pg_database(f"viopay_test_{tag}")
        env |= postgres_env(f"viopay_test_{tag}", f"viopay_test_{tag}:")
    backend = Backend(request.param, env)
    try:
        srv = Server(backend, tmp_path, f"imports-{request.param}")
        yield srv, backend, imports
        srv.stop()
    finally:
        if request.param == "postgres":
            flush_redis_prefix(env["VIOPAY_REDIS_PREFIX"])
            drop_pg_database(f"viopay_test_{tag}")


def _started_at(log: Path) -> float:
    """The last start-up line: a process that found its port taken left one before it."""
    lines = [
        line for line in log.read_text().splitlines() if "Application startup complete" in line
    ]
    assert lines, "no start-up line in the server's log"
    stamp = json.loads(lines[-1])["timestamp"].replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def _serve_a_day(srv: Server, backend: Backend) -> None:
    """What a server's first minutes hold: an operator, a merchant with a webhook endpoint, a
    device's activation, heartbeat and payments (charges, refunds, a cancel, a reversal), the
    merchant's reads and export, a portal page, webhooks sent."""
    operator = backend.cli("client", "create", "--admin")
    SEEN_SECRETS.add(operator["client_secret"])
    admin = Admin(srv, operator)
    merchant = open_merchant(admin, srv.url, name="Lazy Imports Ltd")
    with running_receiver() as receiver:
        created = merchant.http.post("/merchant/webhook-endpoints", json={"url": receiver.url})
        SEEN_SECRETS.add(expect_json(created, 201)["secret"])
        _pay(srv, admin, merchant)
        receiver.wait(lambda: len(receiver.received) > 0)
    merchant.http.close()
    admin.http.close()


def _pay(srv: Server, admin: Admin, merchant: MerchantCtx) -> None:
    client = sdk_client(srv.url, admin.provision())

    def claim(report: Any) -> None:
        if report.name == "pairing_code":
            code = report.result.pairing_code
            expect_json(merchant.http.post("/pos/claim", json={"pairing_code": code}), 200)

    activate_device(client, on_step=claim, sleep=lambda _: None)
    charge = client.charge(amount=1250, currency="USD", entry_mode="chip", card=CARD)
    client.refund(charge.id, amount=250)
    client.get_charge(charge.id)
    client.cancel(client.charge(amount=300, currency="USD", entry_mode="chip", card=CARD).id)
    client.reverse(client.charge(amount=400, currency="USD", entry_mode="chip", card=CARD).id)
    client.heartbeat()
    other = client.charge(amount=500, currency="USD", entry_mode="chip", card=CARD)
    refund = merchant.http.post(
        f"/merchant/charges/{other.id}/refunds",
        json={"amount": 100},
        headers={"Idempotency-Key": "lazy-imports-1"},
    )
    assert refund.status_code == 201, refund.text
    expect_json(merchant.http.get("/merchant/charges"), 200)
    expect_json(merchant.http.get(f"/merchant/charges/{charge.id}"), 200)
    assert merchant.http.get("/merchant/charges/export").status_code == 200
    expect_json(merchant.http.get("/merchant/events"), 200)
    expect_json(merchant.http.get("/merchant/devices"), 200)
    assert httpx.get(f"{srv.url}/portal/signin").status_code == 200
    for path, status in (("/openapi.json", 200), ("/docs", 200), ("/metrics", 200)):
        assert httpx.get(f"{srv.url}{path}").status_code == status, path
    # refusals too: a bad body, an unknown path, a wrong method, no credentials
    bad = merchant.http.post(
        "/pos/claim", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400, bad.text
    assert httpx.get(f"{srv.url}/no/such/path").status_code == 404
    assert httpx.delete(f"{srv.url}/healthz").status_code == 405
    assert httpx.get(f"{srv.url}/merchant/charges").status_code == 401
    client.close()


def test_requests_import_nothing_after_start_up(watched: tuple[Server, Backend, Path]) -> None:
    srv, backend, imports = watched
    _serve_a_day(srv, backend)
    started = _started_at(srv.log_path)
    lines = (json.loads(line) for line in imports.read_text().splitlines())
    seen = [i for i in lines if i["pid"] == srv.process.pid]  # not the CLI's
    assert "viopay.app" in {i["module"] for i in seen if i["t"] < started}  # the hook works
    assert started < time.time()  # and the start-up line was read right
    late = [i for i in seen if i["t"] > started]
    where = "\n".join(f"{i['module']}: {' < '.join(i['stack'])}" for i in late)
    assert [i["module"] for i in late] == [], where


async def test_the_openapi_document_is_built_at_start_up(runtime: Runtime) -> None:
    """Not an import but the same stall: built on the first ``/openapi.json`` (~190 ms of the
    loop), it is built before the server answers anything."""
    from viopay.app import create_app

    app = create_app(runtime.settings)
    assert app.openapi_schema is None
    async with app.router.lifespan_context(app):
        assert app.openapi_schema is not None
        assert "/pos/charge" in app.openapi_schema["paths"]
