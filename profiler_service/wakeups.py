"""Waking a worker's idle long polls when a job is queued, instead of each one querying every poll interval.

A fleet keeps one lease call waiting per agent. If each waiting call looked for work by querying, a thousand
idle agents would cost thousands of queries a second doing nothing, and every agent's call every 20 s would add
its own token lookup. So on PostgreSQL:

- Each worker process holds one listening connection (`LISTEN`), never one per request. The transaction that
  queues jobs or gives one back notifies the device's id (profiler_service/notify.py); the listener moves that
  device's tick and wakes its waiting calls, which then claim.
- A call that claimed nothing records its device as idle at the tick it read *before* claiming; a notification
  that arrived meanwhile moved the tick, so no record is made and the call claims again. The next call of
  an idle device waits without querying.
- Notifications are only lost while the listening connection is down. Then nothing is recorded, and every
  waiting call polls as on SQLite (`lease_poll_seconds`). When the listener is back, every record is forgotten
  and every waiting call claims once.
- Some work is never notified: a lease that expires, or a job written by hand. One query per worker every
  `wake_recheck_seconds` finds it, for all of the worker's idle devices at once.
- The device behind an agent token is remembered only while the listener is live, and only so that a call can
  wait: a call that claims checks the token again in the claim's own session, so a rotated or retired token
  never gets a job. Rotation and retirement notify too, and the recheck reads the remembered devices again.
  Remembered devices' `last_seen_at` is written in one statement per worker every `LAST_SEEN_EVERY_S`.

The same listening connection carries the channels of the worker's other memories (`subscribers`: reader
tokens, profiler_service/reader_tokens.py; which table a fetch names, profiler_service/table_versions.py):
each hears its channel's notifications and when the listener comes or goes. A database restart or a closed
connection is seen at once; one dropped silently on the way (a NAT) only when the recheck's `SELECT 1` fails.

An idle fleet then costs each worker a few queries per recheck, whatever its size. On SQLite there is nothing
to listen to: every waiting call claims every `lease_poll_seconds`, as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool

from db.models import Device
from profiler_service.metrics import LEASE_LISTENERS, LEASE_WAITING
from profiler_service.notify import DEVICES_CHANNEL, JOBS_CHANNEL
from profiler_service.queue import runnable_devices
from profiler_service.settings import ServiceSettings
from profiler_service.timeutil import utcnow

log = logging.getLogger("dnas.service.wakeups")

LAST_SEEN_EVERY_S = 30.0  # as api/deps.py: an agent's calls move its device's last_seen_at at most this often
MAX_REMEMBERED = 100_000  # agent tokens remembered per worker; past it, the others are looked up per call
Mark = tuple[int, int]  # (listener epoch, device tick) as a call read it before claiming


class Subscriber(Protocol):
    """A worker's memory that is right only while it hears its channel (profiler_service/reader_tokens.py,
    profiler_service/table_versions.py)."""

    def heard(self, payload: str) -> None: ...

    def set_live(self, live: bool) -> None: ...


@dataclass(frozen=True)
class PollingAgent:
    """The device behind a lease call's token: all a waiting call needs. `remembered` means it came from this
    worker's memory and was not checked against the database on this call."""

    id: int
    digest: str
    agent_protocol: int | None
    remembered: bool = False


