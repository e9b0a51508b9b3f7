"""The URL rules of PROTOCOL §7: https to public addresses only, checked on save and again at
delivery on what the name resolves to then (a name re-pointed inward gets nothing)."""

from __future__ import annotations

import pytest

from viopay.errors import InvalidRequest
from viopay.webhooks.urls import (
    Resolver,
    UnsafeTarget,
    check_target,
    system_resolver,
    validate_url,
)

PUBLIC = "93.184.216.34"


def resolving_to(*addresses: str) -> Resolver:
    async def resolve(_host: str, _port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://127.8.9.10:8443/x",
        "https://10.1.2.3/x",
        "https://172.16.0.1/x",
        "https://192.168.1.1/x",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/x",
        "https://0.0.0.0/x",
        "https://224.0.0.1/x",
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://[fc00::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://user:pass@hooks.example.com/x",
        "https:///x",
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com/a b",
    ],
)
async def test_rejected_when_saved(url: str) -> None:
    with pytest.raises(InvalidRequest):
        await validate_url(url, allow_insecure=False, resolve=resolving_to(PUBLIC))


async def test_a_name_resolving_inward_is_rejected() -> None:
    for inward in ("127.0.0.1", "10.0.0.7", "::1", "169.254.1.1"):
        with pytest.raises(InvalidRequest):
            await validate_url(
                "https://hooks.example.com/x",
                allow_insecure=False,
                resolve=resolving_to(PUBLIC, inward),
            )
    with pytest.raises(InvalidRequest):
        await validate_url("https://localhost/x", allow_insecure=False, resolve=system_resolver)


async def test_public_https_is_accepted_and_pinned() -> None:
    url = "https://hooks.example.com:8443/x?y=1"
    assert await validate_url(url, allow_insecure=False, resolve=resolving_to(PUBLIC)) == url
    target = await check_target(url, allow_insecure=False, resolve=resolving_to(PUBLIC))
    assert (target.host, target.port, target.address) == ("hooks.example.com", 8443, PUBLIC)


async def test_dns_rebinding_is_caught_at_delivery() -> None:
    url = "https://hooks.example.com/x"
    await validate_url(url, allow_insecure=False, resolve=resolving_to(PUBLIC))
    with pytest.raises(UnsafeTarget):  # the same name, later, pointing inside
        await check_target(url, allow_insecure=False, resolve=resolving_to("127.0.0.1"))


async def test_insecure_setting_allows_http_and_any_address() -> None:
    for url in ("http://127.0.0.1:8080/x", "https://10.0.0.1/x"):
        target = await check_target(url, allow_insecure=True, resolve=resolving_to("10.0.0.1"))
        assert target.address is None
    with pytest.raises(UnsafeTarget):
        await check_target("ftp://127.0.0.1/x", allow_insecure=True, resolve=system_resolver)


async def test_delivery_connects_to_the_checked_address_not_a_new_lookup() -> None:
    """The name below never resolves: the POST reaches the receiver only through the address
    that was checked, with the name kept in Host (and, over TLS, for SNI and the certificate)."""
    from support.webhook_receiver import running_receiver
    from viopay.webhooks.urls import Target
    from viopay.webhooks.worker import build_client, post

    with running_receiver() as receiver:
        port = int(receiver.url.split(":")[2].split("/")[0])
        target = Target(f"http://hooks.invalid:{port}/hooks", "hooks.invalid", port, "127.0.0.1")
        client = build_client(2)
        try:
            outcome = await post(client, target, headers={"webhook-id": "evt_x"}, body=b"{}")
        finally:
            await client.aclose()
        assert outcome.ok and outcome.status_code == 200
        (got,) = receiver.received
        assert got.headers["host"] == f"hooks.invalid:{port}" and got.body == b"{}"
