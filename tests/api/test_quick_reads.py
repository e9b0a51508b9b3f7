"""Status polls and bootstraps from one statement (viopay.devices.quick).

On PostgreSQL a status poll is answered from one statement, exactly as the fresh path answers
it, good polls and bad alike; a poll that would write (``last_seen_at`` due, a new app version)
or that what it read refuses takes the fresh path, which still writes and refuses as before.
The same poll is sent both ways on a real server: with the app version the device last sent
(nothing to write: quick on PostgreSQL) and with a new one (a write due: fresh).

A bootstrap writes the app version and a due ``last_seen_at`` in its one statement, nothing
when nothing is due, and nothing to a device it refuses (afresh: 403, 404).

On the embedded default every request is fresh. The server's ``viopay_device_reads`` counter
says which path answered."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update
from standardwebhooks import Webhook
from starlette.requests import Request

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    Backend,
    MerchantCtx,
    ProvisionedDevice,
    Server,
    expect_json,
    open_merchant,
    pos_headers,
    signed_pos_headers,
)
from support.webhook_receiver import running_receiver
from viopay.audit import AuditEvent
from viopay.devices import quick, service
from viopay.devices.authn import ActivationHeaders, parse_activation_headers
from viopay.devices.models import Device, PairingCode
from viopay.errors import DeviceDisabled
from viopay.ids import rfc3339, utcnow
from viopay.runtime import Runtime
from viopay.webhooks.models import WebhookDelivery

COUNTER = "viopay_device_reads"
READ_PAIRING = {"route": "pairing-code", "source": "read"}
VERSION = "1.4.2"  # the helpers' User-Agent: what the pairing-code request stored


def ua(version: str) -> str:
    return f"Viopay-POS/{version} (Android 12; PAX-A920)"


def device_reads(server: Server, route: str) -> dict[str, float]:
    """The server's ``viopay_device_reads`` of ``route``, by source."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.name == f"{COUNTER}_total" and sample.labels["route"] == route:
                found[sample.labels["source"]] = sample.value
    return found


def counted(
    server: Server, route: str, send: Callable[[], httpx.Response]
) -> tuple[httpx.Response, str]:
    """``send()``'s answer and the path that answered it: quick, read (afresh after a quick
    look) or fresh (the server counted neither: the embedded default)."""
    before = device_reads(server, route)
    response = send()
    after = device_reads(server, route)
    moved = [k for k in ("quick", "read") if after.get(k, 0) != before.get(k, 0)]
    assert len(moved) <= 1, (before, after)
    return response, moved[0] if moved else "fresh"


class Polls:
    """A device's polls with a given app version, and which path answered them."""

    def __init__(self, api: httpx.Client, server: Server, backend: Backend) -> None:
        self.api, self.server, self.backend = api, server, backend

    def poll(
        self, device: ProvisionedDevice, version: str, **signing: Any
    ) -> tuple[httpx.Response, str]:
        """(the answer, the path that answered it: see :func:`counted`)."""
        headers = signed_pos_headers(device, ua=ua(version), **signing)
        return counted(self.server, "status", lambda: self.api.get("/pos/status", headers=headers))


@pytest.fixture
def polls(api: httpx.Client, server: Server, backend: Backend) -> Polls:
    return Polls(api, server, backend)


@pytest.fixture
def merchant(admin: Admin, server: Server) -> Iterator[MerchantCtx]:
    ctx = open_merchant(admin, server.url)
    yield ctx
    ctx.http.close()


def answer(response: httpx.Response) -> dict[str, Any]:
    """What the two paths must agree on: the status, the media type and the body (a problem's
    members but its request id and instance)."""
    body = response.json()
    if response.headers["content-type"] == "application/problem+json":
        body = {k: v for k, v in body.items() if k not in ("request_id", "instance")}
    return {**body, "http": response.status_code, "media": response.headers["content-type"]}


