"""Where a webhook may be sent (PROTOCOL §7): ``https://`` to public addresses only.

The check runs when an endpoint is saved and again at every delivery, on the addresses the
name resolves to at that moment; the delivery then connects to the address it checked (not to
a second lookup), so a name re-pointed at an internal address (DNS rebinding) gets nothing.
``VIOPAY_WEBHOOK_ALLOW_INSECURE`` lifts both rules (tests, local development).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from viopay.errors import InvalidRequest

MAX_URL_LENGTH = 2048
Resolver = Callable[[str, int], Awaitable[list[str]]]


class UnsafeTarget(Exception):
    """The URL is not https, or its host resolves to an address we never send to."""


@dataclass(frozen=True)
class Target:
    """A checked destination: the URL, its host name, and the address to connect to."""

    url: str
    host: str
    port: int
    address: str | None  # None with VIOPAY_WEBHOOK_ALLOW_INSECURE: connect by name


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def _parts(url: str, *, allow_insecure: bool) -> tuple[str, int]:
    if len(url) > MAX_URL_LENGTH or any(c.isspace() or ord(c) < 0x21 for c in url):
        raise UnsafeTarget("the URL is not valid")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeTarget("the URL is not valid") from None
    schemes = ("https", "http") if allow_insecure else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeTarget("the URL must be https://")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise UnsafeTarget("the URL must name a host, without credentials")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_target(url: str, *, allow_insecure: bool, resolve: Resolver) -> Target:
    """The checked target of ``url``; :class:`UnsafeTarget` when it may not be used."""
    host, port = _parts(url, allow_insecure=allow_insecure)
    if allow_insecure:
        return Target(url, host, port, None)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await resolve(host, port)
        except (OSError, UnicodeError):
            raise UnsafeTarget("the URL's host does not resolve") from None
    if not addresses:
        raise UnsafeTarget("the URL's host does not resolve")
    if not all(is_public(a) for a in addresses):
        raise UnsafeTarget("the URL must not lead to a loopback, private or link-local address")
    return Target(url, host, port, addresses[0])


async def validate_url(url: str, *, allow_insecure: bool, resolve: Resolver) -> str:
    """``url`` if an endpoint may be saved with it, else 400 invalid_request."""
    try:
        await check_target(url, allow_insecure=allow_insecure, resolve=resolve)
    except UnsafeTarget as exc:
        raise InvalidRequest(str(exc), errors=[{"field": "url", "message": str(exc)}]) from None
    return url
