"""Pooled PostgreSQL connections (db/liveness.py): one the server ended is replaced at checkout, so no request
fails on it, and one in steady use is not pinged before each checkout (that round trip was a quarter of a
table fetch's cost under load)."""

import pytest
from sqlalchemy import text

from db.engine import make_engine
from db.liveness import check_liveness
from tests.waiting import wait_until


def _backend_pid(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _count_pings(engine) -> list[int]:  # type: ignore[no-untyped-def]
    """Count the dialect's pings (the real ping still runs): what a checkout sends before the request's query."""
    calls = [0]
    ping = engine.dialect.do_ping

    def counted(dbapi_conn):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return ping(dbapi_conn)

    engine.dialect.do_ping = counted
    return calls


@pytest.mark.postgres
def test_a_connection_the_server_ended_is_replaced_at_checkout(pg_url):
    engine = make_engine(pg_url)
    admin = make_engine(pg_url)
    try:
        pid = _backend_pid(engine)  # now idle in the pool
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()

        def gone() -> bool:
            with admin.connect() as conn:
                return not conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                ).scalar()

        wait_until(gone, what=f"backend {pid} to exit", timeout_s=30, interval_s=0.05)
        assert _backend_pid(engine) != pid  # no error: the dead connection was swapped for a new one
    finally:
        engine.dispose()
        admin.dispose()


@pytest.mark.postgres
def test_a_connection_in_steady_use_is_not_pinged_but_an_idle_one_is(pg_url):
    engine = make_engine(pg_url)
    try:
        pings = _count_pings(engine)
        first = _backend_pid(engine)
        for _ in range(5):
            assert _backend_pid(engine) == first  # the same pooled connection, reused
        assert pings[0] == 0
    finally:
        engine.dispose()
    idle = make_engine(pg_url)
    try:
        check_liveness(idle, idle_ping_after_s=0.0)  # every checkout counts as after a long idle
        pings = _count_pings(idle)
        _backend_pid(idle)
        _backend_pid(idle)
        assert pings[0] >= 1
    finally:
        idle.dispose()


@pytest.mark.postgres
def test_a_connection_on_a_descriptor_above_1024_is_checked_too(pg_url):
    """A worker holding a thousand agents' long polls has sockets numbered above select()'s FD_SETSIZE: the
    checkout check must still work there (select.select raised ValueError, so every checkout failed)."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the next socket lands above 1024
    engine = make_engine(pg_url)
    try:
        first = _backend_pid(engine)
        assert _backend_pid(engine) == first  # checked out again, through the check, on a high descriptor
    finally:
        engine.dispose()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