def both_ways(polls: Polls, device: ProvisionedDevice, version: str, **signing: Any) -> list[Any]:
    """The same poll with a new app version (fresh), then with it again (quick on PostgreSQL):
    the two answers, checked to have come the expected ways."""
    fresh, fresh_path = polls.poll(device, version, **signing)
    quick, quick_path = polls.poll(device, version, **signing)
    expected = ("read", "quick") if polls.backend.name == "postgres" else ("fresh", "fresh")
    assert (fresh_path, quick_path) == expected
    return [answer(fresh), answer(quick)]


def parsed_headers(runtime: Runtime, headers: dict[str, str]) -> ActivationHeaders:
    """``headers`` as a pairing code's mount dependency parses them (for in-process calls)."""
    request = Request(
        {"type": "http", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    )
    return parse_activation_headers(request, runtime, allow_old=False, signed=True)


def refused_both_ways(polls: Polls, device: ProvisionedDevice, **signing: Any) -> list[Any]:
    """A refused poll writes nothing: the same poll with a new app version (fresh: a write
    would be due) and with the version the device last sent (quick on PostgreSQL)."""
    fresh, fresh_path = polls.poll(device, "9.9.9", **signing)
    quick, quick_path = polls.poll(device, VERSION, **signing)
    expected = ("read", "quick") if polls.backend.name == "postgres" else ("fresh", "fresh")
    assert (fresh_path, quick_path) == expected
    return [answer(fresh), answer(quick)]


def paired(api: httpx.Client, admin: Admin) -> tuple[ProvisionedDevice, dict[str, Any]]:
    device = admin.provision()
    code = expect_json(api.post("/pos/pairing-code", headers=signed_pos_headers(device)), 201)
    SEEN_SECRETS.add(code["pairing_code"])
    return device, code


def test_a_waiting_device_reads_its_code_the_same_both_ways(
    api: httpx.Client, admin: Admin, polls: Polls
) -> None:
    device, code = paired(api, admin)
    fresh, quick = both_ways(polls, device, "1.4.3")
    assert fresh == quick
    assert quick["http"] == 200 and quick["media"] == "application/json"
    assert quick["status"] == "inactive"
    assert quick["pairing_code_expires_at"] == code["expires_at"]
    assert (quick["merchant"], quick["terminal_id"]) == (None, None)


def test_a_claimed_device_reads_its_merchant_the_same_both_ways(
    api: httpx.Client, admin: Admin, merchant: MerchantCtx, polls: Polls
) -> None:
    device, code = paired(api, admin)
    claimed = expect_json(
        merchant.http.post("/pos/claim", json={"pairing_code": code["pairing_code"]}), 200
    )
    fresh, quick = both_ways(polls, device, "1.4.3")
    assert fresh == quick
    assert quick["http"] == 200 and quick["status"] == "claimed"
    assert quick["pairing_code_expires_at"] is None
    assert quick["merchant"] == {"id": merchant.merchant_id, "name": merchant.merchant["name"]}
    assert quick["terminal_id"] == claimed["terminal_id"]


def test_a_released_device_with_its_spent_code_reads_no_code_both_ways(
    api: httpx.Client, admin: Admin, merchant: MerchantCtx, polls: Polls
) -> None:
    device, code = paired(api, admin)
    expect_json(merchant.http.post("/pos/claim", json={"pairing_code": code["pairing_code"]}), 200)
    released = admin.http.post(f"/admin/devices/{device.device_id}/release")
    assert released.status_code == 200, released.text
    fresh, quick = both_ways(polls, device, "1.4.3")
    assert fresh == quick
    assert (quick["status"], quick["pairing_code_expires_at"], quick["merchant"]) == (
        "inactive",
        None,
        None,
    )


def test_bad_signatures_replays_and_old_clocks_are_refused_the_same_both_ways(
    api: httpx.Client, admin: Admin, polls: Polls
) -> None:
    device, _ = paired(api, admin)
    fresh, quick = refused_both_ways(polls, device, secret=secrets.token_bytes(32))
    assert fresh == quick and (quick["http"], quick["code"]) == (401, "invalid_signature")

    old = {"timestamp": (utcnow() - timedelta(minutes=10)).isoformat().replace("+00:00", "Z")}
    fresh, quick = refused_both_ways(polls, device, **old)
    assert (quick["http"], quick["code"]) == (401, "timestamp_out_of_window")
    # the detail and server_time name the server's time, which may have moved on by a second
    moving = ("detail", "server_time")
    assert {k: v for k, v in fresh.items() if k not in moving} == {
        k: v for k, v in quick.items() if k not in moving
    }

    nonce = secrets.token_urlsafe(12)
    first, _ = polls.poll(device, VERSION, nonce=nonce)
    assert first.status_code == 200, first.text
    fresh, quick = refused_both_ways(polls, device, nonce=nonce)
    assert fresh == quick and (quick["http"], quick["code"]) == (401, "nonce_reused")


def test_the_rate_limit_holds_the_same_both_ways(
    api: httpx.Client, admin: Admin, polls: Polls
) -> None:
    device, _ = paired(api, admin)
    answered = [polls.poll(device, VERSION)[0].status_code for _ in range(40)]
    limited = answered.index(429)
    assert limited <= 30 and set(answered[:limited]) == {200}, answered
    assert set(answered[limited:]) == {429}, answered
    fresh, quick = refused_both_ways(polls, device)
    strip = ("detail", "retry_after")
    assert {k: v for k, v in fresh.items() if k not in strip} == {
        k: v for k, v in quick.items() if k not in strip
    }
    assert (quick["http"], quick["code"]) == (429, "rate_limited")


def test_a_refusal_is_decided_afresh_and_spends_nothing(
    api: httpx.Client, admin: Admin, polls: Polls
) -> None:
    device, _ = paired(api, admin)
    other = admin.provision()
    nonce = secrets.token_urlsafe(12)
    foreign, path = polls.poll(
        device, "1.4.2", key_id=other.key_id, secret=other.secret, nonce=nonce
    )
    assert foreign.status_code == 401 and foreign.json()["code"] == "unknown_key"
    assert path == ("read" if polls.backend.name == "postgres" else "fresh")
    # the nonce was not spent by the refusal: the device's own poll with it is answered
    own, _ = polls.poll(device, VERSION, nonce=nonce)
    assert own.status_code == 200, own.text

    disabled = admin.http.post(f"/admin/devices/{device.device_id}/disable")
    assert disabled.status_code == 200, disabled.text
    refused, path = polls.poll(device, VERSION)
    assert refused.status_code == 403 and refused.json()["code"] == "device_disabled"
    assert path == ("read" if polls.backend.name == "postgres" else "fresh")


async def test_last_seen_is_still_written_once_a_minute(
    api: httpx.Client, admin: Admin, polls: Polls, runtime: Runtime
) -> None:
    device, _ = paired(api, admin)
    long_ago = utcnow() - timedelta(minutes=5)
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(Device).where(Device.device_id == device.device_id).values(last_seen_at=long_ago)
        )
    due, path = polls.poll(device, VERSION)
    assert due.status_code == 200
    assert path == ("read" if polls.backend.name == "postgres" else "fresh")
    async with runtime.sessions() as db:
        seen = await db.get(Device, device.device_id)
        assert seen is not None and seen.last_seen_at is not None
        assert seen.last_seen_at > long_ago + timedelta(minutes=4)
    _, path = polls.poll(device, VERSION)  # written: the next poll has nothing to write
    assert path == ("quick" if polls.backend.name == "postgres" else "fresh")


