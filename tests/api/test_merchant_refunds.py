"""Backoffice refunds and cancels, search and the CSV export (PROTOCOL §6 v1.1), on both backends.

A merchant's refund runs through the same phases as a terminal's (intent, processor call,
outcome); these tests check what the merchant sees: the order of the checks, the roles, the
Idempotency-Key (scope: the merchant), race safety, and what the sandbox processor's ledger holds.
"""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from support import charge_kit as kit
from support.helpers import MerchantCtx, Server, client_token

DECLINED = {"pan": "4000000000000002", "expiry": "3012"}
MASTERCARD = {"pan": "5555555555554444", "expiry": "3012"}


def _member(server: Server, admin: Any, merchant_id: str, role: str) -> httpx.Client:
    client = admin.client(merchant_id=merchant_id, role=role)
    token = client_token(server.url, client["client_id"], client["client_secret"])
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert http.post("/session/initiate", json={"merchant_id": merchant_id}).status_code == 201
    return http


def _refund(
    http: httpx.Client, charge_id: str, body: Any = None, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    if body is None:
        return http.post(f"/merchant/charges/{charge_id}/refunds", headers=headers)
    return http.post(f"/merchant/charges/{charge_id}/refunds", json=body, headers=headers)


def test_an_owner_refunds_in_parts_then_the_rest(terminal: kit.PosTerminal) -> None:
    http = terminal.merchant.http
    charge = terminal.charge(1000, reference="table-4").json()

    first = _refund(http, charge["id"], {"amount": 300, "reason": "cold coffee"})
    assert first.status_code == 201, first.text
    refund = first.json()
    assert refund["object"] == "refund" and refund["id"].startswith("re_")
    assert (refund["amount"], refund["reason"], refund["status"]) == (
        300,
        "cold coffee",
        "succeeded",
    )
    assert refund["charge"]["status"] == "partially_refunded"
    assert refund["charge"]["amount_refunded"] == 300

    rest = _refund(http, charge["id"])  # no body: all that is left
    assert rest.status_code == 201, rest.text
    assert rest.json()["amount"] == 700 and rest.json()["charge"]["status"] == "refunded"

    detail = http.get(f"/merchant/charges/{charge['id']}").json()
    assert detail["status"] == "refunded" and detail["amount_refunded"] == 1000
    assert [r["amount"] for r in detail["refunds"]] == [300, 700]

    # The terminal sees the same charge; and the events name the client as the actor.
    assert terminal.get(charge["id"]).json()["status"] == "refunded"
    events = http.get("/merchant/events", params={"limit": 100}).json()["data"]
    refunded = [e for e in events if e["type"] == "refund.created"]
    assert len(refunded) == 2
    assert {e["actor"]["type"] for e in refunded} == {"client"}
    assert {e["actor"]["id"] for e in refunded} == {terminal.merchant.subject}


def test_the_checks_come_in_the_terminals_order(terminal: kit.PosTerminal) -> None:
    http = terminal.merchant.http
    approved = terminal.charge(500).json()
    declined = terminal.charge(500, card=DECLINED).json()

    def code(response: httpx.Response) -> tuple[int, str]:
        assert response.headers["content-type"].startswith("application/problem+json")
        return response.status_code, response.json()["code"]

    # 404 → 409 → 400 → 422, a malformed member never hiding an earlier failure.
    assert code(_refund(http, "ch_nope", {"amount": "x"})) == (404, "not_found")
    assert code(_refund(http, declined["id"], {"amount": "x"})) == (409, "charge_not_refundable")
    bad = _refund(http, approved["id"], {"amount": "x"})
    assert code(bad) == (400, "invalid_request")
    assert bad.json()["errors"][0]["field"] == "amount"
    assert code(_refund(http, approved["id"], {"amount": 0})) == (400, "invalid_request")
    assert code(_refund(http, approved["id"], {"amount": 501})) == (422, "refund_exceeds_charge")
    assert code(_refund(http, approved["id"], [1])) == (400, "invalid_request")
    raw = http.post(
        f"/merchant/charges/{approved['id']}/refunds",
        content=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert code(raw) == (400, "invalid_request")
    text = http.post(
        f"/merchant/charges/{approved['id']}/refunds",
        content=b"{}",
        headers={"Content-Type": "text/plain"},
    )
    assert code(text) == (415, "unsupported_media_type")
    spaced = _refund(http, approved["id"], {}, key="has space")
    assert code(spaced) == (400, "invalid_header")
    # None of them changed anything.
    assert http.get(f"/merchant/charges/{approved['id']}").json()["refunds"] == []


def test_staff_may_not_refund_or_cancel(
    server: Server, admin: Any, terminal: kit.PosTerminal
) -> None:
    charge = terminal.charge(800).json()
    staff = _member(server, admin, terminal.merchant.merchant_id, "staff")
    for response in (
        _refund(staff, charge["id"], {"amount": 100}),
        staff.post(f"/merchant/charges/{charge['id']}/cancel"),
        _refund(staff, "ch_nope", {}),  # the role is checked before the resource
    ):
        assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert staff.get(f"/merchant/charges/{charge['id']}").json()["status"] == "approved"
    staff.close()
    manager = _member(server, admin, terminal.merchant.merchant_id, "admin")
    assert _refund(manager, charge["id"], {"amount": 100}).status_code == 201
    manager.close()


def test_another_merchant_cannot_refund(terminal: kit.PosTerminal, make_merchant: Any) -> None:
    charge = terminal.charge(800).json()
    outsider: MerchantCtx = make_merchant("owner")
    assert _refund(outsider.http, charge["id"], {}).status_code == 404
    assert outsider.http.post(f"/merchant/charges/{charge['id']}/cancel").status_code == 404


def test_idempotency_key_scoped_to_the_merchant(terminal: kit.PosTerminal) -> None:
    http = terminal.merchant.http
    charge = terminal.charge(1000).json()
    other = terminal.charge(1000).json()

    made = _refund(http, charge["id"], {"amount": 100}, key="refund-1")
    again = _refund(http, charge["id"], {"amount": 100}, key="refund-1")
    assert made.status_code == 201 and again.status_code == 200
    assert (
        again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in made.headers
    )
    assert again.json()["id"] == made.json()["id"]
    assert http.get(f"/merchant/charges/{charge['id']}").json()["amount_refunded"] == 100

    reused = _refund(http, charge["id"], {"amount": 200}, key="refund-1")
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    elsewhere = _refund(http, other["id"], {"amount": 100}, key="refund-1")  # the merchant's scope
    assert elsewhere.status_code == 422 and elsewhere.json()["code"] == "idempotency_key_reused"

    too_much = _refund(http, charge["id"], {"amount": 5000}, key="refund-2")
    assert too_much.status_code == 422 and "Idempotent-Replayed" not in too_much.headers
    stored = _refund(http, charge["id"], {"amount": 5000}, key="refund-2")
    assert stored.status_code == 422 and stored.json()["code"] == "refund_exceeds_charge"
    assert stored.headers["Idempotent-Replayed"] == "true"

    # A terminal's keys are its own: the same key string on the terminal is a new request.
    assert terminal.refund(charge["id"], {"amount": 100}, idempotency_key="refund-1").status == 201
    assert http.get(f"/merchant/charges/{charge['id']}").json()["amount_refunded"] == 200


def test_concurrent_refunds_never_exceed_the_charge(terminal: kit.PosTerminal) -> None:
    http = terminal.merchant.http
    charge = terminal.charge(1000).json()
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: _refund(http, charge["id"], {"amount": 600}), range(4)))
    assert sorted(a.status_code for a in answers) == [201, 422, 422, 422], [a.text for a in answers]
    assert http.get(f"/merchant/charges/{charge['id']}").json()["amount_refunded"] == 600


