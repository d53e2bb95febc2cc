"""Reader tokens a worker has checked, remembered so a table fetch costs no database round trip for its token.

A search client fetches tables with a reader token, and every fetch used to look the token up (a thread hop
and a query: a third of a fetch's time in py-spy). A token that was found to be a reader is remembered here,
by its SHA-256, while something can tell this worker that it stopped being one:

- A reader token stops being one only by its revocation. The revoking transaction notifies
  (profiler_service/notify.py, `dnas_tokens`), PostgreSQL delivers it when that transaction commits, and every
  worker's listener (profiler_service/wakeups.py) forgets every remembered token on hearing it. The revoking
  worker forgets them itself at once, and answers only once its own listener heard the notification, which
  PostgreSQL sends to every listener at the same commit.
- Nothing is remembered while the listener is down (or on SQLite, where there is none): each call is checked
  in the database as before. When the listener comes back, everything remembered before is forgotten, since
  a notification may have been missed meanwhile.
- A lookup that raced a revocation is not remembered: a stamp read before the query must still hold after it.
- The admin token and agent tokens are never remembered here (the admin's calls are few; agents have
  their own path, api/gate.py and wakeups.py).
"""

from __future__ import annotations

import asyncio
import threading

MAX_REMEMBERED = 10_000  # reader tokens per worker; past it, the others are looked up per call


class ReaderTokens:
    """One worker's (one app's) remembered reader-token digests. `remember` and `forget_all` may be called from
    the thread pool (the revoking route), so they hold a lock; `holds` reads on the event loop."""

    def __init__(self) -> None:
        self.live = False  # set by the listener: remembering is safe only while it hears revocations
        self._known: set[str] = set()
        self._stamp = 0
        self._heard = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def holds(self, digest: str) -> bool:
        return self.live and digest in self._known

    def stamp(self) -> int:
        """Read before looking a token up, handed to `remember`: a revocation meanwhile voids the lookup."""
        return self._stamp

    def remember(self, digest: str, stamp: int) -> None:
        with self._lock:
            if self.live and stamp == self._stamp and len(self._known) < MAX_REMEMBERED:
                self._known.add(digest)

    def forget_all(self) -> None:
        with self._lock:
            self._stamp += 1
            self._known = set()

    def set_live(self, live: bool) -> None:
        """The listener connected or lost its connection: what was remembered may have missed a revocation."""
        self.live = live
        self.forget_all()
        self._release(everyone=True)

    # ---- the listener's side, on the event loop ------------------------------------------------------------
    def heard(self, payload: str = "") -> None:
        """A revocation was announced (by any worker of any service on this database)."""
        self.forget_all()
        self._heard += 1
        self._release()

    def heard_count(self) -> int:
        return self._heard

    async def wait_heard(self, after: int, timeout: float) -> None:
        """Until this worker's listener heard a revocation after `after` (`heard_count()` read before the revoking
        transaction committed), or `timeout`; at once when nothing is listening."""
        if not self.live or self._heard > after:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((after, future))
        try:
            await asyncio.wait({future}, timeout=timeout)
        finally:
            self._waiters = [(a, f) for a, f in self._waiters if f is not future]

    def _release(self, everyone: bool = False) -> None:
        for after, future in self._waiters:
            if (everyone or self._heard > after) and not future.done():
                future.set_result(None)