# --- bootstrap ------------------------------------------------------------------------------


async def seen(runtime: Runtime, device: ProvisionedDevice) -> tuple[str | None, Any]:
    async with runtime.sessions() as db:
        row = await db.get(Device, device.device_id)
        assert row is not None
        return row.app_version, row.last_seen_at


def bootstrap(
    api: httpx.Client, server: Server, device_id: str, version: str
) -> tuple[httpx.Response, str]:
    headers = pos_headers(device_id, ua=ua(version))
    return counted(server, "bootstrap", lambda: api.post("/pos/bootstrap", headers=headers))


async def test_a_bootstrap_writes_the_version_and_a_due_last_seen_in_its_statement(
    api: httpx.Client, admin: Admin, server: Server, backend: Backend, runtime: Runtime
) -> None:
    device = admin.provision()
    quick = "quick" if backend.name == "postgres" else "fresh"
    assert await seen(runtime, device) == (None, None)
    started = utcnow()
    first, path = bootstrap(api, server, device.device_id, "1.4.2")
    assert (first.status_code, path) == (200, quick), first.text
    body = first.json()
    assert (body["device_status"], body["upgrade_required"], body["poll_interval"]) == (
        "inactive",
        False,
        5,
    )
    version, last_seen = await seen(runtime, device)
    assert (
        version == "1.4.2" and last_seen is not None and last_seen >= started - timedelta(seconds=1)
    )

    again, path = bootstrap(api, server, device.device_id, "1.4.2")  # nothing due: nothing written
    assert (again.status_code, path) == (200, quick)
    assert await seen(runtime, device) == (version, last_seen)

    old, path = bootstrap(api, server, device.device_id, "0.1.0")  # any version may bootstrap
    assert (old.status_code, path) == (200, quick)
    assert old.json()["upgrade_required"] is True
    assert await seen(runtime, device) == ("0.1.0", last_seen)  # within the minute

    long_ago = utcnow() - timedelta(minutes=5)
    async with runtime.sessions() as db, db.begin():
        await db.execute(
            update(Device).where(Device.device_id == device.device_id).values(last_seen_at=long_ago)
        )
    due, path = bootstrap(api, server, device.device_id, "0.1.0")
    assert (due.status_code, path) == (200, quick)
    version, last_seen = await seen(runtime, device)
    assert version == "0.1.0" and last_seen > long_ago + timedelta(minutes=4)


