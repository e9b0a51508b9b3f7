"""Bearer tokens from Keycloak: discovery → JWKS, refetch on an unknown kid, claim checks.

Keycloak itself is an external system; a small stand-in answers its two documents and the
client-credentials grant over httpx's transport.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from viopay.auth.issuer import OidcVerifier
from viopay.auth.oidc import KEYS_MAX_AGE, OidcProvider
from viopay.errors import ServiceUnavailable, Unauthorized

ISSUER = "https://sso.example.test/realms/viopay"


class FakeRealm:
    def __init__(self) -> None:
        self.keys: dict[str, Any] = {
            "k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)
        }
        self.jwks_fetches = 0
        self.down = False

    def token(self, kid: str = "k1", **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": "viopay",
            "sub": "user-1",
            "exp": now + 300,
            "nbf": now - 5,
            "sid": "sess-abc",
            "realm_access": {"roles": ["viopay-admin", "offline_access"]},
        } | claims
        key = self.keys[kid]
        alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            key,
            algorithm=alg,
            headers={"kid": kid},
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("down")
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "jwks_uri": f"{ISSUER}/protocol/openid-connect/certs",
                    "token_endpoint": f"{ISSUER}/protocol/openid-connect/token",
                },
            )
        if request.url.path.endswith("/certs"):
            self.jwks_fetches += 1
            keys = []
            for kid, key in self.keys.items():
                algo = (
                    jwt.algorithms.ECAlgorithm
                    if isinstance(key, ec.EllipticCurvePrivateKey)
                    else jwt.algorithms.RSAAlgorithm
                )
                jwk = algo.to_jwk(key.public_key(), as_dict=True) | {"kid": kid, "use": "sig"}
                keys.append(jwk)
            return httpx.Response(200, json={"keys": keys})
        if request.url.path.endswith("/token"):
            form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
            if form.get("client_secret") != "right":
                return httpx.Response(401, json={"error": "unauthorized_client"})
            return httpx.Response(
                200, json={"access_token": self.token(client_id="svc"), "expires_in": 300}
            )
        return httpx.Response(404)


@pytest.fixture
def realm() -> FakeRealm:
    return FakeRealm()


@pytest.fixture
async def verifier(realm: FakeRealm) -> AsyncIterator[OidcVerifier]:
    v = OidcVerifier(
        provider=OidcProvider(
            issuer=ISSUER, client=httpx.AsyncClient(transport=httpx.MockTransport(realm.handler))
        ),
        audience="viopay",
    )
    yield v
    await v.close()


async def test_valid_token(verifier: OidcVerifier, realm: FakeRealm) -> None:
    principal = await verifier.verify(realm.token())
    assert (
        principal.subject == "user-1" and principal.is_admin and principal.session_key == "sess-abc"
    )
    assert principal.kind == "user"


async def test_session_key_falls_back_to_token_hash(
    verifier: OidcVerifier, realm: FakeRealm
) -> None:
    token = realm.token(sid=None)
    principal = await verifier.verify(token)
    import hashlib

    assert principal.session_key == hashlib.sha256(token.encode()).hexdigest()


async def test_unknown_kid_refetches_jwks_once(verifier: OidcVerifier, realm: FakeRealm) -> None:
    await verifier.verify(realm.token())
    realm.keys["k2"] = ec.generate_private_key(ec.SECP256R1())  # the realm rotates its keys
    verifier.provider.jwks_refresh_seconds = 0.0  # the last fetch is past the refetch interval
    principal = await verifier.verify(realm.token(kid="k2"))
    assert principal.subject == "user-1" and realm.jwks_fetches == 2
    with pytest.raises(Unauthorized):
        await verifier.verify(realm.token(kid="k2").replace(".", ".x", 1))


async def test_unknown_kid_within_interval_is_not_refetched(
    verifier: OidcVerifier, realm: FakeRealm
) -> None:
    await verifier.verify(realm.token())
    realm.keys["k3"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized):
        await verifier.verify(realm.token(kid="k3"))
    assert realm.jwks_fetches == 1


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://evil.test/realms/viopay"},
        {"aud": "someone-else"},
        {"exp": -120},
        {"nbf": 600},
    ],
)
async def test_claim_checks(
    verifier: OidcVerifier, realm: FakeRealm, claims: dict[str, Any]
) -> None:
    # Time-relative claims are offsets from now, resolved when the test runs (never at collection).
    resolved = {k: int(time.time()) + v if k in ("exp", "nbf") else v for k, v in claims.items()}
    with pytest.raises(Unauthorized):
        await verifier.verify(realm.token(**resolved))


async def test_azp_stands_for_audience(verifier: OidcVerifier, realm: FakeRealm) -> None:
    principal = await verifier.verify(realm.token(aud="account", azp="viopay"))
    assert principal.subject == "user-1"


async def test_token_signed_by_another_key(verifier: OidcVerifier, realm: FakeRealm) -> None:
    forged = jwt.encode(
        {"iss": ISSUER, "aud": "viopay", "sub": "x", "exp": int(time.time()) + 60},
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    with pytest.raises(Unauthorized):
        await verifier.verify(forged)


async def test_client_credentials(verifier: OidcVerifier, realm: FakeRealm) -> None:
    token = await verifier.client_credentials("svc", "right")
    assert (await verifier.verify(token["access_token"])).kind == "client"
    with pytest.raises(Unauthorized):
        await verifier.client_credentials("svc", "wrong")


async def test_unreachable_provider_fails_closed(verifier: OidcVerifier, realm: FakeRealm) -> None:
    realm.down = True
    with pytest.raises(ServiceUnavailable):
        await verifier.verify(realm.token())


async def test_a_withdrawn_key_is_forgotten_once_the_jwks_is_old(
    verifier: OidcVerifier, realm: FakeRealm
) -> None:
    token = realm.token()
    await verifier.verify(token)
    realm.keys = {"k2": ec.generate_private_key(ec.SECP256R1())}  # k1 withdrawn (compromised)
    await verifier.verify(token)  # the JWKS held is recent: no fetch for a known kid
    assert realm.jwks_fetches == 1
    verifier.provider._keys_at = time.monotonic() - KEYS_MAX_AGE - 1
    with pytest.raises(Unauthorized):
        await verifier.verify(token)
    assert realm.jwks_fetches == 2
    assert (await verifier.verify(realm.token(kid="k2"))).subject == "user-1"


async def test_an_old_jwks_is_kept_while_the_provider_is_down(
    verifier: OidcVerifier, realm: FakeRealm
) -> None:
    token = realm.token()
    await verifier.verify(token)
    realm.down = True
    verifier.provider._keys_at = time.monotonic() - KEYS_MAX_AGE - 1
    assert (await verifier.verify(token)).subject == "user-1"
    realm.keys["k9"] = ec.generate_private_key(ec.SECP256R1())  # published while it is down
    with pytest.raises(ServiceUnavailable):  # an unknown kid cannot be checked: fail closed
        await verifier.verify(realm.token(kid="k9"))


async def test_a_discovery_document_for_another_issuer_is_refused(realm: FakeRealm) -> None:
    provider = OidcProvider(
        issuer="https://sso.example.test/realms/other",
        client=httpx.AsyncClient(transport=httpx.MockTransport(realm.handler)),
    )
    with pytest.raises(ServiceUnavailable):
        await provider.key("k1")
    await provider.close()
