"""A worker whose listening connection is black-holed on the way stops answering from memory, and listens again.

A worker answers reader tokens (and `latest`, and agent tokens) from memory only while its listener would hear
them change (profiler_service/wakeups.py). A NAT, a proxy or a pooler that stops forwarding a connection
without closing it fails nothing: the listener's checks used to wait on it for good, the worker kept trusting
its memory, and a reader token revoked afterwards stayed accepted on that worker for good. Here the worker's
listener (`Wakeups.run`, with the real ReaderTokens memory) talks to a real PostgreSQL through a real TCP proxy
(tests/blackhole_proxy.py) that black-holes its open connections while forwarding new ones; the recheck's reads
go through another. Deadlines are short settings, so each test takes seconds; every wait is on a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from profiler_service.notify import TOKENS_CHANNEL
from profiler_service.reader_tokens import ReaderTokens
from profiler_service.settings import ServiceSettings
from profiler_service.wakeups import Wakeups, libpq_url
from tests.blackhole_proxy import BlackHoleProxy

RECHECK_S = 0.3
TIMEOUT_S = 1.0  # listener_timeout_seconds
DEADLINE_S = 15.0  # a recheck, a timeout and a reconnect's backoff (1 s) fit many times over


class Changes:
    """Resolves a waiter whenever something a test waits on may have moved (all on the test's event loop)."""

    def __init__(self) -> None:
        self._next: asyncio.Future[None] | None = None

    def signal(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.set_result(None)

    async def until(self, probe: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not probe():
                    self._next = asyncio.get_running_loop().create_future()
                    await self._next
        except TimeoutError:
            raise AssertionError(f"waiting for {what}: not after {timeout:g} s") from None


class WatchedTokens(ReaderTokens):
    """The worker's real reader-token memory, telling the test when the listener told it something."""

    def __init__(self, changes: Changes) -> None:
        super().__init__()
        self.changes = changes
        self.told_live = 0  # on connecting, then before every recheck (which forgets what was remembered)

    def set_live(self, live: bool) -> None:
        super().set_live(live)
        self.told_live += live
        self.changes.signal()

    def heard(self, payload: str = "") -> None:
        super().heard(payload)
        self.changes.signal()


async def notify_revoked(pg_url: str) -> None:
    """What revoking a reader token sends, through a fresh connection straight to the database."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(libpq_url(make_url(pg_url)), autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, 'revoked')", (TOKENS_CHANNEL,))


@dataclass
class Worker:
    """One worker's listener and what the test sees of it."""

    wakeups: Wakeups
    tokens: WatchedTokens
    proxy: BlackHoleProxy  # the listener's way to the database
    pool_proxy: BlackHoleProxy  # the way of the recheck's reads (the worker's pool)
    changes: Changes
    task: asyncio.Task[None]


def listening(
    pg_url: str, scenario: Callable[[Worker], Coroutine[Any, Any, None]], *, timeout_s: float = TIMEOUT_S,
    answer_new: bool = True,
) -> None:  # fmt: skip
    """Run `scenario` beside one worker's listener, which reaches the database only through the two proxies."""
    upgrade(pg_url)
    settings = ServiceSettings(database_url=pg_url, wake_recheck_seconds=RECHECK_S, listener_timeout_seconds=timeout_s)
    url = make_url(pg_url)
    engines = []

    async def main() -> None:
        changes = Changes()
        proxy, pool_proxy = (BlackHoleProxy((url.host, url.port), on_change=changes.signal) for _ in range(2))
        proxy.answer_new = answer_new
        await proxy.start()
        await pool_proxy.start()
        engines.append(make_engine(url.set(port=pool_proxy.port).render_as_string(hide_password=False)))
        sessions = make_sessionmaker(engines[0].execution_options(isolation_level="AUTOCOMMIT"))
        tokens = WatchedTokens(changes)
        wakeups = Wakeups(sessions, settings, {TOKENS_CHANNEL: tokens})
        task = asyncio.create_task(wakeups.run(libpq_url(url.set(port=proxy.port))))
        try:
            await scenario(Worker(wakeups, tokens, proxy, pool_proxy, changes, task))
        finally:
            await proxy.close()  # first: a listener stuck on its connection ends only once the connection does
            await pool_proxy.close()
            task.cancel()
            await asyncio.wait({task}, timeout=DEADLINE_S)

    try:
        asyncio.run(main())
    finally:
        for engine in engines:
            engine.dispose()


@pytest.mark.postgres
def test_a_black_holed_listener_stops_trusting_memory_and_listens_again(pg_url) -> None:
    """Failed before the fix: the reader token remembered after the black hole was still accepted at the
    deadline (the listener waited on its `SELECT 1` for good, still live)."""

    async def scenario(w: Worker) -> None:
        await w.changes.until(lambda: w.wakeups.live and w.tokens.live, "the listener live")
        w.proxy.black_hole()
        w.tokens.remember("reader", w.tokens.stamp())  # a fetch checked the token and the worker remembered it
        assert w.tokens.holds("reader")
        await notify_revoked(pg_url)  # revoked through a fresh connection; this worker cannot hear it

        await w.changes.until(lambda: not w.tokens.holds("reader"), "the revoked token no longer answered from memory")
        assert not w.wakeups.live, "the listener was not given up"
        await w.changes.until(lambda: w.wakeups.live and w.proxy.accepted >= 2, "the listener back on a new connection")

        w.tokens.remember("reader", w.tokens.stamp())  # listening again, the worker remembers again ...
        assert w.tokens.holds("reader")
        heard = w.tokens.heard_count()
        await notify_revoked(pg_url)  # ... and hears the next revocation
        await w.changes.until(lambda: w.tokens.heard_count() > heard, "the revocation heard on the new connection")
        assert not w.tokens.holds("reader")

    listening(pg_url, scenario)


@pytest.mark.postgres
def test_a_recheck_stuck_on_a_black_holed_pooled_connection_gives_the_listener_up(pg_url) -> None:
    """The recheck reads through the worker's pool, and hears nothing meanwhile: one stuck on a black-holed
    pooled connection left the worker trusting its memory for good (failed before its deadline was added: the
    revoked token was still answered from memory at the test's deadline)."""

    async def scenario(w: Worker) -> None:
        # told live on connecting, then before each recheck: a third time once the first recheck's read is done
        await w.changes.until(lambda: w.wakeups.live and w.tokens.told_live >= 3, "a first recheck done")
        w.pool_proxy.black_hole()  # the pooled connection it read on; the listener's own still answers
        await w.changes.until(lambda: w.pool_proxy.swallowed > 0, "a recheck's read sent into the black hole")
        w.tokens.remember("reader", w.tokens.stamp())  # after that recheck forgot everything
        await notify_revoked(pg_url)
        await w.changes.until(lambda: not w.tokens.holds("reader"), "the revoked token no longer answered from memory")
        assert not w.wakeups.live, "the listener was not given up"
        # back on new connections (the stuck read keeps its pooled one), hearing again
        await w.changes.until(lambda: w.wakeups.live and w.proxy.accepted >= 2, "the listener back")
        heard = w.tokens.heard_count()
        await notify_revoked(pg_url)
        await w.changes.until(lambda: w.tokens.heard_count() > heard, "the revocation heard")

    listening(pg_url, scenario)


@pytest.mark.postgres
def test_a_connect_that_is_never_answered_is_given_up_and_retried(pg_url) -> None:
    """A listener whose connection is accepted and never answered polls meanwhile and tries again. Failed before
    the fix: no second attempt by the deadline (psycopg's default connect timeout is 130 s)."""

    async def scenario(w: Worker) -> None:
        await w.changes.until(lambda: w.proxy.accepted >= 2, "a second connection attempt")
        assert not w.wakeups.live and not w.tokens.live
        w.proxy.answer_new = True
        await w.changes.until(lambda: w.wakeups.live and w.tokens.live, "the listener live once the database answers")

    listening(pg_url, scenario, answer_new=False)


@pytest.mark.postgres
def test_shutting_down_does_not_wait_on_a_black_holed_connection(pg_url) -> None:
    """A worker stopping while its listener's `SELECT 1` hangs stops at once, long before the listener's own
    deadline. Failed before the fix: cancelled, psycopg asked the server to cancel and waited 5 s for an answer
    on the black-holed connection."""

    async def scenario(w: Worker) -> None:
        await w.changes.until(lambda: w.wakeups.live, "the listener live")
        w.proxy.black_hole()
        await w.changes.until(lambda: w.proxy.swallowed > 0, "the liveness check sent into the black hole")
        w.task.cancel()
        done, _ = await asyncio.wait({w.task}, timeout=2.0)
        assert done, "stopping the listener waited on its dead connection"
        assert not w.wakeups.live

    listening(pg_url, scenario, timeout_s=60.0)
