"""Published table versions, kept in each worker's memory as the exact bytes to send: identity and gzip,
JSON and CSV, each with its ETag. Versions never change, so nothing here is ever invalidated; a fetch costs
one small lookup (which version) and no serialisation or compression.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Representation:
    body: bytes
    gzipped: bytes
    etag: str  # quoted, strong: identifies `body`; the gzipped bytes are served with the weak form

    @classmethod
    def of(cls, body: bytes, digest: str | None = None) -> Representation:
        digest = digest or hashlib.sha256(body).hexdigest()
        # mtime=0: the compressed bytes depend on the content only, so every worker sends the same bytes.
        return cls(body=body, gzipped=gzip.compress(body, compresslevel=6, mtime=0), etag=f'"{digest}"')


@dataclass(frozen=True)
class CachedTable:
    json: Representation
    csv: Representation


class TableCache:
    """A thread-safe LRU of table id -> CachedTable. A miss is built once even when 200 readers miss at
    once: they wait on the one build instead of all serialising and compressing the same payload."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[int, CachedTable] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[int, threading.Lock] = {}

    def get(self, table_id: int) -> CachedTable | None:
        with self._lock:
            item = self._items.get(table_id)
            if item is not None:
                self._items.move_to_end(table_id)
            return item

    def get_or_build(self, table_id: int, build: Callable[[], CachedTable]) -> CachedTable:
        item = self.get(table_id)
        if item is not None:
            return item
        with self._lock:
            lock = self._building.setdefault(table_id, threading.Lock())
        with lock:
            item = self.get(table_id)
            if item is None:
                item = build()
                with self._lock:
                    self._items[table_id] = item
                    self._items.move_to_end(table_id)
                    while len(self._items) > self.size:
                        self._items.popitem(last=False)
            with self._lock:
                self._building.pop(table_id, None)
            return item


def accepts_gzip(accept_encoding: str | None) -> bool:
    """RFC 9110: `gzip` (or `*`) listed without q=0."""
    if not accept_encoding:
        return False
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower().removeprefix("q=")
            try:
                return not params or float(q) > 0
            except ValueError:
                return False
    return False
