"""PROTOCOL §2.5: API-client tokens, merchant sessions, roles and the admin API."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from support.helpers import Admin, MakeMerchant, Server, client_token, problem
from viopay.runtime import Runtime


def test_wrong_client_credentials(api: httpx.Client, member_client: dict[str, Any]) -> None:
    for creds in (
        {"client_id": member_client["client_id"], "client_secret": "vsk_wrong"},
        {"client_id": "cli_doesnotexist", "client_secret": member_client["client_secret"]},
    ):
        problem(api.post("/client/session", json=creds), 401, "unauthorized")
    problem(api.post("/client/session", json={"client_id": "x"}), 400, "invalid_request")


def test_token_is_an_es256_jwt_verifiable_with_the_jwks(
    api: httpx.Client, server: Server, member_client: dict[str, Any]
) -> None:
    token = client_token(server.url, member_client["client_id"], member_client["client_secret"])
    jwks = api.get("/.well-known/jwks.json").json()
    key = jwt.PyJWKSet.from_dict(jwks).keys[0]
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="viopay")
    assert claims["sub"] == member_client["client_id"]
    assert claims["sid"] and claims["exp"] > claims["iat"]


def test_session_initiate_shapes(
    make_merchant: MakeMerchant, admin: Admin, server: Server, member_client: dict[str, Any]
) -> None:
    owner = make_merchant()
    again = owner.http.post("/session/initiate", json={"merchant_id": owner.merchant_id})
    assert again.status_code == 201
    body = again.json()
    assert body["merchant_id"] == owner.merchant_id and body["role"] == "owner"
    assert body["session_id"].startswith("ses_") and body["expires_at"].endswith("Z")


def test_initiate_for_foreign_or_unknown_merchant_is_forbidden_alike(
    make_merchant: MakeMerchant, admin: Admin
) -> None:
    owner = make_merchant()
    other = admin.merchant(name="Other")
    foreign = owner.http.post("/session/initiate", json={"merchant_id": other["merchant_id"]})
    unknown = owner.http.post("/session/initiate", json={"merchant_id": "mer_nope"})
    a, b = problem(foreign, 403, "forbidden"), problem(unknown, 403, "forbidden")
    assert a["detail"] == b["detail"]


def test_second_initiate_replaces_the_first(
    make_merchant: MakeMerchant, admin: Admin, api: httpx.Client
) -> None:
    owner = make_merchant()
    second = admin.merchant(name="Second shop")
    admin.add_member(second["merchant_id"], owner.subject, "staff")
    assert (
        owner.http.post(
            "/session/initiate", json={"merchant_id": second["merchant_id"]}
        ).status_code
        == 201
    )
    # Now acting as staff of the second merchant: claims are refused by role.
    problem(owner.http.post("/pos/claim", json={"pairing_code": "ABCDEF"}), 403, "forbidden")


def test_session_is_bound_to_the_token(
    api: httpx.Client, make_merchant: MakeMerchant, admin: Admin, server: Server
) -> None:
    owner = make_merchant()
    second = admin.client(merchant_id=owner.merchant_id, role="owner")
    token = client_token(server.url, second["client_id"], second["client_secret"])
    other = api.post(
        "/pos/claim", json={"pairing_code": "ABCDEF"}, headers={"Authorization": f"Bearer {token}"}
    )
    problem(other, 403, "session_required")


@pytest.mark.parametrize("path", ["/admin/devices", "/admin/merchants", "/admin/clients"])
def test_admin_api_needs_the_admin_role(make_merchant: MakeMerchant, path: str) -> None:
    owner = make_merchant()
    problem(owner.http.post(path, json={}), 403, "forbidden")


def test_admin_provision_shapes_and_conflict(admin: Admin) -> None:
    import secrets

    created = admin.http.post(
        "/admin/devices", json={"device_id": f"POS-{secrets.token_hex(4).upper()}"}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"device_id", "key_id", "identity_secret"}
    assert (
        len(body["identity_secret"]) == 64
        and body["identity_secret"] == body["identity_secret"].lower()
    )
    problem(
        admin.http.post("/admin/devices", json={"device_id": body["device_id"]}),
        409,
        "invalid_state",
    )
    problem(
        admin.http.post("/admin/devices", json={"device_id": "POS-abcdef12"}),
        400,
        "invalid_request",
    )


def test_identity_keys_add_and_revoke(admin: Admin) -> None:
    device = admin.provision(key_id="first-key")
    added = admin.http.post(
        f"/admin/devices/{device.device_id}/identity-keys", json={"key_id": "second-key"}
    )
    assert added.status_code == 201 and added.json()["key_id"] == "second-key"
    problem(
        admin.http.post(
            f"/admin/devices/{device.device_id}/identity-keys", json={"key_id": "second-key"}
        ),
        409,
        "invalid_state",
    )
    revoked = admin.http.delete(f"/admin/devices/{device.device_id}/identity-keys/first-key")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"].endswith("Z")
    problem(
        admin.http.delete(f"/admin/devices/{device.device_id}/identity-keys/nope"), 404, "not_found"
    )


def test_admin_merchant_defaults_and_validation(admin: Admin) -> None:
    merchant = admin.merchant(name="Defaults")
    assert (merchant["currency"], merchant["country"], merchant["timezone"]) == ("USD", "US", "UTC")
    bad = admin.http.post(
        "/admin/merchants", json={"name": "X", "currency": "usd", "timezone": "Mars/Base"}
    )
    body = problem(bad, 400, "invalid_request")
    assert {e["field"] for e in body["errors"]} == {"currency", "timezone"}


def test_admin_clients_validation(admin: Admin) -> None:
    problem(
        admin.http.post(
            "/admin/clients", json={"admin": True, "merchant_id": "mer_x", "role": "owner"}
        ),
        400,
        "invalid_request",
    )
    problem(
        admin.http.post("/admin/clients", json={"merchant_id": "mer_missing", "role": "owner"}),
        404,
        "not_found",
    )


async def test_session_follows_a_refreshed_token(runtime: Runtime) -> None:
    """Same sid, later exp: the session lasts with the new token (never past 12 h from its start)."""
    from datetime import timedelta

    from viopay.audit import Actor
    from viopay.auth.issuer import Principal
    from viopay.auth.sessions import current_session, initiate_session
    from viopay.ids import utcnow
    from viopay.merchants.models import Role
    from viopay.merchants.service import add_member, create_merchant

    now = utcnow()
    first = Principal(
        subject="usr_refresh",
        kind="user",
        roles=frozenset(),
        session_key="sid-refresh-" + str(now.timestamp()),
        expires_at=now + timedelta(minutes=5),
    )
    async with runtime.sessions() as db, db.begin():
        merchant = await create_merchant(
            db,
            name="Refresh",
            currency="USD",
            country="US",
            timezone="UTC",
            actor=Actor.operator(),
            now=now,
        )
        await add_member(
            db,
            merchant_id=merchant.merchant_id,
            subject="usr_refresh",
            role=Role.owner,
            actor=Actor.operator(),
            now=now,
        )
        started = await initiate_session(
            db, runtime.cache, principal=first, merchant_id=merchant.merchant_id, now=now
        )
    assert started.expires_at == first.expires_at
    refreshed = Principal(
        subject="usr_refresh",
        kind="user",
        roles=frozenset(),
        session_key=first.session_key,
        expires_at=now + timedelta(minutes=30),
    )
    extended = await current_session(runtime.cache, refreshed)
    assert abs(extended.expires_at.timestamp() - refreshed.expires_at.timestamp()) < 1
    # The old token still finds the (extended) session; it never shrinks back.
    assert (await current_session(runtime.cache, first)).expires_at == extended.expires_at
    far = Principal(
        subject="usr_refresh",
        kind="user",
        roles=frozenset(),
        session_key=first.session_key,
        expires_at=now + timedelta(hours=20),
    )
    capped = await current_session(runtime.cache, far)
    assert (
        now + timedelta(hours=11, minutes=59)
        < capped.expires_at
        <= now + timedelta(hours=12, seconds=1)
    )