async def test_a_refused_bootstrap_is_decided_afresh_and_writes_nothing(
    api: httpx.Client, admin: Admin, server: Server, backend: Backend, runtime: Runtime
) -> None:
    refused = "read" if backend.name == "postgres" else "fresh"
    unknown, path = bootstrap(api, server, "POS-7E57F405", "1.4.2")
    assert (unknown.status_code, unknown.json()["code"], path) == (404, "device_not_found", refused)

    device = admin.provision()
    disabled = admin.http.post(f"/admin/devices/{device.device_id}/disable")
    assert disabled.status_code == 200, disabled.text
    answer, path = bootstrap(api, server, device.device_id, "1.4.2")
    assert (answer.status_code, answer.json()["code"], path) == (403, "device_disabled", refused)
    assert await seen(runtime, device) == (None, None)


# --- pairing codes --------------------------------------------------------------------------


def issue(
    api: httpx.Client, server: Server, device: ProvisionedDevice, **signing: Any
) -> tuple[httpx.Response, str]:
    headers = signed_pos_headers(device, **signing)
    response, path = counted(
        server, "pairing-code", lambda: api.post("/pos/pairing-code", headers=headers)
    )
    if response.status_code == 201:
        SEEN_SECRETS.add(response.json()["pairing_code"])
    return response, path


