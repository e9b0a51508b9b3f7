"""``viopay-tools demo``: the whole flow, step by step, against a running server or one it starts.

It provisions a device and a demo merchant through the local configuration (the same
``VIOPAY_*`` settings as the server), then drives the server over HTTP with the device SDK:
pairing, claim, attest, keys, config, terminal parameters, activation and three payments, with
a webhook endpoint of its own (a receiver on 127.0.0.1) that gets the approved charge's event.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from viopay.audit import Actor
from viopay.auth.clients import create_client
from viopay.cli.common import load_settings_or_exit, run_in_transaction
from viopay.devices.service import provision_device
from viopay.ids import utcnow
from viopay.merchants.models import Role
from viopay.merchants.service import create_merchant
from viopay.settings import Settings

T = TypeVar("T")
console = Console()
APPROVED_CARD = {"pan": "4242424242424242", "expiry": "3012"}
DECLINED_CARD = {"pan": "4000000000000002", "expiry": "3012"}


class Steps:
    """Prints each step with a spinner while it runs, then its outcome and time."""

    def __init__(self) -> None:
        self.table = Table(title="viopay-tools demo", show_lines=False)
        for column in ("step", "result", "ms"):
            self.table.add_column(column, justify="right" if column == "ms" else "left")
        self.total = 0.0

    def run(
        self, name: str, action: Callable[[], T], describe: Callable[[T], str] = lambda _: "ok"
    ) -> T:
        started = time.perf_counter()
        with console.status(f"[bold]{name}[/bold] …"):
            try:
                result = action()
            except Exception as exc:
                console.print(f"[red]✗ {name}[/red]: {type(exc).__name__}: {exc}")
                raise typer.Exit(1) from None
        elapsed = (time.perf_counter() - started) * 1000
        self.total += elapsed
        detail = describe(result)
        console.print(f"[green]✓[/green] {name:<24} {detail}  [dim]{elapsed:.1f} ms[/dim]")
        self.table.add_row(name, detail, f"{elapsed:.1f}")
        return result


class _WebhookReceiver:
    """The merchant's server of the demo: records every webhook POSTed to it, answers 204."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.arrived:
                    receiver.received.append((dict(self.headers.items()), body))
                    receiver.arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/webhooks"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def wait_for(self, secret: str, subject_id: str, timeout: float = 30) -> dict[str, Any]:
        """The first verified event about ``subject_id``."""
        from viopay_device import verify_webhook

        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for headers, body in self.received:
                    event = verify_webhook(secret, body=body, headers=headers)
                    if event["subject"]["id"] == subject_id:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no webhook arrived")
                self.arrived.wait(left)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _embedded_server(data_dir: Path) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIOPAY_")}
    env |= {"VIOPAY_DATA_DIR": str(data_dir), "VIOPAY_LOG_LEVEL": "warning"}
    # A local scratch server: webhooks may go to the demo's own http://127.0.0.1 receiver.
    env |= {"VIOPAY_WEBHOOK_ALLOW_INSECURE": "true"}
    log = (data_dir / "server.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - a fixed argv: this Python running viopay
        [sys.executable, "-m", "viopay", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    status = console.status("starting an embedded server …")
    status.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    "the embedded server exited; see " + str(data_dir / "server.log")
                )
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        status.stop()
        yield url
    finally:
        status.stop()
        process.terminate()
        process.wait(timeout=15)
        log.close()


def _provision(settings: Settings) -> dict[str, Any]:
    async def work(db: Any, runtime: Any) -> dict[str, Any]:
        now, actor = utcnow(), Actor.operator("demo")
        merchant = await create_merchant(
            db,
            name="Demo Coffee",
            currency="USD",
            country="US",
            timezone="America/Los_Angeles",
            actor=actor,
            now=now,
        )
        client = await create_client(
            db,
            wrapper=runtime.wrapper,
            merchant_id=merchant.merchant_id,
            role=Role.owner,
            admin=False,
            actor=actor,
            now=now,
        )
        device = await provision_device(
            db,
            wrapper=runtime.wrapper,
            device_id=f"POS-{secrets.token_hex(4).upper()}",
            key_id=None,
            actor=actor,
            now=now,
        )
        return {"merchant": merchant, "client": client, "device": device}

    return run_in_transaction(work, settings=settings)


def run_demo(url: str, settings: Settings, *, pair_only: bool) -> None:
    from viopay_device import DeviceClient, IdentityKey, MemoryKeyStore

    steps = Steps()
    made = steps.run(
        "provision",
        lambda: _provision(settings),
        lambda m: f"{m['device'].device_id}, merchant {m['merchant'].merchant_id}",
    )
    device, merchant, client = made["device"], made["merchant"], made["client"]
    store = MemoryKeyStore(
        identity=IdentityKey(key_id=device.key_id, secret=bytes.fromhex(device.identity_secret))
    )
    receiver = _WebhookReceiver()
    with (
        DeviceClient(url, device_id=device.device_id, key_store=store) as pos,
        httpx.Client(base_url=url) as web,
    ):
        steps.run(
            "bootstrap",
            pos.bootstrap,
            lambda b: (
                f"server time {b.server_time:%H:%M:%S}Z, min version {b.min_supported_version}"
            ),
        )
        code = steps.run("pairing code", pos.request_pairing_code, lambda c: c.pairing_code)
        if pair_only:
            _wait_for_a_person(pos, code.pairing_code, url)
            return
        token = steps.run(
            "merchant token",
            lambda: (
                web.post(
                    "/client/session",
                    json={"client_id": client.client_id, "client_secret": client.client_secret},
                )
                .raise_for_status()
                .json()["access_token"]
            ),
            lambda _: "Bearer (embedded issuer)",
        )
        web.headers["Authorization"] = f"Bearer {token}"
        steps.run(
            "merchant session",
            lambda: (
                web.post("/session/initiate", json={"merchant_id": merchant.merchant_id})
                .raise_for_status()
                .json()
            ),
            lambda s: s["session_id"],
        )
        hook = web.post(
            "/merchant/webhook-endpoints",
            json={"url": receiver.url, "event_types": ["charge.created"]},
        )
        secret = hook.json()["secret"] if hook.status_code == 201 else None
        console.print(
            f"[green]✓[/green] {'webhook endpoint':<24} {hook.json()['id']} → {receiver.url}"
            if secret
            else "[yellow]·[/yellow] webhook endpoint: this server sends webhooks to https:// only"
        )
        steps.run(
            "claim",
            lambda: (
                web.post(
                    "/pos/claim", json={"pairing_code": code.pairing_code, "label": "Demo counter"}
                )
                .raise_for_status()
                .json()
            ),
            lambda c: c["terminal_id"],
        )
        steps.run("status", pos.status, lambda s: s.status)
        steps.run("attest", pos.attest, lambda _: "attestation token (300 s)")
        steps.run("keys", pos.download_keys, lambda k: f"{k.key_set_id}, 6 KCVs checked")
        steps.run("config", pos.fetch_config, lambda c: f"config_version {c.config_version}")
        steps.run(
            "terminal parameters",
            pos.fetch_terminal_parameters,
            lambda p: f"{p.chunk_count} chunks, {p.size} bytes gzip, SHA-256 ok",
        )
        steps.run("activate", pos.activate, lambda a: f"{a.status} {a.terminal_id}")
        approved = steps.run(
            "charge (approved)",
            lambda: pos.charge(
                amount=1250,
                currency="USD",
                entry_mode="chip",
                card=APPROVED_CARD,
                tip_amount=150,
                reference="demo-1",
            ),
            lambda c: f"{c.id} {c.status} {c.response_code} {c.card.brand} ••{c.card.last4}",
        )
        if secret is not None:
            steps.run(
                "webhook received",
                lambda: receiver.wait_for(secret, approved.id),
                lambda e: f"{e['type']} {e['subject']['id']}, signature verified",
            )
        steps.run(
            "charge (declined)",
            lambda: pos.charge(
                amount=990,
                currency="USD",
                entry_mode="contactless",
                card=DECLINED_CARD,
                reference="demo-2",
            ),
            lambda c: f"{c.id} {c.status} {c.response_code} {c.decline_reason}",
        )
        steps.run(
            "refund 5.00",
            lambda: pos.refund(approved.id, amount=500, reason="demo"),
            lambda r: (
                f"{r.id} → charge {r.charge.status}, refunded {r.charge.amount_refunded}"
                if r.charge
                else r.id
            ),
        )
    receiver.close()
    console.print(steps.table)
    console.print(f"[bold green]Done[/bold green] in {steps.total:.0f} ms against {url}")


def _wait_for_a_person(pos: Any, code: str, url: str) -> None:
    console.print(
        Panel.fit(
            f"[bold]{code[:3]} {code[3:]}[/bold]\n\nOpen {url}/portal, sign in, and claim the device with this code.",
            title="Pairing code",
            border_style="cyan",
        )
    )
    with console.status("waiting for a merchant to claim the device …"):
        status = pos.wait_until_claimed()
    console.print(
        f"[green]✓ claimed[/green] by {status.merchant.name if status.merchant else '?'} "
        f"as terminal {status.terminal_id}"
    )


def demo(
    server: str | None = typer.Option(
        None,
        "--server",
        help="A running server (provisioning uses this shell's VIOPAY_* configuration).",
    ),
    pair_only: bool = typer.Option(
        False,
        "--pair-only",
        help="Stop at the pairing code and wait for a person to claim the device.",
    ),
) -> None:
    """Run the whole flow with progress and timings: pairing to activation to payments."""
    if server is not None:
        run_demo(server.rstrip("/"), load_settings_or_exit(), pair_only=pair_only)
        return
    with tempfile.TemporaryDirectory(prefix="viopay-demo-") as tmp:
        data_dir = Path(tmp)
        # The embedded default in a scratch folder, whatever this shell's VIOPAY_* say.
        settings = Settings(
            data_dir=data_dir,
            database_url=None,
            redis_url=None,
            master_key=None,
            master_key_file=None,
            oidc_issuer=None,
        )
        with _embedded_server(data_dir) as url:
            console.print(f"embedded server at {url} (data in {data_dir})")
            run_demo(url, settings, pair_only=pair_only)
