from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import artifact_cache, postgres
from tests.threads import torch_threads

_db_counter = itertools.count()

# Under pytest-xdist, a worker's share of the cores for torch and OpenMP (tests/threads.py), set before any test
# module imports torch, and inherited by every subprocess a test starts. Never without xdist: the serial part
# of `make test` measures latency and must run as a user's process would.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(torch_threads())
    if "torch" in sys.modules:  # a plugin imported it first: its pool has read the environment already
        sys.modules["torch"].set_num_threads(torch_threads())


def require_postgres() -> None:
    """In CI a missing PostgreSQL server is a failure, not a skip: a skipped test proves nothing."""
    if not postgres.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are required in CI (pg_config --bindir)")
        pytest.skip("PostgreSQL server binaries not installed")


@pytest.fixture(scope="session", autouse=True)
def shared_exports(tmp_path_factory) -> Path:
    """One folder of exported ops and networks for the run (tests/artifact_cache.py); under pytest-xdist,
    one for all workers: their base temp dirs are siblings in the run's own."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "exports"
    artifact_cache.ROOT = root
    return root


@pytest.fixture(scope="session")
def mini_table(tmp_path_factory) -> Path:
    """This host's latency table for tests.tables.MINI, measured once per session (per xdist worker) for
    every search test that needs a real table rather than a made-up one."""
    from tests.tables import MINI, measured_table

    return measured_table(MINI, tmp_path_factory.mktemp("mini-table"))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.PostgresCluster]:
    """One real PostgreSQL server for the whole run (under pytest-xdist, one per worker)."""
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


# The files holding the longest tests or groups of a full run (`--durations`: a minute to four each on this
# 2-core machine), longest first. pytest-xdist hands tests out in collection order, so under it these go first:
# started last, one of them would leave a worker running it alone while the other has nothing left to do.
SLOW_FIRST = (
    "test_agent_conformance.py",  # the Android agent through the emulator, ~450 perf_test processes per generation
    "test_faults.py",
    "test_search.py",  # one group (module fixtures): every search on the measured MINI table
    "test_multi_device.py",  # one group likewise
    "test_admin_token.py",
    "test_load.py",
    "test_android_agent_e2e.py",
    "test_search_integration.py",
    "test_android_link_loss.py",
    "test_agent_give_back.py",
    "test_fleet.py",
    "test_agent_protocol.py",
    "test_multi_device_e2e.py",
)


def _slow_rank(item: pytest.Item) -> int:
    name = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
    return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups off the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup` (make test), the tests that share a module-scoped fixture (a running service,
    a finished search) go to one worker, so that fixture is built once rather than once per worker. The other
    tests are spread one by one, the slowest files first (SLOW_FIRST; a stable sort, so a file's own tests keep
    their order). Without xdist (`make test`'s serial part runs `-p no:xdist`) nothing changes: the order is
    the files', and the group marker is not even registered (--strict-markers would refuse it)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects, and all must agree: a fixed order
        items.sort(key=_slow_rank)
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is not None and any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
