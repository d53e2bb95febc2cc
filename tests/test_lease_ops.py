"""A worker keeps what leases say about an operator only once its model's checksum is recorded: an operator
recorded without one (a table import) is read again, so the lease after its export carries the checksum the agent
verifies its download against. Real SQLite, migrated to head."""

from __future__ import annotations

from sqlalchemy import event, insert, update

from db import migrate
from db.engine import make_engine, make_sessionmaker
from db.models import Operator
from profiler_service.lease_ops import LeaseOps
from profiler_service.timeutil import utcnow

NET = {"kind": "network", "input_shape": [1, 3, 32, 32]}


def test_an_operator_without_a_checksum_is_read_again_and_kept_once_it_has_one(sqlite_url):
    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with sessions() as s:
        s.execute(insert(Operator), [{"key": "net-a", "spec": NET, "created_at": utcnow()}])
        s.commit()
    ops = LeaseOps()

    with sessions() as s:
        assert ops.get(s, ["net-a"])["net-a"].sha256 == ""  # imported, not exported yet
    with sessions() as s:
        s.execute(update(Operator).where(Operator.key == "net-a").values(onnx_sha256="ab" * 32, onnx_bytes=1234))
        s.commit()
    with sessions() as s:
        first = ops.get(s, ["net-a"])["net-a"]
    assert (first.sha256, first.bytes, first.input_shape) == ("ab" * 32, 1234, [1, 3, 32, 32])

    statements.clear()
    with sessions() as s:
        assert ops.get(s, ["net-a"]) == {"net-a": first}
    assert statements == []  # kept: no query
    engine.dispose()
