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
- Some work is never notified: a lease that expires, or a job written by hand. Every `wake_recheck_seconds`,
  and at once when the listener connects, each worker reads every active device in one statement (its token,
  protocol, `last_seen_at`, and whether it has work a claim would take): it wakes the devices with work, and
  records the others as idle at the tick it read before the read.
- The same read is how a worker knows every agent token, not only those it met. A worker met a token only when
  one of its agent's calls came to it, and calls move between workers (each new connection goes to whichever
  accepts it; a proxy's pool hands any connection to any call), so a fleet kept meeting tokens for minutes, and
  each meeting cost a token check, a `last_seen_at` write and a claim (bench.fleet at 1,000 agents: 85
  statements/s, all of them such meetings). Registration, rotation and retirement notify, and the worker
  reads again `LEARN_AFTER_CHANGE_S` later, so even a new device's first call finds its token known.
- A token is known only while the listener is live, and only so that a call can wait: a call that claims
  checks the token again in the claim's own session, so a rotated or retired token never gets a job. Rotation
  and retirement notify, so their waiting calls are woken and refused at once; the read drops tokens that are
  no longer active (a change written by hand). Calls of known agents write no `last_seen_at`: the read says
  which of their devices' is older than `LAST_SEEN_EVERY_S`, and those are written in one statement.

The same listening connection carries the channels of the worker's other memories (`subscribers`: reader
tokens, profiler_service/reader_tokens.py; which table a fetch names, profiler_service/table_versions.py):
each hears its channel's notifications and when the listener comes or goes. A database restart or a closed
connection is seen at once. One dropped or black-holed on the way (a NAT, a proxy or pooler that hangs) fails
nothing, so every step on it has a deadline (`listener_timeout_seconds`, profiler_service/listener_conn.py):
the connect, the `LISTEN`s, the recheck's `SELECT 1` on it and the recheck's read. Past it the listener is lost
as in a restart, within `wake_recheck_seconds` plus that deadline, and reconnects.

