"""The cache's Redis connections (``viopay.cache.RedisCache``), on the real Redis: a pool that
grows under a burst opens its connections without reading the installed distributions on the
event loop, and each names itself as ours (``CLIENT SETINFO``, shown by Redis 7.2 and later)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import secrets
from collections.abc import Callable

import pytest

from support.helpers import REDIS_URL, flush_redis_prefix, require_services
from viopay import __version__
from viopay.cache import RedisCache

BURST = 8


def test_a_growing_pool_names_its_connections_without_reading_the_installed_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_services()
    looked_up: list[str] = []
    real: Callable[[str], str] = importlib.metadata.version

    def counting(name: str) -> str:
        looked_up.append(name)
        return real(name)

    # redis-py asks importlib.metadata for its own version on every connection it makes unless
    # it is told (redis.utils.get_lib_version): counted here, not replaced
    monkeypatch.setattr(importlib.metadata, "version", counting)
    prefix = f"test_conn_{secrets.token_hex(4)}:"
    ours = f"redis-py(viopay_v{__version__})"

    async def burst() -> tuple[list[str], str]:
        cache = RedisCache(REDIS_URL, prefix=prefix, pool_size=BURST)
        try:
            # BURST commands at once, each on a connection of its own: the pool opens BURST
            await asyncio.gather(*(cache.set(f"k{i}", b"x", ttl=30) for i in range(BURST)))
            assert [await cache.get(f"k{i}") for i in range(BURST)] == [b"x"] * BURST
            # what each connection it makes is given (and sends as CLIENT SETINFO)
            given = cache._redis.connection_pool.connection_kwargs.get("driver_info")  # noqa: SLF001
            return list(looked_up), getattr(given, "formatted_name", "")
        finally:
            await cache.close()

    try:
        lookups, named = asyncio.run(burst())
    finally:
        flush_redis_prefix(prefix)
    assert lookups == []
    assert named == ours
