"""Bearer tokens from a real OpenID provider (oidc-provider shaped like a Keycloak realm, see
tests/support/oidc_kit.py), on both backends: the server finds it from VIOPAY_OIDC_ISSUER alone, takes
its client-credentials tokens with the roles of ``realm_access.roles``, refuses tokens for another
audience, expired ones and ones signed by a key it never published, and follows a signing-key
rotation without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from support.helpers import SEEN_SECRETS, Backend, expect_json
from support.oidc_kit import OPS, REPORTS, STALE, OidcStack, oidc_stack


@pytest.fixture(scope="module")
def stack(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcStack]:
    yield from oidc_stack(backend, tmp_path_factory.mktemp(f"oidc-{backend.name}"))


def _session_token(stack: OidcStack, client_id: str) -> str:
    """``POST /client/session``: the server runs the client-credentials grant at the provider."""
    body = expect_json(
        httpx.post(
            f"{stack.server.url}/client/session",
            json={"client_id": client_id, "client_secret": stack.provider.secrets[client_id]},
        ),
        200,
    )
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    token: str = body["access_token"]
    SEEN_SECRETS.add(token)
    return token


def _create_merchant(stack: OidcStack, token: str, name: str = "Corner Coffee") -> httpx.Response:
    return httpx.post(
        f"{stack.server.url}/admin/merchants",
        json={"name": name},
        headers={"Authorization": f"Bearer {token}"},
    )


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "unauthorized"


def test_client_credentials_token_is_accepted_with_realm_roles(stack: OidcStack) -> None:
    token = _session_token(stack, OPS)
    claims = jwt.decode(token, options={"verify_signature": False})
    # The provider's own token, in Keycloak's layout: not one the server made.
    assert claims["iss"] == stack.provider.issuer and claims["azp"] == OPS
    assert claims["realm_access"] == {"roles": ["viopay-admin"]}
    assert jwt.get_unverified_header(token)["kid"] in stack.provider.kids()
    merchant = expect_json(_create_merchant(stack, token), 201)

    # A service account without the realm role is no operator, but may be a merchant's member.
    reports = _session_token(stack, REPORTS)
    assert jwt.decode(reports, options={"verify_signature": False})["realm_access"]["roles"] == []
    denied = _create_merchant(stack, reports)
    assert denied.status_code == 403, denied.text
    subject = jwt.decode(reports, options={"verify_signature": False})["sub"]
    ops = httpx.Client(base_url=stack.server.url, headers={"Authorization": f"Bearer {token}"})
    expect_json(
        ops.post(
            f"/admin/merchants/{merchant['merchant_id']}/members",
            json={"subject": subject, "role": "staff"},
        ),
        201,
    )
    ops.close()
    staff = httpx.Client(base_url=stack.server.url, headers={"Authorization": f"Bearer {reports}"})
    session = expect_json(
        staff.post("/session/initiate", json={"merchant_id": merchant["merchant_id"]}), 201
    )
    assert session["role"] == "staff"
    assert expect_json(staff.get("/merchant/devices"), 200)["data"] == []
    staff.close()


def test_wrong_client_secret_is_refused(stack: OidcStack) -> None:
    refused = httpx.post(
        f"{stack.server.url}/client/session",
        json={"client_id": OPS, "client_secret": "not-" + stack.provider.secrets[OPS]},
    )
    _refused(refused)


def test_a_token_for_another_audience_is_refused(stack: OidcStack) -> None:
    # Same provider, same key, same admin role: only the audience (the resource asked for) differs.
    grant = stack.provider.token(OPS, resource="urn:another-api")
    token = expect_json(grant, 200)["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == "urn:another-api" and claims["azp"] == OPS
    _refused(_create_merchant(stack, token))
    # The same grant for this server's audience is accepted.
    expect_json(
        _create_merchant(stack, expect_json(stack.provider.token(OPS), 200)["access_token"]), 201
    )


def test_an_expired_token_is_refused(stack: OidcStack) -> None:
    # STALE is an operator like OPS, but the provider issued its tokens an hour ago.
    token = _session_token(stack, STALE)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["realm_access"] == {"roles": ["viopay-admin"]} and claims["exp"] > claims["iat"]
    _refused(_create_merchant(stack, token))


def test_a_key_the_provider_never_published_is_refused(stack: OidcStack) -> None:
    genuine = jwt.decode(_session_token(stack, OPS), options={"verify_signature": False})
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for kid in (stack.provider.kids()[0], "forged-kid"):
        forged = jwt.encode(genuine, forger, algorithm="RS256", headers={"kid": kid})
        _refused(_create_merchant(stack, forged))


def test_a_signing_key_rotation_is_followed_without_a_restart(stack: OidcStack) -> None:
    before = _session_token(stack, OPS)
    old_kid = jwt.get_unverified_header(before)["kid"]
    expect_json(_create_merchant(stack, before), 201)

    new_kid = stack.provider.rotate_keys()
    assert new_kid != old_kid and stack.provider.kids() == [new_kid, old_kid]
    after = _session_token(stack, OPS)
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    # The server fetches the JWKS again for the unknown kid (at most once a second here, as
    # VIOPAY_OIDC_JWKS_REFRESH_SECONDS says): the new token is taken by the same process.
    deadline = time.monotonic() + 20
    while (answer := _create_merchant(stack, after)).status_code == 401:
        assert time.monotonic() < deadline, f"the new key was never taken: {answer.text}"
        time.sleep(0.25)
    expect_json(answer, 201)
    assert stack.server.process.poll() is None  # no restart
    # A token of the old key, still published, is still good until it expires.
    expect_json(_create_merchant(stack, before), 201)
