"""Which table a fetch names, remembered per worker, so a repeated fetch costs no query and no thread hop.

A fetch names a table by device, version (a number or `latest`), and optionally space and precision. With
the table's bytes already in memory (profiler_service/table_cache.py), looking up which table that is was the
fetch's one remaining query, run in the thread pool. Remembered here:

- A numbered version always names the same table: tables are never deleted or changed once published, so
  it is remembered for good (bounded in number).
- `latest` changes when the device publishes (a run, an import). The publishing transaction notifies
  (profiler_service/notify.py, `dnas_tables`, the device's id) and every worker's listener
  (profiler_service/wakeups.py) forgets that device's `latest`. So `latest` is remembered only while the
  listener is live; when it comes back, everything remembered of `latest` is forgotten, since a notification
  may have been missed meanwhile. A lookup that raced a publication is not remembered.

Touched on the event loop only.
"""

from __future__ import annotations

MAX_REMEMBERED = 10_000  # names per kind; past it, the kind starts again empty
Name = tuple[int, int | None, str | None, str | None]  # device id, version (None: latest), space hash, precision
Found = tuple[int, int]  # table id, version number


class TableVersions:
    def __init__(self) -> None:
        self.live = False
        self._numbered: dict[Name, Found] = {}
        self._latest: dict[Name, Found] = {}
        self._stamp = 0

    def get(self, name: Name) -> Found | None:
        if name[1] is not None:
            return self._numbered.get(name)
        return self._latest.get(name) if self.live else None

    def stamp(self) -> int:
        """Read before looking a name up, handed to `remember`: a publication meanwhile voids a `latest`."""
        return self._stamp

    def remember(self, name: Name, found: Found, stamp: int) -> None:
        if name[1] is None and not (self.live and stamp == self._stamp):
            return
        kind = self._numbered if name[1] is not None else self._latest
        if len(kind) >= MAX_REMEMBERED:
            kind.clear()
        kind[name] = found

    def heard(self, payload: str) -> None:
        """A device published a table (any worker, any service on this database): its `latest` moved."""
        self._stamp += 1
        try:
            device_id = int(payload)
        except ValueError:
            self._latest.clear()
            return
        for name in [n for n in self._latest if n[0] == device_id]:
            del self._latest[name]

    def set_live(self, live: bool) -> None:
        self.live = live
        self._stamp += 1
        self._latest.clear()
