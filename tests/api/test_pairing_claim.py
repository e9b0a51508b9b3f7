"""Steps 2–4 (PROTOCOL §3.2–§3.4): pairing codes, status polling and claims."""

from __future__ import annotations

import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest

from support.helpers import (
    Admin,
    Backend,
    MakeMerchant,
    ProvisionedDevice,
    Server,
    present,
    problem,
    signed_pos_headers,
)
from viopay.runtime import Runtime

ALPHABET = set("ABCDEFGHJKMNPQRSTUVWXYZ23456789")


def new_code(api: httpx.Client, device: ProvisionedDevice) -> str:
    response = api.post("/pos/pairing-code", headers=signed_pos_headers(device))
    assert response.status_code == 201, response.text
    code: str = response.json()["pairing_code"]
    return code


def test_pairing_code_shape(api: httpx.Client, admin: Admin) -> None:
    device = admin.provision()
    response = api.post("/pos/pairing-code", headers=signed_pos_headers(device))
    assert response.status_code == 201
    body = response.json()
    assert (
        re.fullmatch(r"[A-Z2-9]{6}", body["pairing_code"]) and set(body["pairing_code"]) <= ALPHABET
    )
    assert body["expires_in"] == 300 and body["poll_interval"] == 5
    status = api.get("/pos/status", headers=signed_pos_headers(device)).json()
    assert status == {
        "device_id": device.device_id,
        "status": "inactive",
        "pairing_code_expires_at": body["expires_at"],
        "merchant": None,
        "terminal_id": None,
        "poll_interval": 5,
    }


def test_codes_use_only_the_alphabet(api: httpx.Client, admin: Admin) -> None:
    device = admin.provision()
    seen = "".join(new_code(api, device) for _ in range(10))
    assert set(seen) <= ALPHABET
    assert not set(seen) & set("ILO01")


def test_pairing_code_rate_limit(api: httpx.Client, admin: Admin) -> None:
    device = admin.provision()
    for _ in range(10):
        new_code(api, device)
    response = api.post("/pos/pairing-code", headers=signed_pos_headers(device))
    problem(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) > 0


def test_new_code_replaces_old(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant
) -> None:
    device = admin.provision()
    old = new_code(api, device)
    new = new_code(api, device)
    owner = make_merchant()
    problem(owner.http.post("/pos/claim", json={"pairing_code": old}), 404, "pairing_code_invalid")
    assert owner.http.post("/pos/claim", json={"pairing_code": new}).status_code == 200