def libpq_url(url: URL) -> str:
    """The SQLAlchemy URL as psycopg's own connect() takes it (no `+psycopg` driver suffix)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Wakeups:
    """One worker's (one app's) listener, its idle records and its waiting lease calls. All state is touched on
    the event loop only; the database is read in the thread pool."""

    def __init__(
        self, sessions: sessionmaker, settings: ServiceSettings, subscribers: Mapping[str, Subscriber] | None = None
    ) -> None:
        self.sessions = sessions
        # What else this worker remembers while it can hear changes (channel -> memory): told of each
        # notification on its channel, and of the listener coming and going.
        self.subscribers = dict(subscribers or {})
        self.poll_seconds = settings.lease_poll_seconds
        self.recheck_seconds = settings.wake_recheck_seconds
        self.live = False
        self._epoch = 0
        self._device_changes = 0
        self._ticks: dict[int, int] = {}
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}
        self._idle: dict[int, Mark] = {}
        self._agents: dict[str, PollingAgent] = {}
        self._seen: set[int] = set()
        self._flushed = time.monotonic()

    # ---- a lease call's side ----------------------------------------------------------------------------
    def mark(self, device_id: int) -> Mark:
        return self._epoch, self._ticks.get(device_id, 0)

    def known_idle(self, device_id: int) -> bool:
        """True when a claim since the last wake-up found nothing: claiming again would find nothing either."""
        return self.live and self._idle.get(device_id) == self.mark(device_id)

    def note_idle(self, device_id: int, mark: Mark) -> None:
        """A claim that started at `mark` found nothing; recorded only if nothing was heard since."""
        if self.live and mark == self.mark(device_id):
            self._idle[device_id] = mark

    async def wait(self, device_id: int, mark: Mark, timeout: float) -> None:
        """Until the device is woken (a notification, the recheck, the listener coming or going) or `timeout`;
        while the listener is down, at most `poll_seconds`, so the call polls."""
        if mark != self.mark(device_id) or timeout <= 0:
            return
        if not self.live:
            timeout = min(timeout, self.poll_seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(device_id, set())
        waiters.add(future)
        LEASE_WAITING.inc()
        try:
            await asyncio.wait({future}, timeout=timeout)
        finally:
            LEASE_WAITING.dec()
            waiters.discard(future)
            if not waiters and self._waiters.get(device_id) is waiters:
                del self._waiters[device_id]

    def agent(self, digest: str) -> PollingAgent | None:
        """The remembered device of this token, only while notifications can tell this worker it changed."""
        return self._agents.get(digest) if self.live else None

    def stamp(self) -> tuple[int, int]:
        """Read before looking a device up, handed to `remember`: a change heard meanwhile voids the lookup."""
        return self._epoch, self._device_changes

    def remember(self, agent: PollingAgent, stamp: tuple[int, int]) -> None:
        if self.live and stamp == self.stamp() and len(self._agents) < MAX_REMEMBERED:
            self._agents[agent.digest] = dataclasses.replace(agent, remembered=True)

    def protocol_recorded(self, digest: str, version: int) -> None:
        """The agent's new protocol version is stored: remembered with it, so its next call is not a lookup."""
        if digest in self._agents:
            self._agents[digest] = dataclasses.replace(self._agents[digest], agent_protocol=version)

    def forget(self, digest: str) -> None:
        self._agents.pop(digest, None)

    def seen(self, device_id: int) -> None:
        """A remembered device's agent called: its `last_seen_at` is written at the next flush."""
        self._seen.add(device_id)

    # ---- waking -------------------------------------------------------------------------------------------
    def wake(self, device_id: int) -> None:
        self._ticks[device_id] = self._ticks.get(device_id, 0) + 1
        self._idle.pop(device_id, None)
        for future in self._waiters.get(device_id, ()):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        self._epoch += 1
        self._idle.clear()
        self._agents.clear()
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def _device_changed(self, device_id: int) -> None:
        self._device_changes += 1
        for digest in [d for d, a in self._agents.items() if a.id == device_id]:
            del self._agents[digest]
        self.wake(device_id)  # its waiting calls claim, and so check the token again

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            LEASE_LISTENERS.inc() if live else LEASE_LISTENERS.dec()
        self.live = live
        for subscriber in self.subscribers.values():
            subscriber.set_live(live)
        self._wake_all()

    def heard(self, channel: str, payload: str) -> None:
        if channel in self.subscribers:
            self.subscribers[channel].heard(payload)
            return
        try:
            device_id = int(payload)
        except ValueError:
            log.warning("ignored a notification on %s with payload %r", channel, payload[:80])
            return
        if channel == JOBS_CHANNEL:
            self.wake(device_id)
        elif channel == DEVICES_CHANNEL:
            self._device_changed(device_id)

    # ---- the listener -------------------------------------------------------------------------------------
    async def run(self, url: str) -> None:
        """Hold this worker's listening connection for good: reconnect after any failure, with backoff. Until
        it is back, the waiting calls poll."""
        import psycopg

        backoff = 1.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    await conn.execute(f"LISTEN {DEVICES_CHANNEL}")
                    for channel in self.subscribers:
                        await conn.execute(f"LISTEN {channel}")
                    self._set_live(True)
                    backoff = 1.0
                    await self._listen(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database restarted, the network broke: poll until it is back
                log.warning("listener for queued jobs lost (lease calls poll; retrying in %.0fs): %s", backoff, exc)
            finally:
                if self.live:
                    self._set_live(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _listen(self, conn) -> None:  # type: ignore[no-untyped-def]
        next_check = time.monotonic() + self.recheck_seconds
        while True:
            async for note in conn.notifies(timeout=max(0.0, next_check - time.monotonic())):
                self.heard(note.channel, note.payload)
            if time.monotonic() >= next_check:
                await conn.execute("SELECT 1")  # a listener whose connection died silently would hear nothing
                await self.recheck()
                next_check = time.monotonic() + self.recheck_seconds

    async def recheck(self) -> None:
        """One transaction for every idle device and remembered token of this worker: wake devices with work
        no notification announced, drop tokens that no longer name an active device, flush `last_seen_at`."""
        watched = set(self._idle) | set(self._waiters)
        agents = dict(self._agents)
        flush = time.monotonic() - self._flushed >= LAST_SEEN_EVERY_S
        seen = self._seen if flush else set()
        if flush:
            self._seen, self._flushed = set(), time.monotonic()
        stamp = self.stamp()
        found, current = await run_in_threadpool(self._read, watched, set(agents), seen)
        for device_id in found:
            self.wake(device_id)
        if stamp == self.stamp():
            for digest, agent in agents.items():
                if current.get(digest) != agent.id:
                    self._agents.pop(digest, None)
                    self.wake(agent.id)

    def _read(self, watched: set[int], digests: set[str], seen: set[int]) -> tuple[set[int], dict[str, int]]:
        if not (watched or digests or seen):
            return set(), {}
        with self.sessions() as session:
            found = runnable_devices(session, watched)
            current: dict[str, int] = {}
            if digests:
                current = dict(
                    session.execute(
                        select(Device.token_hash, Device.id).where(
                            Device.token_hash.in_(sorted(digests)), Device.retired_at.is_(None)
                        )
                    ).all()
                )
            if seen:
                session.execute(update(Device).where(Device.id.in_(sorted(seen))).values(last_seen_at=utcnow()))
                session.commit()
            else:
                session.rollback()
        return found, current
