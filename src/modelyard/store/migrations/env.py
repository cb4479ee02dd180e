"""Alembic environment: runs on the connection modelyard hands in (see store/_engine.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from modelyard.store._schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            on_version_apply=config.attributes.get("on_version_apply"),
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    # Plain `alembic` command-line use (for developers writing a migration).
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(
            connection=conn,
            target_metadata=target_metadata,
            render_as_batch=conn.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