def test_claim_happy_path(api: httpx.Client, admin: Admin, make_merchant: MakeMerchant) -> None:
    device = admin.provision()
    code = new_code(api, device)
    owner = make_merchant(currency="EUR", country="DE")
    typed = f" {code[:3].lower()}-{code[3:]} "  # portal input: case, spaces and hyphens ignored
    response = owner.http.post("/pos/claim", json={"pairing_code": typed, "label": "Front counter"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["device_id"] == device.device_id and body["status"] == "claimed"
    assert body["merchant_id"] == owner.merchant_id and body["label"] == "Front counter"
    assert re.fullmatch(r"TID-\d{6}", body["terminal_id"])
    status = api.get("/pos/status", headers=signed_pos_headers(device)).json()
    assert status["status"] == "claimed" and status["terminal_id"] == body["terminal_id"]
    assert status["merchant"] == {"id": owner.merchant_id, "name": "Corner Coffee"}
    assert status["pairing_code_expires_at"] is None
    problem(api.post("/pos/pairing-code", headers=signed_pos_headers(device)), 409, "invalid_state")


def test_label_defaults_to_null(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant
) -> None:
    device = admin.provision()
    body = (
        make_merchant().http.post("/pos/claim", json={"pairing_code": new_code(api, device)}).json()
    )
    assert body["label"] is None


def test_used_unknown_and_expired_codes_answer_alike(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant, backend: Backend
) -> None:
    owner = make_merchant()
    device = admin.provision()
    code = new_code(api, device)
    assert owner.http.post("/pos/claim", json={"pairing_code": code}).status_code == 200
    used = owner.http.post("/pos/claim", json={"pairing_code": code})
    unknown = owner.http.post(
        "/pos/claim", json={"pairing_code": "ZZZZZZ" if code != "ZZZZZZ" else "YYYYYY"}
    )
    bodies = [problem(r, 404, "pairing_code_invalid") for r in (used, unknown)]
    assert len({(b["detail"], b["title"]) for b in bodies}) == 1


@pytest.mark.parametrize(
    "body", [{}, {"pairing_code": None}, {"pairing_code": 123456}, {"pairing_code": " - "}]
)
def test_missing_or_non_string_code_is_400(
    make_merchant: MakeMerchant, body: dict[str, Any]
) -> None:
    owner = make_merchant()
    problem(owner.http.post("/pos/claim", json=body), 400, "invalid_request")


def test_claim_body_must_be_json(make_merchant: MakeMerchant) -> None:
    owner = make_merchant()
    problem(
        owner.http.post(
            "/pos/claim", content=b"pairing_code=ABC", headers={"content-type": "text/plain"}
        ),
        415,
        "unsupported_media_type",
    )
    problem(
        owner.http.post(
            "/pos/claim", content=b"{nope", headers={"content-type": "application/json"}
        ),
        400,
        "invalid_request",
    )


def test_staff_cannot_claim(api: httpx.Client, admin: Admin, make_merchant: MakeMerchant) -> None:
    device = admin.provision()
    staff = make_merchant("staff")
    problem(
        staff.http.post("/pos/claim", json={"pairing_code": new_code(api, device)}),
        403,
        "forbidden",
    )


def test_claim_without_session_or_token(
    api: httpx.Client, admin: Admin, member_client: dict[str, Any], server: Server
) -> None:
    from support.helpers import client_token

    token = client_token(server.url, member_client["client_id"], member_client["client_secret"])
    no_session = api.post(
        "/pos/claim", json={"pairing_code": "ABCDEF"}, headers={"Authorization": f"Bearer {token}"}
    )
    problem(no_session, 403, "session_required")
    no_token = api.post("/pos/claim", json={"pairing_code": "ABCDEF"})
    problem(no_token, 401, "unauthorized")
    assert no_token.headers["www-authenticate"].startswith("Bearer")
    bad = api.post(
        "/pos/claim", json={"pairing_code": "ABCDEF"}, headers={"Authorization": "Bearer not.a.jwt"}
    )
    problem(bad, 401, "unauthorized")
    wrong_scheme = api.post(
        "/pos/claim", json={"pairing_code": "ABCDEF"}, headers={"Authorization": f"Basic {token}"}
    )
    problem(wrong_scheme, 401, "unauthorized")


def test_brute_force_limit_blocks_even_the_right_code(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant
) -> None:
    device = admin.provision()
    code = new_code(api, device)
    owner = make_merchant()
    wrong = "ZZZZZZ" if code != "ZZZZZZ" else "YYYYYY"
    for _ in range(5):
        problem(
            owner.http.post("/pos/claim", json={"pairing_code": wrong}), 404, "pairing_code_invalid"
        )
    blocked = owner.http.post("/pos/claim", json={"pairing_code": code})
    problem(blocked, 429, "rate_limited")
    assert int(blocked.headers["retry-after"]) > 800  # the 15-minute window
    # The device is untouched: still inactive with its code live.
    assert api.get("/pos/status", headers=signed_pos_headers(device)).json()["status"] == "inactive"


def test_one_code_two_claimers_exactly_one_wins(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant, server: Server, server_b: Server
) -> None:
    for _ in range(3):
        device = admin.provision()
        code = new_code(api, device)
        first = make_merchant(url=server.url)
        second = make_merchant(url=server_b.url)
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(
                    lambda m: m.http.post("/pos/claim", json={"pairing_code": code}),
                    (first, second),
                )
            )
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 404], [r.text for r in results]
        winner = next(r for r in results if r.status_code == 200).json()
        status = api.get("/pos/status", headers=signed_pos_headers(device)).json()
        assert status["merchant"]["id"] == winner["merchant_id"]


def test_status_rate_limit_across_processes(admin: Admin, server: Server, server_b: Server) -> None:
    device = admin.provision()
    urls = [server.url, server_b.url]
    for i in range(30):
        assert (
            httpx.get(f"{urls[i % 2]}/pos/status", headers=signed_pos_headers(device)).status_code
            == 200
        )
    limited = httpx.get(f"{urls[0]}/pos/status", headers=signed_pos_headers(device))
    problem(limited, 429, "rate_limited")
    assert 0 < int(limited.headers["retry-after"]) <= 61
    problem(
        httpx.get(f"{urls[1]}/pos/status", headers=signed_pos_headers(device)),
        429,
        "rate_limited",
    )


def test_device_provisioned_on_one_process_works_on_the_other(
    admin: Admin, server_b: Server, make_merchant: MakeMerchant
) -> None:
    device = admin.provision()
    with httpx.Client(base_url=server_b.url) as b:
        code = new_code(b, device)
    owner = make_merchant(url=server_b.url)
    assert owner.http.post("/pos/claim", json={"pairing_code": code}).status_code == 200


async def test_expired_code_is_refused(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant, runtime: Runtime
) -> None:
    """A code issued 301 s ago (by the service with an injected clock) is dead."""
    from viopay.devices import service
    from viopay.devices.models import Device
    from viopay.ids import utcnow

    device = admin.provision()
    async with runtime.sessions() as db, db.begin():
        row = present(await db.get(Device, device.device_id))
        code, expires_at = await service.issue_pairing_code(
            db,
            runtime.cache,
            wrapper=runtime.wrapper,
            device=row,
            now=utcnow() - timedelta(seconds=301),
        )
    owner = make_merchant()
    problem(owner.http.post("/pos/claim", json={"pairing_code": code}), 404, "pairing_code_invalid")
    status = api.get("/pos/status", headers=signed_pos_headers(device)).json()
    assert status["pairing_code_expires_at"] is None and status["status"] == "inactive"


