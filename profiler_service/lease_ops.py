"""What a lease tells an agent about each job's operator, kept per worker once the operator's model is recorded.

A lease used to read its jobs' operators after the claim committed: a transaction of its own, three round trips
(BEGIN, the SELECT, ROLLBACK) of the ten an agent call made (pg_stat_statements under bench.load). An operator's
row never changes once its model's checksum is stored (profiler_service/operators.py fills the checksum only
where it is missing, and nothing deletes operators), so a worker that has read it keeps it; a row without a
checksum yet is read again by the next lease. Bounded: past `limit` keys the memory starts again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Operator
from search.space.opspec import OpSpec


@dataclass(frozen=True)
class LeaseOp:
    """An operator as a lease describes it."""

    spec: dict[str, Any]
    sha256: str
    bytes: int
    input_shape: list[int]

    @classmethod
    def of(cls, op: Operator) -> LeaseOp:
        is_network = op.spec.get("kind") == "network"
        shape = op.spec["input_shape"] if is_network else list(OpSpec.from_dict(op.spec).input_shape)
        return cls(spec=op.spec, sha256=op.onnx_sha256 or "", bytes=op.onnx_bytes or 0, input_shape=shape)


class LeaseOps:
    """Operators by key, read from the database once per worker (thread-safe: leases run in threads)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._known: dict[str, LeaseOp] = {}
        self._lock = threading.Lock()

    def get(self, session: Session, keys: Iterable[str]) -> dict[str, LeaseOp]:
        """These keys' operators; the ones not known yet in one SELECT, in the caller's session."""
        wanted = set(keys)
        found = {key: op for key in wanted if (op := self._known.get(key)) is not None}
        missing = wanted - found.keys()
        if not missing:
            return found
        rows = list(session.scalars(select(Operator).where(Operator.key.in_(missing))))
        with self._lock:
            if len(self._known) + len(rows) > self.limit:
                self._known.clear()
            for op in rows:
                found[op.key] = LeaseOp.of(op)
                if op.onnx_sha256:  # final: kept
                    self._known[op.key] = found[op.key]
        return found