async def test_a_code_and_its_event_are_written_by_one_statement(
    api: httpx.Client,
    admin: Admin,
    server: Server,
    backend: Backend,
    merchant: MerchantCtx,
    runtime: Runtime,
) -> None:
    quick = "quick" if backend.name == "postgres" else "fresh"
    device = admin.provision()
    expect_json(api.post("/pos/bootstrap", headers=pos_headers(device.device_id)), 200)
    first, path = issue(api, server, device)
    assert (first.status_code, path) == (201, quick), first.text
    second, path = issue(api, server, device)
    assert (second.status_code, path) == (201, quick), second.text
    code = second.json()
    assert code["expires_in"] == 300 and code["poll_interval"] == 5
    status = api.get("/pos/status", headers=signed_pos_headers(device)).json()
    assert status["pairing_code_expires_at"] == code["expires_at"]
    async with runtime.sessions() as db:
        events = (
            await db.scalars(
                select(AuditEvent)
                .where(AuditEvent.subject_id == device.device_id)
                .where(AuditEvent.type == "device.pairing_code_issued")
                .order_by(AuditEvent.created_at)
            )
        ).all()
    assert [(e.type, e.actor_type, e.actor_id, e.merchant_id) for e in events] == [
        ("device.pairing_code_issued", "device", device.device_id, None)
    ] * 2
    assert rfc3339(datetime.fromisoformat(events[1].data["expires_at"])) == code["expires_at"]
    # the first code died with the second; the second claims the device
    dead = merchant.http.post("/pos/claim", json={"pairing_code": first.json()["pairing_code"]})
    assert dead.status_code == 404, dead.text
    live = merchant.http.post("/pos/claim", json={"pairing_code": code["pairing_code"]})
    assert live.status_code == 200, live.text
    claimed, path = issue(api, server, device)  # decided on the quick read: 409
    assert (claimed.status_code, claimed.json()["code"], path) == (409, "invalid_state", quick)


def test_a_codes_refusals_are_the_fresh_paths(
    api: httpx.Client, admin: Admin, server: Server, backend: Backend
) -> None:
    quick = "quick" if backend.name == "postgres" else "fresh"
    device = admin.provision()
    expect_json(api.post("/pos/bootstrap", headers=pos_headers(device.device_id)), 200)
    forged, path = issue(api, server, device, secret=secrets.token_bytes(32))
    assert (forged.status_code, forged.json()["code"], path) == (401, "invalid_signature", quick)
    nonce = secrets.token_urlsafe(12)
    assert issue(api, server, device, nonce=nonce)[0].status_code == 201
    reused, path = issue(api, server, device, nonce=nonce)
    assert (reused.status_code, reused.json()["code"], path) == (401, "nonce_reused", quick)
    answered = [issue(api, server, device)[0].status_code for _ in range(10)]
    assert answered == [201] * 9 + [429], answered  # ten an hour, the first included
    other = admin.provision()
    foreign, path = issue(api, server, device, key_id=other.key_id, secret=other.secret)
    refused = "read" if backend.name == "postgres" else "fresh"
    assert (foreign.status_code, foreign.json()["code"], path) == (401, "unknown_key", refused)


