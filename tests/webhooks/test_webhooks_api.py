"""PROTOCOL §7 against real servers on both backends: the endpoints, signed deliveries that
standardwebhooks verifies, retries, rotation, manual retry and two processes sharing the work."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks import Webhook

from support.helpers import SEEN_SECRETS, MerchantCtx, Server, expect_json, problem
from support.webhook_receiver import Receiver, running_receiver
from viopay.runtime import Runtime
from viopay_device import verify_webhook

MakeMerchant = Any


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def create_endpoint(merchant: MerchantCtx, url: str, **fields: Any) -> dict[str, Any]:
    created = expect_json(
        merchant.http.post("/merchant/webhook-endpoints", json={"url": url} | fields), 201
    )
    SEEN_SECRETS.add(created["secret"])
    return created


def change_config(merchant: MerchantCtx, percent: int) -> None:
    expect_json(
        merchant.http.put(
            "/merchant/config",
            json={"tax": {"enabled": True, "rate_bps": percent, "inclusive": False}},
        ),
        200,
    )


def latest_event(merchant: MerchantCtx, type_: str) -> dict[str, Any]:
    events = expect_json(merchant.http.get("/merchant/events", params={"limit": 100}), 200)["data"]
    found: dict[str, Any] = next(e for e in events if e["type"] == type_)
    return found


def verify(received: Any, secret: str) -> dict[str, Any]:
    document: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return document


def deliveries(merchant: MerchantCtx, endpoint_id: str) -> list[dict[str, Any]]:
    page = expect_json(
        merchant.http.get(f"/merchant/webhook-endpoints/{endpoint_id}/deliveries"), 200
    )
    data: list[dict[str, Any]] = page["data"]
    return data


def wait_delivery(
    merchant: MerchantCtx, endpoint_id: str, event_id: str, receiver: Receiver, status: str
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        for d in deliveries(merchant, endpoint_id):
            if d["event_id"] == event_id and d["status"] == status:
                found.update(d)
                return True
        return False

    receiver.wait(done)
    return found


@pytest.mark.backend
def test_endpoint_lifecycle(make_merchant: MakeMerchant, receiver: Receiver) -> None:
    owner = make_merchant()
    created = create_endpoint(
        owner, receiver.url, description="orders", event_types=["charge.created"]
    )
    assert created["id"].startswith("we_") and created["status"] == "enabled"
    assert created["secret"].startswith("whsec_") and created["event_types"] == ["charge.created"]
    endpoint_id = created["id"]

    listed = expect_json(owner.http.get("/merchant/webhook-endpoints"), 200)
    assert [e["id"] for e in listed["data"]] == [endpoint_id]
    assert "secret" not in listed["data"][0] and listed["next_cursor"] is None
    one = expect_json(owner.http.get(f"/merchant/webhook-endpoints/{endpoint_id}"), 200)
    assert "secret" not in one and one["url"] == receiver.url

    rotated = expect_json(
        owner.http.post(f"/merchant/webhook-endpoints/{endpoint_id}/rotate-secret"), 200
    )
    SEEN_SECRETS.add(rotated["secret"])
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    enabled = expect_json(owner.http.post(f"/merchant/webhook-endpoints/{endpoint_id}/enable"), 200)
    assert enabled["status"] == "enabled"

    types = [e["type"] for e in expect_json(owner.http.get("/merchant/events"), 200)["data"]]
    assert "webhook_endpoint.created" in types and "webhook_endpoint.secret_rotated" in types

    assert owner.http.delete(f"/merchant/webhook-endpoints/{endpoint_id}").status_code == 204
    problem(owner.http.get(f"/merchant/webhook-endpoints/{endpoint_id}"), 404, "not_found")
    problem(owner.http.delete(f"/merchant/webhook-endpoints/{endpoint_id}"), 404, "not_found")
    assert expect_json(owner.http.get("/merchant/webhook-endpoints"), 200)["data"] == []


@pytest.mark.backend
def test_bad_input_and_roles(make_merchant: MakeMerchant, receiver: Receiver) -> None:
    owner = make_merchant()
    for body in (
        {"url": receiver.url, "event_types": ["no.such_type"]},
        {"url": receiver.url, "event_types": []},
        {"url": "ftp://example.com/hooks"},
        {"url": "not a url"},
        {"url": receiver.url, "description": "two\nlines"},
        {},
    ):
        problem(owner.http.post("/merchant/webhook-endpoints", json=body), 400, "invalid_request")
    assert expect_json(owner.http.get("/merchant/webhook-endpoints"), 200)["data"] == []

    other = make_merchant()
    endpoint_id = create_endpoint(owner, receiver.url)["id"]
    problem(other.http.get(f"/merchant/webhook-endpoints/{endpoint_id}"), 404, "not_found")
    problem(
        other.http.get(f"/merchant/webhook-endpoints/{endpoint_id}/deliveries"), 404, "not_found"
    )

    staff = make_merchant("staff")
    problem(
        staff.http.post("/merchant/webhook-endpoints", json={"url": receiver.url}), 403, "forbidden"
    )
    assert expect_json(staff.http.get("/merchant/webhook-endpoints"), 200)["data"] == []
    problem(staff.http.post("/merchant/webhook-deliveries/whd_nope/retry"), 403, "forbidden")


@pytest.mark.backend
def test_delivery_is_signed_per_standard_webhooks(
    make_merchant: MakeMerchant, receiver: Receiver
) -> None:
    owner = make_merchant()
    endpoint = create_endpoint(owner, receiver.url)
    change_config(owner, 725)
    event = latest_event(owner, "merchant_config.updated")

    receiver.wait(lambda: event["id"] in receiver.succeeded_ids())
    (got,) = receiver.of(event["id"])
    assert verify(got, endpoint["secret"]) == event
    assert verify_webhook(endpoint["secret"], body=got.body, headers=got.headers) == event
    assert orjson.loads(got.body) == event
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "Viopay-Webhooks/1"
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 43 + "=").verify(got.body, got.headers)

    delivery = wait_delivery(owner, endpoint["id"], event["id"], receiver, "succeeded")
    assert delivery["id"].startswith("whd_") and delivery["event_type"] == event["type"]
    assert delivery["attempts"] == 1 and delivery["last_status_code"] == 200
    assert delivery["next_attempt_at"] is None and delivery["last_error"] is None


@pytest.mark.backend
def test_subscription_filters_event_types(make_merchant: MakeMerchant, receiver: Receiver) -> None:
    owner = make_merchant()
    only_charges = create_endpoint(owner, receiver.url, event_types=["charge.created"])
    change_config(owner, 100)
    # Deliveries are written with the event, in its transaction: none for this endpoint.
    assert deliveries(owner, only_charges["id"]) == []


@pytest.mark.backend
def test_receiver_fails_twice_then_succeeds(
    make_merchant: MakeMerchant, receiver: Receiver
) -> None:
    receiver.answer = lambda _id, before: 500 if before < 2 else 204
    owner = make_merchant()
    endpoint = create_endpoint(owner, receiver.url, event_types=["merchant_config.updated"])
    change_config(owner, 300)
    event = latest_event(owner, "merchant_config.updated")

    delivery = wait_delivery(owner, endpoint["id"], event["id"], receiver, "succeeded")
    assert delivery["attempts"] == 3 and delivery["last_status_code"] == 204
    attempts = receiver.of(event["id"])
    assert [a.answered for a in attempts] == [500, 500, 204]
    for a in attempts:  # each attempt signed afresh, the same event
        assert verify(a, endpoint["secret"]) == event


@pytest.mark.backend
def test_exhausted_delivery_fails_then_manual_retry(
    make_merchant: MakeMerchant, receiver: Receiver
) -> None:
    receiver.answer = lambda _id, _before: 503
    owner = make_merchant()
    endpoint = create_endpoint(owner, receiver.url, event_types=["merchant_config.updated"])
    change_config(owner, 400)
    event = latest_event(owner, "merchant_config.updated")

    failed = wait_delivery(owner, endpoint["id"], event["id"], receiver, "failed")
    assert failed["attempts"] == 5  # 1 + one per entry of the schedule "1,1,1,1"
    assert failed["last_status_code"] == 503 and failed["next_attempt_at"] is None
    problem(owner.http.post("/merchant/webhook-deliveries/whd_nope/retry"), 404, "not_found")

    receiver.answer = lambda _id, _before: 200
    retried = expect_json(
        owner.http.post(f"/merchant/webhook-deliveries/{failed['id']}/retry"), 202
    )
    assert retried["id"] == failed["id"]
    done = wait_delivery(owner, endpoint["id"], event["id"], receiver, "succeeded")
    assert done["attempts"] == 6 and done["last_status_code"] == 200


@pytest.mark.backend
def test_refused_connection_is_retried(make_merchant: MakeMerchant) -> None:
    with running_receiver() as gone:
        url = gone.url  # a port nobody listens on once the receiver stops
    owner = make_merchant()
    endpoint = create_endpoint(owner, url, event_types=["merchant_config.updated"])
    change_config(owner, 500)
    event = latest_event(owner, "merchant_config.updated")

    def errored() -> bool:
        return any(
            d["event_id"] == event["id"]
            and d["attempts"] >= 1
            and d["last_error"] == "connection_error"
            for d in deliveries(owner, endpoint["id"])
        )

    with running_receiver() as waiter:
        waiter.wait(errored)
    (delivery,) = deliveries(owner, endpoint["id"])
    assert delivery["last_status_code"] is None


@pytest.mark.backend
def test_rotation_signs_with_both_secrets(make_merchant: MakeMerchant, receiver: Receiver) -> None:
    owner = make_merchant()
    endpoint = create_endpoint(owner, receiver.url, event_types=["merchant_config.updated"])
    rotated = expect_json(
        owner.http.post(f"/merchant/webhook-endpoints/{endpoint['id']}/rotate-secret"), 200
    )
    SEEN_SECRETS.add(rotated["secret"])
    change_config(owner, 600)
    event = latest_event(owner, "merchant_config.updated")

    receiver.wait(lambda: event["id"] in receiver.succeeded_ids())
    (got,) = receiver.of(event["id"])
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verify(got, rotated["secret"]) == event  # the new secret
    assert verify(got, endpoint["secret"]) == event  # and, for 24 h, the previous one

    again = expect_json(
        owner.http.post(f"/merchant/webhook-endpoints/{endpoint['id']}/rotate-secret"), 200
    )
    SEEN_SECRETS.add(again["secret"])
    change_config(owner, 650)
    second = latest_event(owner, "merchant_config.updated")
    receiver.wait(lambda: second["id"] in receiver.succeeded_ids())
    (got,) = receiver.of(second["id"])
    assert verify(got, again["secret"]) == second
    assert verify(got, rotated["secret"]) == second
    with pytest.raises(Exception, match="signature"):
        verify(got, endpoint["secret"])  # a second rotation drops the oldest


@pytest.mark.backend
def test_two_processes_never_double_deliver(
    make_merchant: MakeMerchant, receiver: Receiver, server: Server, server_b: Server
) -> None:
    receiver.delay = 0.05
    owner = make_merchant()
    create_endpoint(owner, receiver.url, event_types=["merchant_config.updated"])
    with httpx.Client(base_url=server_b.url, headers=owner.http.headers, timeout=30) as other:
        for n in range(20):
            client = owner.http if n % 2 else other
            expect_json(
                client.put(
                    "/merchant/config",
                    json={"tax": {"enabled": True, "rate_bps": n, "inclusive": False}},
                ),
                200,
            )
    events = [
        e["id"]
        for e in expect_json(owner.http.get("/merchant/events", params={"limit": 100}), 200)["data"]
        if e["type"] == "merchant_config.updated"
    ]
    assert len(events) == 20
    receiver.wait(lambda: set(events) <= receiver.succeeded_ids())
    assert all(receiver.count(e) == 1 for e in events)


@pytest.mark.backend
async def test_delete_stops_pending_retries(
    make_merchant: MakeMerchant, receiver: Receiver, runtime: Runtime
) -> None:
    from sqlalchemy import select

    from viopay.webhooks.models import DeliveryStatus, WebhookDelivery

    receiver.answer = lambda _id, _before: 503
    owner = make_merchant()
    endpoint = create_endpoint(owner, receiver.url, event_types=["merchant_config.updated"])
    change_config(owner, 800)
    event = latest_event(owner, "merchant_config.updated")
    receiver.wait(lambda: receiver.count(event["id"]) >= 1)
    assert owner.http.delete(f"/merchant/webhook-endpoints/{endpoint['id']}").status_code == 204
    problem(
        owner.http.get(f"/merchant/webhook-endpoints/{endpoint['id']}/deliveries"), 404, "not_found"
    )

    async with runtime.sessions() as db:
        (delivery,) = (
            await db.scalars(
                select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint["id"])
            )
        ).all()
    assert delivery.status is DeliveryStatus.failed and delivery.next_attempt_at is None
