"""What one server process (or one CLI command) holds: settings, database, cache, key wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from viopay.cache import Cache, MemoryCache, RedisCache
from viopay.crypto.keyring import Keyring
from viopay.crypto.wrapping import KeyWrapper
from viopay.db import create_engine, session_factory
from viopay.masterkeys.service import KeySource, build_keyring, open_key_source, prepare_keyring
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
    #: The master keys behind ``wrapper`` (a Keyring): what the online rotation refreshes.
    key_source: KeySource | None = field(default=None)

    @property
    def keyring(self) -> Keyring | None:
        return self.wrapper if isinstance(self.wrapper, Keyring) else None

    async def close(self) -> None:
        if self.oidc is not None:
            await self.oidc.close()
        await self.cache.close()
        await self.engine.dispose()
        if self.key_source is not None:
            self.key_source.close()


def load_keyring(settings: Settings) -> tuple[Keyring, KeySource]:
    """The configured master key (HSM, VIOPAY_MASTER_KEY or key file), checked against the
    database (PROTOCOL §6), with every other live master key and the derived keys loaded."""
    source = open_key_source(settings)
    keyring = build_keyring(source)
    try:
        prepare_keyring(settings, keyring, source)
    except BaseException:
        source.close()
        raise
    return keyring, source


def build_cache(settings: Settings) -> Cache:
    if settings.redis_url:
        return RedisCache(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryCache()


def build_runtime(settings: Settings) -> Runtime:
    keyring, source = load_keyring(settings)
    engine = create_engine(settings)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        cache=build_cache(settings),
        wrapper=keyring,
        key_source=source,
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
