"""Side-by-side A/B of the server's CPU: this checkout against another revision, on one machine.

The quick benchmark's figures drift with whatever else the machine runs (on a shared 2-vCPU
machine the same code measured 4.2 to 7.4 ms of CPU per charge in consecutive runs), too much
to see a 5-10 % change. This script runs both servers at once, each on a fresh backend, and
sends the work in alternating small batches (A B, B A, ...), so the drift hits both alike; it
prints each server's CPU per charge (or per activated device) and the ratio.

    git worktree add /tmp/base <revision>
    .venv/bin/python scripts/ab_bench.py --base /tmp/base                 # charges, PostgreSQL
    .venv/bin/python scripts/ab_bench.py --base /tmp/base --activation    # whole activations
    .venv/bin/python scripts/ab_bench.py --base /tmp/base --heartbeats    # POST /pos/heartbeat
    .venv/bin/python scripts/ab_bench.py --base /tmp/base --backend embedded

The base server imports the other revision's ``src`` first (PYTHONPATH); everything else (the
SDK, the bench helpers of ``tools/``) is this checkout's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from viopay_device import DeviceClient, IdentityKey, MemoryKeyStore, activate_device
from viopay_tools.bench import fleet, stack

CARD = {"pan": "4111111111111111", "expiry": "3012"}
TERMINALS = 4


def _merchant(url: str, made: fleet.Provisioned) -> httpx.Client:
    web = httpx.Client(base_url=url, timeout=30)
    token = web.post(
        "/client/session", json={"client_id": made.client_id, "client_secret": made.client_secret}
    ).json()["access_token"]
    web.headers["Authorization"] = f"Bearer {token}"
    web.post("/session/initiate", json={"merchant_id": made.merchant_id}).raise_for_status()
    return web


def _terminals(srv: stack.ServerProcess, be: stack.Backend) -> list[DeviceClient]:
    made = fleet.provision(be.settings(), TERMINALS)
    web = _merchant(srv.url, made)
    clients = []
    for device_id, key_id, secret in made.devices:
        store = MemoryKeyStore(IdentityKey(key_id, bytes.fromhex(secret)))
        client = DeviceClient(srv.url, device_id=device_id, key_store=store, timeout=30)

        def claim(report: Any) -> None:
            if report.name == "pairing_code":
                web.post(
                    "/pos/claim", json={"pairing_code": report.result.pairing_code}
                ).raise_for_status()

        activate_device(client, on_step=claim, sleep=lambda _: None)
        clients.append(client)
    return clients


def _each(clients: list[DeviceClient], count: int, one: Callable[[DeviceClient], Any]) -> None:
    """``count`` requests, ``one`` at a time from each client, the clients side by side."""

    def run(client: DeviceClient) -> None:
        for _ in range(count // len(clients)):
            one(client)

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(run, clients))


def _charges(clients: list[DeviceClient], count: int) -> None:
    _each(
        clients,
        count,
        lambda c: c.charge(amount=1000, currency="USD", entry_mode="chip", card=CARD),
    )


def _heartbeats(clients: list[DeviceClient], count: int) -> None:
    _each(clients, count, lambda c: c.heartbeat(**fleet.HEALTH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout of the other revision")
    parser.add_argument("--backend", choices=("postgres", "embedded"), default="postgres")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=40, help="charges (or devices/8) a batch")
    parser.add_argument("--activation", action="store_true", help="activate devices instead")
    parser.add_argument("--heartbeats", action="store_true", help="send heartbeats instead")
    args = parser.parse_args()
    # absolute: each server runs in its backend's data folder, where a relative path would
    # name another database than the one provisioned here (the embedded default's file)
    work = (Path("bench-results") / f"ab-{time.strftime('%Y%m%dT%H%M%S')}").resolve()
    devices_per_batch = max(1, args.batch // 8)
    with contextlib.ExitStack() as stack_:
        servers: dict[str, tuple[stack.ServerProcess, stack.Backend]] = {}
        for name, path in (("head", None), ("base", args.base / "src")):
            be = stack_.enter_context(stack.backend(args.backend, work / name))
            if path is not None:
                os.environ["PYTHONPATH"] = str(path.resolve())
            try:
                srv = stack_.enter_context(
                    stack.server(be, workers=1, log_path=work / f"{name}.log", cpus=None)
                )
            finally:
                os.environ.pop("PYTHONPATH", None)
            servers[name] = (srv, be)
        cpu = dict.fromkeys(servers, 0.0)
        order = list(servers)
        if args.activation:
            per = devices_per_batch
            made = {
                n: fleet.provision(be.settings(), args.rounds * per + 5)
                for n, (_, be) in servers.items()
            }
            for n, (srv, _) in servers.items():  # warm-up
                fleet.activate(srv.url, dataclasses.replace(made[n], devices=made[n].devices[:5]))
            for r in range(args.rounds):
                for n in order if r % 2 == 0 else order[::-1]:
                    srv = servers[n][0]
                    part = made[n].devices[5 + r * per : 5 + (r + 1) * per]
                    before = srv.cpu()
                    fleet.activate(srv.url, dataclasses.replace(made[n], devices=part))
                    cpu[n] += srv.cpu() - before
            done, unit = args.rounds * per, "activated device"
        else:
            send, unit = (_heartbeats, "heartbeat") if args.heartbeats else (_charges, "charge")
            clients = {n: _terminals(srv, be) for n, (srv, be) in servers.items()}
            for n in order:
                send(clients[n], 2 * args.batch)  # warm-up
            for r in range(args.rounds):
                for n in order if r % 2 == 0 else order[::-1]:
                    srv = servers[n][0]
                    before = srv.cpu()
                    send(clients[n], args.batch)
                    cpu[n] += srv.cpu() - before
            done = args.rounds * args.batch
        for n in order:
            print(
                f"{args.backend} {n}: {cpu[n] * 1000 / done:.2f} ms of server CPU per {unit} ({done})"
            )
        print(f"{args.backend} head/base: {cpu['head'] / cpu['base']:.3f}")


if __name__ == "__main__":
    main()
