"""Alembic, driven from code: every service has its own tree and its own schema.

A service's ``migrations/env.py`` is one call to :func:`run_env`; ``upgrade`` is what the
service's ``migrate`` command (and the Kubernetes migration Job) runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine


def alembic_config(migrations_dir: Path, database_url: str, schema: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["schema"] = schema
    return config


def upgrade(migrations_dir: Path, database_url: str, schema: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(migrations_dir, database_url, schema), revision)


def run_env(metadata: MetaData) -> None:
    """Body of a service's ``env.py``."""
    config = context.config
    schema: str = config.attributes["schema"]
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None

    def do_run(connection: Connection) -> None:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.execute(text(f'SET search_path TO "{schema}"'))
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=False,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                # Two replicas starting together must not both migrate.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema}
                )
                await conn.run_sync(do_run)
        finally:
            await engine.dispose()

    if context.is_offline_mode():
        context.configure(
            url=url, target_metadata=metadata, version_table_schema=schema, literal_binds=True
        )
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(run_async())