async def test_a_drawn_value_another_device_holds_goes_to_the_fresh_path_unspent(
    api: httpx.Client,
    admin: Admin,
    server: Server,
    backend: Backend,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    holder = admin.provision()
    held = expect_json(api.post("/pos/pairing-code", headers=signed_pos_headers(holder)), 201)
    SEEN_SECRETS.add(held["pairing_code"])
    device = admin.provision()
    expect_json(api.post("/pos/bootstrap", headers=pos_headers(device.device_id)), 200)
    headers = signed_pos_headers(device)
    parsed = parsed_headers(runtime, headers)
    sent_afresh = REGISTRY.get_sample_value(f"{COUNTER}_total", READ_PAIRING) or 0.0
    monkeypatch.setattr(service, "new_pairing_code", lambda: held["pairing_code"])
    assert await quick.quick_pairing_code(runtime, parsed, now=utcnow()) is None
    monkeypatch.undo()
    if backend.name == "postgres":  # read, and sent afresh for the held value
        assert REGISTRY.get_sample_value(f"{COUNTER}_total", READ_PAIRING) == sent_afresh + 1
    else:  # no asyncpg pool: every code is issued afresh
        assert runtime.native is None
    # nothing was spent: the same signed request is answered, and ten codes are left this hour
    again, _ = issue(
        api, server, device, nonce=headers["X-Nonce"], timestamp=headers["X-Timestamp"]
    )
    assert again.status_code == 201, again.text
    answered = [issue(api, server, device)[0].status_code for _ in range(10)]
    assert answered == [201] * 9 + [429], answered


# --- attest ---------------------------------------------------------------------------------


def transport_public() -> bytes:
    return X25519PrivateKey.generate().public_key().public_bytes_raw()


def attest(
    api: httpx.Client, server: Server, device: ProvisionedDevice, **signing: Any
) -> tuple[httpx.Response, str]:
    headers = signed_pos_headers(device, **signing)
    response, path = counted(server, "attest", lambda: api.post("/pos/attest", headers=headers))
    if response.status_code == 200:
        SEEN_SECRETS.add(response.json()["attestation_token"])
    return response, path


def test_an_attest_on_one_read_issues_a_token_and_delivers_its_event(
    api: httpx.Client, admin: Admin, server: Server, backend: Backend, merchant: MerchantCtx
) -> None:
    quick = "quick" if backend.name == "postgres" else "fresh"
    with running_receiver() as receiver:
        endpoint = expect_json(
            merchant.http.post(
                "/merchant/webhook-endpoints",
                json={"url": receiver.url, "event_types": ["device.attested"]},
            ),
            201,
        )
        SEEN_SECRETS.add(endpoint["secret"])
        device, code = paired(api, admin)
        waiting, path = attest(api, server, device)  # not claimed yet: 409 on the quick read
        assert (waiting.status_code, waiting.json()["code"], path) == (409, "invalid_state", quick)
        expect_json(
            merchant.http.post("/pos/claim", json={"pairing_code": code["pairing_code"]}), 200
        )
        issued, path = attest(api, server, device)
        assert (issued.status_code, path) == (200, quick), issued.text
        body = issued.json()
        assert body["token_type"] == "Attestation" and body["device_status"] == "claimed"
        assert body["expires_in"] == 300
        # the token works: the key set it earns is delivered
        keys = api.post(
            "/pos/keys",
            headers={
                "Authorization": f"Attestation {body['attestation_token']}",
                "X-Device-Id": device.device_id,
            },
            json={"transport_key": base64.b64encode(transport_public()).decode()},
        )
        assert keys.status_code == 200, keys.text
        # the event was written with its delivery: the endpoint receives it, signed
        events = expect_json(merchant.http.get("/merchant/events", params={"limit": 100}), 200)[
            "data"
        ]
        event = next(e for e in events if e["type"] == "device.attested")
        assert event["subject"] == {"type": "device", "id": device.device_id}
        assert event["data"]["key_id"] == device.key_id
        receiver.wait(lambda: receiver.count(event["id"]) > 0)
        received = receiver.of(event["id"])[0]
        document = Webhook(endpoint["secret"]).verify(received.body, received.headers)
        assert document["type"] == "device.attested"

        forged, path = attest(api, server, device, secret=secrets.token_bytes(32))
        assert (forged.status_code, forged.json()["code"], path) == (
            401,
            "invalid_signature",
            quick,
        )


def test_an_attest_the_read_refuses_is_decided_afresh_and_spends_nothing(
    api: httpx.Client, admin: Admin, server: Server, backend: Backend, merchant: MerchantCtx
) -> None:
    refused = "read" if backend.name == "postgres" else "fresh"
    device, code = paired(api, admin)
    expect_json(merchant.http.post("/pos/claim", json={"pairing_code": code["pairing_code"]}), 200)
    other = admin.provision()
    nonce = secrets.token_urlsafe(12)
    foreign, path = attest(
        api, server, device, key_id=other.key_id, secret=other.secret, nonce=nonce
    )
    assert (foreign.status_code, foreign.json()["code"], path) == (401, "unknown_key", refused)
    own, _ = attest(api, server, device, nonce=nonce)  # the refusal spent no nonce
    assert own.status_code == 200, own.text

    added = expect_json(
        admin.http.post(f"/admin/devices/{device.device_id}/identity-keys", json={}), 201
    )
    SEEN_SECRETS.add(added["identity_secret"])
    revoked = admin.http.delete(f"/admin/devices/{device.device_id}/identity-keys/{device.key_id}")
    assert revoked.status_code == 200, revoked.text
    old_key, path = attest(api, server, device)
    assert (old_key.status_code, old_key.json()["code"], path) == (401, "key_revoked", refused)

    disabled = admin.http.post(f"/admin/devices/{device.device_id}/disable")
    assert disabled.status_code == 200, disabled.text
    new_key = ProvisionedDevice(device.device_id, added["key_id"], added["identity_secret"])
    off, path = attest(api, server, new_key)
    assert (off.status_code, off.json()["code"], path) == (403, "device_disabled", refused)


async def test_an_attests_event_is_delivered_to_the_endpoints_that_subscribe(
    api: httpx.Client, admin: Admin, server: Server, merchant: MerchantCtx, runtime: Runtime
) -> None:
    """The fan-out in SQL (quick, PostgreSQL) makes the deliveries the session's makes
    (afresh, embedded): every enabled endpoint of the merchant whose types include the event's
    or that takes every type; none for another type's, or a deleted one."""

    def endpoint(**fields: Any) -> str:
        created = expect_json(
            merchant.http.post(
                "/merchant/webhook-endpoints", json={"url": "https://hooks.example/x"} | fields
            ),
            201,
        )
        SEEN_SECRETS.add(created["secret"])
        endpoint_id: str = created["id"]
        return endpoint_id

    every, listed = endpoint(), endpoint(event_types=["charge.created", "device.attested"])
    other, gone = endpoint(event_types=["charge.created"]), endpoint()
    assert merchant.http.delete(f"/merchant/webhook-endpoints/{gone}").status_code == 204
    device, code = paired(api, admin)
    expect_json(merchant.http.post("/pos/claim", json={"pairing_code": code["pairing_code"]}), 200)
    issued, _ = attest(api, server, device)
    assert issued.status_code == 200, issued.text
    events = expect_json(merchant.http.get("/merchant/events", params={"limit": 100}), 200)["data"]
    event_id = next(e["id"] for e in events if e["type"] == "device.attested")
    made = {
        endpoint_id: [
            d["event_id"]
            for d in expect_json(
                merchant.http.get(f"/merchant/webhook-endpoints/{endpoint_id}/deliveries"), 200
            )["data"]
            if d["event_id"] == event_id
        ]
        for endpoint_id in (every, listed, other)
    }
    assert made == {every: [event_id], listed: [event_id], other: []}, made
    async with runtime.sessions() as db:
        to_gone = await db.scalar(
            select(WebhookDelivery.delivery_id).where(
                WebhookDelivery.endpoint_id == gone, WebhookDelivery.event_id == event_id
            )
        )
    assert to_gone is None


async def test_a_device_disabled_between_the_read_and_the_write_gets_no_code(
    api: httpx.Client,
    admin: Admin,
    backend: Backend,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = admin.provision()
    expect_json(api.post("/pos/bootstrap", headers=pos_headers(device.device_id)), 200)
    headers = signed_pos_headers(device)
    parsed = parsed_headers(runtime, headers)
    checked = quick._check_signature

    async def then_disabled(*args: Any, **kwargs: Any) -> None:
        await checked(*args, **kwargs)
        done = admin.http.post(f"/admin/devices/{device.device_id}/disable")
        assert done.status_code == 200, done.text

    monkeypatch.setattr(quick, "_check_signature", then_disabled)
    if backend.name != "postgres":
        assert runtime.native is None  # the embedded default issues codes afresh only
        assert await quick.quick_pairing_code(runtime, parsed, now=utcnow()) is None
        return
    with pytest.raises(DeviceDisabled):
        await quick.quick_pairing_code(runtime, parsed, now=utcnow())
    async with runtime.sessions() as db:
        assert await db.get(PairingCode, device.device_id) is None
