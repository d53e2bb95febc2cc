from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests import postgres

_db_counter = itertools.count()


def require_postgres() -> None:
    """In CI a missing PostgreSQL server is a failure, not a skip: a skipped test proves nothing."""
    if not postgres.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are required in CI (pg_config --bindir)")
        pytest.skip("PostgreSQL server binaries not installed")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.PostgresCluster]:
    """One real PostgreSQL server for the whole run."""
    require_postgres()
    with postgres.postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def own_pg_cluster() -> Iterator[postgres.PostgresCluster]:
    """A PostgreSQL server of this test's own, which it may stop and start."""
    require_postgres()
    with postgres.postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: postgres.PostgresCluster) -> str:
    """A fresh, empty database per test."""
    return pg_cluster.create_database(f"t{os.getpid()}_{next(_db_counter)}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'dnas.db'}"
