"""Alembic environment: the URL comes from the caller (services.migrate) or SEMTAG_ settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from services.tables import Base

config = context.config
target_metadata = Base.metadata

url = config.get_main_option("sqlalchemy.url")
if not url:
    from semtag.settings import get_settings

    url = get_settings().effective_database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=url.startswith("sqlite"), compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
