"""Done-when of issue 2: a CLI-provisioned device goes inactive → claimed through the SDK."""

from __future__ import annotations

import threading
from typing import Any

from support.helpers import SEEN_SECRETS, Backend, MakeMerchant, Server
from viopay_device import DeviceClient, IdentityKey, MemoryKeyStore


def sdk_client(
    server: Server, device_id: str, key_id: str, secret_hex: str, **kwargs: Any
) -> DeviceClient:
    store = MemoryKeyStore(identity=IdentityKey(key_id=key_id, secret=bytes.fromhex(secret_hex)))
    return DeviceClient(server.url, device_id=device_id, key_store=store, **kwargs)


def test_cli_provisioned_device_is_claimed_through_the_sdk(
    backend: Backend, server: Server, make_merchant: MakeMerchant
) -> None:
    provisioned = backend.cli(
        "device", "provision", "POS-" + __import__("secrets").token_hex(4).upper()
    )
    SEEN_SECRETS.add(provisioned["identity_secret"])
    owner = make_merchant()
    with sdk_client(
        server, provisioned["device_id"], provisioned["key_id"], provisioned["identity_secret"]
    ) as device:
        boot = device.bootstrap()
        assert boot.device_status == "inactive" and not boot.upgrade_required
        code = device.request_pairing_code()
        assert device.status().status == "inactive"
        polls: list[str] = []

        def merchant_types_the_code() -> None:
            response = owner.http.post(
                "/pos/claim", json={"pairing_code": code.pairing_code, "label": "Till 1"}
            )
            assert response.status_code == 200, response.text

        timer = threading.Timer(0.3, merchant_types_the_code)
        timer.start()
        status = device.wait_until_claimed(
            on_poll=lambda s: polls.append(s.status), sleep=lambda _: __import__("time").sleep(0.2)
        )
        timer.join()
        assert status.status == "claimed"
        assert status.merchant is not None and status.merchant.id == owner.merchant_id
        assert status.terminal_id and status.terminal_id.startswith("TID-")
        assert polls  # it polled