def test_cancel_from_the_backoffice(terminal: kit.PosTerminal) -> None:
    http = terminal.merchant.http
    charge = terminal.charge(900).json()
    canceled = http.post(f"/merchant/charges/{charge['id']}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled" and canceled.json()["id"] == charge["id"]
    again = http.post(f"/merchant/charges/{charge['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    assert _refund(http, charge["id"], {}).json()["code"] == "charge_not_refundable"
    events = http.get("/merchant/events", params={"limit": 100}).json()["data"]
    (event,) = [e for e in events if e["type"] == "charge.canceled"]
    assert event["actor"]["type"] == "client" and event["subject"]["id"] == charge["id"]

    refunded = terminal.charge(900).json()
    assert _refund(http, refunded["id"], {"amount": 1}).status_code == 201
    refused = http.post(f"/merchant/charges/{refunded['id']}/cancel")
    assert refused.status_code == 409 and refused.json()["code"] == "charge_not_cancelable"
    declined = terminal.charge(900, card=DECLINED).json()
    assert http.post(f"/merchant/charges/{declined['id']}/cancel").status_code == 409
    assert http.post("/merchant/charges/ch_nope/cancel").status_code == 404


def test_search_by_id_reference_and_last4(terminal: kit.PosTerminal) -> None:
    http = terminal.merchant.http
    visa = terminal.charge(100, reference="Order-77").json()
    master = terminal.charge(200, card=MASTERCARD, reference="order-78").json()
    terminal.charge(300, reference="lunch").json()

    def found(q: str) -> list[str]:
        return [c["id"] for c in http.get("/merchant/charges", params={"q": q}).json()["data"]]

    assert found(visa["id"]) == [visa["id"]]
    assert found("order-77") == [visa["id"]]  # a reference, whatever its case
    assert found("ORDER-7") == [master["id"], visa["id"]]  # its beginning
    assert found("4444") == [master["id"]]
    assert len(found("4242")) == 2
    assert found("100%") == [] and found("_") == []  # wildcards are plain characters
    assert found("nothing") == []
    long = http.get("/merchant/charges", params={"q": "x" * 129})
    assert long.status_code == 400


def test_csv_export_streams_every_matching_charge(terminal: kit.PosTerminal) -> None:
    http = terminal.merchant.http
    made = [terminal.charge(1000 + i, reference=f"r-{i}").json() for i in range(3)]
    terminal.charge(50, card=DECLINED, reference="=cmd()").json()
    _refund(http, made[0]["id"], {"amount": 250})

    response = http.get("/merchant/charges/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 4
    by_id = {r["id"]: r for r in rows}
    first = by_id[made[0]["id"]]
    assert (first["amount"], first["amount_refunded"], first["currency"]) == (
        "10.00",
        "2.50",
        "USD",
    )
    assert first["status"] == "partially_refunded" and first["created_at"].endswith("Z")
    assert first["card_last4"] == "4242" and first["reference"] == "r-0"
    (declined,) = [r for r in rows if r["status"] == "declined"]
    assert declined["reference"] == "'=cmd()"  # never a formula in a spreadsheet
    assert "4242424242424242" not in response.text

    only = http.get("/merchant/charges/export", params={"status": "declined"})
    assert len(list(csv.DictReader(io.StringIO(only.text)))) == 1
    searched = http.get("/merchant/charges/export", params={"q": "r-1"})
    assert [r["id"] for r in csv.DictReader(io.StringIO(searched.text))] == [made[1]["id"]]
    bad = http.get("/merchant/charges/export", params={"created_from": "yesterday"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"


async def test_csv_amounts_use_the_currencys_decimals(
    server: Server, admin: Any, make_merchant: Any, runtime: Any
) -> None:
    """A JPY merchant's amounts have no decimals."""
    merchant = make_merchant(currency="JPY", country="JP", timezone="Asia/Tokyo")
    pos = await kit.activated_terminal(server, admin, make_merchant, runtime, merchant=merchant)
    try:
        charge = pos.charge(1500, currency="JPY").json()
        refund = _refund(merchant.http, charge["id"], {"amount": 500})
        assert refund.status_code == 201, refund.text
        (row,) = csv.DictReader(io.StringIO(merchant.http.get("/merchant/charges/export").text))
        assert (row["amount"], row["amount_refunded"], row["currency"]) == ("1500", "500", "JPY")
    finally:
        pos.close()
