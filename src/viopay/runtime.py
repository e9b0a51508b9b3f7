"""What one server process (or one CLI command) holds: settings, database, cache, key wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from viopay.cache import Cache, MemoryCache, RedisCache
from viopay.crypto.wrapping import (
    KeyWrapper,
    MasterKeyWrapper,
    decode_master_key,
    load_or_create_master_key_file,
)
from viopay.db import create_engine, session_factory
from viopay.settings import Settings

if TYPE_CHECKING:
    from viopay.auth.issuer import EmbeddedIssuer, OidcVerifier


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    cache: Cache
    wrapper: KeyWrapper
    issuer: EmbeddedIssuer | None = field(default=None)
    oidc: OidcVerifier | None = field(default=None)

    async def close(self) -> None:
        if self.oidc is not None:
            await self.oidc.close()
        await self.cache.close()
        await self.engine.dispose()


def load_wrapper(settings: Settings) -> KeyWrapper:
    if settings.master_key is not None:
        return MasterKeyWrapper(decode_master_key(settings.master_key.get_secret_value()))
    return MasterKeyWrapper(load_or_create_master_key_file(settings.resolved_master_key_file))


def build_cache(settings: Settings) -> Cache:
    if settings.redis_url:
        return RedisCache(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryCache()


def build_runtime(settings: Settings) -> Runtime:
    engine = create_engine(settings)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        cache=build_cache(settings),
        wrapper=load_wrapper(settings),
    )


T = TypeVar("T")


def run_unit_of_work(
    settings: Settings, work: Callable[[AsyncSession, Runtime], Awaitable[T]]
) -> T:
    """Migrate, then run ``work`` in one transaction on a runtime of its own (CLI commands,
    tools); errors propagate."""
    from viopay.migrate import upgrade

    upgrade(settings)

    async def go() -> T:
        runtime = build_runtime(settings)
        try:
            async with runtime.sessions() as session, session.begin():
                return await work(session, runtime)
        finally:
            await runtime.close()

    return asyncio.run(go())