An idle fleet then costs each worker one read per recheck (and the sweep's), whatever its size and however its
calls move between workers; a renewal of an idle call costs no statement. On SQLite there is nothing to listen
to: every waiting call claims every `lease_poll_seconds`, as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import anyio.to_thread
from sqlalchemy import select, update
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from db.models import Device
from profiler_service.listener_conn import connect, listener_conninfo, within
from profiler_service.metrics import LEASE_KNOWN_AGENTS, LEASE_LISTENERS, LEASE_WAITING
from profiler_service.notify import DEVICES_CHANNEL, JOBS_CHANNEL
from profiler_service.queue import has_runnable_job
from profiler_service.settings import ServiceSettings
from profiler_service.timeutil import as_utc, utcnow

log = logging.getLogger("dnas.service.wakeups")

LAST_SEEN_EVERY_S = 30.0  # an agent's calls move its device's last_seen_at at most this often (here and api/deps.py)
MAX_REMEMBERED = 100_000  # agent tokens remembered per worker; past it, the others are looked up per call
LEARN_AFTER_CHANGE_S = 0.2  # a device registered, rotated or retired is read this long after its notification
RECHECK_TIMEOUTS = 4  # the recheck's deadline, in listener timeouts (40 s by default: past the pool's 30 s wait)
Mark = tuple[int, int]  # (listener epoch, device tick) as a call read it before claiming
T = TypeVar("T")


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
        self.timeout = settings.listener_timeout_seconds  # each step on the listening connection, and the recheck
        self._rechecked = False  # a recheck completed on the current listening connection
        self.live = False
        self._epoch = 0
        self._device_changes = 0
        self._ticks: dict[int, int] = {}
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}
        self._idle: dict[int, Mark] = {}
        self._agents: dict[str, PollingAgent] = {}
        self._seen: set[int] = set()

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
            LEASE_KNOWN_AGENTS.set(len(self._agents))

    def protocol_recorded(self, digest: str, version: int) -> None:
        """The agent's new protocol version is stored: remembered with it, so its next call is not a lookup."""
        if digest in self._agents:
            self._agents[digest] = dataclasses.replace(self._agents[digest], agent_protocol=version)

    def forget(self, digest: str) -> None:
        self._agents.pop(digest, None)
        LEASE_KNOWN_AGENTS.set(len(self._agents))

    def seen(self, device_id: int) -> None:
        """A known device's agent called: the next read that finds its `last_seen_at` older than
        `LAST_SEEN_EVERY_S` writes it, with every other such device's, in one statement."""
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
        LEASE_KNOWN_AGENTS.set(0)
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def _device_changed(self, device_id: int) -> None:
        self._device_changes += 1
        for digest in [d for d, a in self._agents.items() if a.id == device_id]:
            del self._agents[digest]
        LEASE_KNOWN_AGENTS.set(len(self._agents))
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
        it is back, the waiting calls poll. Every step on it has a deadline (profiler_service/listener_conn.py):
        a connection black-holed on the way is given up like a closed one."""
        conninfo = listener_conninfo(url, self.timeout)
        backoff = 1.0
        while True:
            conn, self._rechecked = None, False
            try:
                conn = await connect(conninfo, self.timeout)
                for channel in (JOBS_CHANNEL, DEVICES_CHANNEL, *self.subscribers):
                    await within(conn, conn.execute(f"LISTEN {channel}"), self.timeout, "LISTEN")
                self._set_live(True)
                await self._listen(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database restarted, the network broke: poll until it is back
                if self._rechecked:  # it had worked: a new failure. Not after LISTEN alone, or a listener lost at
                    backoff = 1.0  # every first recheck would reconnect every second for good
                log.warning("listener for queued jobs lost (lease calls poll; retrying in %.0fs): %s", backoff, exc)
            finally:
                if self.live:
                    self._set_live(False)
                if conn is not None:
                    await conn.close()  # PQfinish: no round trip, so a dead connection cannot hold it up
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _listen(self, conn) -> None:  # type: ignore[no-untyped-def]
        next_check = time.monotonic()  # at once: every device and token, learnt before the first call needs them
        while True:
            # stop_after=1: back here after each packet, to wait again with a deadline a device change may have
            # moved. Never `break` out of notifies(): psycopg reads a packet's notifications as one list and
            # yields them one by one, so leaving early drops the rest of the packet for good (a revocation
            # sent in the same transaction as a device change was never heard).
            async for note in conn.notifies(timeout=max(0.0, next_check - time.monotonic()), stop_after=1):
                self.heard(note.channel, note.payload)
                if note.channel == DEVICES_CHANNEL:  # registered, rotated or retired: learn it soon, not in 5 s
                    next_check = min(next_check, time.monotonic() + LEARN_AFTER_CHANGE_S)
            if time.monotonic() >= next_check:
                # A connection that died silently would hear nothing, and one black-holed on the way would not
                # even fail: the check has a deadline, past which the listener is lost (memories dropped).
                await within(conn, conn.execute("SELECT 1"), self.timeout, "the liveness check")
                self._refresh_subscribers()
                # Bounded too: while the recheck runs nothing is heard, so one stuck on a black-holed pooled
                # connection would leave this worker trusting memories no notification can correct.
                # Its deadline is RECHECK_TIMEOUTS x the step's: the read also waits for a thread and a pooled
                # connection (the pool waits up to 30 s), and a pool busy for 10 s must not pass for a dead
                # listener, which would drop every memory and make each agent call look its token up again.
                await within(conn, self.recheck(), RECHECK_TIMEOUTS * self.timeout, "the recheck's read")
                self._rechecked = True
                next_check = time.monotonic() + self.recheck_seconds

    def _refresh_subscribers(self) -> None:
        """What the other memories hold is forgotten at every recheck, as the devices are read again: a change
        no notification announced (written by hand, by a service of an older version, or missed behind a pooler
        that drops LISTEN) is then served for at most `wake_recheck_seconds`, not for good."""
        for subscriber in self.subscribers.values():
            subscriber.set_live(True)

    async def recheck(self) -> None:
        """One read of every active device, whatever the fleet's size: wake the watched devices that have work no
        notification announced, record the others as idle, remember every agent token (and forget those no longer
        active), then write the due `last_seen_at` in one statement. Runs in the listener's task, so no
        notification is handled meanwhile: one that arrives during the read moves a tick after it."""
        marks = {device_id: self.mark(device_id) for device_id in self._ticks}
        epoch, before = self._epoch, dict(self._agents)
        devices = await _in_thread(self._read)
        now = utcnow()
        if epoch != self._epoch:  # the listener went and came back: what was read may predate a lost notification
            return
        read = {row.token_hash: row for row in devices}
        last_id = devices[-1].id if len(devices) >= MAX_REMEMBERED else None  # truncated: later ids were not read
        for digest, agent in before.items():
            row = read.get(digest)
            if (row is None or row.id != agent.id) and (last_id is None or agent.id <= last_id):
                self._agents.pop(digest, None)  # rotated or retired (a notification said so too, unless by hand)
                self.wake(agent.id)  # its waiting calls claim, and so check the token again
        for row in devices:
            if row.runnable:
                if row.id in self._idle or row.id in self._waiters:
                    self.wake(row.id)
            else:
                self.note_idle(row.id, marks.get(row.id, (epoch, 0)))
            self._know(row)
        LEASE_KNOWN_AGENTS.set(len(self._agents))
        due = {row.id for row in devices if row.id in self._seen and _stale(row.last_seen_at, now)}
        self._seen -= due
        if last_id is None:
            self._seen &= {row.id for row in devices}  # retired meanwhile: nothing to write
        if due:
            await _in_thread(self._write_seen, due)

    def _know(self, row: Any) -> None:
        """Remember the device of this row's token, with its protocol as stored."""
        known = self._agents.get(row.token_hash)
        if known is not None and (known.id, known.agent_protocol) == (row.id, row.agent_protocol):
            return
        if known is not None or len(self._agents) < MAX_REMEMBERED:
            self._agents[row.token_hash] = PollingAgent(row.id, row.token_hash, row.agent_protocol, remembered=True)

    def _read(self) -> list[Any]:
        with self.sessions() as session:  # autocommit: one statement, no BEGIN and ROLLBACK around it
            return list(
                session.execute(
                    select(Device.id, Device.token_hash, Device.agent_protocol, Device.last_seen_at,
                           has_runnable_job(Device.id, utcnow()).label("runnable"))
                    .where(Device.retired_at.is_(None)).order_by(Device.id).limit(MAX_REMEMBERED)
                ).all()
            )  # fmt: skip

    def _write_seen(self, device_ids: set[int]) -> None:
        with self.sessions() as session:
            session.execute(update(Device).where(Device.id.in_(sorted(device_ids))).values(last_seen_at=utcnow()))
            session.commit()


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn` in the thread pool, left to finish alone if the recheck is given up: a read stuck on a black-holed
    pooled connection must not hold the listener (starlette's run_in_threadpool waits for the thread)."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


def _stale(last_seen_at: datetime | None, now: datetime) -> bool:
    return last_seen_at is None or (now - as_utc(last_seen_at)).total_seconds() >= LAST_SEEN_EVERY_S
