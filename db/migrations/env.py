"""Alembic environment: runs against the URL set by `db.migrate`, or a connection passed in by a caller."""

from __future__ import annotations

from alembic import context

from db.engine import make_engine
from db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Rebuilding a table drops the old one, which SQLite refuses while other tables' rows refer to
                # it (measurements to jobs): foreign keys are off while migrating (the pragma only takes effect
                # outside a transaction), and checked once the migrations are done.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            # Batch mode: SQLite cannot ALTER most things, so Alembic rebuilds the table there.
            context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                connection.rollback()
                if broken:
                    raise RuntimeError(f"the migration left rows referring to missing rows: {broken[:5]}")
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
