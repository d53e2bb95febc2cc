from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests import postgres

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.PostgresCluster]:
    """One real PostgreSQL server for the whole run. In CI its absence is a failure, not a skip."""
    if not postgres.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are required in CI (pg_config --bindir)")
        pytest.skip("PostgreSQL server binaries not installed")
    with postgres.postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: postgres.PostgresCluster) -> str:
    """A fresh, empty database per test."""
    return pg_cluster.create_database(f"t{os.getpid()}_{next(_db_counter)}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'dnas.db'}"
