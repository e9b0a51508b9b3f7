"""Alembic, driven from code so ``viopay migrate`` and ``viopay serve`` share one path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from viopay.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", settings.async_database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings) -> str:
    """Bring the schema to the newest revision (safe to run on every start); returns it."""
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), "head")
    return asyncio.run(current_revision(settings)) or "base"


async def current_revision(settings: Settings) -> str | None:
    engine = create_async_engine(settings.async_database_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )
    finally:
        await engine.dispose()


def sqlite_path(settings: Settings) -> Path | None:
    """The embedded default's database file (None on PostgreSQL)."""
    if not settings.embedded:
        return None
    database = make_url(settings.async_database_url).database
    return Path(database).absolute() if database else None


def describe_database(settings: Settings) -> str:
    """Which database this process uses, for messages: the SQLite file, or the PostgreSQL URL
    without its password."""
    path = sqlite_path(settings)
    if path is not None:
        return f"SQLite {path}"
    url = make_url(settings.async_database_url).set(drivername="postgresql")
    return f"PostgreSQL {url.render_as_string(hide_password=True)}"


def schema_exists(settings: Settings) -> bool:
    """True if the database exists and carries a Viopay schema. Never creates anything (a
    SQLite file is looked for, not opened); a database that cannot be reached raises."""
    path = sqlite_path(settings)
    if path is not None and not path.is_file():
        return False
    return asyncio.run(current_revision(settings)) is not None
