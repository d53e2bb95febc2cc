import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from db import migrate
from db.engine import make_engine
from db.models import Base

TABLES = {
    "devices", "operators", "profiling_runs", "run_operators", "jobs", "measurements",
    "latency_tables", "latency_table_entries", "service_settings", "api_tokens", "calibrations",
}  # fmt: skip


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _drift(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def _up_and_down(url: str) -> None:
    assert _tables(url) == set()
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()
    assert _tables(url) == TABLES
    # The migrations must build exactly what the models declare, or autogenerate would see a difference.
    assert _drift(url) == []
    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    assert _tables(url) == set()
    migrate.upgrade(url)  # and up again: downgrade left nothing behind that blocks it
    assert _tables(url) == TABLES


def test_sqlite_upgrade_to_head_and_back(sqlite_url):
    _up_and_down(sqlite_url)


@pytest.mark.postgres
def test_postgres_upgrade_to_head_and_back(pg_url):
    _up_and_down(pg_url)
