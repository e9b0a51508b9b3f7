"""What one server process (or one CLI command) holds: settings, database, cache, key wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from viopay.cache import Cache, MemoryCache, RedisCache
from viopay.crypto.hsm import HsmError
from viopay.crypto.keyring import Keyring
from viopay.crypto.wrapping import KeyWrapper
from viopay.db import (
    NativePool,
    bookkeeping_pool,
    create_engine,
    native_pool,
    session_factory,
)
from viopay.masterkeys.service import (
    KeySource,
    MasterKeyRefused,
    build_keyring,
    open_key_source,
    prepare_keyring,
)
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
    #: PostgreSQL only: asyncpg's own pool for the charge's standalone statements.
    native: NativePool | None = field(default=None)
    #: PostgreSQL only: asyncpg's pool for bookkeeping-only statements (no WAL flush wait).
    bookkeeping: NativePool | None = field(default=None)

    @property
    def keyring(self) -> Keyring | None:
        return self.wrapper if isinstance(self.wrapper, Keyring) else None

    async def close(self) -> None:
        if self.oidc is not None:
            await self.oidc.close()
        await self.cache.close()
        for pool in (self.native, self.bookkeeping):
            if pool is not None:
                await pool.close()
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


class OperatorError(Exception):
    """A mistake of configuration or setup that the operator fixes: said in one line, exit 2."""


def master_key_setting(settings: Settings) -> str:
    """The setting that chose the master key, to name in a message."""
    if (
        settings.hsm_module is not None
        and settings.master_key is None
        and (settings.master_key_file is None)
    ):
        return "VIOPAY_HSM_KEY_LABEL"
    if settings.master_key is not None:
        return "VIOPAY_MASTER_KEY"
    return f"VIOPAY_MASTER_KEY_FILE ({settings.resolved_master_key_file})"


def open_key_source_or_refuse(settings: Settings, *, create: bool) -> KeySource:
    """The configured master key (HSM or software); a master key file is made only where a
    database is being made."""
    key_file = settings.resolved_master_key_file
    uses_file = settings.master_key is None and (
        settings.hsm_module is None or settings.master_key_file is not None
    )
    if uses_file and not create and not key_file.exists():
        raise OperatorError(
            f"no master key file at {key_file}: set VIOPAY_MASTER_KEY_FILE or VIOPAY_MASTER_KEY "
            "to the server's master key (run from the server's folder)"
        )
    try:
        return open_key_source(settings)
    except HsmError as exc:
        raise OperatorError(str(exc)) from None
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
    source = open_key_source_or_refuse(settings, create=create)
    try:
        try:
            revision = upgrade(settings)
        except OSError as exc:  # the data folder cannot be made or written
            raise OperatorError(
                f"cannot write {settings.data_dir} ({exc.strerror}): set VIOPAY_DATA_DIR to a "
                "folder this user may write"
            ) from None
        try:
            prepare_keyring(settings, build_keyring(source), source)
        except MasterKeyRefused as exc:
            raise OperatorError(str(exc)) from None
    finally:
        source.close()
    return revision


def build_cache(settings: Settings) -> Cache:
    if settings.redis_url:
        return RedisCache(
            settings.redis_url, prefix=settings.redis_prefix, pool_size=settings.redis_pool_size
        )
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
        native=native_pool(engine, settings),
        bookkeeping=bookkeeping_pool(engine),
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