async def test_live_code_just_before_expiry_is_claimable(
    admin: Admin, make_merchant: MakeMerchant, runtime: Runtime
) -> None:
    from viopay.devices import service
    from viopay.devices.models import Device
    from viopay.ids import utcnow

    device = admin.provision()
    async with runtime.sessions() as db, db.begin():
        row = present(await db.get(Device, device.device_id))
        code, _ = await service.issue_pairing_code(
            db,
            runtime.cache,
            wrapper=runtime.wrapper,
            device=row,
            now=utcnow() - timedelta(seconds=280),
        )
    assert make_merchant().http.post("/pos/claim", json={"pairing_code": code}).status_code == 200


async def test_a_status_read_across_a_claim_never_sees_inactive_without_a_code(
    api: httpx.Client, admin: Admin, make_merchant: MakeMerchant, runtime: Runtime
) -> None:
    """The device read before a claim committed, its code after (each statement reads what is
    committed when it runs, on PostgreSQL): the status answers the claim, not "inactive, no
    code", which the SDK takes for an expired code."""
    from viopay.devices import service
    from viopay.devices.models import Device, DeviceStatus
    from viopay.ids import utcnow

    device = admin.provision()
    code = new_code(api, device)
    owner = make_merchant()
    async with runtime.sessions() as db:
        seen = present(await db.get(Device, device.device_id))
        assert seen.status.value == "inactive"
        if runtime.settings.async_database_url.startswith("sqlite"):
            await db.commit()  # SQLite: a read transaction keeps its snapshot; end it
        claimed = owner.http.post("/pos/claim", json={"pairing_code": code})
        assert claimed.status_code == 200, claimed.text
        assert await service.live_code_expiry(db, device=seen, now=utcnow()) is None
        assert seen.status is DeviceStatus.claimed
        assert seen.merchant_id == owner.merchant_id and seen.terminal_id is not None


async def test_a_terminal_id_already_taken_is_drawn_again(
    terminal: Any, admin: Admin, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim draws a random TID-nnnnnn and inserts it only if free (ON CONFLICT DO NOTHING):
    an id another terminal holds, even one taken by a concurrent claim, is drawn again."""
    from sqlalchemy import select

    from viopay.devices import service as devices_service
    from viopay.devices.models import Device, Terminal
    from viopay.ids import utcnow
    from viopay.merchants.models import Merchant

    taken = int(terminal.terminal_id.removeprefix("TID-"))
    device_id = admin.provision().device_id
    async with runtime.sessions() as db, db.begin():
        used = set((await db.scalars(select(Terminal.terminal_id))).all())
        free = next(n for n in range(10**6) if f"TID-{n:06d}" not in used)
        draws = iter([taken, taken, free])
        monkeypatch.setattr("viopay.devices.service.secrets.randbelow", lambda _n: next(draws))
        device = await db.get(Device, device_id)
        merchant = await db.get(Merchant, terminal.merchant.merchant_id)
        assert device is not None and merchant is not None
        made = await devices_service._new_terminal(
            db, device=device, merchant=merchant, now=utcnow()
        )
        assert made == f"TID-{free:06d}"
        row = await db.get(Terminal, made)
        assert row is not None and row.device_id == device_id
        untouched = await db.get(Terminal, terminal.terminal_id)
        assert untouched is not None and untouched.device_id == terminal.device.device_id
        await db.rollback()


async def test_a_pairing_code_not_issued_does_not_count(
    api: httpx.Client, admin: Admin, runtime: Runtime
) -> None:
    """The hourly ten count codes issued: a request whose code could not be written (here a
    database error: the code row names a device not yet provisioned) leaves the device's ten
    as they were. Twelve such tries, then the device provisioned: it still gets all ten."""
    from sqlalchemy.exc import IntegrityError

    from viopay.devices import service
    from viopay.devices.models import Device, DeviceStatus
    from viopay.ids import utcnow

    device_id = f"POS-{secrets.token_hex(4).upper()}"
    unsaved = Device(device_id=device_id, status=DeviceStatus.inactive)
    for _ in range(service.PAIRING_CODES_PER_HOUR + 2):
        with pytest.raises(IntegrityError):
            async with runtime.sessions() as db, db.begin():
                await service.issue_pairing_code(
                    db, runtime.cache, wrapper=runtime.wrapper, device=unsaved, now=utcnow()
                )
    device = admin.provision(device_id)
    for _ in range(service.PAIRING_CODES_PER_HOUR):
        assert api.post("/pos/pairing-code", headers=signed_pos_headers(device)).status_code == 201
    problem(api.post("/pos/pairing-code", headers=signed_pos_headers(device)), 429, "rate_limited")
