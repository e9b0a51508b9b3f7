"""Merchant charge views (PROTOCOL §6): the list with its filters and paging, and one charge
with its refunds."""

from __future__ import annotations

from support import charge_kit as kit
from support.helpers import MakeMerchant


def test_merchant_charge_views(terminal: kit.PosTerminal) -> None:
    http = terminal.merchant.http
    first = terminal.charge(1000, reference="a").json()
    second = terminal.charge(500, card={"pan": "4000000000000002", "expiry": "3012"}).json()
    third = terminal.charge(700).json()
    terminal.refund(first["id"], {"amount": 250, "reason": "damaged"})

    page = http.get("/merchant/charges").json()
    assert [c["id"] for c in page["data"]] == [third["id"], second["id"], first["id"]]
    assert page["next_cursor"] is None
    assert page["data"][2]["amount_refunded"] == 250 and "refunds" not in page["data"][2]

    one = http.get("/merchant/charges", params={"limit": 1}).json()
    assert [c["id"] for c in one["data"]] == [third["id"]] and one["next_cursor"]
    two = http.get("/merchant/charges", params={"limit": 1, "cursor": one["next_cursor"]}).json()
    assert [c["id"] for c in two["data"]] == [second["id"]]

    declined = http.get("/merchant/charges", params={"status": "declined"}).json()
    assert [c["id"] for c in declined["data"]] == [second["id"]]
    mine = http.get("/merchant/charges", params={"terminal_id": terminal.terminal_id}).json()
    assert len(mine["data"]) == 3
    assert http.get("/merchant/charges", params={"terminal_id": "TID-000000"}).json()["data"] == []
    created = first["created_at"]
    since = http.get("/merchant/charges", params={"created_from": created}).json()
    assert first["id"] in [c["id"] for c in since["data"]]
    before = http.get("/merchant/charges", params={"created_to": created}).json()
    assert first["id"] not in [c["id"] for c in before["data"]]
    for bad in (
        {"status": "nope"},
        {"limit": 0},
        {"limit": 101},
        {"cursor": "!!"},
        {"created_from": "yesterday"},
    ):
        response = http.get("/merchant/charges", params=bad)
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", bad

    detail = http.get(f"/merchant/charges/{first['id']}").json()
    assert detail["id"] == first["id"] and detail["status"] == "partially_refunded"
    (refund,) = detail["refunds"]
    assert (refund["amount"], refund["reason"], refund["object"]) == (250, "damaged", "refund")
    assert "charge" not in refund
    assert http.get("/merchant/charges/ch_nope").json()["code"] == "not_found"


def test_staff_may_read_and_other_merchants_see_nothing(
    terminal: kit.PosTerminal, make_merchant: MakeMerchant
) -> None:
    charge = terminal.charge(500).json()
    outsider = make_merchant("staff")
    assert outsider.http.get("/merchant/charges").json()["data"] == []
    assert outsider.http.get(f"/merchant/charges/{charge['id']}").status_code == 404
