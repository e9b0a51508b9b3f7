"""A real OpenID provider for the tests, and a server that uses it.

tests/oidc_provider/provider.js runs panva's certified ``oidc-provider`` (npm; ``npm ci`` there is
done by scripts/setup.sh and scripts/test.sh) in a Node.js process, shaped like a Keycloak realm:
issuer ``…/realms/viopay``, Keycloak's endpoint paths, JWT access tokens with
``realm_access.roles``, ``azp``, ``sid``. ``viopay serve`` finds it from VIOPAY_OIDC_ISSUER alone.
With CI=true a missing Node.js or package fails the run instead of skipping.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from support.helpers import IN_CI, ROOT, SEEN_SECRETS, Backend, Server, free_port

PROVIDER_DIR = ROOT / "tests" / "oidc_provider"
REALM = "viopay"
AUDIENCE = "viopay"
OPS = "viopay-ops"  # a service account with the realm role viopay-admin
REPORTS = "viopay-reports"  # a service account with no realm role
STALE = "viopay-stale"  # viopay-admin, but its tokens were issued an hour ago (expired)
PORTAL = "viopay-portal"  # the portal's confidential client (authorization code + PKCE)


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why}: CI runs the OpenID provider tests (scripts/test.sh installs it)")
    pytest.skip(why)


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        _unavailable("node not found (scripts/test.sh installs Node.js)")
    assert node is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    major = version.stdout.strip().lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < 20:
        _unavailable(f"oidc-provider needs Node.js 20 or later, {node} is {version.stdout.strip()}")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        _unavailable("tests/oidc_provider/node_modules is missing (scripts/setup.sh runs npm ci)")
    return node


@dataclass(frozen=True)
class User:
    username: str
    password: str
    sub: str
    email: str


class OpenIdProvider:
    """One ``node provider.js`` on a port of its own."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int,
        redirect_base: str,
        users: list[User],
        client_secrets: dict[str, str],
        access_token_ttl: int,
    ) -> None:
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}/realms/{REALM}"
        self.secrets = client_secrets
        SEEN_SECRETS.update(self.secrets.values())
        SEEN_SECRETS.update(u.password for u in users)
        service: dict[str, Any] = {"grant_types": ["client_credentials"]}
        clients: list[dict[str, Any]] = [
            service | {"client_id": OPS, "realm_roles": ["viopay-admin"]},
            service | {"client_id": REPORTS},
            service | {"client_id": STALE, "realm_roles": ["viopay-admin"], "backdate": 3600},
            {
                "client_id": PORTAL,
                "grant_types": ["authorization_code", "refresh_token"],
                "redirect_uris": [f"{redirect_base}/portal/auth/callback"],
                "post_logout_redirect_uris": [f"{redirect_base}/portal/signin"],
            },
        ]
        for client in clients:
            client["client_secret"] = self.secrets[client["client_id"]]
        config = directory / "provider.json"
        config.write_bytes(
            orjson.dumps(
                {
                    "port": port,
                    "realm": REALM,
                    "audience": AUDIENCE,
                    "access_token_ttl": access_token_ttl,
                    "clients": clients,
                    "users": [u.__dict__ | {"roles": ["offline_access"]} for u in users],
                }
            )
        )
        self.log_path = directory / "provider.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [node_executable(), str(PROVIDER_DIR / "provider.js"), str(config)],
            cwd=PROVIDER_DIR,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the OpenID provider exited: {self.log_path.read_text()}")
            try:
                discovery = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1)
                if discovery.status_code == 200 and discovery.json()["issuer"] == self.issuer:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the OpenID provider did not start"
            time.sleep(0.1)

    def token(self, client_id: str, **form: str) -> httpx.Response:
        """A client-credentials grant straight at the provider's token endpoint."""
        response = httpx.post(
            f"{self.issuer}/protocol/openid-connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": self.secrets[client_id],
            }
            | form,
        )
        if response.status_code == 200:
            SEEN_SECRETS.add(response.json()["access_token"])
        return response

    def kids(self) -> list[str]:
        jwks = httpx.get(f"{self.issuer}/protocol/openid-connect/certs").json()
        return [key["kid"] for key in jwks["keys"]]

    def rotate_keys(self) -> str:
        """A new signing key (new kid), signing from now on; the old one stays published."""
        kid: str = httpx.post(f"http://127.0.0.1:{self.port}/test/rotate-keys").json()["kid"]
        return kid

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@dataclass(frozen=True)
class OidcStack:
    provider: OpenIdProvider
    server: Server
    user: User


def oidc_stack(
    backend: Backend, directory: Path, *, access_token_ttl: int = 300
) -> Iterator[OidcStack]:
    """``viopay serve`` on ``backend`` with VIOPAY_OIDC_ISSUER, then the provider it points at."""
    node_executable()  # before starting anything
    port = free_port()
    env = backend.env | {
        "VIOPAY_OIDC_ISSUER": f"http://127.0.0.1:{port}/realms/{REALM}",
        "VIOPAY_OIDC_AUDIENCE": AUDIENCE,
        "VIOPAY_OIDC_CLIENT_ID": PORTAL,
        "VIOPAY_OIDC_JWKS_REFRESH_SECONDS": "1",
    }
    user = User(
        username="maria",
        password="pw-" + secrets.token_urlsafe(12),
        sub=str(uuid.uuid4()),  # Keycloak's subjects are UUIDs
        email="maria@corner.example",
    )
    client_secrets = {c: f"{c}-" + secrets.token_urlsafe(18) for c in (OPS, REPORTS, STALE, PORTAL)}
    # The server reads the provider lazily: it starts first, the provider learns its URL.
    server = Server(
        Backend(backend.name, env | {"VIOPAY_OIDC_CLIENT_SECRET": client_secrets[PORTAL]}),
        directory,
        "oidc-server",
        own_public_url=True,
    )
    try:
        provider = OpenIdProvider(
            directory,
            port=port,
            redirect_base=server.url,
            users=[user],
            client_secrets=client_secrets,
            access_token_ttl=access_token_ttl,
        )
    except BaseException:
        server.stop()
        raise
    try:
        yield OidcStack(provider, server, user)
    finally:
        server.stop()
        provider.stop()
