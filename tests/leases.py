"""Leases run out by time travel: a test moves `lease_expires_at` into the past in SQL.

A test that waited out a real 1-second lease raced the machine: on a loaded 2-core host an agent's heartbeat or
a test's own next call can be late by more than that, so leases expired before the test meant them to (or
after). Here services run with long leases, and a test expires exactly the leases it means to, when it means to;
what the service does next (re-lease, sweep, late token) is then the same on a quiet machine and a busy one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import update

from db.engine import make_engine, make_sessionmaker
from db.models import Job
from profiler_service.timeutil import utcnow


def expire_leases(db_url: str, *, job_ids: Iterable[int] | None = None, lease_token: str | None = None) -> int:
    """End the leases of these jobs (or under this token; or every live lease) as if their time had passed.
    Returns how many were ended; the jobs stay `leased`, as a lease that ran out does."""
    query = update(Job).where(Job.status == "leased")
    if job_ids is not None:
        query = query.where(Job.id.in_(list(job_ids)))
    if lease_token is not None:
        query = query.where(Job.lease_token == lease_token)
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            ended = session.execute(query.values(lease_expires_at=utcnow() - timedelta(seconds=1))).rowcount
            session.commit()
    finally:
        engine.dispose()
    return ended
