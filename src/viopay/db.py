"""The database: one declarative base, the engine and the session factory.

The embedded default is SQLite through aiosqlite with one pooled connection (SQLite serialises
writers anyway; one connection turns lock errors into a short queue). PostgreSQL goes through
asyncpg with a pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, configure_mappers
from sqlalchemy.types import TypeDecorator

from viopay.errors import ServerBusy, ServiceUnavailable
from viopay.metrics import count_transaction
from viopay.settings import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


_Row = TypeVar("_Row", bound=Base)
_ATTRIBUTES: dict[type[Base], frozenset[str]] = {}


def unsaved(cls: type[_Row], **values: Any) -> _Row:
    """An instance of the mapped class ``cls`` holding ``values``, made as SQLAlchemy's loader
    makes the rows it reads: its state set up and the values put in place, with no attribute
    event per value. A charge's 26 columns cost ~25 µs through ``__init__`` and ~1.5 µs here,
    which with its intent's is ~3 % of a charge's CPU (issue 10).

    For rows written with Core (:func:`viopay.payments.intents.insert_row`) and read back, never
    for ``session.add``: the unit of work would see nothing to write. A name that is not one of
    the class's attributes is refused, as ``__init__`` refuses it."""
    names = _ATTRIBUTES.get(cls)
    if names is None:
        configure_mappers()  # new_instance needs the class's attributes set up
        names = _ATTRIBUTES[cls] = frozenset(cls.__mapper__.attrs.keys())
    if not names.issuperset(values):
        unknown = sorted(set(values) - names)
        raise TypeError(f"{cls.__name__} has no attributes {unknown}")
    instance: _Row = cls.__mapper__.class_manager.new_instance()
    instance.__dict__.update(values)
    return instance


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.async_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=30)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        engine = create_async_engine(
            url,
            pool_size=settings.db_pool_size,
            max_overflow=0,
            pool_pre_ping=False,
            pool_timeout=10,
            connect_args={"timeout": 5, "command_timeout": 10},
        )
    event.listen(engine.sync_engine, "begin", lambda _conn: count_transaction())
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def bookkeeping_only(db: AsyncSession) -> None:
    """Mark the session's transaction as writing only bookkeeping (a key set's envelope tally,
    a device's ``last_seen_at``, a row of defaults that the next read would make again): on
    PostgreSQL its COMMIT then returns without waiting for the WAL to reach the disk
    (``synchronous_commit = off`` for this transaction alone).

    Nothing is lost when a server process dies: PostgreSQL has the commit and writes it within
    ~0.6 s (3 × ``wal_writer_delay``). Only a crash of PostgreSQL itself inside that window can
    lose those last writes: a tally short by the envelopes of that moment, which the key set
    limit of §3.10 tolerates (it is far below the AES-GCM bound it guards). Never call it in a
    transaction that writes anything else (money, keys, claims, audit events).
    """
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(_NO_FLUSH_WAIT)


_NO_FLUSH_WAIT = text("SET LOCAL synchronous_commit = off")


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits when the block ends normally, rolls back otherwise."""
    async with factory() as session, session.begin():
        yield session


def insert_for(dialect: str) -> Any:
    """The ``insert`` of ``dialect`` (PostgreSQL's, else SQLite's): both have
    ``on_conflict_do_nothing``/``_do_update`` with the same arguments, which the portable
    ``sqlalchemy.insert`` has not."""
    return pg_insert if dialect == "postgresql" else sqlite_insert


class NativePool:
    """asyncpg's own pool, beside SQLAlchemy's, for the statements of
    :mod:`viopay.payments.native` that stand alone (each autocommitted: no Session, no BEGIN
    and COMMIT round trips). Made on first use, in the server's event loop; PostgreSQL only.

    A connection that cannot be had or is lost raises :class:`ServiceUnavailable` (503), as
    SQLAlchemy's errors do through the application's handlers; a wait for a free one that runs
    out (``acquire_timeout`` seconds, every connection in use) raises :class:`ServerBusy`."""

    def __init__(
        self,
        url: URL,
        *,
        size: int,
        server_settings: dict[str, str] | None = None,
        acquire_timeout: float = 10,
    ) -> None:
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._size = size
        self._server_settings = server_settings
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._size,
                        timeout=5,
                        command_timeout=10,
                        reset=_end_transaction,
                        server_settings=self._server_settings,
                    )
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        try:
            pool = await self._get()
            conn = await self._acquire(pool)
            try:
                yield conn
            finally:
                await pool.release(conn)
        except NATIVE_UNAVAILABLE as exc:
            raise ServiceUnavailable() from exc

    async def _acquire(self, pool: asyncpg.Pool) -> asyncpg.pool.PoolConnectionProxy:
        """asyncpg's timed acquire covers both waiting for a free connection and connecting: a
        timeout while every connection was open and in use is a wait for capacity (503 busy),
        any other an unreachable database."""
        full = pool.get_idle_size() == 0 and pool.get_size() >= pool.get_max_size()
        try:
            return await pool.acquire(timeout=self._acquire_timeout)
        except TimeoutError as exc:
            if full:
                raise ServerBusy("no database connection came free in time") from exc
            raise

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _end_transaction(conn: asyncpg.Connection) -> None:
    """What a connection of :class:`NativePool` needs before it is reused: its statements are
    autocommitted and set no session state (no SET, LISTEN or advisory lock), so only a
    transaction left open by a cancelled statement is ended. asyncpg's default reset sends a
    query on every release: a round trip and a transaction of its own per statement."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# What asyncpg raises when PostgreSQL cannot be reached or went away mid-statement.
NATIVE_UNAVAILABLE = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    OSError,
    TimeoutError,
)


def native_pool(engine: AsyncEngine, settings: Settings) -> NativePool | None:
    return (
        None
        if engine.dialect.name != "postgresql"
        else NativePool(engine.url, size=settings.db_pool_size)
    )


BOOKKEEPING_POOL_SIZE = 4


def bookkeeping_pool(engine: AsyncEngine) -> NativePool | None:
    """PostgreSQL only: a small pool of its own for autocommitted statements that write only
    bookkeeping (see :func:`bookkeeping_only`), so their COMMIT does not wait for the WAL
    flush: its connections run with ``synchronous_commit = off``. Nothing else may use it."""
    if engine.dialect.name != "postgresql":
        return None
    return NativePool(
        engine.url, size=BOOKKEEPING_POOL_SIZE, server_settings={"synchronous_commit": "off"}
    )
