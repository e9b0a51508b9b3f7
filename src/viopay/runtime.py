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
from viopay.ids import utcnow
from viopay.masterkey import MasterKeyMismatch, verify_master_key
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


class OperatorError(Exception):
    """A mistake of configuration or setup that the operator fixes: said in one line, exit 2."""


def master_key_setting(settings: Settings) -> str:
    """The setting that chose the master key, to name in a message."""
    if settings.master_key is not None:
        return "VIOPAY_MASTER_KEY"
    return f"VIOPAY_MASTER_KEY_FILE ({settings.resolved_master_key_file})"


def load_wrapper_or_refuse(settings: Settings, *, create: bool) -> KeyWrapper:
    """The key wrapper; a master key file is made only where a database is being made."""
    key_file = settings.resolved_master_key_file
    if settings.master_key is None and not create and not key_file.exists():
        raise OperatorError(
            f"no master key file at {key_file}: set VIOPAY_MASTER_KEY_FILE or VIOPAY_MASTER_KEY "
            "to the server's master key (run from the server's folder)"
        )
    try:
        return load_wrapper(settings)
    except (ValueError, OSError) as exc:
        raise OperatorError(f"{master_key_setting(settings)}: {exc}") from None


def prepare_database(settings: Settings, *, create: bool) -> str:
    """Migrate the database and check its master key (PROTOCOL §6); returns the revision.

    Only ``create`` (``serve``, ``migrate``) may make a database where there is none: any other
    command says which database it looked for instead of starting an empty one."""
    from viopay.migrate import describe_database, schema_exists, upgrade

    where = describe_database(settings)
    try:
        exists = schema_exists(settings)
    except Exception as exc:  # noqa: BLE001 - any driver error: the database cannot be reached
        cause = getattr(exc, "orig", None) or exc
        reason = (str(cause).splitlines() or [""])[0][:200]
        raise OperatorError(
            f"cannot use the database {where} ({type(cause).__name__}: {reason}): "
            "check VIOPAY_DATABASE_URL and that the database server runs"
        ) from None
    if not exists and not create:
        raise OperatorError(
            f"no Viopay database at {where}: run this command with the server's configuration "
            "(VIOPAY_DATA_DIR or VIOPAY_DATABASE_URL, or from the server's folder), "
            "or make one with `viopay migrate`"
        )
    wrapper = load_wrapper_or_refuse(settings, create=create)
    try:
        revision = upgrade(settings)
    except OSError as exc:  # the data folder cannot be made or written
        raise OperatorError(
            f"cannot write {settings.data_dir} ({exc.strerror}): set VIOPAY_DATA_DIR to a folder "
            "this user may write"
        ) from None
    asyncio.run(_verify(settings, wrapper))
    return revision


async def _verify(settings: Settings, wrapper: KeyWrapper) -> None:
    engine = create_engine(settings)
    try:
        await verify_master_key(session_factory(engine), wrapper, now=utcnow())
    except MasterKeyMismatch as exc:
        raise OperatorError(
            f"{master_key_setting(settings)} is not the master key this database was written "
            f"with ({exc}): set it to that key"
        ) from None
    finally:
        await engine.dispose()


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
    """Migrate and check the master key (never making a database), then run ``work`` in one
    transaction on a runtime of its own (CLI commands, tools); errors propagate."""
    prepare_database(settings, create=False)

    async def go() -> T:
        runtime = build_runtime(settings)
        try:
            async with runtime.sessions() as session, session.begin():
                return await work(session, runtime)
        finally:
            await runtime.close()

    return asyncio.run(go())
