"""Alembic environment for the farm's database.

``farm.services.db.engine.open_database`` runs the migrations itself and hands its connection over in
``config.attributes["connection"]``. To write a new revision, let Alembic compare the models with
a database migrated to the current head::

    from alembic import command
    from farm.services.db.engine import alembic_config
    command.revision(alembic_config("sqlite:////tmp/dev.db"), "what changed", autogenerate=True)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from farm.services.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_with(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: use farm.services.db.engine.alembic_config(url)")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            run_with(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()
